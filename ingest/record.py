"""Make recordings: from a camera's source, or from what is already on a frames topic.

Both write the format of ``ingest.recording`` (docs/recording-format.md). Recordings made
here carry no ground truth; synthetic recordings (``ingest.synth``) do.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from runtime.log import get_logger
from schemas.config import CameraConfig, PatchsightConfig
from schemas.errors import SchemaError
from schemas.frame import FrameMessage

from ingest.publisher import encode_jpeg
from ingest.recording import IndexEntry, RecordingMeta, RecordingWriter
from ingest.sources import ReconnectingSource

Progress = Callable[[int], None]


def _done(count: int, frames: int | None, started: float, duration_s: float | None) -> bool:
    return (frames is not None and count >= frames) or (
        duration_s is not None and time.monotonic() - started >= duration_s
    )


def record_camera(
    line_id: str,
    camera: CameraConfig,
    config: PatchsightConfig,
    out: str | Path,
    *,
    frames: int | None = None,
    duration_s: float | None = None,
    stop: threading.Event | None = None,
    on_frame: Progress | None = None,
) -> int:
    """Record ``camera``'s source at its fps until ``frames`` or ``duration_s`` is reached (or ``stop``).

    Returns the number of frames written. Raises ``CameraLost`` if the source never comes back.
    """
    if camera.source is None:
        raise ValueError(f"camera {camera.id} has no source to record from")
    stop = stop or threading.Event()
    log = get_logger("ingest.record", line=line_id, camera=camera.id)
    source = ReconnectingSource(camera.source, config.ingest, stop=stop.is_set, camera=camera.id)
    interval = 1.0 / camera.fps
    writer: RecordingWriter | None = None
    started = next_due = time.monotonic()
    try:
        while not stop.is_set() and not _done(writer.count if writer else 0, frames, started, duration_s):
            if not source.live:
                stop.wait(max(0.0, next_due - time.monotonic()))
            image = source.read()
            if image is None:
                break
            now = time.monotonic()
            if source.live and now < next_due:
                continue
            next_due = next_due + interval if now - next_due < interval else now + interval
            capture_ns = time.time_ns()
            jpeg = encode_jpeg(image, camera.jpeg_quality, camera.resize)
            if writer is None:
                width, height = camera.resize or (image.shape[1], image.shape[0])
                meta = RecordingMeta(
                    line_id=line_id, camera_id=camera.id, fps=camera.fps, width=width, height=height,
                    source=f"camera {camera.source.describe()}", created_ns=time.time_ns(),
                )
                writer = RecordingWriter(out, meta)
            writer.append(writer.count, capture_ns, jpeg)
            if on_frame is not None:
                on_frame(writer.count)
    finally:
        source.close()
        if writer is not None:
            writer.close()
    count = writer.count if writer else 0
    log.info("recording written", path=str(out), frames=count)
    return count


def record_topic(
    config: PatchsightConfig,
    out: str | Path,
    *,
    camera_id: str | None = None,
    frames: int | None = None,
    duration_s: float | None = None,
    from_beginning: bool = True,
    idle_timeout_s: float | None = 10.0,
    stop: threading.Event | None = None,
    on_frame: Progress | None = None,
) -> dict[str, int]:
    """Record frames from the frames topic; returns frames written per camera.

    With ``camera_id`` the recording is ``out`` itself; without, each camera found gets its
    own recording ``out/<camera id>``. ``frames`` counts all cameras together. Reading stops
    at ``frames``, ``duration_s``, ``stop``, or after ``idle_timeout_s`` without a new record.
    Records that are not valid frames are skipped and counted in the log.
    """
    from kafka import KafkaConsumer

    stop = stop or threading.Event()
    out = Path(out)
    topic = config.kafka.topics.frames
    log = get_logger("ingest.record", topic=topic)
    consumer = KafkaConsumer(
        topic,
        **config.kafka.client_kwargs(),
        client_id=f"{config.kafka.client_id_prefix}-record",
        group_id=None,  # a recorder must not take partitions away from the inference workers
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        fetch_max_bytes=max(52_428_800, config.ingest.max_message_bytes * 2),
        max_partition_fetch_bytes=max(1_048_576, config.ingest.max_message_bytes * 2),
    )
    writers: dict[str, RecordingWriter] = {}
    total = malformed = 0
    started = last_record = time.monotonic()
    try:
        while not stop.is_set() and not _done(total, frames, started, duration_s):
            batches = consumer.poll(timeout_ms=200)
            if not batches:
                if idle_timeout_s is not None and time.monotonic() - last_record >= idle_timeout_s:
                    break
                continue
            last_record = time.monotonic()
            for records in batches.values():
                for record in records:
                    if _done(total, frames, started, duration_s):
                        break
                    try:
                        frame = FrameMessage.from_record(record.key, record.value, record.headers)
                    except SchemaError as exc:
                        malformed += 1
                        log.warning("not a frame, skipped", offset=record.offset, error=str(exc))
                        continue
                    if camera_id is not None and frame.camera_id != camera_id:
                        continue
                    writer = writers.get(frame.camera_id)
                    if writer is None:
                        meta = RecordingMeta(
                            line_id=frame.line_id, camera_id=frame.camera_id, fps=10.0,  # a placeholder: _finish sets the rate the capture times show
                            width=frame.width, height=frame.height, source=f"topic {topic}",
                            created_ns=time.time_ns(),
                        )
                        path = out if camera_id is not None else out / frame.camera_id
                        writer = writers[frame.camera_id] = RecordingWriter(path, meta)
                    writer.append(frame.seq, frame.capture_ns, frame.payload)
                    total += 1
                    if on_frame is not None:
                        on_frame(total)
    finally:
        consumer.close()
        for writer in writers.values():
            _finish(writer)
    counts = {cam: w.count for cam, w in writers.items()}
    log.info("recordings written", path=str(out), frames=counts, malformed=malformed)
    return counts


def _finish(writer: RecordingWriter) -> None:
    """Close ``writer`` and set its fps from the capture times it saw (what replay paces by)."""
    writer.close()
    index = (writer.path / "index.jsonl").read_text().splitlines()
    if len(index) >= 2:
        first, last = IndexEntry.model_validate_json(index[0]), IndexEntry.model_validate_json(index[-1])
        elapsed = (last.capture_ns - first.capture_ns) / 1e9
        if elapsed > 0:
            writer.meta.fps = round((len(index) - 1) / elapsed, 3)
            (writer.path / "meta.json").write_text(writer.meta.model_dump_json(indent=2) + "\n")
