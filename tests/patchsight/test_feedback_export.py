"""`patchsight feedback export`: verdicts on alerts and reviewed parts, with their evidence frames read back from
the real frames topic, become a labelled recording that reads back through `Recording` as calibration reads it."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest
from kafka import KafkaProducer
from typer.testing import CliRunner

from alerts.service import AlertService
from alerts.store import RedisAlertStore, connect
from ingest.recording import Recording
from patchsight.cli import feedback_app
from patchsight.feedback import export_feedback
from runtime.topics import ensure_topics
from schemas.feedback import ReviewItem
from schemas.frame import FrameMessage
from schemas.result import FrameRef, InspectionResult, QuestionScore
from training.data import view_frames

LINE, CAMERA = "line-f", "cam-f1"
T0 = 1_700_000_000_000_000_000


def jpeg(seq: int) -> bytes:
    image = np.full((48, 64, 3), (seq * 7) % 256, np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def result(seq: int, scratch: float, ref: FrameRef) -> InspectionResult:
    return InspectionResult(
        line_id=LINE,
        camera_id=CAMERA,
        seq=seq,
        capture_ns=T0 + seq * 100_000_000,
        model_id="m",
        worker_id="w",
        frame=ref,
        scores=[
            QuestionScore(
                question_id="scratch",
                score=scratch,
                threshold=0.5,
                defect_type="scratch",
                above_threshold=scratch >= 0.5,
            ),
            QuestionScore(
                question_id="screw", score=0.1, threshold=0.5, defect_type="missing_screw", above_threshold=False
            ),
        ],
    )


@pytest.fixture
def judged(make_config, redis_client):
    """Three alerts (a false alarm, a confirmed one, one confirmed as a defect no question asks about) and a
    passed part reviewed as good, each with its evidence frame kept."""
    cfg = make_config(
        lines=[
            {
                "id": LINE,
                "cameras": [{"id": CAMERA, "track_parts": False}],
                "questions": [
                    {"id": "scratch", "text": "Is there a scratch?", "defect_type": "scratch", "threshold": 0.5},
                    {"id": "screw", "text": "Is a screw missing?", "defect_type": "missing_screw"},
                ],
            }
        ]
    )
    store = RedisAlertStore(connect(cfg.redis), cfg.alerts)
    frames = {}
    ensure_topics(cfg.kafka, [cfg.kafka.topics.frames, cfg.kafka.topics.results])
    producer = KafkaProducer(**cfg.kafka.client_kwargs(), linger_ms=0)
    for seq in range(45):
        msg = FrameMessage(
            line_id=LINE, camera_id=CAMERA, seq=seq, capture_ns=T0 + seq, width=64, height=48, payload=jpeg(seq)
        )
        key, value, headers = msg.to_record()
        sent = producer.send(cfg.kafka.topics.frames, key=key, value=value, headers=headers).get(30)
        frames[seq] = FrameRef(topic=cfg.kafka.topics.frames, partition=sent.partition, offset=sent.offset)
    for seq in range(45):  # three defects: frames 3-6, 18-21, 33-36
        key, value, headers = result(seq, 0.9 if seq % 15 in range(3, 7) else 0.1, frames[seq]).to_record()
        producer.send(cfg.kafka.topics.results, key=key, value=value, headers=headers)
    producer.flush(30)
    producer.close(5)
    with AlertService(cfg, "t1") as service:
        handled, deadline = 0, time.monotonic() + 30
        while handled < 45 and time.monotonic() < deadline:
            handled += service.process_batch(timeout_ms=300)
        alerts = sorted(store.list_alerts(LINE), key=lambda a: a.first_seq)
        review = ReviewItem(
            review_id="r1",
            line_id=LINE,
            camera_id=CAMERA,
            part_id="p-9",
            source="tracker",
            part_key="k",
            closeness=0.8,
            scores={"scratch": 0.4},
            thresholds={"scratch": 0.5},
            first_seq=40,
            last_seq=42,
            first_capture_ns=T0,
            model_id="m",
            sampled_ns=time.time_ns(),
            evidence=[{"camera_id": CAMERA, "seq": 41, **frames[41].model_dump()}],
        )
        store.offer_review(review, LINE, 1)
        store.offer_review(None, LINE, 2)
        deadline = time.monotonic() + 30
        while store.wanted_evidence() and time.monotonic() < deadline:
            time.sleep(0.1)
    assert len(alerts) == 3 and not store.wanted_evidence()
    # a second apart: the export numbers parts in the order the verdicts were given (to the millisecond)
    given = time.time_ns()
    store.record_verdict(alerts[0].alert_id, False, "ann", now_ns=given)
    store.record_verdict(alerts[1].alert_id, True, "ann", now_ns=given + 10**9)
    store.record_verdict(alerts[2].alert_id, True, "ann", defect_type="dent", now_ns=given + 2 * 10**9)
    store.record_review_verdict("r1", False, "bob", now_ns=given + 3 * 10**9)
    yield cfg, store, alerts
    keys = list(redis_client.scan_iter(match=f"{cfg.alerts.key_prefix}:*", count=500))
    if keys:
        redis_client.delete(*keys)


def test_export_round_trips_through_recording(judged, tmp_path):
    cfg, store, alerts = judged
    done = export_feedback(store, cfg.line(LINE), tmp_path / "fb")
    assert (dict(done.parts), done.frames, done.skipped_unasked, done.skipped_no_evidence) == (
        {"good": 2, "defective": 1},
        3,
        1,
        0,
    )
    rec = Recording(done.recordings[CAMERA])
    assert (rec.meta.line_id, rec.meta.camera_id, rec.meta.width, rec.meta.height, rec.meta.labelled) == (
        LINE,
        CAMERA,
        64,
        48,
        True,
    )
    truths = [
        (e.seq, e.truth.part_id, e.truth.verdict, e.truth.defects, e.truth.answers, e.truth.source_seq)
        for e in rec.entries
    ]
    assert truths == [
        (0, 1, "false_alarm", [], {"scratch": False, "screw": False}, alerts[0].last_seq),
        (1, 2, "confirmed", ["scratch"], {"scratch": True}, alerts[1].last_seq),
        (2, 3, "good", [], {"scratch": False, "screw": False}, 41),
    ]
    for (entry, payload), source in zip(rec.frames(), (alerts[0].last_seq, alerts[1].last_seq, 41)):
        assert payload == jpeg(source)
    # as calibration reads a recording: decoded frames with their truth
    assert [(seq, truth.part_id, image.shape) for seq, truth, image in view_frames(rec)] == [
        (0, 1, (48, 64, 3)),
        (1, 2, (48, 64, 3)),
        (2, 3, (48, 64, 3)),
    ]


def test_cli_export(judged, tmp_path):
    cfg, _, _ = judged
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    runner = CliRunner()  # the command itself: the top app's callback would log to CliRunner's closed stderr later
    ok = runner.invoke(feedback_app, ["--line", LINE, "--out", str(tmp_path / "fb"), "-c", str(path)])
    assert ok.exit_code == 0, ok.output
    said = " ".join(ok.output.split())
    assert "2 good and 1 defective parts, 3 frames; left out: 1 naming a defect no question asks about" in said
    assert len(Recording(tmp_path / "fb" / CAMERA).entries) == 3
    again = runner.invoke(feedback_app, ["--line", LINE, "--out", str(tmp_path / "fb"), "-c", str(path)])
    assert again.exit_code == 1 and "already holds a recording" in again.output
    unknown = runner.invoke(feedback_app, ["--line", "nope", "--out", str(tmp_path / "x"), "-c", str(path)])
    assert unknown.exit_code == 2 and "no line 'nope'" in unknown.output
