"""The inference worker against the real broker, with a tiny random-weight bundle.

Each test has its own topics and consumer group. Workers run in a thread
(``Worker.run(stop)``) or, where a crash is the point, as a subprocess.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import cv2
import httpx
import numpy as np
import pytest
import torch
import yaml
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import RebalanceInProgressError
from kafka.record.default_records import DefaultRecordBatchBuilder
from transformers import CLIPModel

from inference.worker import Worker
from model.bundle import Bundle, load_bundle
from model.encoder import EncoderConfig, FrameEncoder
from model.head import HeadConfig, MLLMHead
from runtime.topics import ensure_topics
from schemas.config import PatchsightConfig
from schemas.dead_letter import DeadLetter, record_size
from schemas.frame import FrameMessage, FrameMode
from schemas.result import InspectionResult, ResultStatus
from tests.model.conftest import TINY_DECODER, clip_tok, tiny_clip_config  # noqa: F401  (clip_tok: a fixture)

REPO = Path(__file__).resolve().parents[2]

LINES = [
    {
        "id": "line-a",
        # Random frames show no part: these tests are about the Kafka mechanics, so every frame is scored
        # on its own (test_parts_in_the_stream covers the tracker in the worker).
        "cameras": [{"id": "cam-a1", "track_parts": False}, {"id": "cam-a2", "track_parts": False}],
        "questions": [
            # threshold 0: always above, so every result of this line carries a thumbnail
            {"id": "scratch", "text": "Is there a scratch on the part?", "defect_type": "scratch", "threshold": 0.0},
            {"id": "label", "text": "Is the label missing?", "defect_type": "missing-label", "threshold": 1.0},
        ],
    },
    {
        "id": "line-b",
        "cameras": [{"id": "cam-b1", "track_parts": False}],
        "questions": [{"id": "holes", "text": "Are there fewer than four holes?", "defect_type": "holes",
                       "threshold": 1.0}],
    },
]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory, clip_tok) -> Path:  # type: ignore[no-untyped-def]  # noqa: F811
    torch.manual_seed(0)
    clip = CLIPModel(tiny_clip_config(len(clip_tok))).eval().requires_grad_(False)
    encoder = FrameEncoder.from_clip(clip, EncoderConfig())
    head = MLLMHead.create(HeadConfig.tiny(decoder=TINY_DECODER), encoder=encoder, device="cpu")
    bundle = Bundle.create(encoder, head, model_id="tiny-test", clip=clip, clip_tokenizer=clip_tok)
    return bundle.save(tmp_path_factory.mktemp("bundle"), dtype=torch.float32)


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir, device="cpu")


@pytest.fixture
def config(make_config: Callable[..., PatchsightConfig], unique: Callable[[str], str], bundle_dir: Path):
    def build(**inference: object) -> PatchsightConfig:
        cfg = make_config(
            lines=LINES,
            model={"bundle": str(bundle_dir), "device": "cpu"},
            inference={"group_id": unique("infer"), "metrics_port": 0, "decode_threads": 1, **inference},
        )
        ensure_topics(cfg.kafka)
        return cfg

    return build


def jpeg(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def frame(camera: str, line: str, seq: int, mode: FrameMode = FrameMode.replay, capture_ns: int | None = None,
          payload: bytes | None = None) -> FrameMessage:
    return FrameMessage(line_id=line, camera_id=camera, seq=seq, capture_ns=capture_ns or time.time_ns(),
                        width=96, height=64, mode=mode, payload=payload or jpeg(seq))


def replay_frames(count: int) -> list[FrameMessage]:
    cameras = [("cam-a1", "line-a"), ("cam-a2", "line-a"), ("cam-b1", "line-b")]
    return [frame(cam, line, seq) for seq in range(count) for cam, line in cameras]


def publish(cfg: PatchsightConfig, records: list[tuple[bytes | None, bytes, list]]) -> None:
    producer = KafkaProducer(**cfg.kafka.client_kwargs(), acks="all")
    for key, value, headers in records:
        producer.send(cfg.kafka.topics.frames, key=key, value=value, headers=headers)
    producer.flush()
    producer.close()


def read_topic(cfg: PatchsightConfig, topic: str, until: Callable[[list], bool], timeout: float = 60) -> list:
    consumer = KafkaConsumer(**cfg.kafka.client_kwargs(), enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in range(cfg.kafka.topics.partitions)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    records: list = []
    deadline = time.monotonic() + timeout
    try:
        while not until(records) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def results(cfg: PatchsightConfig, until: Callable[[list[InspectionResult]], bool], timeout: float = 60):
    records = read_topic(cfg, cfg.kafka.topics.results,
                         lambda rs: until([InspectionResult.from_record(r.value, r.headers) for r in rs]), timeout)
    return [InspectionResult.from_record(r.value, r.headers) for r in records]


def committed_total(cfg: PatchsightConfig) -> int:
    admin = KafkaAdminClient(**cfg.kafka.client_kwargs())
    try:
        offsets = admin.list_group_offsets({cfg.inference.group_id: None}).get(cfg.inference.group_id, {})
    finally:
        admin.close()
    return sum(o.offset for tp, o in offsets.items() if tp.topic == cfg.kafka.topics.frames)


def wait_until_committed(cfg: PatchsightConfig, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while committed_total(cfg) < count and time.monotonic() < deadline:
        time.sleep(0.1)


@contextmanager
def running(worker: Worker) -> Iterator[Worker]:
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive(), "worker did not stop"


def test_in_flight_counts_the_memory_of_unacknowledged_frames_and_signals_when_there_is_room() -> None:
    from inference.worker import InFlight

    flight, a, b = InFlight(), TopicPartition("frames", 0), TopicPartition("frames", 1)
    epoch = flight.add(a, 10, 300)
    flight.add(a, 11, 200)
    flight.add(b, 5, 1000)
    assert flight.nbytes == 1500 and len(flight) == 3
    assert not flight.wait_for_room(1000, timeout=0.01)  # nothing acknowledged: no room made

    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(flight.wait_for_room(100, timeout=10)))
    waiter.start()
    time.sleep(0.05)
    assert flight.done(a, 11, epoch)
    assert flight.nbytes == 1300 and flight.commit_points() == {a: 10, b: 5}  # 10 is not acknowledged yet
    time.sleep(0.05)
    assert waiter.is_alive() and not woke  # 1300 held: not the room the waiter asked for
    assert flight.revoke({b}) == 1 and flight.nbytes == 300
    assert not flight.done(b, 5, epoch)  # revoked: the ack no longer counts
    assert flight.done(a, 10, epoch) and flight.nbytes == 0 and flight.commit_points() == {a: 12}
    waiter.join(5)
    assert woke == [True]
    assert flight.wait_for_room(0, timeout=0)  # already room: no wait


def test_replay_gives_every_frame_exactly_one_result_and_commits_them(config, bundle: Bundle) -> None:
    cfg = config(max_batch=4, max_delay_ms=20)
    frames = replay_frames(8)  # 24 frames over three cameras, two lines
    publish(cfg, [f.to_record() for f in frames])
    worker = Worker(cfg, bundle, worker_id="w-test")
    with running(worker):
        got = results(cfg, lambda rs: len(rs) >= len(frames))
        wait_until_committed(cfg, len(frames), timeout=10)
        metrics = httpx.get(f"http://127.0.0.1:{worker.metrics_port}/metrics").text
        assert httpx.get(f"http://127.0.0.1:{worker.metrics_port}/readyz").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{worker.metrics_port}/healthz").status_code == 200

    keys = Counter((r.camera_id, r.seq) for r in got)
    assert set(keys) == {(f.camera_id, f.seq) for f in frames}
    assert max(keys.values()) == 1, "a frame was inspected twice in a clean run"
    assert committed_total(cfg) == len(frames)
    for r in got:
        assert r.status == ResultStatus.ok and r.model_id == "tiny-test" and r.worker_id == "w-test"
        line = next(line for line in cfg.lines if line.id == r.line_id)
        assert [s.question_id for s in r.scores] == [q.id for q in line.questions]
        assert all(0.0 <= s.score <= 1.0 and s.above_threshold == (s.score >= s.threshold) for s in r.scores)
        # line-a asks a question with threshold 0 (always above): a thumbnail; line-b never is above
        assert (r.thumbnail_jpeg_b64 is not None) == (r.line_id == "line-a")
        assert 1 <= r.timing.batch_size <= 4 and r.timing.model_ms > 0
    # each result names its frame's record (the alert service reads evidence back by it)
    frames_at = {(r.partition, r.offset): FrameMessage.from_record(r.key, r.value, r.headers)
                 for r in read_topic(cfg, cfg.kafka.topics.frames, lambda rs: len(rs) >= len(frames))}
    for r in got:
        shown = frames_at[(r.frame.partition, r.frame.offset)]
        assert r.frame.topic == cfg.kafka.topics.frames and (shown.camera_id, shown.seq) == (r.camera_id, r.seq)
    # results of a camera come out in capture order
    for camera in ("cam-a1", "cam-a2", "cam-b1"):
        seqs = [r.seq for r in got if r.camera_id == camera]
        assert seqs == sorted(seqs)
    assert "patchsight_inference_frames_in_total 24.0" in metrics
    assert 'patchsight_inference_frames_out_total{status="ok"} 24.0' in metrics
    assert "patchsight_inference_batch_size_count" in metrics
    assert f"patchsight_inference_assigned_partitions {float(cfg.kafka.topics.partitions)}" in metrics


def test_bad_frames_are_dead_lettered_and_the_worker_goes_on(config, bundle: Bundle) -> None:
    cfg = config()
    good = frame("cam-a1", "line-a", 0)
    key, value, headers = good.to_record()
    future = [(n, b"2" if n == "ps-schema" else v) for n, v in headers]
    bad = {
        "undecodable": frame("cam-a1", "line-a", 1, payload=b"\xff\xd8 not really a jpeg").to_record(),
        "unknown-line": frame("cam-x", "line-x", 2).to_record(),
        "unknown-camera": frame("cam-b1", "line-a", 3).to_record(),
        "unsupported-version": (key, value, future),
        "malformed": (key, value, [(n, v) for n, v in headers if n != "ps-seq"]),
    }
    after = frame("cam-a2", "line-a", 4)
    publish(cfg, [good.to_record(), *bad.values(), after.to_record()])
    with running(Worker(cfg, bundle)):
        got = results(cfg, lambda rs: len(rs) >= 2)
        letters = read_topic(cfg, cfg.kafka.topics.dead_letter, lambda rs: len(rs) >= len(bad))
        time.sleep(0.5)  # let the last commit land
    assert sorted((r.camera_id, r.seq) for r in got) == [("cam-a1", 0), ("cam-a2", 4)]
    parsed = [DeadLetter.from_record(r.key, r.value, r.headers) for r in letters]
    assert sorted(d.reason for d in parsed) == sorted(bad)
    for letter in parsed:
        assert letter.source_topic == cfg.kafka.topics.frames and letter.source_offset >= 0 and letter.error
        assert letter.value == bad[letter.reason][1]  # the original payload, untouched, for a re-publish
    assert committed_total(cfg) == 2 + len(bad)


def test_frames_decoded_in_batches_by_the_model_thread_each_get_one_result(config, bundle: Bundle) -> None:
    """The worker's side of the GPU decoding path (``inference.gpu_jpeg_decode`` on CUDA): no decode thread, each
    batch decoded at once. torchvision's CPU decoder stands in for nvJPEG (no GPU here)."""
    pytest.importorskip("torchvision")
    from inference.jpeg_batch import BatchJpegDecoder

    cfg = config(max_batch=4, max_delay_ms=20)
    frames = replay_frames(6)
    image = cv2.imdecode(np.frombuffer(jpeg(7), np.uint8), cv2.IMREAD_COLOR)
    progressive = frame("cam-a2", "line-a", 100, payload=cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes())
    truncated = frame("cam-a1", "line-a", 100, payload=jpeg(8)[:300])  # a frame header, half a scan
    publish(cfg, [f.to_record() for f in (*frames, progressive, truncated)])
    batches: list[int] = []

    class Counted(BatchJpegDecoder):
        def decode(self, payloads: list[bytes]) -> list:
            batches.append(len(payloads))
            return super().decode(payloads)

    worker = Worker(cfg, bundle, worker_id="w-test")
    worker.runner.batch_decoder = Counted(torch.device("cpu"))
    with running(worker):
        got = results(cfg, lambda rs: len(rs) >= len(frames) + 1)
        letters = read_topic(cfg, cfg.kafka.topics.dead_letter, lambda rs: len(rs) >= 1)
        wait_until_committed(cfg, len(frames) + 2, timeout=10)
    keys = Counter((r.camera_id, r.seq) for r in got)
    assert set(keys) == {(f.camera_id, f.seq) for f in (*frames, progressive)} and max(keys.values()) == 1
    assert all(r.status == ResultStatus.ok and r.timing.decode_ms > 0 for r in got)
    assert [DeadLetter.from_record(r.key, r.value, r.headers).reason for r in letters] == ["undecodable"]
    assert committed_total(cfg) == len(frames) + 2
    # every baseline frame went to the batched decoder (the truncated one too: it fails there, then on the CPU)
    assert sum(batches) == len(frames) + 1 and max(batches) > 1


