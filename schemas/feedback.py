"""Operator feedback: verdicts on alerts and on sampled passed parts, and the review sample itself.

An operator says of an alert that it was right (``confirmed``, optionally naming the defect
seen) or a false alarm, and of a passed part the sampler kept for review that it is good or
defective. Both are an ``OperatorVerdict``: one model, stored next to its subject in Redis
(docs/redis-keys.md); a verdict on an alert is also an event on the line's stream, pub/sub
channel and webhooks (docs/webhooks.md).
"""

from __future__ import annotations

import hashlib
from enum import Enum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.envelope import VersionedMessage
from schemas.frame import Id
from schemas.part import PartSource


class VerdictSubject(str, Enum):
    alert = "alert"  # an alert the service raised
    review = "review"  # a passed part the review sampler kept


class OperatorVerdict(VersionedMessage):
    """What an operator says of an alert or a reviewed part: is the part defective, and how."""

    SCHEMA_VERSION: ClassVar[int] = 1
    KIND: ClassVar[str] = "operator-verdict"

    schema_version: int = 1
    subject: VerdictSubject
    subject_id: str = Field(min_length=1, max_length=64)
    line_id: Id
    part_id: Id | None = None
    defective: bool = Field(description="alert: confirmed (true) or a false alarm; review: defective or good")
    defect_type: Id | None = Field(None, description="the defect the operator saw, when defective (may be a new one)")
    by: str = Field(min_length=1, max_length=64)
    ts_ns: int = Field(ge=0)

    @model_validator(mode="after")
    def _defect_only_when_defective(self) -> "OperatorVerdict":
        if self.defect_type is not None and not self.defective:
            raise ValueError("a defect type goes only with a defective verdict (confirmed / defective)")
        return self

    @property
    def label(self) -> str:
        """confirmed / false_alarm for an alert; defective / good for a reviewed part."""
        if self.subject == VerdictSubject.alert:
            return "confirmed" if self.defective else "false_alarm"
        return "defective" if self.defective else "good"

    def record_key(self) -> bytes:
        return self.line_id.encode()


class EvidenceFrame(BaseModel):
    """One frame kept as evidence: which camera and seq, and where it lies on the frames topic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    camera_id: Id
    seq: int = Field(ge=0)
    topic: str = Field(min_length=1, max_length=249)
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    # where the worker's tracker boxed the part on this frame (x0, y0, x1, y1, frame pixels): the part
    # view it scored, so a recording made from the evidence is read as the worker read it
    box: tuple[int, int, int, int] | None = None

    @property
    def name(self) -> str:
        """Its field in the evidence hash and its file name in the dashboard."""
        return f"{self.camera_id}:{self.seq}"


class ReviewItem(VersionedMessage):
    """A passed part the review sampler kept for an operator to look at."""

    SCHEMA_VERSION: ClassVar[int] = 1
    KIND: ClassVar[str] = "review-item"

    schema_version: int = 1
    review_id: str
    line_id: Id
    camera_id: Id
    part_id: Id
    source: PartSource
    part_key: str = Field(description="the part's record key (its alert id, had it been flagged)")
    closeness: float = Field(ge=0.0, description="the part's highest score/threshold ratio: 1.0 is at a threshold")
    scores: dict[str, float] = Field(description="every scored question's part score")
    thresholds: dict[str, float]
    first_seq: int = Field(ge=0)
    last_seq: int = Field(ge=0)
    first_capture_ns: int = Field(ge=0)
    model_id: str
    sampled_ns: int = Field(ge=0)
    evidence: list[EvidenceFrame] = Field(default_factory=list, description="frames asked for as evidence")

    def record_key(self) -> bytes:
        return self.line_id.encode()


def review_id_for(part_key: str, camera_id: str) -> str:
    """One review per part and camera (two cameras may pass the same part)."""
    return hashlib.sha256(f"{part_key}\x1f{camera_id}".encode()).hexdigest()[:20]
