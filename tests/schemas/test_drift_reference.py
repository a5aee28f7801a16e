"""schemas/drift.py: the calibration reference's bins, the PSI, and the drift event's contract."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from schemas.drift import DriftEvent, DriftReference, ScoreReference, population_stability_index
from schemas.errors import UnsupportedSchemaVersion


def test_quantile_bins_hold_a_tenth_of_the_scores_each():
    scores = [i / 1000 for i in range(1000)]
    ref = ScoreReference.from_scores(scores, threshold=0.9)
    assert len(ref.edges) == 9 and ref.shares == pytest.approx([0.1] * 10)
    assert ref.above_threshold_rate == pytest.approx(0.1) and ref.frames == 1000
    assert [ref.bin_of(s) for s in (0.0, 0.0999, 0.1, 0.95, 1.0)] == [0, 0, 1, 9, 9]


def test_tied_scores_merge_bins_instead_of_making_empty_ones():
    ref = ScoreReference.from_scores([0.01] * 90 + [0.8] * 10, threshold=0.5)
    assert ref.edges == [0.8] and ref.shares == pytest.approx([0.9, 0.1])
    assert ScoreReference.from_scores([0.3] * 5, threshold=0.5).shares == [1.0]
    with pytest.raises(ValueError, match="at least one score"):
        ScoreReference.from_scores([], threshold=0.5)


def test_psi_is_zero_for_the_same_shares_and_grows_with_the_shift():
    e = [0.25, 0.25, 0.25, 0.25]
    assert population_stability_index(e, e) == 0.0
    small = population_stability_index(e, [0.3, 0.25, 0.25, 0.2])
    large = population_stability_index(e, [0.7, 0.1, 0.1, 0.1])
    assert 0 < small < 0.1 < 0.25 < large
    # worked by hand: (0.7-0.25) ln(0.7/0.25) + 3 (0.1-0.25) ln(0.1/0.25)
    assert large == pytest.approx(0.45 * math.log(2.8) + 3 * -0.15 * math.log(0.4))
    assert math.isfinite(population_stability_index(e, [1.0, 0.0, 0.0, 0.0]))  # empty bins are floored
    with pytest.raises(ValueError, match="bins"):
        population_stability_index(e, [1.0])


@pytest.mark.parametrize("change, message", [
    ({"shares": [0.5]}, "need 2 shares"),
    ({"edges": [0.5, 0.4], "shares": [0.3, 0.3, 0.4]}, "strictly ascending"),
    ({"shares": [0.5, 0.6]}, "sum to 1"),
])
def test_an_inconsistent_reference_is_refused(change, message):
    good = {"edges": [0.5], "shares": [0.5, 0.5], "threshold": 0.5, "above_threshold_rate": 0.5, "frames": 2}
    with pytest.raises(ValidationError, match=message):
        ScoreReference.model_validate(good | change)
    with pytest.raises(ValidationError):
        DriftReference.model_validate({"format": 2, "questions": {}})


def test_drift_event_round_trips_and_refuses_other_versions():
    event = DriftEvent(event="raised", line_id="line-a", camera_id="cam-1", question_id="scratch", model_id="m",
                       psi=0.4, above_threshold_rate=0.3, reference_above_threshold_rate=0.05, window_frames=500,
                       reasons=["PSI 0.400 > 0.25"], ts_ns=1)
    assert DriftEvent.from_json(event.to_json()) == event
    with pytest.raises(UnsupportedSchemaVersion):
        DriftEvent.from_json(event.model_copy(update={"schema_version": 2}).to_json())
