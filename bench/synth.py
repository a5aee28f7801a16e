"""Synthetic line render speed: frames per second for one camera, drawing + JPEG, one thread.

    python bench/synth.py [--frames 600] [--width 640 --height 480] [--out PATH]

Writes bench/results/synth.json (or --out). The issue asks for "thousands of labelled frames in a
minute or two": frames_per_minute is the number to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import cv2

# bench/ingest.py would shadow the ingest package: import from the repository root instead
sys.path[0] = str(Path(__file__).resolve().parents[1])
from ingest.synth import benchmark  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--out", type=Path, default=RESULTS / "synth.json", help="results file")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    result = benchmark(args.frames, (args.width, args.height))
    result.update({
        "frames_per_minute": round(result["fps"] * 60),
        "size": [args.width, args.height],
        "threads": 1,
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],  # the machine is shared: a high load explains a low number
        "machine": platform.machine(),
        "python": platform.python_version(),
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
