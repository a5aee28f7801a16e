"""Parts: which part a frame shows, and how the frames of one part become one verdict per question.

A camera sees each part in several consecutive frames. The worker says which part a frame
shows (``PartObservation``: from the camera's or a PLC's ``ps-part-id`` header when the frame
has one, otherwise from its tracker), and the alert service decides once per part: per
question it aggregates the P(yes) of the part's frames (``PartScores``) and compares the
aggregate with the question's part threshold, which ``patchsight model calibrate`` chose so
that the share of good parts flagged by any question stays within the line's false-alarm
budget. Calibration and the alert service use this same module, so the verdict the
calibration measured is the verdict the line gets.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from schemas.frame import Id

PartSource = Literal["header", "tracker"]
# How a part's frame scores become one score per question:
#   mean      the mean P(yes) over the part's frames;
#   top3      the mean of its three highest frames (all of them when fewer): a defect seen
#             well in a few frames is not averaged away by frames that show it badly;
#   noisy_or  1 - prod(1 - p): "some frame shows it"; rises with the number of frames.
PartAggregate = Literal["mean", "top3", "noisy_or"]
PART_AGGREGATES: tuple[str, ...] = ("mean", "top3", "noisy_or")
TOP_K = 3
_EPS = 1e-6


class PartObservation(BaseModel):
    """The part a frame shows, as the worker saw it; carried by the frame's result."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    part_id: Id = Field(description="unique per line when from a header, per camera when tracked")
    source: PartSource
    box: tuple[int, int, int, int] | None = Field(
        None, description="the part's bounding box in frame pixels (x0, y0, x1, y1), when tracked")
    aggregate: PartAggregate = Field("mean", description="how the alert service combines the part's frames")


def aggregate_scores(scores: Sequence[float], method: PartAggregate) -> float:
    """One score from a part's frame scores for one question (0.0 for no frames)."""
    if not len(scores):
        return 0.0
    return PartScores.of(scores).value(method)


class PartScores(BaseModel):
    """Running sums of one question's frame scores on one part: enough for every aggregate.

    Kept in the alert service's Redis state between frames, so it holds sums and the top
    scores, not every frame.
    """

    model_config = ConfigDict(extra="forbid")

    frames: int = 0
    total: float = 0.0
    log_none: float = 0.0  # sum of log(1 - p): the log of "no frame shows it"
    top: list[float] = Field(default_factory=list)  # the TOP_K highest, descending

    @classmethod
    def of(cls, scores: Sequence[float]) -> "PartScores":
        acc = cls()
        for score in scores:
            acc.add(float(score))
        return acc

    def add(self, score: float) -> None:
        self.frames += 1
        self.total += score
        self.log_none += math.log(max(1.0 - score, _EPS))
        self.top = sorted([*self.top, score], reverse=True)[:TOP_K]

    def value(self, method: PartAggregate) -> float:
        if self.frames == 0:
            return 0.0
        if method == "mean":
            return self.total / self.frames
        if method == "top3":
            return sum(self.top) / len(self.top)
        if method == "noisy_or":
            return 1.0 - math.exp(self.log_none)
        raise ValueError(f"unknown part aggregate {method!r}; known: {', '.join(PART_AGGREGATES)}")