def topic_limit(cfg: PatchsightConfig, topic: str) -> int:
    """The broker's max.message.bytes for the topic (its message.max.bytes unless the topic overrides it)."""
    admin = KafkaAdminClient(**cfg.kafka.client_kwargs())
    try:
        found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})],
                                       config_filter="all")
    finally:
        admin.close()
    return int(found["topic"][topic]["max.message.bytes"]["value"])


def publish_accepted(cfg: PatchsightConfig, records: list[tuple[bytes | None, bytes, list]]) -> None:
    """Publish with no client-side size cap, so the broker alone decides; every record must be accepted."""
    producer = KafkaProducer(**cfg.kafka.client_kwargs(), acks="all", max_request_size=16 * 1024 * 1024)
    try:
        for key, value, headers in records:
            producer.send(cfg.kafka.topics.frames, key=key, value=value, headers=headers).get(timeout=30)
    finally:
        producer.close()


def test_a_poison_record_just_under_the_broker_limit_is_dead_lettered_cut_and_passed(config, bundle: Bundle) -> None:
    """Issue #35: a 1,048,250-byte value (the broker takes up to 1,048,588) made a dead letter the worker's
    producer refused; the worker exited without committing, and so did every worker after it."""
    cfg = config()
    limit = topic_limit(cfg, cfg.kafka.topics.frames)
    poison_key, _, poison_headers = frame("cam-a1", "line-a", 0).to_record()
    poison = b"\xff\xd8" + np.random.default_rng(35).bytes(limit - 338 - 2)  # the 1,048,250 at the default
    after = frame("cam-a1", "line-a", 1)  # same camera, so the same partition: behind the poison record
    publish_accepted(cfg, [(poison_key, poison, poison_headers), after.to_record()])
    worker = Worker(cfg, bundle, worker_id="w-poison")
    with running(worker):
        got = results(cfg, lambda rs: len(rs) >= 1)
        letters = read_topic(cfg, cfg.kafka.topics.dead_letter, lambda rs: len(rs) >= 1)
        wait_until_committed(cfg, 2, timeout=10)
        metrics = httpx.get(f"http://127.0.0.1:{worker.metrics_port}/metrics").text
        assert worker.is_live()
    assert [(r.camera_id, r.seq) for r in got] == [("cam-a1", 1)]
    assert committed_total(cfg) == 2, "the worker commits past the poison record"
    [record] = letters
    letter = DeadLetter.from_record(record.key, record.value, record.headers)
    dlq_headers = [(k, v) for k, v in record.headers if k in ("ps-dlq-reason", "ps-dlq-error", "ps-dlq-source",
                                                              "ps-dlq-service")]
    whole = DefaultRecordBatchBuilder.estimate_size_in_bytes(poison_key, poison, poison_headers + dlq_headers)
    assert whole > KafkaProducer.DEFAULT_CONFIG["max_request_size"], "the whole copy would not have fitted"
    assert letter.reason == "undecodable" and letter.truncated == ("value",)
    assert letter.original_size == len(poison) and letter.original_sha256 == hashlib.sha256(poison).hexdigest()
    assert poison.startswith(letter.value) and letter.headers == poison_headers
    assert record_size(record.key, record.value, record.headers) <= cfg.ingest.max_message_bytes
    assert 'patchsight_inference_frames_dead_lettered_total{reason="undecodable"} 1.0' in metrics


