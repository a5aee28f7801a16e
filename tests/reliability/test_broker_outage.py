"""The Kafka broker stops for ~20 s in the middle of a live stream and a replay.

A private broker (free ports, its own PATCHSIGHT_HOME; the shared one is never touched)
carries a replay, a live camera, an inference worker and the alert service, all running
in this process as they run in theirs. The broker is stopped with ``infra.kafka_down``
and started again on the same data folder, so topics and committed offsets survive.

Expected, and asserted: the replay loses nothing (every recorded seq has a result);
the live camera keeps capturing, drops what its drop-oldest buffer drops and counts
every frame; the worker and the alert service reconnect by themselves, and the alert
raised before the outage is not raised a second time by the redelivered results.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import redis as redis_lib
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from alerts.service import AlertService
from alerts.store import RedisAlertStore, connect
from inference.worker import Worker
from ingest.camera import run_camera
from ingest.publisher import IngestCounters, encode_jpeg
from ingest.recording import RecordingMeta, RecordingWriter
from ingest.replay import ReplayResult, replay
from model.bundle import Bundle
from patchsight import infra
from runtime.topics import ensure_topics
from schemas.config import PatchsightConfig
from schemas.result import InspectionResult
from tests.inference.test_worker import bundle, bundle_dir  # noqa: F401  (fixtures)
from tests.infra.infra_helpers import free_port_pair
from tests.model.conftest import clip_tok  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

OUTAGE_S = 20.0
REPLAY_FRAMES = 300  # 30 s at 10 fps: the outage falls in the middle
QUESTION = {"id": "q", "text": "Is there a defect?", "defect_type": "defect", "threshold": 0.0}  # always above


def make_recording(path: Path, frames: int) -> Path:
    rng = np.random.default_rng(0)
    meta = RecordingMeta(line_id="line-r", camera_id="cam-r", fps=10.0, width=32, height=24, source="test")
    with RecordingWriter(path, meta) as writer:
        for i in range(frames):
            writer.append(i, 1_000_000_000 + i * 100_000_000,
                          encode_jpeg(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), 80))
    return path


def write_images(folder: Path, count: int) -> Path:
    import cv2

    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i:03d}.png"), rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    return folder


def all_results(cfg: PatchsightConfig) -> list[InspectionResult]:
    consumer = KafkaConsumer(**cfg.kafka.client_kwargs(), enable_auto_commit=False)
    parts = [TopicPartition(cfg.kafka.topics.results, p) for p in range(cfg.kafka.topics.partitions)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    ends = consumer.end_offsets(parts)
    out: list[InspectionResult] = []
    deadline = time.monotonic() + 30
    try:
        while any(consumer.position(tp) < ends[tp] for tp in parts) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                out.extend(InspectionResult.from_record(r.value, r.headers) for r in batch)
    finally:
        consumer.close()
    return out


def result_ends(cfg: PatchsightConfig) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(**cfg.kafka.client_kwargs())
    try:
        return consumer.end_offsets([TopicPartition(cfg.kafka.topics.results, p)
                                     for p in range(cfg.kafka.topics.partitions)])
    finally:
        consumer.close()


def alerts_committed_past(cfg: PatchsightConfig, target: dict[TopicPartition, int]) -> bool:
    """The alert service's group has committed at least ``target`` on every results partition."""
    admin = KafkaAdminClient(**cfg.kafka.client_kwargs())
    try:
        committed = admin.list_group_offsets({cfg.alerts.group_id: None}).get(cfg.alerts.group_id, {})
    finally:
        admin.close()
    return all((committed[tp].offset if tp in committed else 0) >= end for tp, end in target.items())


def diagnose(thread: threading.Thread, cfg: PatchsightConfig, target: dict) -> str:
    import sys
    import traceback

    admin = KafkaAdminClient(**cfg.kafka.client_kwargs())
    try:
        committed = admin.list_group_offsets({cfg.alerts.group_id: None}).get(cfg.alerts.group_id, {})
    finally:
        admin.close()
    stack = "".join(traceback.format_stack(sys._current_frames()[thread.ident])) if thread.is_alive() else "dead"
    return f"alert service stuck: target {target}, committed {committed}\n{stack}"


