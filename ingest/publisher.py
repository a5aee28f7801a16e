"""Publishing frames to Kafka: JPEG encoding, the size limit, and a producer set up on purpose.

Producer settings (kafka-python 3.0; see docs/wire-format.md for the rationale):

* ``acks='all'`` and ``enable_idempotence=True``: a frame counts as published only when
  every in-sync replica has it, and the producer's retries can neither duplicate a frame
  nor reorder a camera's frames (idempotence keeps order with up to 5 requests in flight).
  kafka-python supports idempotence since 2.1 and enables it by default since 3.0; we set
  it explicitly so that a conflicting setting raises instead of silently turning it off.
* ``linger_ms`` from ``IngestSettings`` (5 ms): frames of several cameras' partitions ride
  in one request under load, for at most 5 ms of added latency.
* ``compression_type=None``: JPEG is already compressed; gzip/lz4 would burn CPU for ~1%.
* ``max_request_size = max_message_bytes``: the broker's limit. Frames are checked against
  it *before* ``send`` (see ``fit_frame``) so that no frame is accepted only to fail later.
* ``max_block_ms=10s``: ``send`` waits at most this long for topic metadata, so a lost
  broker shows up as counted failures rather than a hung capture process.

kafka-python's accumulator has no memory bound of its own, so the publisher caps the
frames in flight (sent, not yet acknowledged). While Kafka is slow or away the cap holds
the publishing thread, the bounded buffer in front of it fills, and the buffer's policy
decides: live cameras drop their oldest frames, replay waits.

A live camera's publisher also replaces a producer that has acknowledged nothing for
``ingest.producer_stall_s`` while frames were in flight. kafka-python's producer was once
seen retrying ``NotLeaderForPartitionError`` for over a minute after a broker restart,
delivering nothing (docs/operations.md); a new producer starts from fresh metadata. The
old one's pending frames are failed (and counted): they are stale by then. Replay never
replaces its producer, because it must not give up a frame.
"""

from __future__ import annotations

import math
import multiprocessing
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np
from kafka import KafkaProducer
from kafka.errors import KafkaError

from runtime.kafka_crc import warn_without_c_crc32c
from runtime.log import get_logger
from schemas.config import IngestSettings, KafkaSettings
from schemas.frame import FrameMessage

if TYPE_CHECKING:
    from ingest.buffer import FrameBuffer

# Bytes a record adds around key, value and headers inside a record batch (batch header 61,
# record framing and varints ~20, per-header varints): an upper bound with room to spare.
RECORD_OVERHEAD = 256
DOWNSCALE_ATTEMPTS = 4
MIN_SIDE_PX = 16

COUNTER_NAMES = (
    "captured",  # frames read from the source
    "published",  # acknowledged by the broker
    "failed",  # sends that errored or expired
    "dropped",  # thrown away by a full drop_oldest buffer
    "downscaled",  # over the size limit, re-encoded smaller and sent
    "rejected",  # over the size limit and not sent
    "reconnects",  # source reopened after a loss
    "errors",  # frames that could not be encoded, sources that failed
    "producer_stalls",  # producers replaced after acknowledging nothing for ingest.producer_stall_s
)


class IngestCounters:
    """Counters one camera (or one replay) keeps; shared memory, so a supervisor can read a child's."""

    def __init__(self, ctx: Any = None) -> None:
        ctx = ctx or multiprocessing.get_context("spawn")
        self._values = ctx.Array("q", len(COUNTER_NAMES) + 1)  # + a heartbeat timestamp
        self._index = {name: i for i, name in enumerate(COUNTER_NAMES)}

    def add(self, name: str, n: int = 1) -> None:
        with self._values.get_lock():
            self._values[self._index[name]] += n

    def get(self, name: str) -> int:
        return int(self._values[self._index[name]])

    def beat(self) -> None:
        """Record that the capture loop is alive (read by the supervisor's stall check)."""
        self._values[len(COUNTER_NAMES)] = time.monotonic_ns()

    @property
    def heartbeat_ns(self) -> int:
        return int(self._values[len(COUNTER_NAMES)])

    def snapshot(self) -> dict[str, int]:
        with self._values.get_lock():
            return {name: int(self._values[i]) for name, i in self._index.items()}


