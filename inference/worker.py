"""The inference worker: frames topic -> model -> results topic, at least once.

Read top to bottom, a frame goes through::

    main thread     poll frames -> parse headers -> dead-letter / skip stale live frames
                    -> hand the JPEG to a decode thread -> commit what the broker acknowledged
                    (every ``commit_interval_ms``)
    decode threads  JPEG -> BGR (libjpeg-turbo, reduced when the encoder reads less) -> uint8 square
                    (with the model on CUDA and ``inference.gpu_jpeg_decode: auto``: not used; the
                    model thread decodes each batch's JPEGs on the GPU in one nvJPEG call)
    model thread    dynamic batcher -> the camera's part tracker (in stream order): a frame
                    without a part in the zone is not scored -> squares normalised per batch
                    -> encoder once per view (whole frame; the part view too when the bundle
                    has one) -> every question of the frame's line -> the batch, finished
    results thread  one InspectionResult per frame (a skipped one without a part; a dead
                    letter if undecodable), carrying its part, in batch order -> producer.send
    producer IO     broker acknowledgement -> the frame's offset becomes committable, and the
                    main thread wakes if it waits for room

Kafka I/O, decoding, the model and building results never wait for each other:
decoding runs in a thread pool (one thread per core by default) because the JPEG
decoder and OpenCV release the GIL, and results are built while the model runs the next batch (on a
GPU the model thread mostly waits for the device, with the GIL released). This module
decides what runs and when; what the decode and model threads run (decode,
preprocess, encoder, head, the result) is ``inference.runner.ModelRunner``.

The main thread never sleeps while work waits: frames are fetched ahead until what is
in flight (polled, not yet acknowledged) holds ``max_in_flight_mb`` of memory; then every
partition is paused, ``poll(0)`` keeps the group's protocol going, and the thread waits
for acknowledgements to free room for a batch (``max_batch`` frames) rather than a timer,
then refills it in one poll. (Not more at once: a poll's records are parsed and taken in
holding the GIL, which the model thread waits for between batches; a GPU stand-in ran at
0.92 of bare refilling a quarter of the cap, 0.96 a batch.) ``fetch_max_wait_ms`` is low
so a drained partition's empty fetch does not hold up a busy one's.

At-least-once: an offset is committed only when the result (or dead letter)
of that frame *and of every earlier frame of its partition* is acknowledged by
the broker (``acks=all``). A crash anywhere repeats some results, never loses
one. Results keep the order of their partition because frames enter the batcher
in poll order, each with its decode future, and one thread publishes each batch in
order.

Rebalances: partitions are assigned by the eager round-robin assignor. (With
kafka-python 3.0.12, a cooperative-sticky member that already held partitions did
not rejoin when a second worker joined: its commits were refused with
RebalanceInProgress until the broker evicted it, and all its work was redone.)
A rebalance revokes all partitions and assigns them again. For those that move
to another worker, this one drops its uncommitted work (queued, decoding, or
awaiting acknowledgement) and never commits them again; the new owner resumes at
the last commit and redoes that work (duplicates, never losses, never a stale
commit over the new owner's). Partitions that come back keep their work.
Acknowledged work is committed every ``commit_interval_ms``, so what is redone is
at most the frames in flight and those acknowledged within the last commit interval.
A rebalance that does not finish (commits refused for 30 s) is left: the worker joins
again with a new consumer (``_rejoin``).

``Worker(config, bundle).run(stop)`` is the whole service; ``patchsight infer``
runs it (``serve``) with SIGTERM/SIGINT wired to ``stop``: the worker stops polling,
finishes the frames in flight, publishes, commits and exits.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from queue import SimpleQueue
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from inference.batcher import Batch, DynamicBatcher
from inference.metrics import WorkerMetrics
from inference.runner import Decoded, ModelRunner, load_model
from runtime.health import HealthServer, Reply
from runtime.kafka_crc import warn_without_c_crc32c
from runtime.kafka_wakeup import keep_awake
from runtime.log import get_logger
from runtime.topics import dead_letter_max_bytes, ensure_topics, subscribe_when_known
from schemas.config import LineConfig, PatchsightConfig
from schemas.dead_letter import DeadLetter
from schemas.errors import SchemaError
from schemas.frame import FrameMessage, FrameMode
from schemas.part import PartObservation
from schemas.result import FrameRef, InspectionResult, ResultStatus, Timing

if TYPE_CHECKING:
    from model.bundle import Bundle

POLL_TIMEOUT_MS = 50  # also the longest a stop request or a commit waits for the main loop
MAX_POLL_RECORDS = 500  # one poll's most; the memory cap sets fewer when it has less room
LAG_REFRESH_S = 1.0
LIVENESS_S = 30.0  # /healthz fails when the main loop has not turned for this long
SESSION_TIMEOUT_MS = 15_000
FINAL_COMMIT_S = 10.0  # how long a stopping worker keeps trying to commit what it published
# Commits refused, or partitions revoked and not assigned again, this long mean a rebalance that
# will not finish (issue #6): a legitimate one waits at most for a dead member's session to
# expire. The worker then rejoins with a new consumer.
STUCK_REBALANCE_S = 2 * SESSION_TIMEOUT_MS / 1000
STUCK_FINAL_COMMIT_S = 4.0  # the same, while stopping: nothing else is waiting on the group
REFUSAL_LOG_S = 5.0  # one warning per this many seconds of refused commits
COMMIT_TIMEOUT_MS = 5_000  # a commit stuck behind a rebalance must not stop the loop that completes it


NO_PART = "no part in the zone"


class WorkerError(RuntimeError):
    """The worker cannot go on (model failure, results the broker keeps refusing); uncommitted work is redone."""


@dataclass
class Frame:
    """One polled frame record on its way through the worker."""

    tp: TopicPartition
    offset: int
    epoch: int  # the partition's assignment epoch when polled; stale after a revoke
    record: ConsumerRecord
    msg: FrameMessage
    line: LineConfig
    # the decoded frame, or why it cannot be decoded; None: decoded with its batch on the GPU (decode_batch)
    decoded: "Future[Decoded | str] | None"

    @property
    def ref(self) -> FrameRef:
        """Where this frame lies on the frames topic; its result carries it (evidence is read back by it)."""
        return frame_ref(self.tp, self.offset)


def frame_ref(tp: TopicPartition, offset: int) -> FrameRef:
    return FrameRef(topic=tp.topic, partition=tp.partition, offset=offset)


@dataclass
class Outcome:
    """What became of one frame of a batch: scored, skipped (no part) or undecodable."""

    frame: Frame
    waited: float  # seconds in the batcher
    decoded: Decoded | None = None
    part: PartObservation | None = None
    scores: np.ndarray | None = None
    skip_reason: str | None = None
    undecodable: str | None = None  # why; the frame is dead-lettered


@dataclass
class Finished:
    """A batch the model is done with, for the results thread, in the batch's order."""

    outcomes: list[Outcome]
    scored: int  # how many went through the model
    model_s: float


