"""What keeping evidence costs the alert service's results loop: results/s with and without frame refs.

    .venv/bin/python bench/alert_evidence.py [--parts 300] [--rounds 2] [--frames-per-part 15]

Publishes one stream of part results (3 tracked cameras, 15 frames per part, every fifth part
flagged) twice to fresh topics of the local broker and Redis (`patchsight infra up`): once as a
worker before result v3 would send them (``frame`` unset: no frames tracked, no evidence
wanted), once with every result naming its frame (``frame`` set, the frames really on the frames
topic, 2 KB each), so the service tracks the part's frames in its part state, asks for
the flagged parts' frames in the alert's own Redis step, and its evidence thread reads them back
from Kafka while the loop runs. Each variant runs in a fresh alert service in this process,
alternated ``--rounds`` times; reports results/s over the drain (first poll to last result
stored), the mean decide-and-store time per result (the service's
``patchsight_alerts_process_seconds``), the result's JSON size, and the evidence kept. Writes bench/results/alert_evidence.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # bench/ingest.py would shadow the ingest package

import redis  # noqa: E402
from kafka import KafkaProducer  # noqa: E402

from alerts.service import AlertService  # noqa: E402
from alerts.store import RedisAlertStore, connect  # noqa: E402
from runtime.log import configure_logging  # noqa: E402
from runtime.topics import ensure_topics  # noqa: E402
from schemas.config import PatchsightConfig, validate_config  # noqa: E402
from schemas.feedback import VerdictSubject  # noqa: E402
from schemas.frame import FrameMessage  # noqa: E402
from schemas.part import PartObservation  # noqa: E402
from schemas.result import FrameRef, InspectionResult, QuestionScore, ResultStatus  # noqa: E402

CAMERAS = ("cam-1", "cam-2", "cam-3")
FRAMES_PER_PART = 15  # a part passing a camera at 10 fps (make demo: 15.0 frames per part)
T0 = 1_700_000_000_000_000_000


def config() -> PatchsightConfig:
    token = uuid.uuid4().hex[:8]
    return validate_config(
        {
            "kafka": {
                "topics": {
                    "frames": f"bench-frames-{token}",
                    "results": f"bench-results-{token}",
                    "dead_letter": f"bench-dlq-{token}",
                    "partitions": 3,
                }
            },
            "alerts": {"group_id": f"bench-alerts-{token}", "key_prefix": f"bench-{token}", "metrics_port": 0},
            "lines": [
                {
                    "id": "line-a",
                    "cameras": [{"id": c} for c in CAMERAS],
                    "questions": [
                        {"id": "scratch", "text": "Is there a scratch?", "defect_type": "scratch"},
                        {"id": "screw", "text": "Is a screw missing?", "defect_type": "missing_screw"},
                    ],
                }
            ],
        },
        source="bench",
    )


def stream(parts: int, frames: int, refs: dict[tuple[str, int], FrameRef] | None) -> list[InspectionResult]:
    out = []
    for camera in CAMERAS:
        seq = 0
        for part in range(parts):
            flagged = part % 5 == 0
            for _ in range(frames):
                scratch = 0.9 if flagged else 0.2 + 0.01 * (seq % 7)
                out.append(
                    InspectionResult(
                        line_id="line-a",
                        camera_id=camera,
                        seq=seq,
                        capture_ns=T0 + seq * 100_000_000,
                        model_id="m",
                        worker_id="w",
                        part=PartObservation(part_id=f"{camera}.{part}", source="tracker"),
                        frame=refs[(camera, seq)] if refs is not None else None,
                        scores=[
                            QuestionScore(
                                question_id="scratch",
                                score=scratch,
                                threshold=0.5,
                                defect_type="scratch",
                                above_threshold=scratch >= 0.5,
                            ),
                            QuestionScore(
                                question_id="screw",
                                score=0.1,
                                threshold=0.5,
                                defect_type="missing_screw",
                                above_threshold=False,
                            ),
                        ],
                    )
                )
                seq += 1
        out.append(
            out[-1].model_copy(
                update={
                    "seq": seq,
                    "capture_ns": T0 + seq * 100_000_000,
                    "part": None,
                    "status": ResultStatus.skipped,
                    "skip_reason": "no part in the zone",
                    "scores": [],
                }
            )
        )
    return out


def publish_frames(cfg: PatchsightConfig, producer: KafkaProducer, parts: int,
                   frames: int) -> dict[tuple[str, int], FrameRef]:
    payload = b"\xff\xd8" + os.urandom(2044) + b"\xff\xd9"
    futures = {}
    for camera in CAMERAS:
        for seq in range(parts * frames):
            msg = FrameMessage(
                line_id="line-a", camera_id=camera, seq=seq, capture_ns=T0 + seq, width=8, height=8, payload=payload
            )
            key, value, headers = msg.to_record()
            futures[(camera, seq)] = producer.send(cfg.kafka.topics.frames, key=key, value=value, headers=headers)
    producer.flush(60)
    refs = {}
    for where, future in futures.items():
        sent = future.get(30)
        refs[where] = FrameRef(topic=cfg.kafka.topics.frames, partition=sent.partition, offset=sent.offset)
    return refs


def run(variant: str, parts: int, frames: int) -> dict:
    cfg = config()
    ensure_topics(cfg.kafka)
    producer = KafkaProducer(**cfg.kafka.client_kwargs(), linger_ms=5)
    refs = publish_frames(cfg, producer, parts, frames) if variant == "evidence" else None
    results = stream(parts, frames, refs)
    for r in results:
        key, value, headers = r.to_record()
        producer.send(cfg.kafka.topics.results, key=key, value=value, headers=headers)
    producer.flush(60)
    producer.close(5)
    store = RedisAlertStore(connect(cfg.redis), cfg.alerts)
    try:
        with AlertService(cfg, f"bench-{variant}") as service:
            handled, start = 0, None
            deadline = time.monotonic() + 600
            while handled < len(results) and time.monotonic() < deadline:
                before = time.perf_counter()
                got = service.process_batch(timeout_ms=200)
                if got and start is None:
                    start = before  # the drain starts with the poll that brought the first results
                handled += got
            wall = time.perf_counter() - (start or time.perf_counter())
            per_result_ms = service.metrics.latency._sum.get() / max(1, handled) * 1000
            settle = time.monotonic() + 60
            while store.wanted_evidence() and time.monotonic() < settle:
                time.sleep(0.1)
            alerts = store.list_alerts("line-a", limit=1000)
            evidence = store.evidence_frames_of(VerdictSubject.alert, [a.alert_id for a in alerts])
            kept = sum(bool(names) for names in evidence.values())
        return {
            "results": handled,
            "wall_s": round(wall, 3),
            "results_per_s": round(handled / wall, 1),
            "decide_and_store_ms_per_result": round(per_result_ms, 3),
            "alerts": len(alerts),
            "alerts_with_evidence": kept,
            "evidence_bytes": store.evidence_bytes("line-a"),
            "result_json_bytes": len(results[0].to_json()),
        }
    finally:
        client = redis.Redis.from_url(cfg.redis.url)
        keys = list(client.scan_iter(match=f"{cfg.alerts.key_prefix}:*", count=1000))
        if keys:
            client.delete(*keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=int, default=300, help="parts per camera")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--frames-per-part", type=int, default=FRAMES_PER_PART,
                        help="scored frames per part, each kept as evidence of a flagged part")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "alert_evidence.json")
    args = parser.parse_args()
    configure_logging("console", "WARNING")
    runs: dict[str, list[dict]] = {"no_frame_refs": [], "evidence": []}
    for _ in range(args.rounds):
        for variant in runs:
            runs[variant].append(run(variant, args.parts, args.frames_per_part))
            print(variant, json.dumps(runs[variant][-1]), flush=True)
    ratios = [e["results_per_s"] / n["results_per_s"] for n, e in zip(runs["no_frame_refs"], runs["evidence"])]
    report = {
        **runs,
        "evidence_over_no_refs": [round(r, 3) for r in ratios],
        "conditions": {
            "cpu_count": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0],
            "machine": platform.machine(),
            "parts_per_camera": args.parts,
            "cameras": len(CAMERAS),
            "frames_per_part": args.frames_per_part,
        },
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