class FrameTooLarge(Exception):
    """A frame stays over the broker's message limit even after downscaling (or policy is reject)."""


def encode_jpeg(image: np.ndarray, quality: int, resize: tuple[int, int] | None = None) -> bytes:
    """Encode a BGR image as JPEG, resized first to ``(width, height)`` when given."""
    if resize is not None and (image.shape[1], image.shape[0]) != tuple(resize):
        image = cv2.resize(image, tuple(resize), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def record_size(frame: FrameMessage) -> int:
    """An upper bound on the bytes ``frame`` takes on the broker."""
    key, value, headers = frame.to_record()
    return len(key) + len(value) + sum(len(n) + len(v) for n, v in headers) + RECORD_OVERHEAD


def fit_frame(
    frame: FrameMessage, limit: int, policy: Literal["downscale", "reject"], quality: int = 85
) -> tuple[FrameMessage, bool]:
    """Return ``(frame, downscaled)`` with the frame under ``limit`` bytes, or raise ``FrameTooLarge``.

    Downscaling re-encodes a smaller image; the scale comes from the size ratio (JPEG size is
    roughly proportional to pixel count), with a margin, for at most ``DOWNSCALE_ATTEMPTS`` tries.
    """
    size = record_size(frame)
    if size <= limit:
        return frame, False
    if policy == "reject":
        raise FrameTooLarge(f"frame is {size} bytes, the limit is {limit} (ingest.oversize=reject)")
    image = cv2.imdecode(np.frombuffer(frame.payload, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise FrameTooLarge(f"frame is {size} bytes, over the limit of {limit}, and cannot be decoded to shrink")
    budget = limit - (size - len(frame.payload))
    scale = 1.0
    payload = frame.payload
    for _ in range(DOWNSCALE_ATTEMPTS):
        scale *= 0.9 * math.sqrt(max(budget, 1) / len(payload))
        width, height = round(frame.width * scale), round(frame.height * scale)
        if min(width, height) < MIN_SIDE_PX:
            break
        payload = encode_jpeg(image, quality, (width, height))
        if len(payload) <= budget:
            return frame.model_copy(update={"payload": payload, "width": width, "height": height}), True
    raise FrameTooLarge(
        f"frame is {size} bytes, over the limit of {limit}, and still {len(payload)} after "
        f"{DOWNSCALE_ATTEMPTS} downscales"
    )


def producer_settings(kafka: KafkaSettings, ingest: IngestSettings, client_id: str) -> dict[str, Any]:
    """The KafkaProducer arguments ingest uses; the module docstring says why each is set."""
    return {
        **kafka.client_kwargs(),
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": ingest.linger_ms,
        "batch_size": 256 * 1024,  # a few frames per partition per request; the 16 KiB default holds none
        "compression_type": None,
        "max_request_size": ingest.max_message_bytes,
        "max_block_ms": 10_000,
        "delivery_timeout_ms": 120_000,
        # one connection attempt lasts no longer than the longest backoff between attempts (and
        # at most 5 s): construction fails fast and connect() retries it
        "bootstrap_timeout_ms": int(min(5.0, ingest.reconnect_max_s) * 1000),
    }


class FramePublisher:
    """Publish ``FrameMessage``s to the frames topic, keyed by camera id.

    Thread-safe. ``connect()`` retries until a broker answers (or ``stop`` is set), so a
    process can start before Kafka does. With ``stall_s`` set, a producer that acknowledges
    nothing for that long while frames are in flight is replaced (see the module docstring).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        ingest: IngestSettings,
        counters: IngestCounters,
        *,
        client_id: str,
        stop: threading.Event | None = None,
        max_in_flight: int | None = None,
        quality: int = 85,
        stall_s: float | None = None,
        producer_factory: Callable[..., Any] = KafkaProducer,
    ) -> None:
        self.kafka = kafka
        self.ingest = ingest
        self.counters = counters
        self.topic = kafka.topics.frames
        self.client_id = client_id
        self.stop = stop or threading.Event()
        self.quality = quality
        self.stall_s = stall_s
        self.producer_factory = producer_factory
        self._max_in_flight = max_in_flight or max(8, ingest.buffer_frames)
        # One semaphore per producer: a replaced producer's late callbacks release their own.
        self._in_flight = threading.BoundedSemaphore(self._max_in_flight)
        self._pending = 0  # frames the current producer has neither acknowledged nor failed
        self._quiet_since = time.monotonic()  # the last acknowledgement, or the first send after none pending
        self._producer: Any = None
        self._last_failure_log = 0.0
        self._failures_since_log = 0
        self._lock = threading.Lock()
        self.log = get_logger("ingest.publisher", topic=self.topic)
        warn_without_c_crc32c(self.log)

    @property
    def connected(self) -> bool:
        return self._producer is not None

    def connect(self) -> bool:
        """Create the producer, retrying with capped backoff; False if ``stop`` was set first."""
        from runtime.topics import ensure_topics

        delay = self.ingest.reconnect_initial_s
        while not self.stop.is_set():
            try:
                self._producer = self.producer_factory(**producer_settings(self.kafka, self.ingest, self.client_id))
            except KafkaError as exc:
                self.log.warning(
                    "kafka unreachable, retrying", bootstrap=self.kafka.bootstrap, error=str(exc), retry_in_s=delay
                )
                self.stop.wait(delay)
                delay = min(delay * 2, self.ingest.reconnect_max_s)
                continue
            try:
                ensure_topics(self.kafka, [self.topic])
            except KafkaError as exc:  # the topic may exist already, or be auto-created on first send
                self.log.warning("could not ensure the frames topic", error=str(exc))
            self.log.info("connected to kafka", bootstrap=self.kafka.bootstrap)
            return True
        return False

    def publish(self, frame: FrameMessage, *, retry: bool = False) -> bool:
        """Send one frame; True once it is handed to the producer (delivery is counted later).

        Blocks while ``max_in_flight`` frames await acknowledgement. ``retry=True`` (replay)
        keeps trying a send that cannot start, until it does or ``stop`` is set; otherwise the
        frame is counted as failed and dropped. An oversize frame is downscaled or rejected
        here, before the producer ever sees it.
        """
        if self._producer is None and not self.connect():
            return False
        try:
            frame, downscaled = fit_frame(frame, self.ingest.max_message_bytes, self.ingest.oversize, self.quality)
        except FrameTooLarge as exc:
            self.counters.add("rejected")
            self.log.error("oversize frame rejected", camera=frame.camera_id, seq=frame.seq, error=str(exc))
            return False
        if downscaled:
            self.counters.add("downscaled")
            self.log.warning(
                "oversize frame downscaled", camera=frame.camera_id, seq=frame.seq, width=frame.width,
                height=frame.height, limit=self.ingest.max_message_bytes,
            )
        key, value, headers = frame.to_record()
        delay = self.ingest.reconnect_initial_s
        while True:
            self._replace_if_stalled()
            if self._producer is None and not self.connect():
                return False
            with self._lock:  # read together: a swap between the two reads would pair the old producer with new permits
                producer, permits = self._producer, self._in_flight
            if not permits.acquire(timeout=0.1):
                if self.stop.is_set():
                    return False
                continue
            with self._lock:
                # another publishing thread may have replaced the producer meanwhile
                usable = producer is not None and permits is self._in_flight
                if usable:
                    if self._pending == 0:
                        self._quiet_since = time.monotonic()
                    self._pending += 1
            if not usable:
                permits.release()
                continue
            try:
                future = producer.send(self.topic, value=value, key=key, headers=headers)
            except KafkaError as exc:
                self._settled(permits, acknowledged=False)
                if not retry or self.stop.is_set():
                    self._failed(frame, exc)
                    return False
                self.log.warning("send could not start, retrying", camera=frame.camera_id, seq=frame.seq, error=str(exc))
                self.stop.wait(delay)
                delay = min(delay * 2, self.ingest.reconnect_max_s)
                continue
            future.add_callback(self._delivered, permits)
            future.add_errback(self._delivery_failed, frame, permits)
            return True

    def _replace_if_stalled(self) -> None:
        """Drop a producer that has acknowledged nothing for ``stall_s``; ``connect()`` makes the next one."""
        if self.stall_s is None:
            return
        with self._lock:  # checked and swapped at once: two publishing threads replace it only once
            if self._producer is None or self._pending == 0 or time.monotonic() - self._quiet_since <= self.stall_s:
                return
            old, self._producer = self._producer, None
            abandoned, self._pending = self._pending, 0
            self._in_flight = threading.BoundedSemaphore(self._max_in_flight)
        self.counters.add("producer_stalls")
        self.log.error(
            "producer acknowledged nothing, replacing it", stalled_s=self.stall_s, abandoned_frames=abandoned
        )
        # off the publishing thread: a sick client may take its time to let go
        threading.Thread(target=self._discard, args=(old, 5.0), name=f"{self.client_id}-discard", daemon=True).start()

    def _settled(self, permits: threading.BoundedSemaphore, *, acknowledged: bool) -> None:
        permits.release()
        with self._lock:
            if permits is not self._in_flight:
                return  # a replaced producer's frame: it no longer counts towards a stall
            self._pending -= 1
            if acknowledged:
                self._quiet_since = time.monotonic()

    def _delivered(self, permits: threading.BoundedSemaphore, _metadata: Any) -> None:
        self._settled(permits, acknowledged=True)
        self.counters.add("published")

    def _delivery_failed(self, frame: FrameMessage, permits: threading.BoundedSemaphore, exc: Exception) -> None:
        self._settled(permits, acknowledged=False)
        self._failed(frame, exc)

    def _failed(self, frame: FrameMessage, exc: BaseException) -> None:
        self.counters.add("failed")
        with self._lock:
            self._failures_since_log += 1
            now = time.monotonic()
            if now - self._last_failure_log < 10.0:
                return
            count, self._failures_since_log, self._last_failure_log = self._failures_since_log, 0, now
        self.log.error("frame not delivered", camera=frame.camera_id, seq=frame.seq, error=str(exc), failures=count)

    def flush(self, timeout: float | None = None) -> None:
        if self._producer is not None:
            try:
                self._producer.flush(timeout=timeout)
            except KafkaError as exc:
                self.log.warning("flush did not complete", error=str(exc))

    def close(self, timeout: float = 10.0) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            self._discard(producer, timeout)

    def _discard(self, producer: Any, timeout: float) -> None:
        """Close ``producer``; frames it cannot deliver within ``timeout`` are failed, and counted.

        kafka-python's ``close(timeout)`` flushes first and raises when that flush times out,
        before it reaches its own force-close, which would leave the client's IO thread
        running. So on a timed-out flush the sender is force-closed here: that fails every
        pending send, whose errbacks count the frames.
        """
        try:
            producer.flush(timeout=timeout)
        except KafkaError as exc:  # the broker is still away: say so, and do not take the caller down
            self.log.error("closed with frames undelivered", error=str(exc))
            sender = getattr(producer, "_sender", None)  # kafka-python has no public force-close
            if sender is not None:
                sender.force_close()
        try:
            producer.close(timeout=timeout)
        except KafkaError as exc:
            self.log.error("producer did not close cleanly", error=str(exc))


def publish_from(buffer: "FrameBuffer[FrameMessage]", publisher: FramePublisher, *, retry: bool) -> None:
    """Move frames from ``buffer`` to Kafka until the buffer is closed and drained."""
    while True:
        frame = buffer.get(timeout=0.2)
        if frame is None:
            if buffer.closed and len(buffer) == 0:
                return
            continue
        publisher.publish(frame, retry=retry)