class InFlight:
    """Offsets polled and not yet acknowledged, per partition: what is safe to commit.

    The commit point of a partition is its lowest unacknowledged offset (or one
    past the highest offset polled when everything is acknowledged): committing
    it can never skip a frame whose result the broker does not have. Each offset
    also counts the memory its frame holds until acknowledged (``nbytes``), and
    the main loop waits in ``wait_for_room`` until acknowledgements have freed what it asks for.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[TopicPartition, dict[int, int]] = defaultdict(dict)  # offset -> bytes held
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._epoch: dict[TopicPartition, int] = defaultdict(int)
        self._bytes = 0
        self._wake_at_bytes = 0  # acknowledgements wake ``wait_for_room`` once no more than this is held
        self._room_made = threading.Event()

    def add(self, tp: TopicPartition, offset: int, nbytes: int = 0) -> int:
        with self._lock:
            self._bytes += nbytes - self._pending[tp].get(offset, 0)
            self._pending[tp][offset] = nbytes
            self._next[tp] = max(self._next.get(tp, 0), offset + 1)
            return self._epoch[tp]

    def done(self, tp: TopicPartition, offset: int, epoch: int) -> bool:
        """Mark acknowledged; False when the partition was revoked since (the ack no longer counts)."""
        with self._lock:
            if self._epoch[tp] != epoch:
                return False
            self._bytes -= self._pending[tp].pop(offset, 0)
            room_made = self._bytes <= self._wake_at_bytes
        if room_made:
            self._room_made.set()
        return True

    def wait_for_room(self, at_most: int, timeout: float) -> bool:
        """Wait until the frames in flight hold at most ``at_most`` bytes, or ``timeout`` seconds; whether they do."""
        with self._lock:
            if self._bytes <= at_most:
                return True
            self._wake_at_bytes = at_most
            self._room_made.clear()  # under the lock: an acknowledgement that makes the room sets it after
        return self._room_made.wait(timeout)

    @property
    def nbytes(self) -> int:
        """Memory the frames in flight hold (as ``add`` counted it)."""
        with self._lock:
            return self._bytes

    def is_current(self, tp: TopicPartition, epoch: int) -> bool:
        with self._lock:
            return self._epoch[tp] == epoch

    def revoke(self, tps: set[TopicPartition]) -> int:
        """Forget the partitions' uncommitted work; returns how many frames were in flight."""
        with self._lock:
            dropped = 0
            for tp in tps:
                self._epoch[tp] += 1
                pending = self._pending.pop(tp, {})
                dropped += len(pending)
                self._bytes -= sum(pending.values())
                self._next.pop(tp, None)
                self._committed.pop(tp, None)
            return dropped

    def commit_points(self) -> dict[TopicPartition, int]:
        """Partitions whose commit point moved since the last commit."""
        with self._lock:
            out = {}
            for tp, nxt in self._next.items():
                point = min(self._pending[tp]) if self._pending[tp] else nxt
                if point > self._committed.get(tp, -1):
                    out[tp] = point
            return out

    def committed(self, points: dict[TopicPartition, int]) -> None:
        with self._lock:
            for tp, point in points.items():
                if tp in self._next:  # not revoked meanwhile
                    self._committed[tp] = max(point, self._committed.get(tp, -1))

    def next_offset(self, tp: TopicPartition) -> int | None:
        """One past the highest offset polled from the partition (None if it holds no work)."""
        with self._lock:
            return self._next.get(tp)

    def commit_point(self, tp: TopicPartition) -> int | None:
        with self._lock:
            if tp not in self._next:
                return None
            return min(self._pending[tp]) if self._pending[tp] else self._next[tp]

    def __len__(self) -> int:
        with self._lock:
            return sum(len(p) for p in self._pending.values())