def test_a_dead_letter_the_broker_refuses_is_counted_and_the_worker_goes_on(config, bundle: Bundle) -> None:
    cfg = config()
    admin = KafkaAdminClient(**cfg.kafka.client_kwargs())
    try:  # this test's own dead-letter topic takes only small records
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, cfg.kafka.topics.dead_letter,
                                            {"max.message.bytes": "20000"})])
    finally:
        admin.close()
    deadline = time.monotonic() + 10
    while topic_limit(cfg, cfg.kafka.topics.dead_letter) != 20_000 and time.monotonic() < deadline:
        time.sleep(0.1)  # the broker applies a topic config change a moment after acknowledging it
    assert topic_limit(cfg, cfg.kafka.topics.dead_letter) == 20_000
    key, _, headers = frame("cam-a1", "line-a", 0).to_record()
    after = frame("cam-a1", "line-a", 1)
    publish_accepted(cfg, [(key, b"\xff\xd8" + b"x" * 50_000, headers), after.to_record()])
    worker = Worker(cfg, bundle, worker_id="w-refused")
    with running(worker):
        got = results(cfg, lambda rs: len(rs) >= 1)
        wait_until_committed(cfg, 2, timeout=10)
        metrics = httpx.get(f"http://127.0.0.1:{worker.metrics_port}/metrics").text
        assert worker.is_live()
    assert [(r.camera_id, r.seq) for r in got] == [("cam-a1", 1)]
    assert committed_total(cfg) == 2
    assert 'patchsight_inference_dead_letters_failed_total{reason="undecodable"} 1.0' in metrics
    assert read_topic(cfg, cfg.kafka.topics.dead_letter, lambda rs: False, timeout=2) == []


