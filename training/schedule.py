"""The learning-rate schedule of both training runs (``pretrain`` and ``finetune``).

A linear warmup to ``peak``, then the rate stays at ``peak`` (``decay="none"``) or follows a
cosine from ``peak`` down to ``floor`` (``decay="cosine"``). Runs are budgeted by steps and by
wall time; ``budget_progress`` says how much of the budget is used, whichever runs out first, so
that a time-limited run still ends at its floor instead of being cut off mid-decay.
"""

from __future__ import annotations

import math
from typing import Literal

Decay = Literal["none", "cosine"]


def budget_progress(step: int, max_steps: int, elapsed_s: float, time_limit_s: float) -> float:
    """The share of the run's budget used: steps or wall time, whichever is further along (may exceed 1)."""
    return max(step / max_steps, elapsed_s / time_limit_s)


def learning_rate(
    step: int, *, peak: float, warmup_steps: int, progress: float, decay: Decay = "cosine", floor: float = 0.0
) -> float:
    """The rate of the ``step``-th step, counted from 1.

    Steps 1..``warmup_steps`` rise linearly to ``peak`` (step ``warmup_steps`` runs at ``peak``);
    after them the rate is ``peak``, or with ``decay="cosine"`` it is
    ``floor + (peak - floor) * (1 + cos(pi * progress)) / 2``, ``progress`` clamped to 1.
    """
    if step <= warmup_steps:
        return peak * (step / warmup_steps)
    if decay == "none":
        return peak
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * min(1.0, progress)))
