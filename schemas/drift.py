"""Score drift: the calibration reference a bundle carries, and the drift event the alert service raises.

``model calibrate`` stores, per question, how the scores the worker serves were distributed on
the calibration recordings (``ScoreReference``: shares of frames between fixed bin edges, and the
share at or above the question's threshold) in ``bundle.json`` as ``score_reference``. The alert
service compares the live scores of each camera with it over a sliding window (alerts/drift.py)
and raises a ``DriftEvent`` when the population stability index or the above-threshold rate
leaves its bound; one event per drift condition, and a ``cleared`` event when it ends.
"""

from __future__ import annotations

import bisect
import math
from typing import ClassVar, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.envelope import VersionedMessage
from schemas.frame import Id

REFERENCE_BINS = 10  # quantile bins of the calibration scores: deciles, the usual PSI layout
# An empty bin would make the PSI infinite; both sides are floored at this share, as is usual for PSI.
PSI_FLOOR = 1e-4


class ScoreReference(BaseModel):
    """How one question's served scores were distributed on the calibration frames."""

    model_config = ConfigDict(extra="forbid")

    edges: list[float] = Field(description="inner bin edges, ascending: bin i holds edges[i-1] <= score < edges[i]")
    shares: list[float] = Field(description="share of the calibration frames in each bin (len(edges) + 1)")
    # Not capped at 1: a question whose calibration saw no defect gets a threshold just above every
    # clean score, which is above 1 where the scores saturate (an anomaly question's can).
    threshold: float = Field(ge=0.0, description="the threshold the above-threshold rate counts against")
    above_threshold_rate: float = Field(ge=0.0, le=1.0)
    frames: int = Field(ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> "ScoreReference":
        if len(self.shares) != len(self.edges) + 1:
            raise ValueError(f"{len(self.edges)} edges need {len(self.edges) + 1} shares, got {len(self.shares)}")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError("edges must be strictly ascending")
        if abs(sum(self.shares) - 1.0) > 1e-3:
            raise ValueError(f"shares must sum to 1, got {sum(self.shares):.4f}")
        return self

    def bin_of(self, score: float) -> int:
        return bisect.bisect_right(self.edges, score)

    @classmethod
    def from_scores(cls, scores: Sequence[float], threshold: float, bins: int = REFERENCE_BINS) -> "ScoreReference":
        """Quantile bins of ``scores`` (ties merge bins, so a question whose scores pile up gets fewer)."""
        if not len(scores):
            raise ValueError("a score reference needs at least one score")
        ordered = sorted(float(s) for s in scores)
        n = len(ordered)
        edges: list[float] = []
        for i in range(1, bins):
            edge = ordered[min(n - 1, (i * n) // bins)]
            if edge > ordered[0] and (not edges or edge > edges[-1]):
                edges.append(edge)
        counts = [0] * (len(edges) + 1)
        for s in ordered:
            counts[bisect.bisect_right(edges, s)] += 1
        return cls(edges=edges, shares=[c / n for c in counts], threshold=threshold,
                   above_threshold_rate=sum(s >= threshold for s in ordered) / n, frames=n)


def population_stability_index(expected: Sequence[float], actual: Sequence[float]) -> float:
    """PSI = sum((a - e) * ln(a / e)) over bins of two share vectors (each floored at PSI_FLOOR).

    Rule of thumb: under 0.1 no shift, 0.1-0.25 moderate, over 0.25 a large shift.
    """
    if len(expected) != len(actual):
        raise ValueError(f"{len(expected)} reference bins, {len(actual)} live bins")
    total = 0.0
    for e, a in zip(expected, actual):
        e, a = max(e, PSI_FLOOR), max(a, PSI_FLOOR)
        total += (a - e) * math.log(a / e)
    return total


class DriftReference(BaseModel):
    """``bundle.json``'s ``score_reference``: per question id, the calibration scores' distribution."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    questions: dict[str, ScoreReference] = Field(default_factory=dict)
    source: str = Field("", description="what the reference was computed from (the calibration recordings)")


class DriftEvent(VersionedMessage):
    """A camera's scores on one question left (``raised``) or came back within (``cleared``) the drift bounds."""

    SCHEMA_VERSION: ClassVar[int] = 1
    KIND: ClassVar[str] = "drift-event"

    schema_version: int = 1
    event: Literal["raised", "cleared"]
    line_id: Id
    camera_id: Id
    question_id: Id
    model_id: str
    psi: float = Field(ge=0.0, description="population stability index of the window against the reference")
    above_threshold_rate: float = Field(ge=0.0, le=1.0, description="share of the window's frames at or above threshold")
    reference_above_threshold_rate: float = Field(ge=0.0, le=1.0)
    window_frames: int = Field(ge=1)
    reasons: list[str] = Field(default_factory=list, description="which bound was passed, in words")
    ts_ns: int = Field(ge=0)

    def record_key(self) -> bytes:
        return self.camera_id.encode()
