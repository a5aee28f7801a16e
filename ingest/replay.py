"""Replay recordings onto the frames topic, deterministically.

Each recording is published as its own line and camera (from its ``meta.json``), with
``mode=replay`` so workers inspect every frame. The same recording always yields the same
records: key = camera id, value = the recorded JPEG bytes, and ``seq = loop * span + seq``
where ``span`` is the recording's last seq + 1, so loop 0 keeps the recorded sequence
numbers (ground truth lines up by seq) and later loops continue without collisions.

``capture_ns`` is the publish time by default (``timestamps="publish"``), so end-to-end
latency is measurable on a replay exactly as on a live camera; it is the one field that
differs between two replays. ``timestamps="recorded"`` keeps the recorded capture times
(shifted by whole loop periods when looping) for fully identical records.

Replay uses a ``block`` buffer: if Kafka is slow or away, reading waits, nothing is dropped.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

from runtime.log import get_logger
from schemas.config import PatchsightConfig
from schemas.frame import FrameMessage, FrameMode

from ingest.buffer import FrameBuffer
from ingest.publisher import FramePublisher, IngestCounters, publish_from
from ingest.recording import Recording, RecordingError

Timestamps = Literal["publish", "recorded"]


@dataclass
class ReplayResult:
    frames: int  # handed to the producer
    counters: dict[str, int]  # published / failed / downscaled / rejected after the final flush
    stopped: bool  # stop was requested before the end


def replay_frames(
    recording: Recording, *, loop_index: int = 0, timestamps: Timestamps = "publish"
) -> Iterator[tuple[int, FrameMessage]]:
    """Yield ``(offset_ns, frame)`` for one pass over ``recording``: the frames replay publishes.

    ``offset_ns`` is when the frame is due after the start of the replay at original pace.
    With ``timestamps="publish"``, ``capture_ns`` is 0 here; ``replay`` stamps it when the
    frame is queued for publishing.
    """
    meta = recording.meta
    entries = recording.entries
    span = entries[-1].seq + 1
    first_ns = entries[0].capture_ns
    period_ns = entries[-1].capture_ns - first_ns + round(1e9 / meta.fps)
    for entry, jpeg in recording.frames():
        offset = loop_index * period_ns + entry.capture_ns - first_ns
        yield offset, FrameMessage(
            line_id=meta.line_id,
            camera_id=meta.camera_id,
            seq=loop_index * span + entry.seq,
            capture_ns=entry.capture_ns + loop_index * period_ns if timestamps == "recorded" else 0,
            width=meta.width,
            height=meta.height,
            mode=FrameMode.replay,
            payload=jpeg,
        )


REPLAY_CLOSE_S = 120.0  # the producer's delivery timeout (publisher.producer_settings)


def replay(
    recordings: list[str | Path],
    config: PatchsightConfig,
    *,
    speed: float | None = None,
    loop: bool | int = False,
    timestamps: Timestamps = "publish",
    stop: threading.Event | None = None,
    on_frame: Callable[[FrameMessage], None] | None = None,
) -> ReplayResult:
    """Publish recordings to ``config.kafka.topics.frames``.

    ``speed``: None publishes as fast as Kafka takes frames; 1.0 at the original pace; 4.0
    four times faster. ``loop``: False plays once, an int plays that many times, True
    loops until ``stop`` is set. ``on_frame`` is called after each frame is handed to the
    producer (progress bars). Raises ``RecordingError`` for an unreadable or empty recording
    before anything is published.
    """
    if speed is not None and speed <= 0:
        raise ValueError("speed must be positive (or None for as fast as possible)")
    passes: int | None = None if loop is True else (1 if loop is False else int(loop))
    opened = [Recording(p) for p in recordings]
    for rec in opened:
        if not rec.entries:
            raise RecordingError(f"{rec.path} holds no frames")
    stop = stop or threading.Event()
    log = get_logger("ingest.replay", recordings=len(opened), speed=speed, loop=loop)
    counters = IngestCounters()
    buffer: FrameBuffer[FrameMessage] = FrameBuffer(config.ingest.buffer_frames, "block", name="replay")
    publisher = FramePublisher(
        config.kafka, config.ingest, counters, client_id=f"{config.kafka.client_id_prefix}-replay", stop=stop
    )
    readers = _Readers(len(opened), buffer, counters, stop, speed, timestamps, passes, on_frame)
    threads = [threading.Thread(target=readers.read, args=(rec,), daemon=True, name=f"replay-{rec.path.name}")
               for rec in opened]
    for t in threads:
        t.start()
    log.info("replay started", cameras=[r.meta.camera_id for r in opened], frames=sum(len(r) for r in opened))
    try:
        publish_from(buffer, publisher, retry=True)
    finally:
        stopped = stop.is_set()
        buffer.close()
        for t in threads:
            t.join(timeout=5)
        # Replay loses nothing: wait out a broker outage at the end as long as the producer
        # itself keeps retrying (its delivery timeout), not a fixed short time.
        publisher.close(timeout=REPLAY_CLOSE_S)
    result = ReplayResult(frames=readers.handed, counters=counters.snapshot(), stopped=stopped)
    log.info("replay finished", frames=readers.handed, stopped=stopped, **result.counters)
    return result


class _Readers:
    """The reader threads of one replay: each hands its recording's frames to the shared buffer, paced.

    The last reader to finish closes the buffer, which ends the publishing.
    """

    def __init__(
        self,
        count: int,
        buffer: FrameBuffer[FrameMessage],
        counters: IngestCounters,
        stop: threading.Event,
        speed: float | None,
        timestamps: Timestamps,
        passes: int | None,
        on_frame: Callable[[FrameMessage], None] | None,
    ) -> None:
        self.buffer, self.counters, self.stop, self.on_frame = buffer, counters, stop, on_frame
        self.speed, self.timestamps, self.passes = speed, timestamps, passes
        self.handed = 0
        self._lock = threading.Lock()
        self._left = count
        self._start_ns = time.monotonic_ns()

    def read(self, rec: Recording) -> None:
        try:
            for loop_index in itertools.count() if self.passes is None else range(self.passes):
                for offset_ns, frame in replay_frames(rec, loop_index=loop_index, timestamps=self.timestamps):
                    if not self._hand(offset_ns, frame):
                        return
        finally:
            with self._lock:
                self._left -= 1
                if self._left == 0:
                    self.buffer.close()

    def _hand(self, offset_ns: int, frame: FrameMessage) -> bool:
        """Wait for the frame's time and put it in the buffer; False once stopped."""
        if self.stop.is_set():
            return False
        if self.speed is not None:
            wait_s = (self._start_ns + offset_ns / self.speed - time.monotonic_ns()) / 1e9
            if wait_s > 0 and self.stop.wait(wait_s):
                return False
        if self.timestamps == "publish":
            frame = frame.model_copy(update={"capture_ns": time.time_ns()})
        while not self.buffer.put(frame, timeout=0.2):
            if self.stop.is_set() or self.buffer.closed:
                return False
        self.counters.add("captured")
        with self._lock:
            self.handed += 1
        if self.on_frame is not None:
            self.on_frame(frame)
        return True
