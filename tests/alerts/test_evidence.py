"""Evidence: an alert's full-resolution frames are read back from the real frames topic by offset, kept in
Redis within the line's bound (oldest alert evicted first, counted), and served by the dashboard."""

from __future__ import annotations

import os

import pytest
from alert_helpers import CAMERA, FRAME_NS, LINE, T0, defect_run, drain, part_run, publish
from fastapi.testclient import TestClient
from kafka import KafkaAdminClient, KafkaProducer
from kafka.structs import TopicPartition
from test_notifications import wait_for

from alerts.dashboard import create_app
from alerts.evidence import FrameGone, FrameReader
from alerts.service import AlertService
from alerts.store import RedisAlertStore, connect
from runtime.topics import ensure_topics
from schemas.config import PatchsightConfig
from schemas.feedback import EvidenceFrame, VerdictSubject
from schemas.frame import FrameMessage
from schemas.result import FrameRef, InspectionResult

FRAME_BYTES = 20_000  # larger than the reader's fetch size: a frame comes back whole anyway


def publish_frames(cfg: PatchsightConfig, camera: str, seqs: range) -> tuple[dict[int, FrameRef], dict[int, bytes]]:
    """Frames of ``camera`` on the config's frames topic; where each landed, and its JPEG bytes."""
    topic = cfg.kafka.topics.frames
    ensure_topics(cfg.kafka, [topic])
    producer = KafkaProducer(**cfg.kafka.client_kwargs(), linger_ms=0)
    refs, payloads = {}, {}
    try:
        for seq in seqs:
            payload = b"\xff\xd8" + os.urandom(FRAME_BYTES - 4) + b"\xff\xd9"
            msg = FrameMessage(
                line_id=LINE,
                camera_id=camera,
                seq=seq,
                capture_ns=T0 + seq * FRAME_NS,
                width=8,
                height=8,
                payload=payload,
            )
            key, value, headers = msg.to_record()
            sent = producer.send(topic, key=key, value=value, headers=headers).get(timeout=30)
            refs[seq] = FrameRef(topic=topic, partition=sent.partition, offset=sent.offset)
            payloads[seq] = payload
    finally:
        producer.close(timeout=5)
    return refs, payloads


def with_frames(results: list[InspectionResult], refs: dict[int, FrameRef]) -> list[InspectionResult]:
    return [r.model_copy(update={"frame": refs[r.seq]}) for r in results]


def settled(store: RedisAlertStore) -> bool:
    return not store.wanted_evidence()


def boxed(results: list[InspectionResult]) -> list[InspectionResult]:
    """The results with the part's box on each frame the tracker saw it on."""
    return [r.model_copy(update={"part": r.part.model_copy(update={"box": (10 + r.seq, 20, 60 + r.seq, 70)})})
            if r.part is not None else r for r in results]


def test_a_part_alert_keeps_every_frame_of_the_part_with_its_box(alert_config):
    cfg = alert_config()
    store = RedisAlertStore(connect(cfg.redis), cfg.alerts)
    # p-1: the missing screw peaks on its first frame, the scratch on its second; p-2 passes
    results = boxed(part_run(
        [("p-1", [(0.7, 0.9), (0.95, 0.6), (0.8, 0.55)]), ("p-2", [(0.1, 0.1)] * 2), (None, [(0.1, 0.1)])],
        camera="cam-2",
    ))
    refs, payloads = publish_frames(cfg, "cam-2", range(len(results)))
    publish(cfg, with_frames(results, refs))
    with AlertService(cfg, "t1") as service:
        drain(service, len(results))
        assert wait_for(lambda: settled(store))
        (alert,) = store.list_alerts(LINE)
        assert service.metrics.evidence.labels(LINE, "kept")._value.get() == 3
    assert store.evidence_frames(VerdictSubject.alert, alert.alert_id) == ["cam-2:0", "cam-2:1", "cam-2:2"]
    for seq in (0, 1, 2):
        assert store.evidence(VerdictSubject.alert, alert.alert_id, f"cam-2:{seq}") == payloads[seq]
    assert store.evidence_boxes(VerdictSubject.alert, alert.alert_id) == {
        f"cam-2:{seq}": (10 + seq, 20, 60 + seq, 70) for seq in (0, 1, 2)}
    assert store.evidence_bytes(LINE) == 3 * FRAME_BYTES

    client = TestClient(create_app(cfg))
    assert client.get(f"/api/alerts/{alert.alert_id}/evidence").json()["frames"] == ["cam-2:0", "cam-2:1", "cam-2:2"]
    served = client.get(f"/api/alerts/{alert.alert_id}/evidence/cam-2/1.jpg")
    assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"
    assert served.content == payloads[1]
    (listed,) = client.get("/api/alerts").json()
    assert listed["evidence"] == ["cam-2:0", "cam-2:1", "cam-2:2"]
    assert client.get(f"/api/alerts/{alert.alert_id}/evidence/cam-2/3.jpg").status_code == 404  # p-2's frame
    assert client.get("/api/alerts/nope/evidence").status_code == 404


