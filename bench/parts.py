"""Per-part inspection through a real worker and broker: frames/s and head calls per part.

    .venv/bin/python bench/parts.py --bundle models/default [--part-view-bundle DIR] [--frames 150]

Renders one synthetic line (2 cameras, seed 1000: never trained on) at 640x480, publishes
every frame to fresh topics of the local broker (`patchsight infra up`), then runs one
worker (in this process, all cores) until every frame has its result, once per way of
inspecting:

* ``frames``: every frame scored on its own (``track_parts: false``): the project before parts;
* ``parts``: the tracker in the worker, only frames with a part in the zone scored;
* ``parts+view`` (with ``--part-view-bundle``): the same, each scored frame read from the whole
  frame and from the part view (two encoder passes, two heads).

Reports the worker's frames/s over the stream (results of every frame, skipped ones
included, over the wall time from the worker's start to the last result) and the head calls
per part (scored frames times heads, over the parts the recordings hold). The ways run one
after another in one process, so their ratios are what to compare on a shared machine.
Writes bench/results/parts.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # bench/ingest.py would shadow the ingest package

from kafka import KafkaConsumer, TopicPartition  # noqa: E402

from inference.worker import Worker  # noqa: E402
from ingest.recording import Recording  # noqa: E402
from ingest.replay import replay  # noqa: E402
from ingest.synth import ALERT_QUESTIONS, write_recordings  # noqa: E402
from model.bundle import load_bundle  # noqa: E402
from runtime.topics import ensure_topics  # noqa: E402
from schemas.config import PatchsightConfig, validate_config  # noqa: E402
from schemas.result import InspectionResult, ResultStatus  # noqa: E402


def config(bundle: str, cameras: list[str], track_parts: bool) -> PatchsightConfig:
    token = uuid.uuid4().hex[:8]
    return validate_config({
        "kafka": {"topics": {"frames": f"bench-frames-{token}", "results": f"bench-results-{token}",
                             "dead_letter": f"bench-dlq-{token}", "partitions": 2}},
        "model": {"bundle": bundle, "device": "cpu"},
        "inference": {"group_id": f"bench-{token}", "metrics_port": 0},
        "lines": [{"id": "line-a", "cameras": [{"id": c, "track_parts": track_parts} for c in cameras],
                   "questions": [q.model_dump() for q in ALERT_QUESTIONS]}],
    }, source="bench")


def results(cfg: PatchsightConfig, expected: int, timeout_s: float = 600) -> list[InspectionResult]:
    consumer = KafkaConsumer(**cfg.kafka.client_kwargs(), enable_auto_commit=False)
    parts = [TopicPartition(cfg.kafka.topics.results, p) for p in range(cfg.kafka.topics.partitions)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    out: list[InspectionResult] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            out.extend(InspectionResult.from_record(r.value, r.headers) for r in batch)
    consumer.close()
    return out


def run(way: str, bundle_dir: str, recordings: list[Path], parts: int) -> dict[str, float]:
    cameras = [Recording(r).meta.camera_id for r in recordings]
    cfg = config(bundle_dir, cameras, track_parts=way != "frames")
    ensure_topics(cfg.kafka)
    frames = replay(recordings, cfg, speed=None, timestamps="recorded").frames
    bundle = load_bundle(bundle_dir, "cpu")
    bundle.encoder.eval()
    bundle.head.eval()
    stop = threading.Event()
    worker = Worker(cfg, bundle, worker_id=f"bench-{way}")
    start = time.perf_counter()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    got = results(cfg, frames)
    wall = time.perf_counter() - start
    stop.set()
    thread.join(60)
    scored = sum(r.status == ResultStatus.ok for r in got)
    heads = 2 if bundle.part_head is not None and way == "parts+view" else 1
    return {"frames": len(got), "scored": scored, "skipped": len(got) - scored, "wall_s": round(wall, 2),
            "frames_per_s": round(len(got) / wall, 1), "parts": parts,
            "head_calls_per_part": round(scored * heads / parts, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="models/default")
    parser.add_argument("--part-view-bundle", default=None, help="a bundle with a part view, for parts+view")
    parser.add_argument("--frames", type=int, default=150, help="frames per camera")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "parts.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        recordings = write_recordings(tmp, lines=1, cameras=2, frames=args.frames, seed=1000)
        parts = len({(Recording(r).meta.camera_id, e.truth.part_id) for r in recordings
                     for e in Recording(r).entries if e.truth is not None and e.truth.part_id is not None})
        ways = {"frames": args.bundle, "parts": args.bundle}
        if args.part_view_bundle:
            ways["parts+view"] = args.part_view_bundle
        report = {way: run(way, bundle, recordings, parts) for way, bundle in ways.items()}
    report["conditions"] = {"cpu_count": os.cpu_count(), "load_average_1m": os.getloadavg()[0],
                            "machine": platform.machine(), "bundle": args.bundle,
                            "part_view_bundle": args.part_view_bundle, "frames_per_camera": args.frames}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
