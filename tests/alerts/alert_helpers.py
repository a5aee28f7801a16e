"""Helpers for the alert-service tests: build results, publish them, run the service until idle."""

from __future__ import annotations

import base64
import json
import time
from typing import Any, Callable, Iterator

import pytest
from kafka import KafkaProducer

from alerts.service import AlertService
from alerts.store import RedisAlertStore, connect
from runtime.topics import ensure_topics
from schemas.alert import DefectAlert
from schemas.config import PatchsightConfig
from schemas.part import PartObservation
from schemas.result import InspectionResult, QuestionScore, ResultStatus

LINE = "line-a"
CAMERA = "cam-1"
T0 = 1_700_000_000_000_000_000
FRAME_NS = 100_000_000  # 10 fps
# A real (tiny) JPEG header is not needed by the service; any bytes prove the round trip.
THUMB = b"\xff\xd8\xff\xe0fake-jpeg\xff\xd9"


def line_section(policy: dict | None = None, line: str = LINE, cameras: tuple[str, ...] = (CAMERA, "cam-2")) -> dict:
    return {
        "id": line,
        "cameras": [{"id": c} for c in cameras],
        "questions": [
            {"id": "scratch", "text": "Is there a scratch on the lid?", "defect_type": "scratch", "threshold": 0.6},
            {"id": "missing-screw", "text": "Is a screw missing?", "defect_type": "missing_screw"},
        ],
        "alert_policy": policy or {"k": 3, "n": 5, "clear_frames": 5},
    }


def result(
    seq: int,
    scratch: float = 0.1,
    screw: float = 0.1,
    camera: str = CAMERA,
    line: str = LINE,
    status: ResultStatus = ResultStatus.ok,
    capture_ns: int | None = None,
) -> InspectionResult:
    scores = [
        QuestionScore(question_id="scratch", score=scratch, threshold=0.5, defect_type="scratch",
                      above_threshold=scratch >= 0.5),
        QuestionScore(question_id="missing-screw", score=screw, threshold=0.5, defect_type="missing_screw",
                      above_threshold=screw >= 0.5),
    ]
    above = scratch >= 0.6 or screw >= 0.5
    return InspectionResult(
        line_id=line,
        camera_id=camera,
        seq=seq,
        capture_ns=T0 + seq * FRAME_NS if capture_ns is None else capture_ns,
        status=status,
        skip_reason="stale" if status == ResultStatus.skipped else None,
        model_id="test-model",
        worker_id="w1",
        scores=[] if status == ResultStatus.skipped else scores,
        thumbnail_jpeg_b64=base64.b64encode(THUMB).decode() if above and status == ResultStatus.ok else None,
    )


def part_result(
    seq: int,
    part: str | None,
    scratch: float = 0.1,
    screw: float = 0.1,
    camera: str = CAMERA,
    source: str = "tracker",
    aggregate: str = "mean",
    capture_ns: int | None = None,
    skip_reason: str = "no part in the zone",
    thumbnail: bytes | None = None,
) -> InspectionResult:
    """A frame of a tracked camera: showing ``part`` (scored), or (``part=None``) no part: skipped.

    The worker's thumbnail (``thumbnail`` or a small one naming camera and seq) comes with
    frames that have a score at or above 0.5, the worker's threshold.
    """
    if part is None:
        return result(seq, camera=camera, status=ResultStatus.skipped, capture_ns=capture_ns).model_copy(
            update={"skip_reason": skip_reason})
    r = result(seq, scratch=scratch, screw=screw, camera=camera, capture_ns=capture_ns)
    jpeg = thumbnail or b"\xff\xd8" + f"{camera}/{seq}".encode() + b"\xff\xd9"
    return r.model_copy(update={
        "part": PartObservation(part_id=part, source=source, aggregate=aggregate),
        "thumbnail_jpeg_b64": base64.b64encode(jpeg).decode() if max(scratch, screw) >= 0.5 else None,
    })


def part_run(parts: list[tuple[str | None, list[tuple[float, float]]]], camera: str = CAMERA, first: int = 0,
             source: str = "tracker") -> list[InspectionResult]:
    """Consecutive frames of one camera: per entry a part id (None: empty belt) and its frames' (scratch, screw)."""
    out, seq = [], first
    for part, frames in parts:
        for scratch, screw in frames:
            out.append(part_result(seq, part, scratch, screw, camera=camera, source=source))
            seq += 1
    return out


def defect_run(first: int, frames: int, camera: str = CAMERA, before: int = 3, after: int = 8) -> list[InspectionResult]:
    """Clean frames, then ``frames`` frames with a scratch, then clean frames again."""
    out = []
    for seq in range(first, first + before + frames + after):
        inside = first + before <= seq < first + before + frames
        out.append(result(seq, scratch=0.9 if inside else 0.1, camera=camera))
    return out


def publish(config: PatchsightConfig, results: list[InspectionResult | tuple[bytes, bytes]]) -> None:
    ensure_topics(config.kafka, [config.kafka.topics.results, config.kafka.topics.dead_letter])
    producer = KafkaProducer(**config.kafka.client_kwargs(), linger_ms=0)
    try:
        for item in results:
            if isinstance(item, tuple):
                producer.send(config.kafka.topics.results, key=item[0], value=item[1])
            else:
                key, value, headers = item.to_record()
                producer.send(config.kafka.topics.results, key=key, value=value, headers=headers)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)


def raise_one_alert(cfg: PatchsightConfig) -> tuple[RedisAlertStore, DefectAlert]:
    """Run a short defect through the service; return the store and the one alert it raised."""
    results = defect_run(first=0, frames=4)
    publish(cfg, results)
    with AlertService(cfg, "t1") as service:
        drain(service, len(results))
    store = RedisAlertStore(connect(cfg.redis), cfg.alerts)
    (alert,) = store.list_alerts(LINE)
    return store, alert


def live_messages(pubsub: Any, count: int, timeout_s: float = 5.0) -> list[dict]:
    """Up to ``count`` JSON messages from a subscribed pub/sub, waiting at most ``timeout_s``."""
    messages, deadline = [], time.monotonic() + timeout_s
    while len(messages) < count and time.monotonic() < deadline:
        m = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if m:
            messages.append(json.loads(m["data"]))
    return messages


def drain(service: AlertService, expect: int, timeout_s: float = 30.0) -> int:
    """Process batches until ``expect`` records were handled (or the timeout)."""
    import time

    handled, deadline = 0, time.monotonic() + timeout_s
    while handled < expect and time.monotonic() < deadline:
        handled += service.process_batch(timeout_ms=300)
    return handled


@pytest.fixture
def alert_config(make_config: Callable[..., PatchsightConfig], redis_client) -> Iterator[Callable[..., PatchsightConfig]]:
    """A config with one line and this test's own topics, key prefix and consumer group.

    The prefix's keys are deleted from the shared Redis afterwards.
    """
    prefixes: set[str] = set()

    def build(policy: dict | None = None, line: dict | None = None, **sections: object) -> PatchsightConfig:
        cfg = make_config(lines=[line or line_section(policy)], **sections)
        prefixes.add(cfg.alerts.key_prefix)
        return cfg.model_copy(
            update={"alerts": cfg.alerts.model_copy(update={"group_id": "alerts-" + cfg.alerts.key_prefix})}
        )

    yield build
    for prefix in prefixes:
        keys = list(redis_client.scan_iter(match=f"{prefix}:*", count=500))
        if keys:
            redis_client.delete(*keys)

