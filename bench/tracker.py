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
import time
from pathlib import Path

# bench/ingest.py would shadow the ingest package: import from the repository root instead
sys.path[0] = str(Path(__file__).resolve().parents[1])
import cv2  # noqa: E402

from ingest.synth import CLOSE_SPACING, SynthCamera  # noqa: E402
from model.tracker import PartTracker  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def benchmark(frames: int = 300, size: tuple[int, int] = (640, 480), spacing: tuple[float, float] | None = None
              ) -> dict[str, float]:
    """The tracker's cost per frame on a synthetic camera, one thread, rendering excluded.

    ``ms_per_frame`` is wall time; ``cpu_ms_per_frame`` leaves out time spent waiting for a
    core, which on a shared machine is most of the difference. At most 100 distinct frames
    are rendered and fed in turn.
    """
    cam = SynthCamera("line-a", "line-a-cam1", 0, ["bracket", "housing"], size=size, spacing=spacing)
    images = [image for image, _ in cam.frames(min(frames, 100))]
    tracker = PartTracker("line-a-cam1")
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        for seq in range(frames):
            tracker.update(images[seq % len(images)], seq)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        cv2.setNumThreads(threads)
    return {"frames": frames, "ms_per_frame": 1000 * wall / frames, "cpu_ms_per_frame": 1000 * cpu / frames,
            "width": size[0], "height": size[1]}


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