def wait_for(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except Exception:  # noqa: BLE001 - the broker may still be starting
            pass
        time.sleep(0.5)
    return False


@pytest.fixture
def own_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path / "state"
    shared = infra.REPO_ROOT / ".patchsight" / "kafka" / "classpath.txt"
    if shared.exists():  # saves a Maven run; kafka_classpath re-checks every jar
        (home / "kafka").mkdir(parents=True)
        shutil.copy(shared, home / "kafka" / "classpath.txt")
    monkeypatch.setenv("PATCHSIGHT_HOME", str(home))
    from schemas.config import KafkaSettings

    settings = KafkaSettings(bootstrap=f"127.0.0.1:{free_port_pair()}")
    infra.kafka_up(settings)
    try:
        yield settings
    finally:
        infra.kafka_down()


def test_broker_stopped_for_20s_during_live_and_replay(
    own_broker, make_config, unique, bundle_dir: Path, bundle: Bundle, tmp_path: Path, redis_settings,  # noqa: F811 (fixtures imported above)
) -> None:
    images = write_images(tmp_path / "live", 5)
    cfg = make_config(
        kafka={"bootstrap": own_broker.bootstrap},
        model={"bundle": str(bundle_dir), "device": "cpu"},
        inference={"group_id": unique("infer"), "metrics_port": 0, "decode_threads": 1, "max_batch": 8},
        alerts={"group_id": unique("alerts")},
        # a stall limit inside the outage: the live camera replaces its producer while the broker is away
        ingest={"buffer_frames": 8, "reconnect_initial_s": 0.2, "reconnect_max_s": 2.0, "producer_stall_s": 8.0},
        lines=[
            {"id": "line-r", "cameras": [{"id": "cam-r"}], "questions": [QUESTION],
             "alert_policy": {"k": 3, "n": 5, "clear_frames": 5}},
            {"id": "line-l", "cameras": [{"id": "cam-l", "source": {"images": str(images)}, "fps": 10.0}],
             "questions": [QUESTION]},
        ],
    )
    ensure_topics(cfg.kafka)
    recording = make_recording(tmp_path / "rec", REPLAY_FRAMES)
    stop = threading.Event()
    replayed: list[ReplayResult] = []
    live = IngestCounters()
    worker = Worker(cfg, bundle, worker_id="w-outage")
    service = AlertService(cfg, "alerts-outage").start()
    threads = {
        "replay": threading.Thread(target=lambda: replayed.append(replay([recording], cfg, speed=1.0, stop=stop))),
        "camera": threading.Thread(target=run_camera, args=(cfg.lines[1], cfg.lines[1].cameras[0], cfg),
                                   kwargs={"counters": live, "stop": stop}),
        "worker": threading.Thread(target=worker.run, args=(stop,)),
        "alerts": threading.Thread(target=service.run, args=(stop,)),
    }
    store = RedisAlertStore(connect(cfg.redis), cfg.alerts)
    try:
        for thread in threads.values():
            thread.start()
        assert wait_for(lambda: len(store.list_alerts("line-r")) == 1 and live.get("published") > 20, 60)
        alerts_before = [a.alert_id for a in store.list_alerts("line-r")]

        infra.kafka_down()
        down_at = time.monotonic()
        before = live.snapshot()
        time.sleep(OUTAGE_S)
        during = live.snapshot()
        assert all(t.is_alive() for t in threads.values()), "a service died with the broker"
        assert during["captured"] - before["captured"] >= 10 * OUTAGE_S * 0.5, "the live camera stopped capturing"
        assert during["dropped"] > before["dropped"], "a full buffer must drop (and count) the oldest frames"
        infra.kafka_up(own_broker)
        back_s = time.monotonic() - down_at

        # the replay finishes on its own, having delivered every frame
        threads["replay"].join(120)
        assert not threads["replay"].is_alive() and replayed
        assert replayed[0].counters["published"] == REPLAY_FRAMES and replayed[0].counters["failed"] == 0
        want = set(range(REPLAY_FRAMES))
        assert wait_for(lambda: want <= {r.seq for r in all_results(cfg) if r.camera_id == "cam-r"}, 90), \
            "a replayed frame has no result after the broker came back"
        published_after = live.get("published")
        assert wait_for(lambda: live.get("published") > published_after + 10, 30), "the live camera did not resume"
        assert live.get("producer_stalls") >= 1, "the live camera kept a producer that acknowledged nothing for 20 s"
        # the live camera keeps adding results: "caught up" means past everything there was just now
        target = result_ends(cfg)
        assert wait_for(lambda: alerts_committed_past(cfg, target), 60), diagnose(threads["alerts"], cfg, target)
        assert all(t.is_alive() for t in threads.values() if t is not threads["replay"])
    finally:
        stop.set()
        for thread in threads.values():
            if thread.ident is not None:
                thread.join(60)
        service.close()
    assert not any(t.is_alive() for t in threads.values())

    results = all_results(cfg)
    replay_keys = Counter(r.seq for r in results if r.camera_id == "cam-r")
    assert set(replay_keys) == want
    # One defect that never clears: exactly one alert, before and after the outage and all redeliveries.
    assert [a.alert_id for a in store.list_alerts("line-r")] == alerts_before
    snap = live.snapshot()
    # every live frame is accounted for: published, dropped by policy, failed, or still in the buffer at stop
    unaccounted = snap["captured"] - snap["published"] - snap["dropped"] - snap["failed"]
    assert 0 <= unaccounted <= cfg.ingest.buffer_frames + max(8, cfg.ingest.buffer_frames) + 1, snap
    print(f"\nbroker outage: down {OUTAGE_S:.0f}s (back after {back_s:.1f}s); replay {replayed[0].counters}; "
          f"redelivered replay results {sum(replay_keys.values()) - len(replay_keys)}; live {snap}")
    keys = list(redis_lib.Redis.from_url(redis_settings.url).scan_iter(match=f"{cfg.alerts.key_prefix}:*"))
    if keys:
        redis_lib.Redis.from_url(redis_settings.url).delete(*keys)
