"""The one learning-rate schedule that pretraining and finetuning share."""

from __future__ import annotations

import pytest

from training.schedule import budget_progress, learning_rate


def test_the_learning_rate_warms_up_then_stays_or_decays_by_the_first_budget_to_run_out():
    def rate(decay: str, step: int, elapsed_s: float) -> float:  # finetune's budget: 100 steps, 1000 s
        return learning_rate(step, peak=1.0, warmup_steps=10, decay=decay,  # type: ignore[arg-type]
                             progress=budget_progress(step, 100, elapsed_s, 1000.0))

    assert rate("none", 5, 0.0) == pytest.approx(0.5)
    assert rate("none", 100, 999.0) == pytest.approx(1.0)
    assert rate("cosine", 50, 0.0) == pytest.approx(0.5)  # half the steps: half the rate
    assert rate("cosine", 20, 500.0) == pytest.approx(0.5)  # half the time, fewer steps: time decides
    assert rate("cosine", 100, 0.0) == pytest.approx(0.0, abs=1e-12)
    assert rate("cosine", 30, 2000.0) == pytest.approx(0.0, abs=1e-12)  # past the time limit: stays at 0


def test_pretraining_warms_up_to_its_peak_then_decays_to_its_floor():
    def rate(step: int, progress: float) -> float:
        return learning_rate(step, peak=1.0, warmup_steps=4, progress=progress, floor=0.1)

    assert [rate(n, 0.0) for n in (1, 2, 3)] == pytest.approx([0.25, 0.5, 0.75])
    assert rate(4, 0.5) == 1.0  # the last warmup step runs at the peak, whatever the progress
    assert rate(5, 0.5) == pytest.approx(0.55)  # halfway from the peak to the floor
    assert rate(9, 1.0) == pytest.approx(0.1) and rate(9, 3.0) == pytest.approx(0.1)
