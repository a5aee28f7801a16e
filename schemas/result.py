"""The inspection result: one per frame on the ``results`` topic, keyed by camera.

Version 2 added ``part``: which part the frame shows. A frame that shows no part in the
camera's inspection zone is ``skipped`` (``skip_reason`` "no part in the zone"): the model
does not run on it, and it tells the alert service that the part before it has left.

Version 3 added ``frame``: where the frame itself lies on the ``frames`` topic (topic,
partition, offset). The alert service reads a frame back by it only when it keeps the frame
as evidence (an alert's best frames, a sampled passed part), so a result stays a few hundred
bytes and the full-resolution JPEG never travels twice on the hot path.
"""

from __future__ import annotations

from enum import Enum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from schemas.envelope import VersionedMessage
from schemas.frame import Id
from schemas.part import PartObservation


class ResultStatus(str, Enum):
    ok = "ok"  # the frame was scored
    skipped = "skipped"  # deliberately not scored (see skip_reason); still one result per frame


class QuestionScore(BaseModel):
    """P(yes) for one question of the line."""

    model_config = ConfigDict(extra="forbid")

    question_id: Id
    score: float = Field(ge=0.0, le=1.0)
    threshold: float = Field(
        ge=0.0, le=1.0, description="the bundle/line threshold: a part is flagged when its aggregate reaches it")
    defect_type: str
    above_threshold: bool


class FrameRef(BaseModel):
    """Where a frame lies on Kafka: enough to read that one record back by offset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: str = Field(min_length=1, max_length=249)
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)


class Timing(BaseModel):
    """Where the time went, in milliseconds."""

    model_config = ConfigDict(extra="forbid")

    queue_ms: float = 0.0  # waiting in the dynamic batcher
    decode_ms: float = 0.0
    model_ms: float = 0.0  # encoder + all questions, divided by the batch's frames
    batch_size: int = 0
    capture_to_result_ms: float = 0.0


class InspectionResult(VersionedMessage):
    SCHEMA_VERSION: ClassVar[int] = 3
    KIND: ClassVar[str] = "inspection-result"

    schema_version: int = 3

    line_id: Id
    camera_id: Id
    seq: int = Field(ge=0)
    capture_ns: int = Field(ge=0)
    status: ResultStatus = ResultStatus.ok
    skip_reason: str | None = None
    part: PartObservation | None = None  # None: no part tracking on this camera, or no part in view
    frame: FrameRef | None = Field(None, description="the frame's record on the frames topic (None: not from Kafka)")
    model_id: str
    worker_id: str
    scores: list[QuestionScore] = Field(default_factory=list)
    timing: Timing = Field(default_factory=Timing)
    # A small JPEG of the frame, base64, present only when some question is above
    # its threshold, so the alert service can show what triggered an alert without
    # every result carrying an image.
    thumbnail_jpeg_b64: str | None = None

    def record_key(self) -> bytes:
        return self.camera_id.encode()