def test_the_line_bound_evicts_the_oldest_alerts_evidence_and_counts_it(alert_config):
    bound = 2 * FRAME_BYTES + FRAME_BYTES // 2  # room for two alerts' frames, not three
    cfg = alert_config(alerts={"evidence_max_bytes_per_line": bound})
    store = RedisAlertStore(connect(cfg.redis), cfg.alerts)
    runs = [defect_run(first=first, frames=4) for first in (0, 15, 30, 45)]
    refs, payloads = publish_frames(cfg, CAMERA, range(60))
    with AlertService(cfg, "t1") as service:
        for run in runs:  # one batch per defect, so the alerts' raised times differ
            publish(cfg, with_frames(run, refs))
            drain(service, len(run))
        assert wait_for(lambda: settled(store))
        alerts = sorted(store.list_alerts(LINE), key=lambda a: a.raised_ns)
        assert len(alerts) == 4
        assert service.metrics.evidence_evicted.labels(LINE)._value.get() == 2
        assert service.metrics.evidence_evicted_bytes.labels(LINE)._value.get() == 2 * FRAME_BYTES
        scraped = service.metrics.registry.get_sample_value("patchsight_alerts_evidence_bytes", {"line": LINE})
        assert scraped == 2 * FRAME_BYTES
    assert store.evidence_bytes(LINE) == 2 * FRAME_BYTES <= bound
    kept = {a.alert_id: store.evidence_frames(VerdictSubject.alert, a.alert_id) for a in alerts}
    # the two oldest alerts lost theirs; each newer one kept the frame that completed its k-of-n window
    assert [kept[a.alert_id] for a in alerts[:2]] == [[], []]
    for a in alerts[2:]:
        assert kept[a.alert_id] == [f"{CAMERA}:{a.last_seq}"]
        assert store.evidence(VerdictSubject.alert, a.alert_id, f"{CAMERA}:{a.last_seq}") == payloads[a.last_seq]


def test_evicting_a_part_alerts_frames_drops_their_boxes_too(alert_config):
    cfg = alert_config(alerts={"evidence_max_bytes_per_line": 3 * FRAME_BYTES})  # one part's frames at a time
    store = RedisAlertStore(connect(cfg.redis), cfg.alerts)
    results = boxed(part_run([("p-1", [(0.9, 0.1)] * 3), ("p-2", [(0.9, 0.1)] * 3), (None, [(0.1, 0.1)])]))
    refs, _ = publish_frames(cfg, CAMERA, range(len(results)))
    with AlertService(cfg, "t1") as service:
        for run in (results[:4], results[4:]):  # p-1 is decided (and its frames kept) before p-2's alert
            publish(cfg, with_frames(run, refs))
            drain(service, len(run))
            assert wait_for(lambda: settled(store))
    first, second = sorted(store.list_alerts(LINE), key=lambda a: a.raised_ns)
    assert store.evidence_frames(VerdictSubject.alert, first.alert_id) == []
    assert store.evidence_boxes(VerdictSubject.alert, first.alert_id) == {}
    assert sorted(store.evidence_boxes(VerdictSubject.alert, second.alert_id)) == [f"{CAMERA}:{s}" for s in (3, 4, 5)]


def test_a_frame_kafka_no_longer_has_is_counted_missing_and_nothing_is_kept(alert_config):
    cfg = alert_config()
    store = RedisAlertStore(connect(cfg.redis), cfg.alerts)
    first, second = defect_run(first=0, frames=4), defect_run(first=15, frames=4, camera="cam-2")
    refs, _ = publish_frames(cfg, "other-cam", range(30))
    # the first run's results point at another camera's frames; the second's beyond the partition's end
    gone = {seq: ref.model_copy(update={"offset": 10**6}) for seq, ref in refs.items()}
    publish(cfg, with_frames(first, refs) + with_frames(second, gone))
    with AlertService(cfg, "t1") as service:
        drain(service, len(first) + len(second))
        assert wait_for(lambda: settled(store))
        assert service.metrics.evidence.labels(LINE, "missing")._value.get() == 2
    for alert in store.list_alerts(LINE):
        assert store.evidence_frames(VerdictSubject.alert, alert.alert_id) == []
    assert store.evidence_bytes(LINE) == 0


def test_the_reader_tells_a_frame_retention_deleted_from_one_it_holds(alert_config, unique):
    cfg = alert_config()
    refs, payloads = publish_frames(cfg, CAMERA, range(12))
    reader = FrameReader(cfg.kafka, "evidence-test")
    admin = KafkaAdminClient(**cfg.kafka.client_kwargs())
    try:
        frame = {seq: EvidenceFrame(camera_id=CAMERA, seq=seq, **ref.model_dump()) for seq, ref in refs.items()}
        assert reader.read(frame[3]).payload == payloads[3]
        # retention deletes the partition's oldest records: what it took is gone, the rest is read as before;
        # the reader, which knew the partition's offsets from before, finds out by fetching
        partition = frame[3].partition
        same = sorted(seq for seq, f in frame.items() if f.partition == partition)
        tp = TopicPartition(cfg.kafka.topics.frames, partition)
        admin.delete_records({tp: frame[same[-1]].offset})
        with pytest.raises(FrameGone, match=f"offset {frame[same[0]].offset} of .* is no longer kept"):
            reader.read(frame[same[0]])
        assert reader.read(frame[same[-1]]).payload == payloads[same[-1]]
        # a reader that asks for the offsets (it knew none of the partition) is told so by them
        fresh = FrameReader(cfg.kafka, "evidence-test-2")
        try:
            with pytest.raises(FrameGone, match=f"holds offsets {frame[same[-1]].offset} to"):
                fresh.read(frame[same[0]])
        finally:
            fresh.close()
        with pytest.raises(FrameGone, match="holds offsets"):
            reader.read(frame[3].model_copy(update={"offset": frame[same[-1]].offset + 1000}))
        # a topic that is no more: gone, and asking does not create it again
        missing = unique("deleted-frames")
        with pytest.raises(FrameGone, match="has no partition"):
            reader.read(frame[3].model_copy(update={"topic": missing}))
        assert missing not in admin.list_topics()
    finally:
        reader.close()
        admin.close()