class Worker:
    def __init__(self, config: PatchsightConfig, bundle: "Bundle", worker_id: str | None = None) -> None:
        self.config = config
        self.settings = config.inference
        self.bundle = bundle
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.log = get_logger("inference.worker", worker=self.worker_id, model=bundle.model_id)
        self.lines = {line.id: line for line in config.lines}
        self.cameras_of = {line.id: {camera.id for camera in line.cameras} for line in config.lines}
        self.runner = ModelRunner(bundle, self.lines, self.settings, self.worker_id)
        self.metrics = WorkerMetrics()
        self.batcher: DynamicBatcher[Frame] = DynamicBatcher(self.settings.max_batch, self.settings.max_delay_ms / 1e3)
        self.in_flight = InFlight()
        self.decode_threads = self.settings.decode_threads or os.cpu_count() or 1
        # Enough frames polled ahead to keep every decode thread and the model busy through
        # fetch round trips; beyond that, polling pauses: a backlog waits in Kafka, not in
        # memory, and a rebalance has a bounded amount of uncommitted work to redo.
        self.max_in_flight_bytes = int(self.settings.max_in_flight_mb * 2**20)
        self._frame_bytes = 2**20  # running mean of what a frame holds; sizes the next poll
        self.metrics_port: int | None = None
        self._assignment: set[TopicPartition] = set()
        self.metrics.assigned_partitions.set_function(lambda: len(self._assignment))
        self._revoked: set[TopicPartition] = set()  # revoked in this rebalance, maybe coming back
        self._joined = False
        self._refused_since: float | None = None  # first of the commits refused in a row
        self._revoked_since: float | None = None  # partitions revoked and not yet assigned again
        self._refusal_logged_at = 0.0
        self._loop_turned = time.monotonic()
        self._fatal: BaseException | None = None
        self._draining = threading.Event()  # no more frames will be put in the batcher
        self._dead_letters: KafkaProducer | None = None  # run() opens it

    # --- health ------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        # Ready once the group has been joined: a rebalance empties the assignment for a
        # moment, and a worker left without partitions (more workers than partitions) is a
        # healthy standby, not a failure.
        return self._joined and self._fatal is None

    def is_live(self) -> bool:
        return self._fatal is None and time.monotonic() - self._loop_turned < LIVENESS_S

    def _liveness(self) -> Reply:
        return Reply(200, b"ok\n") if self.is_live() else Reply(503, b"worker loop stalled\n")

    def _readiness(self) -> Reply:
        return Reply(200, b"ready\n") if self.ready else Reply(503, b"not ready: model or partition assignment\n")

    # --- the main thread: Kafka in, commits out -----------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set, then drain, publish, commit and return."""
        kafka, topics = self.config.kafka, self.config.kafka.topics
        try:  # first: a port in use fails before anything joins the group
            health = HealthServer(self.settings.metrics_port, self.metrics.registry,
                                  {"/healthz": self._liveness, "/readyz": self._readiness},
                                  host=self.settings.metrics_host)
        except OSError as exc:
            raise WorkerError(f"cannot serve /metrics on port {self.settings.metrics_port}: {exc.strerror} (another "
                              "worker on this host? set inference.metrics_port; 0 picks a free one)") from None
        ensure_topics(kafka)
        producer = KafkaProducer(
            **kafka.client_kwargs(), client_id=f"{kafka.client_id_prefix}-infer-{self.worker_id}-results",
            acks="all", linger_ms=2,
        )
        # Dead letters have their own producer, without idempotence: kafka-python 3.0.12 makes a
        # record the broker refuses (too large for the topic) fatal for an idempotent producer,
        # failing every later send, results included. A retried dead letter may be written twice.
        self._dead_letters = KafkaProducer(
            **kafka.client_kwargs(), client_id=f"{kafka.client_id_prefix}-infer-{self.worker_id}-dlq",
            acks="all", enable_idempotence=False,
        )
        consumer, awake = self._open_consumer()
        health.start()
        self.metrics_port = health.port
        decoder = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="decode")
        finished: SimpleQueue[Finished | None] = SimpleQueue()  # bounded by the in-flight cap
        model = threading.Thread(target=self._model_loop, args=(finished,), name="model", daemon=True)
        results = threading.Thread(target=self._results_loop, args=(finished, producer), name="results", daemon=True)
        model.start()
        results.start()
        self.log.info("worker started", frames=topics.frames, group=self.settings.group_id,
                      max_batch=self.settings.max_batch, max_delay_ms=self.settings.max_delay_ms,
                      decode_threads=self.decode_threads, reduced_decode=self.settings.reduced_decode,
                      jpeg_decode=self.runner.jpeg_decode_path,
                      device=str(self.runner.device), metrics_port=self.metrics_port)
        warn_without_c_crc32c(self.log)
        lag_at = commit_at = 0.0
        try:
            while not stop.is_set() and self._fatal is None:
                now = self._loop_turned = time.monotonic()
                if now >= commit_at:
                    self._commit(consumer)
                    commit_at = now + self.settings.commit_interval_ms / 1e3
                if self._stuck_for() > STUCK_REBALANCE_S:
                    consumer, awake = self._rejoin(consumer, awake)
                for records in self._poll(consumer).values():
                    for record in records:
                        self._intake(record, decoder, producer)
                if time.monotonic() - lag_at > LAG_REFRESH_S:
                    self._report_lag(consumer)
                    lag_at = time.monotonic()
            # Stop: everything polled is decoded, scored, published, acknowledged, committed.
            decoder.shutdown(wait=True)
            self._draining.set()
            self.batcher.drain()
            model.join()
            results.join()
            producer.flush()
            self._dead_letters.flush()
            consumer, awake = self._final_commit(consumer, awake)
            if self._fatal is not None:
                raise WorkerError(str(self._fatal)) from self._fatal
            self.log.info("worker stopped", in_flight=len(self.in_flight))
        finally:
            awake.set()
            self._draining.set()
            self.batcher.drain()
            decoder.shutdown(wait=False, cancel_futures=True)
            consumer.close(autocommit=False)
            producer.close(timeout=5)
            self._dead_letters.close(timeout=5)
            health.stop()
            self._assignment = set()
            self.metrics.ready.set(0)

    def _poll(self, consumer: KafkaConsumer) -> dict[TopicPartition, list[ConsumerRecord]]:
        """Frames while there is room for them; else stay in the group and wait for acknowledgements to make room.

        Only an acknowledgement makes room or moves a commit point, so while full nothing else is worth waking for.
        """
        room = self.max_in_flight_bytes - self.in_flight.nbytes
        # a batch's worth; half the cap when it holds less than two batches, so frames still overlap
        refill = min(self.max_in_flight_bytes // 2, self._frame_bytes * self.settings.max_batch)
        if room >= refill:
            if consumer.paused():
                consumer.resume(*consumer.paused())
            wanted = min(max(room // self._frame_bytes, 1), MAX_POLL_RECORDS)
            return consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=wanted)
        # Full: fetch nothing, but poll() without waiting (rebalances and their callbacks happen
        # in poll()); a partition assigned meanwhile is not paused yet, so what it returns is taken.
        consumer.pause(*consumer.assignment())
        polled = consumer.poll(timeout_ms=0)
        self.in_flight.wait_for_room(self.max_in_flight_bytes - refill, POLL_TIMEOUT_MS / 1e3)
        return polled

    def _open_consumer(self) -> tuple[KafkaConsumer, threading.Event]:
        """A consumer subscribed to the frames topic, and the event that stops its IO-loop nudges."""
        kafka, topics = self.config.kafka, self.config.kafka.topics
        consumer = KafkaConsumer(
            **kafka.client_kwargs(), client_id=f"{kafka.client_id_prefix}-infer-{self.worker_id}-frames",
            group_id=self.settings.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
            max_poll_records=MAX_POLL_RECORDS, partition_assignment_strategy=(RoundRobinPartitionAssignor,),
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
            # Heartbeats run on the consumer's IO thread, so a long batch never misses one; a
            # short session moves a crashed worker's partitions to the others within seconds.
            session_timeout_ms=SESSION_TIMEOUT_MS, heartbeat_interval_ms=SESSION_TIMEOUT_MS // 3,
            metadata_max_age_ms=30_000,  # notice added partitions within 30 s
        )
        subscribe_when_known(consumer, topics.frames, listener=_Rebalance(self, consumer))
        awake = threading.Event()
        keep_awake(consumer, awake)
        return consumer, awake

    def _stuck_for(self) -> float:
        """How long commits have been refused or the partitions left revoked, whichever is longer."""
        since = [t for t in (self._refused_since, self._revoked_since) if t is not None]
        return time.monotonic() - min(since) if since else 0.0

    def _rejoin(self, consumer: KafkaConsumer, awake: threading.Event) -> tuple[KafkaConsumer, threading.Event]:
        """Leave the group and join it again with a new consumer (a rebalance that never finished).

        kafka-python 3.0.12 can leave a member in a rebalance with every commit refused
        (docs/operations.md). A new client with a new member id starts clean. Its partitions
        go through the same bookkeeping as an eager rebalance: work is kept for those that
        come back and dropped for those another worker now owns, which redoes it. (Unlike
        within one rebalance, another worker may have held a returning partition meanwhile;
        then both inspect some frames: duplicates, never losses.)
        """
        stuck_s = round(self._stuck_for(), 1)
        try:
            # The new client first: with the broker unreachable (an outage, not a stuck
            # rebalance) it cannot start, and the old one, which reconnects by itself, stays.
            fresh = self._open_consumer()
        except KafkaError as exc:
            self.log.warning("cannot rejoin now: keeping the consumer", stuck_s=stuck_s, error=str(exc))
            now = time.monotonic()
            self._refused_since = now if self._refused_since is not None else None
            self._revoked_since = now if self._revoked_since is not None else None
            return consumer, awake
        self.metrics.rejoins.inc()
        self.log.warning("rebalance not finishing: rejoined with a new consumer", stuck_s=stuck_s,
                         in_flight=len(self.in_flight))
        self.on_revoked(set(self._assignment))
        awake.set()
        try:
            consumer.close(autocommit=False, timeout_ms=5_000)
        except Exception as exc:  # the old client is being thrown away; nothing in it is needed
            self.log.warning("closing the stuck consumer failed", error=str(exc))
        self._refused_since = None
        self._revoked_since = time.monotonic()  # until the new consumer is assigned its partitions
        return fresh

    def _intake(self, record: ConsumerRecord, decoder: ThreadPoolExecutor, producer: KafkaProducer) -> None:
        """One polled record: dead-letter, skip, or send to a decode thread. Never raises on bad data."""
        self.metrics.frames_in.inc()
        tp = TopicPartition(record.topic, record.partition)
        try:
            msg = FrameMessage.from_record(record.key, record.value, record.headers)
        except SchemaError as exc:
            epoch = self.in_flight.add(tp, record.offset, len(record.value or b""))
            self._dead_letter(record, epoch, exc.reason, str(exc))
            return
        nbytes = len(msg.payload) + self.runner.decoded_bytes(msg)
        self._frame_bytes += (nbytes - self._frame_bytes) // 8
        epoch = self.in_flight.add(tp, record.offset, nbytes)
        line = self.lines.get(msg.line_id)
        if line is None:
            self._dead_letter(record, epoch, "unknown-line", f"line {msg.line_id!r} is not configured")
            return
        if msg.camera_id not in self.cameras_of[line.id]:
            self._dead_letter(record, epoch, "unknown-camera",
                              f"camera {msg.camera_id!r} is not a camera of line {msg.line_id!r}")
            return
        age_s = (time.time_ns() - msg.capture_ns) / 1e9
        if msg.mode == FrameMode.live and age_s > self.settings.max_frame_age_s:
            # The part has left the camera: an answer is worthless, but the frame still gets its result.
            reason = f"stale: {age_s:.1f}s old, live limit {self.settings.max_frame_age_s:g}s"
            result = self.runner.result(msg, ResultStatus.skipped, skip_reason=reason,
                                        frame=frame_ref(tp, record.offset))
            self.metrics.frames_skipped.labels("stale").inc()
            self._publish(producer, result, tp, record.offset, epoch, msg.capture_ns)
            return
        decoded = None if self.runner.batch_decoder is not None else decoder.submit(self.runner.decode, msg)
        self.batcher.put(Frame(tp, record.offset, epoch, record, msg, line, decoded))

    def _commit(self, consumer: KafkaConsumer) -> None:
        points = self.in_flight.commit_points()
        if not points:
            self._refused_since = None  # nothing waits for the group
            return
        try:
            consumer.commit({tp: OffsetAndMetadata(point, "", -1) for tp, point in points.items()},
                            timeout_ms=COMMIT_TIMEOUT_MS)
        except KafkaError as exc:
            # A rebalance took the partitions: their new owner redoes the uncommitted frames.
            self.metrics.commits_failed.inc()
            now = time.monotonic()
            if self._refused_since is None:
                self._refused_since = now
            if now - self._refusal_logged_at >= REFUSAL_LOG_S:  # the loop retries every 50 ms
                self._refusal_logged_at = now
                self.log.warning("commit refused", error=str(exc), partitions=len(points),
                                 refused_s=round(now - self._refused_since, 1))
            return
        self._refused_since = None
        self.in_flight.committed(points)
        self.metrics.in_flight.set(len(self.in_flight))

    def _final_commit(self, consumer: KafkaConsumer, awake: threading.Event) -> tuple[KafkaConsumer, threading.Event]:
        """Commit everything published before exiting; returns the consumer to close.

        A rebalance in progress refuses commits; poll() completes it (with every
        partition paused, so nothing new is fetched; what a poll still returns is
        neither processed nor committed) and the commit is tried again. A rebalance
        that does not finish gets one rejoin with a new consumer.
        """
        deadline = time.monotonic() + FINAL_COMMIT_S
        rejoined = False
        self._commit(consumer)
        while self.in_flight.commit_points() and time.monotonic() < deadline:
            if not rejoined and self._stuck_for() > STUCK_FINAL_COMMIT_S:
                consumer, awake = self._rejoin(consumer, awake)
                rejoined = True
                deadline = time.monotonic() + FINAL_COMMIT_S
            consumer.pause(*consumer.assignment())
            consumer.poll(timeout_ms=200)
            self._commit(consumer)
        return consumer, awake

    def _report_lag(self, consumer: KafkaConsumer) -> None:
        for tp in list(self._assignment):
            try:
                end = consumer.highwater(tp)
            except KafkaError:
                continue
            point = self.in_flight.commit_point(tp)
            if end is not None and point is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(end - point, 0))

    # --- rebalance (runs on the consumer's IO thread, inside poll()) --------------

    def on_revoked(self, revoked: set[TopicPartition]) -> None:
        # The eager protocol revokes everything at every rebalance, then assigns again
        # within the same poll(). Work is dropped only for partitions that do not come
        # back (in on_assigned): no other member can own a partition in between, so what
        # is in flight for a returning partition stays valid.
        self._revoked |= set(revoked)
        self._assignment -= set(revoked)
        if self._revoked_since is None:
            self._revoked_since = time.monotonic()
        self.metrics.ready.set(1 if self.ready else 0)

    def on_assigned(self, assigned: set[TopicPartition], consumer: KafkaConsumer) -> None:
        self._joined = True
        self._revoked_since = None
        lost, kept, self._revoked = self._revoked - set(assigned), self._revoked & set(assigned), set()
        if lost:
            self._drop(lost)
        # A returning partition would be fetched again from its last commit; its frames up to
        # the last one polled are still here (in flight or done), so fetch after them instead.
        for tp in kept:
            position = self.in_flight.next_offset(tp)
            if position is not None:
                consumer.seek(tp, position)
        self._assignment |= set(assigned)
        self.metrics.ready.set(1 if self.ready else 0)
        self.log.info("partitions assigned", partitions=sorted(tp.partition for tp in assigned),
                      total=len(self._assignment), lost=sorted(tp.partition for tp in lost))

    def _drop(self, lost: set[TopicPartition]) -> None:
        """Forget the uncommitted work of partitions another member now owns; it redoes it."""
        dropped = self.in_flight.revoke(lost)
        self.batcher.discard(lambda frame: frame.tp in lost)
        for tp in lost:
            try:
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
            except KeyError:
                pass
        self.metrics.frames_dropped_on_revoke.inc(dropped)
        self.log.info("partitions lost", partitions=sorted(tp.partition for tp in lost),
                      uncommitted_frames_dropped=dropped)

    # --- the model thread: batches in, scores out; the results thread: scores in, results out ---

    def _model_loop(self, finished: "SimpleQueue[Finished | None]") -> None:
        try:
            while True:
                batch = self.batcher.next_batch(timeout=0.1)
                if batch is not None:
                    finished.put(self._run_batch(batch))
                elif self._draining.is_set() and len(self.batcher) == 0:
                    return
        except BaseException as exc:  # a model failure must stop the worker, not hang it
            self._fatal = exc
            self.log.exception("model thread failed")
        finally:
            finished.put(None)

    def _run_batch(self, batch: Batch[Frame]) -> "Finished":
        """Decoded frames -> the tracker, in stream order -> the model, for frames with something to inspect."""
        outcomes, scored = [], []
        current = [(frame, waited) for frame, waited in zip(batch.items, batch.queue_s)
                   if self.in_flight.is_current(frame.tp, frame.epoch)]  # else revoked while queued: the new owner redoes it
        for (frame, waited), decoded in zip(current, self._decoded([frame for frame, _ in current])):
            if isinstance(decoded, str):
                outcomes.append(Outcome(frame, waited, undecodable=decoded))
                continue
            part = None
            if self.runner.tracks_parts(frame.msg):
                # In stream order: the batch keeps each partition's (so each camera's) order.
                part = self.runner.find_part(frame.msg, decoded)
                if part is None:  # nothing to inspect: the model does not run, the alert service learns the part left
                    outcomes.append(Outcome(frame, waited, skip_reason=NO_PART))
                    continue
            outcomes.append(Outcome(frame, waited, decoded=decoded, part=part))
            scored.append(outcomes[-1])
        if not scored:
            return Finished(outcomes, 0, 0.0)
        self.metrics.batch_size.observe(len(scored))
        self.metrics.batches.labels(batch.closed_by).inc()
        start = time.perf_counter()
        views = [self.runner.part_view(o.frame.msg, o.decoded, o.part) for o in scored]
        rows = self.runner.score([o.frame.line.id for o in scored], [o.decoded.square for o in scored], views)
        model_s = time.perf_counter() - start
        self.metrics.model_time.observe(model_s)
        for outcome, row in zip(scored, rows):
            outcome.scores = row
        return Finished(outcomes, len(scored), model_s)

    def _decoded(self, frames: list[Frame]) -> Iterator[Decoded | str]:
        """The frames decoded, in order: by the decode threads (each waited for as it comes), or here, as one
        batch on the GPU."""
        if self.runner.batch_decoder is None:
            return (frame.decoded.result() for frame in frames)  # type: ignore[union-attr]
        return iter(self.runner.decode_batch([frame.msg for frame in frames]) if frames else [])

    def _results_loop(self, finished: "SimpleQueue[Finished | None]", producer: KafkaProducer) -> None:
        """Results built and sent while the model runs the next batch (on a GPU, the model thread mostly waits)."""
        while (batch := finished.get()) is not None:
            if self._fatal is not None:
                continue  # stopping: what is not published is not committed, and is redone
            try:
                self._publish_batch(batch, producer)
            except BaseException as exc:
                self._fatal = exc
                self.log.exception("results thread failed")

    def _publish_batch(self, batch: "Finished", producer: KafkaProducer) -> None:
        """Each frame's result (or dead letter) in the batch's order, so in each partition's order."""
        for o in batch.outcomes:
            frame = o.frame
            if o.undecodable is not None:
                self._dead_letter(frame.record, frame.epoch, "undecodable", o.undecodable)
                continue
            if o.skip_reason is not None:
                result = self.runner.result(frame.msg, ResultStatus.skipped, skip_reason=o.skip_reason, frame=frame.ref)
                self.metrics.frames_skipped.labels("no_part").inc()
                self._publish(producer, result, frame.tp, frame.offset, frame.epoch, frame.msg.capture_ns)
                continue
            self.metrics.queue_delay.observe(o.waited)
            self.metrics.decode_time.observe(o.decoded.decode_s)
            timing = Timing(queue_ms=o.waited * 1e3, decode_ms=o.decoded.decode_s * 1e3,
                            model_ms=batch.model_s * 1e3 / batch.scored, batch_size=batch.scored,
                            capture_to_result_ms=max(0.0, (time.time_ns() - frame.msg.capture_ns) / 1e6))
            result = self.runner.result(frame.msg, ResultStatus.ok, scores=o.scores, timing=timing,
                                        image=o.decoded.image, part=o.part, frame=frame.ref)
            self._publish(producer, result, frame.tp, frame.offset, frame.epoch, frame.msg.capture_ns)

    # --- results and dead letters -------------------------------------------------------

    def _publish(
        self, producer: KafkaProducer, result: InspectionResult, tp: TopicPartition, offset: int, epoch: int,
        capture_ns: int,
    ) -> None:
        key, value, headers = result.to_record()

        def acknowledged(_: object) -> None:
            self.in_flight.done(tp, offset, epoch)
            self.metrics.frames_out.labels(result.status.value).inc()
            self.metrics.end_to_end.observe(max(time.time_ns() - capture_ns, 0) / 1e9)

        self._send(producer, self.config.kafka.topics.results, key, value, headers, acknowledged)

    def _dead_letter(self, record: ConsumerRecord, epoch: int, reason: str, error: str) -> None:
        assert self._dead_letters is not None, "run() opens the dead-letter producer"
        tp = TopicPartition(record.topic, record.partition)
        self.log.warning("frame dead-lettered", reason=reason, error=error, partition=record.partition,
                         offset=record.offset)
        letter = DeadLetter.for_record(record, reason, error, service=f"inference/{self.worker_id}")
        key, value, headers = letter.to_record(dead_letter_max_bytes(self._dead_letters, self.config))

        def acknowledged(_: object) -> None:
            self.in_flight.done(tp, record.offset, epoch)
            self.metrics.frames_dead_lettered.labels(reason).inc()

        def failed(exc: BaseException) -> None:
            # A record the worker cannot process and cannot park must not stop its partition (a
            # poison record would stop every worker that takes it): it is logged and passed.
            self.log.error("dead letter not written; the frame is passed over", reason=reason, error=str(exc),
                           partition=record.partition, offset=record.offset)
            self.metrics.dead_letters_failed.labels(reason).inc()
            self.in_flight.done(tp, record.offset, epoch)

        self._send(self._dead_letters, self.config.kafka.topics.dead_letter, key, value, headers, acknowledged, failed)

    def _send(self, producer: KafkaProducer, topic: str, key, value, headers, acknowledged, failed=None) -> None:  # type: ignore[no-untyped-def]
        def fatal(exc: BaseException) -> None:
            # The producer has exhausted its retries. The offset stays uncommitted, so
            # stopping lets a restart (or another worker) redo the frame.
            self._fatal = WorkerError(f"the broker did not acknowledge a record for {topic}: {exc}")
            self.log.error("publish failed", topic=topic, error=str(exc))

        failed = failed or fatal
        try:
            producer.send(topic, value=value, key=key, headers=headers).add_callback(acknowledged).add_errback(failed)
        except KafkaError as exc:
            failed(exc)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: Worker, consumer: KafkaConsumer) -> None:
        self.worker = worker
        self.consumer = consumer

    def on_partitions_revoked(self, revoked):  # type: ignore[no-untyped-def]
        self.worker.on_revoked(revoked)

    def on_partitions_assigned(self, assigned):  # type: ignore[no-untyped-def]
        self.worker.on_assigned(assigned, self.consumer)


# --- process entry point ------------------------------------------------------------------


def freeze_loaded_objects() -> None:
    """Leave what the process has loaded so far (torch, transformers, the bundle) out of garbage collection.

    About 470,000 objects that live as long as the process: every full collection walked them all,
    0.2 s of CPU each, one every few seconds at 500 frames/s (0.07 ms a frame, BENCHMARKS.md "Worker
    host ceiling"). Frozen, a full collection walks only what the worker made since. Garbage first,
    so none of it is kept for good.
    """
    gc.collect()
    gc.freeze()


def serve(config: PatchsightConfig, worker_id: str | None = None) -> None:
    """Load the model, run one worker until SIGTERM/SIGINT, exit after draining."""
    log = get_logger("inference.worker")
    if config.inference.torch_threads:
        torch.set_num_threads(config.inference.torch_threads)
    bundle = load_model(config)
    worker = Worker(config, bundle, worker_id)
    freeze_loaded_objects()
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("stop requested", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    worker.run(stop)
