"""Evidence: the full-resolution frames of every alert and review item, read back from Kafka.

Results carry no full frame, only where it lies (``InspectionResult.frame``: the frames
topic, partition and offset). The step that raises an alert (or turns a passed part into a
review item) also asks, in the same Redis script, for its frames: an entry per frame in
``{p}:evidence:wanted``. A thread of the alert service takes those entries, reads each frame
back from Kafka by offset, checks it is the frame asked for (camera and seq), and keeps its
JPEG as it was published, within the line's ``alerts.evidence_max_bytes_per_line``: the
line's oldest alerts' and reviews' evidence is evicted first (counted in
``patchsight_alerts_evidence_evicted``). A frame Kafka no longer has (retention) is counted as
``missing``; a broker that does not answer leaves the entries for later. Nothing of this runs
while results are decided, and a crash leaves the wanted entries for the next instance.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import redis
from kafka import KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from alerts.store import RedisAlertStore, WantedEvidence
from runtime.log import get_logger
from schemas.config import KafkaSettings
from schemas.errors import SchemaError
from schemas.feedback import EvidenceFrame
from schemas.frame import FrameMessage

log = get_logger("alerts.evidence")

READ_TIMEOUT_S = 5.0
GIVE_UP_AFTER = 3  # reads of a frame the broker says it holds that brought nothing, before it counts as missing
IDLE_WAIT_S = 0.5
FETCH_BYTES = 1024


class FrameGone(LookupError):
    """The frames topic no longer holds the frame (retention deleted it, or the topic was recreated)."""


class FrameReader:
    """Reads single frame records back from Kafka by topic, partition and offset (no consumer group)."""

    def __init__(self, kafka: KafkaSettings, client_id: str) -> None:
        self.consumer = KafkaConsumer(
            **kafka.client_kwargs(),
            client_id=client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            # A fetch returns at least the first record batch whatever this says (KIP-74, any broker since
            # 0.10.1): so only the batch that holds the frame, not a megabyte of frames decoded to keep one.
            max_partition_fetch_bytes=FETCH_BYTES,
        )
        # each partition's offsets as last asked: a part's frames lie in one partition, and asking for the
        # offsets before every frame cost two of its three round trips to the broker
        self._offsets: dict[TopicPartition, tuple[int, int]] = {}

    def read(self, frame: EvidenceFrame, timeout_s: float = READ_TIMEOUT_S) -> FrameMessage | None:
        """The frame, or None when it did not come back in time though Kafka holds it.

        Raises FrameGone when Kafka no longer holds it, KafkaError (a timeout among them) when
        the broker does not answer: then nobody knows yet, and the frame is asked for again later.
        """
        tp = TopicPartition(frame.topic, frame.partition)
        partitions = self.consumer.partitions_for_topic(frame.topic)
        if partitions is not None and frame.partition not in partitions:
            # asked before the offsets below, whose metadata request would create a missing topic
            raise FrameGone(f"{frame.topic} has no partition {frame.partition} (deleted?)")
        first, end = self._offsets.get(tp, (0, 0))
        if not first <= frame.offset < end:
            # asked only for a frame outside what the partition held when last asked. Within it, a frame
            # retention has deleted since is found below all the same: the fetch then starts elsewhere.
            timeout_ms = int(timeout_s * 1000)
            first = self.consumer.beginning_offsets([tp], timeout_ms=timeout_ms)[tp]
            end = self.consumer.end_offsets([tp], timeout_ms=timeout_ms)[tp]
            self._offsets[tp] = (first, end)
            if not first <= frame.offset < end:
                raise FrameGone(
                    f"{frame.topic}/{frame.partition} holds offsets {first} to {end - 1}, not {frame.offset}")
        self.consumer.assign([tp])
        self.consumer.seek(tp, frame.offset)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for record in self.consumer.poll(timeout_ms=200, max_records=1).get(tp, []):
                if record.offset != frame.offset:
                    raise FrameGone(f"offset {frame.offset} of {frame.topic}/{frame.partition} is no longer kept")
                try:
                    found = FrameMessage.from_record(record.key, record.value, record.headers)
                except SchemaError as exc:
                    raise FrameGone(f"the record at that offset is not a frame: {exc}") from None
                if (found.camera_id, found.seq) != (frame.camera_id, frame.seq):
                    raise FrameGone(f"the record at that offset is {found.camera_id}/{found.seq}")
                return found
        return None

    def close(self) -> None:
        self.consumer.close(autocommit=False)


class EvidenceCollector:
    """Keeps the frames alerts and review items asked for; ``on_outcome(line, outcome, evicted, freed_bytes)``."""

    def __init__(
        self,
        store: RedisAlertStore,
        reader: FrameReader,
        on_outcome: Callable[[str, str, int, int], None] | None = None,
    ) -> None:
        self.store = store
        self.reader = reader
        self.on_outcome = on_outcome or (lambda line, outcome, evicted, freed: None)
        self._empty_reads: dict[str, int] = {}

    def step(self, count: int = 20) -> int:
        """Read back and keep up to ``count`` wanted frames; returns how many were settled."""
        settled = 0
        for wanted in self.store.wanted_evidence(count):
            if self._settle(wanted):
                settled += 1
        return settled

    def _settle(self, wanted: WantedEvidence) -> bool:
        try:
            frame = self.reader.read(wanted.frame)
        except FrameGone as exc:
            log.warning("evidence frame is gone", owner=wanted.owner, frame=wanted.frame.name, reason=str(exc))
            return self._give_up(wanted)
        except KafkaError as exc:
            # the broker is away: the frame is no less there, so it is not given up on
            log.warning(
                "evidence frame not read; trying again", owner=wanted.owner, error=f"{type(exc).__name__}: {exc}"
            )
            return False
        if frame is None:
            misses = self._empty_reads[wanted.field] = self._empty_reads.get(wanted.field, 0) + 1
            return self._give_up(wanted) if misses >= GIVE_UP_AFTER else False
        self._empty_reads.pop(wanted.field, None)
        kept = self.store.keep_evidence(wanted, frame.payload)
        self.on_outcome(wanted.line_id, kept.outcome, kept.evicted, kept.freed_bytes)
        if kept.evicted:
            log.info(
                "evidence evicted to stay within the line's bound",
                line=wanted.line_id,
                evicted=kept.evicted,
                freed_bytes=kept.freed_bytes,
            )
        return True

    def _give_up(self, wanted: WantedEvidence) -> bool:
        self._empty_reads.pop(wanted.field, None)
        self.store.drop_wanted(wanted)
        self.on_outcome(wanted.line_id, "missing", 0, 0)
        return True

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    if not self.step():
                        stop.wait(IDLE_WAIT_S)
                except redis.RedisError as exc:
                    log.warning("evidence collector cannot reach redis; retrying", error=str(exc))
                    stop.wait(1.0)
        finally:
            self.reader.close()