def test_stale_live_frames_get_a_skipped_result_and_replay_frames_never_do(config, bundle: Bundle) -> None:
    cfg = config(max_frame_age_s=2.0)
    old = time.time_ns() - 60 * 10**9
    frames = [
        frame("cam-a1", "line-a", 0, FrameMode.live, capture_ns=old),
        frame("cam-a1", "line-a", 1, FrameMode.live),
        frame("cam-a2", "line-a", 0, FrameMode.replay, capture_ns=old),
    ]
    publish(cfg, [f.to_record() for f in frames])
    with running(Worker(cfg, bundle)) as worker:
        got = {(r.camera_id, r.seq): r for r in results(cfg, lambda rs: len(rs) >= 3)}
        metrics = httpx.get(f"http://127.0.0.1:{worker.metrics_port}/metrics").text
    stale = got[("cam-a1", 0)]
    assert stale.status == ResultStatus.skipped and "stale" in stale.skip_reason and stale.scores == []
    assert stale.frame is not None and stale.frame.topic == cfg.kafka.topics.frames  # skipped ones name it too
    assert got[("cam-a1", 1)].status == ResultStatus.ok
    assert got[("cam-a2", 0)].status == ResultStatus.ok  # replay: age does not matter
    assert 'patchsight_inference_frames_skipped_total{reason="stale"} 1.0' in metrics


