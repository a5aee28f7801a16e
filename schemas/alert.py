"""The defect alert: what the alert service stores in Redis and announces.

Version 2: an alert is about one defective part (``part_id``) and lists every question whose
part score reached its threshold (``findings``); ``question_id``, ``score`` and ``threshold``
are those of its strongest finding. Cameras without part tracking still raise one alert per
question with the k-of-n debounce; their alerts have no ``part_id`` and one finding.
"""

from __future__ import annotations

import hashlib
from enum import Enum
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from schemas.envelope import VersionedMessage
from schemas.frame import Id


class AlertState(str, Enum):
    open = "open"
    acknowledged = "acknowledged"
    resolved = "resolved"


# Operators drive alerts forward only; anything else is an illegal transition.
ALLOWED_TRANSITIONS: dict[AlertState, set[AlertState]] = {
    AlertState.open: {AlertState.acknowledged, AlertState.resolved},
    AlertState.acknowledged: {AlertState.resolved},
    AlertState.resolved: set(),
}


def alert_id_for(line_id: str, camera_id: str, question_id: str, first_seq: int, epoch: int = 0) -> str:
    """Derive the alert id from what caused it, so a redelivered result maps to the same alert.

    ``epoch`` counts restarts of the camera's sequence numbers (a publisher that
    restarts from seq 0), so a new defect at a reused seq gets a new id; epoch 0
    gives the same id as before the parameter existed.
    """
    cause = f"{line_id}\x1f{camera_id}\x1f{question_id}\x1f{first_seq}"
    if epoch:
        cause += f"\x1f{epoch}"
    cause = cause.encode()
    return hashlib.sha256(cause).hexdigest()[:20]


def part_alert_id(line_id: str, part_id: str, epoch: int = 0) -> str:
    """The alert id of a defective part: one per part and line, whichever camera or question flags it."""
    cause = f"{line_id}\x1fpart\x1f{part_id}"
    if epoch:
        cause += f"\x1f{epoch}"
    return hashlib.sha256(cause.encode()).hexdigest()[:20]


class Finding(BaseModel):
    """One question whose score on the part reached its threshold."""

    model_config = ConfigDict(extra="forbid")

    question_id: Id
    question: str
    defect_type: str
    score: float = Field(ge=0.0, le=1.0, description="the part's aggregate score (per frame for k-of-n alerts)")
    threshold: float = Field(ge=0.0, le=1.0)
    camera_id: Id


class DefectAlert(VersionedMessage):
    SCHEMA_VERSION: ClassVar[int] = 2
    KIND: ClassVar[str] = "defect-alert"

    schema_version: int = 2
    alert_id: str
    line_id: Id
    camera_id: Id
    part_id: Id | None = Field(None, description="the defective part; None for k-of-n alerts")
    findings: list[Finding] = Field(default_factory=list, description="every question over its threshold")
    question_id: Id
    question: str
    defect_type: str
    score: float = Field(ge=0.0, le=1.0, description="highest score seen while the alert was raised")
    threshold: float = Field(ge=0.0, le=1.0)
    first_seq: int = Field(ge=0, description="first frame of the k-of-n window that raised it")
    last_seq: int = Field(ge=0, description="frame that completed the k-of-n window")
    last_defect_seq: int | None = Field(None, ge=0, description="latest frame above threshold while the alert was active")
    first_capture_ns: int = Field(ge=0)
    trigger_capture_ns: int = Field(ge=0)
    raised_ns: int = Field(ge=0)
    model_id: str
    state: AlertState = AlertState.open
    acknowledged_by: str | None = None
    acknowledged_ns: int | None = None
    resolved_by: str | None = None
    resolved_ns: int | None = None

    @property
    def last_frame_seq(self) -> int:
        """The alert's last frame: its latest frame above threshold, else the one that raised it."""
        return self.last_defect_seq if self.last_defect_seq is not None else self.last_seq

    def record_key(self) -> bytes:
        return self.camera_id.encode()
