"""Part tracker cost: milliseconds per 640x480 frame, one thread, rendering excluded.

    python bench/tracker.py [--frames 600] [--width 640 --height 480]

Measures the tracker on a synthetic camera with one part at a time and with parts close
together, and writes bench/results/tracker.json. The tracker runs in the worker's in-order
model thread, once per frame, so this is what every frame pays before the encoder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

# bench/ingest.py would shadow the ingest package: import from the repository root instead
sys.path[0] = str(Path(__file__).resolve().parents[1])
from inference.tracker import benchmark  # noqa: E402
from ingest.synth import CLOSE_SPACING  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args()
    size = (args.width, args.height)
    result = {
        "one_part_at_a_time": benchmark(args.frames, size),
        "parts_close_together": benchmark(args.frames, size, CLOSE_SPACING),
        "threads": 1,
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],  # the machine is shared: a high load explains a high number
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tracker.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