def test_batches_close_on_size_with_a_backlog_and_on_delay_with_a_trickle(config, bundle: Bundle) -> None:
    cfg = config(max_batch=4, max_delay_ms=150)
    with running(Worker(cfg, bundle)) as worker:
        deadline = time.monotonic() + 60
        while not worker.ready and time.monotonic() < deadline:
            time.sleep(0.05)
        publish(cfg, [frame("cam-b1", "line-b", 0).to_record()])  # alone: waits out the delay
        results(cfg, lambda rs: len(rs) >= 1)
        publish(cfg, [f.to_record() for f in replay_frames(8)])  # a backlog of 24: full batches
        got = results(cfg, lambda rs: len(rs) >= 25)
        metrics = httpx.get(f"http://127.0.0.1:{worker.metrics_port}/metrics").text
    single = next(r for r in got if r.camera_id == "cam-b1" and r.seq == 0 and r.timing.batch_size == 1)
    assert 140 <= single.timing.queue_ms < 150 + 250  # waited out the delay, and not much longer
    assert max(r.timing.batch_size for r in got) == 4
    assert 'patchsight_inference_batches_total{closed_by="size"}' in metrics
    assert 'patchsight_inference_batches_total{closed_by="delay"}' in metrics


def write_config(cfg: PatchsightConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def start_worker(config_path: Path, worker_id: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PATCHSIGHT_LOG_FORMAT": "json", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "patchsight.cli", "infer", "--config", str(config_path), "--worker-id", worker_id],
        cwd=REPO, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )


# About ten of these frames in flight at once: a worker stopped or killed after 20 results is mid-stream.
SMALL_IN_FLIGHT_MB = 0.25


def test_sigkill_mid_stream_then_restart_loses_no_frame(config, tmp_path: Path) -> None:
    cfg = config(max_batch=2, max_delay_ms=5, max_in_flight_mb=SMALL_IN_FLIGHT_MB)
    frames = replay_frames(60)  # 180 frames
    publish(cfg, [f.to_record() for f in frames])
    path = write_config(cfg, tmp_path / "worker.yaml")
    first = start_worker(path, "w-killed", tmp_path / "worker.log")
    try:
        before = results(cfg, lambda rs: len(rs) >= 20, timeout=180)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    assert 20 <= len(before) < len(frames), (tmp_path / "worker.log").read_text()[-3000:]

    second = start_worker(path, "w-restarted", tmp_path / "worker.log")
    try:
        want = {(f.camera_id, f.seq) for f in frames}
        got = results(cfg, lambda rs: want <= {(r.camera_id, r.seq) for r in rs}, timeout=120)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    assert want <= {(r.camera_id, r.seq) for r in got}, "a frame lost its result across the crash"
    assert {r.worker_id for r in got} == {"w-killed", "w-restarted"}


def test_sigterm_drains_publishes_and_commits_exactly_what_it_published(config, tmp_path: Path) -> None:
    cfg = config(max_batch=2, max_delay_ms=5, max_in_flight_mb=SMALL_IN_FLIGHT_MB)
    frames = replay_frames(60)
    publish(cfg, [f.to_record() for f in frames])
    worker = start_worker(write_config(cfg, tmp_path / "worker.yaml"), "w-term", tmp_path / "worker.log")
    try:
        results(cfg, lambda rs: len(rs) >= 20, timeout=180)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    got = results(cfg, lambda rs: False, timeout=2)
    keys = Counter((r.camera_id, r.seq) for r in got)
    assert max(keys.values()) == 1
    # Every committed frame has its result and every published result is committed:
    # nothing in flight was abandoned or committed early.
    assert committed_total(cfg) == len(keys) < len(frames)


class StuckFirstConsumer(Worker):
    """A worker whose first consumer has every commit refused, as a rebalance that never ends leaves it."""

    consumers = 0

    def _open_consumer(self):  # type: ignore[no-untyped-def]
        consumer, awake = super()._open_consumer()
        self.consumers += 1
        if self.consumers == 1:
            def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
                raise RebalanceInProgressError("injected: a rebalance that never finishes")

            consumer.commit = refuse
        return consumer, awake


def test_a_rebalance_that_never_finishes_is_left_and_the_group_joined_again(
    config, bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    import inference.worker

    monkeypatch.setattr(inference.worker, "STUCK_REBALANCE_S", 3.0)
    cfg = config(max_batch=4, max_delay_ms=5)
    frames = replay_frames(10)
    publish(cfg, [f.to_record() for f in frames])
    worker = StuckFirstConsumer(cfg, bundle, worker_id="w-stuck")
    with running(worker):
        got = results(cfg, lambda rs: len(rs) >= len(frames))
        wait_until_committed(cfg, len(frames), timeout=30)
        metrics = httpx.get(f"http://127.0.0.1:{worker.metrics_port}/metrics").text
    assert worker.consumers == 2
    assert "patchsight_inference_consumer_rejoins_total 1.0" in metrics
    assert committed_total(cfg) == len(frames)
    keys = Counter((r.camera_id, r.seq) for r in got)
    assert set(keys) == {(f.camera_id, f.seq) for f in frames}
    # The partitions came back to the same worker, which kept its work and fetched after it.
    assert max(keys.values()) == 1


def test_model_loading_errors_name_the_bundle_and_the_reason(tmp_path: Path) -> None:
    from inference.runner import ModelLoadError, load_model
    from schemas.config import validate_config

    missing = validate_config({"model": {"bundle": str(tmp_path / "nope"), "device": "cpu"}})
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(missing)
    (tmp_path / "empty").mkdir()
    not_a_bundle = validate_config({"model": {"bundle": str(tmp_path / "empty"), "device": "cpu"}})
    with pytest.raises(ModelLoadError, match=r"empty.*not a model bundle"):
        load_model(not_a_bundle)


def test_a_metrics_port_in_use_stops_the_worker_before_it_joins_the_group(config, bundle: Bundle) -> None:
    import socket

    from inference.worker import WorkerError

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = config(metrics_port=port)
        with pytest.raises(WorkerError, match=f"cannot serve /metrics on port {port}.*inference.metrics_port"):
            Worker(cfg, bundle).run(threading.Event())
    admin = KafkaAdminClient(**cfg.kafka.client_kwargs())
    try:  # nothing joined: the group was never created
        assert cfg.inference.group_id not in {g["group_id"] for g in admin.list_groups()}
    finally:
        admin.close()


def test_parts_named_by_a_header_or_found_by_the_tracker(make_config, unique, bundle_dir: Path, bundle: Bundle) -> None:
    """A tracking camera: frames without a part in its zone are not scored; a ps-part-id header names the part."""
    from ingest.synth import SynthCamera

    cfg = make_config(
        lines=[{"id": "line-p", "cameras": [{"id": "cam-p1"}, {"id": "cam-p2"}], "questions": LINES[1]["questions"]}],
        model={"bundle": str(bundle_dir), "device": "cpu"},
        inference={"group_id": unique("infer"), "metrics_port": 0, "decode_threads": 1},
    )
    ensure_topics(cfg.kafka)
    shots = list(SynthCamera("line-p", "cam-p1", 3, ["bracket", "cover"], size=(320, 240)).frames(30))
    messages = []
    for camera in ("cam-p1", "cam-p2"):
        for seq, (image, truth) in enumerate(shots):
            plc = f"lot7-{truth.part_id}" if camera == "cam-p2" and truth.part_id is not None else None
            messages.append(FrameMessage(line_id="line-p", camera_id=camera, seq=seq, capture_ns=time.time_ns(),
                                         width=320, height=240, mode=FrameMode.replay, part_id=plc,
                                         payload=cv2.imencode(".jpg", image)[1].tobytes()))
    publish(cfg, [m.to_record() for m in messages])
    with running(Worker(cfg, bundle, worker_id="w-parts")):
        got = results(cfg, lambda rs: len(rs) >= len(messages))
    by_frame = {(r.camera_id, r.seq): r for r in got}
    first_seq = {}
    for seq, (_, truth) in enumerate(shots):
        if truth.part_id is not None:
            first_seq.setdefault(truth.part_id, seq)
    for seq, (_, truth) in enumerate(shots):
        tracked, named = by_frame[("cam-p1", seq)], by_frame[("cam-p2", seq)]
        if truth.part_id is None:
            assert tracked.status == named.status == ResultStatus.skipped and tracked.part is None
            assert tracked.skip_reason == "no part in the zone" and not tracked.scores
            continue
        assert tracked.status == ResultStatus.ok and len(tracked.scores) == 1
        assert (tracked.part.part_id, tracked.part.source) == (f"cam-p1.{first_seq[truth.part_id]}", "tracker")
        assert tracked.part.box is not None
        assert (named.part.part_id, named.part.source) == (f"lot7-{truth.part_id}", "header")
    assert len(first_seq) >= 2
