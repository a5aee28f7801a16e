"""How many frames per second one ingest process can encode and publish.

Runs the camera path without a camera: encode a 640x480 or 1280x720 BGR frame to JPEG at
the default quality, wrap it in a FrameMessage, publish through FramePublisher (acks=all,
idempotent, linger 5 ms) and wait for every acknowledgement. Frames come from a textured
test image with sensor noise, so JPEG sizes are realistic rather than those of a flat image.

    .venv/bin/python bench/ingest.py [--seconds 8] [--bootstrap 127.0.0.1:9092] [--out PATH] [--without-crc32c]

Writes bench/results/ingest.json and the '## Ingest' section of BENCHMARKS.md (with --out: that file only).
``--without-crc32c`` hides the ``crc32c`` package, as an install that missed it would run (kafka-python
then computes record CRCs in pure Python), and writes bench/results/ingest_without_crc32c.json only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Before the first kafka import: kafka-python picks its CRC32C function when it is imported.
if "--without-crc32c" in sys.argv:
    sys.modules["crc32c"] = None  # type: ignore[assignment]  # import crc32c now raises ImportError

from ingest.publisher import FramePublisher, IngestCounters, encode_jpeg  # noqa: E402
from runtime.kafka_crc import has_c_crc32c  # noqa: E402
from runtime.log import configure_logging  # noqa: E402
from runtime.topics import ensure_topics  # noqa: E402
from schemas.config import IngestSettings, KafkaSettings, Topics  # noqa: E402
from schemas.frame import FrameMessage  # noqa: E402

SIZES = [(640, 480), (1280, 720)]
QUALITY = 85  # CameraConfig's default


def test_frames(width: int, height: int, count: int = 16) -> list[np.ndarray]:
    """Textured frames (gradients, shapes, noise) that differ from each other, as a camera's do."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * 255 // width), (yy * 255 // height), ((xx + yy) * 127 // (width + height))], -1)
    frames = []
    for i in range(count):
        image = base.astype(np.uint8).copy()
        for _ in range(12):
            cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
            cv2.circle(image, (cx, cy), int(rng.integers(10, height // 4)), tuple(int(v) for v in rng.integers(0, 256, 3)), -1)
        noise = rng.normal(0, 6, image.shape)
        frames.append(np.clip(image + noise, 0, 255).astype(np.uint8))
    return frames


def measure(kafka: KafkaSettings, ingest: IngestSettings, width: int, height: int, seconds: float) -> dict:
    frames = test_frames(width, height)
    counters = IngestCounters()
    publisher = FramePublisher(kafka, ingest, counters, client_id="bench-ingest", quality=QUALITY)
    publisher.connect()
    # encode alone, to say how much of the budget is JPEG
    started = time.perf_counter()
    sizes = [len(encode_jpeg(f, QUALITY)) for f in frames for _ in range(2)]
    encode_fps = len(sizes) / (time.perf_counter() - started)
    seq = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        payload = encode_jpeg(frames[seq % len(frames)], QUALITY)
        publisher.publish(FrameMessage(line_id="bench", camera_id=f"bench-{width}", seq=seq, capture_ns=time.time_ns(),
                                       width=width, height=height, payload=payload))
        seq += 1
    publisher.flush()
    elapsed = time.perf_counter() - started
    publisher.close()
    snap = counters.snapshot()
    return {
        "width": width,
        "height": height,
        "jpeg_quality": QUALITY,
        "frames": seq,
        "published": snap["published"],
        "failed": snap["failed"],
        "seconds": round(elapsed, 2),
        "publish_fps": round(snap["published"] / elapsed, 1),
        "encode_only_fps": round(encode_fps, 1),
        "mean_jpeg_bytes": int(np.mean(sizes)),
        "megabytes_per_s": round(snap["published"] * np.mean(sizes) / elapsed / 1e6, 1),
    }


def write_markdown(results: list[dict], command: str, machine: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n\nNumbers measured on the machines named; rerun the commands to refresh.\n"
    rows = "\n".join(
        f"| {r['width']}x{r['height']} | {r['publish_fps']} | {r['encode_only_fps']} | {r['mean_jpeg_bytes'] // 1000} kB "
        f"| {r['megabytes_per_s']} | {r['published']}/{r['frames']} |"
        for r in results
    )
    section = (
        "## Ingest\n\n"
        "Frames per second one ingest process encodes (JPEG q85) and publishes to Kafka with acks=all and\n"
        "idempotence, every frame acknowledged (single thread: encode, then send). Textured frames with noise.\n\n"
        f"Command: `{command}`  \nMachine: {machine}  \nRaw: bench/results/ingest.json\n\n"
        "| frame | publish fps | encode-only fps | mean JPEG | MB/s | acked/sent |\n"
        "|---|---|---|---|---|---|\n"
        f"{rows}\n\n"
        "kafka-python computes the CRC32C of every record batch. Without the `crc32c` package it does so in\n"
        "pure Python, and publishing is several times slower (`python bench/ingest.py --seconds 8 --without-crc32c`,\n"
        "bench/results/ingest_without_crc32c.json); ingest and the workers log a warning at start then.\n"
    )
    pattern = re.compile(r"^## Ingest\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="publishing time per frame size")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--out", type=Path, default=None,
                        help="write the results here instead, and leave BENCHMARKS.md as it is")
    parser.add_argument("--without-crc32c", action="store_true",
                        help="hide the crc32c package (pure-Python CRCs); writes ingest_without_crc32c.json only")
    args = parser.parse_args()
    if args.without_crc32c:
        args.out = args.out or ROOT / "bench" / "results" / "ingest_without_crc32c.json"
    configure_logging("console", "WARNING")
    cv2.setNumThreads(1)  # one ingest process per camera: measure what one core does
    topic = f"bench-frames-{uuid.uuid4().hex[:8]}"
    kafka = KafkaSettings(bootstrap=args.bootstrap, topics=Topics(frames=topic, partitions=1))
    ensure_topics(kafka, [topic])
    ingest = IngestSettings()
    load_before = os.getloadavg()[0]
    results = [measure(kafka, ingest, w, h, args.seconds) for w, h in SIZES]
    # the broker runs on the same machine: its CPU share (and other load) bounds these numbers
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, Kafka 4.1 broker on the "
        f"same machine; 1-min load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after; "
        f"{'crc32c C extension' if has_c_crc32c() else 'no crc32c package: CRCs in pure Python'}"
    )
    command = "python bench/ingest.py " + " ".join(sys.argv[1:])
    out = args.out or ROOT / "bench" / "results" / "ingest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"command": command.strip(), "machine": machine, "topic": topic, "results": results}, indent=2) + "\n"
    )
    if args.out is None:
        write_markdown(results, command.strip(), machine)
    for r in results:
        print(f"{r['width']}x{r['height']}: {r['publish_fps']} frames/s published ({r['encode_only_fps']} encode-only), "
              f"{r['mean_jpeg_bytes']} B/frame")


if __name__ == "__main__":
    main()
