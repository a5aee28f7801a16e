"""Parts offline: grouping frames into parts, the per-part report, thresholds for a false-alarm budget."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.part import PART_AGGREGATES, aggregate_scores
from training.parts import (
    REPORT_KEYS,
    PartTable,
    PartFlags,
    aggregate_parts,
    budgeted_thresholds,
    cross_validate,
    group_parts,
    independent_thresholds,
    part_report,
    part_report_from_flags,
    sum_reports,
)

# --- grouping -----------------------------------------------------------------------------------


def test_frames_are_grouped_by_part_with_the_alert_services_aggregates() -> None:
    qids = ["scratch", "crack"]
    keys = ["a", "a", None, "b", "a", "b", None]
    scores = np.array([[0.1, 0.9], [0.5, 0.2], [0.99, 0.99], [0.3, 0.3], [0.7, 0.1], [0.2, 0.6], [0.9, 0.9]])
    labels = np.array([[0, 1], [0, 1], [0, 0], [1, -1], [0, 1], [0, -1], [0, 0]])
    tables = aggregate_parts(scores, keys, labels, qids)
    assert set(tables) == set(PART_AGGREGATES)
    for method, table in tables.items():
        assert table.method == method
        assert table.keys == ["a", "b"]  # order of first frame; empty-belt frames are no part
        assert table.frames.tolist() == [3, 2]
        assert table.labels.tolist() == [[0, 1], [1, -1]]  # any yes -> 1; never answered -> -1
        for p, rows in enumerate(([0, 1, 4], [3, 5])):
            for j in range(2):
                assert table.scores[p, j] == pytest.approx(aggregate_scores(scores[rows, j].tolist(), method))
    assert tables["top3"].scores[0, 0] == pytest.approx((0.1 + 0.5 + 0.7) / 3)
    assert tables["noisy_or"].scores[1, 1] == pytest.approx(1 - 0.7 * 0.4)
    one = group_parts(scores, keys, labels, qids, "mean")
    np.testing.assert_allclose(one.scores, tables["mean"].scores)
    assert one.defective.tolist() == [True, True]


def test_grouping_by_part_key() -> None:
    # an empty-belt frame (key None), two frames of a part with a crack, a part that answers only
    # the scratch question, a frame without truth
    labels = np.array([[0, 0], [0, 1], [0, 1], [0, -1], [-1, -1]])
    keys = [None, "line-a/cam1@seed7#part1", "line-a/cam1@seed7#part1", "line-a/cam1@seed7#part2", None]
    table = group_parts(np.full((5, 2), 0.5), keys, labels, ["scratch", "crack"], "mean")
    assert table.labels.tolist() == [[0, 1], [0, -1]]
    assert table.defective.tolist() == [True, False]


def test_grouping_rejects_a_bad_method_and_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="unknown part aggregate"):
        aggregate_parts(np.zeros((2, 1)), ["a", "a"], np.zeros((2, 1)), ["q"], ("max",))
    with pytest.raises(ValueError, match="part keys"):
        aggregate_parts(np.zeros((2, 1)), ["a"], np.zeros((2, 1)), ["q"])


# --- the report ---------------------------------------------------------------------------------

QIDS = ["scratch", "crack", "label_left"]
# part: (defective for, flagged for)
PARTS = {
    "A": ({"scratch"}, {"scratch"}),  # caught
    "B": ({"crack"}, set()),  # missed
    "C": ({"crack"}, {"scratch"}),  # missed, flagged for a defect it does not have: wrong_defect
    "D": (set(), {"crack"}),  # good, flagged: a false alarm
    "E": (set(), set()),  # good, passed
    "F": ({"scratch", "crack"}, {"crack"}),  # caught (by crack); its scratch missed
}


def _row(parts: int, defective: int, caught: int, good: int, flagged: int, wrong: int) -> dict:
    return {"parts": parts, "defective": defective, "caught": caught, "missed": defective - caught, "good": good,
            "flagged": flagged, "detection_rate": None if defective == 0 else caught / defective,
            "false_alarm_rate": None if good == 0 else flagged / good, "wrong_defect": wrong}


EXPECTED = {
    "overall": _row(6, 4, 2, 2, 1, 1),
    "by_defect_type": {
        "scratch": _row(6, 2, 1, 2, 0, 1),  # F's scratch missed, F flagged for crack
        "crack": _row(6, 3, 1, 2, 1, 1),  # B missed unflagged, C missed but flagged for scratch
        "label_left": _row(6, 0, 0, 2, 0, 0),  # nothing defective: detection rate null
    },
}


def _table() -> tuple[PartTable, dict[str, float]]:
    truth = np.array([[q in PARTS[p][0] for q in QIDS] for p in PARTS], dtype=np.int8)
    flagged = np.array([[q in PARTS[p][1] for q in QIDS] for p in PARTS])
    scores = np.where(flagged, 0.8, 0.2)
    return PartTable(list(PARTS), QIDS, scores, truth, np.ones(len(PARTS), dtype=int)), dict.fromkeys(QIDS, 0.5)


def test_report_counts_every_key_on_a_hand_made_fixture() -> None:
    table, thresholds = _table()
    report = part_report(table, thresholds)
    assert report == EXPECTED
    assert list(report["overall"]) == list(REPORT_KEYS)
    for row in report["by_defect_type"].values():
        assert list(row) == list(REPORT_KEYS)
    assert report["overall"]["detection_rate"] == 0.5 and report["overall"]["false_alarm_rate"] == 0.5
    # JSON-able, with null (never NaN) where a rate has no denominator
    text = json.dumps(report, allow_nan=False)
    assert '"detection_rate": null' in text


def test_the_report_from_alerts_matches_the_report_from_scores() -> None:
    verdicts = [PartFlags(frozenset(d), frozenset(f)) for d, f in PARTS.values()]
    assert part_report_from_flags(verdicts, QIDS) == EXPECTED
    assert part_report_from_flags(list(PARTS.values()), QIDS) == EXPECTED  # (defects, flagged) pairs too


def test_rates_are_null_without_a_denominator() -> None:
    empty = part_report_from_flags([], QIDS)
    assert empty["overall"] == _row(0, 0, 0, 0, 0, 0)
    assert empty["overall"]["detection_rate"] is None and empty["overall"]["false_alarm_rate"] is None
    all_defective = part_report_from_flags([({"crack"}, {"crack"}), ({"scratch"}, set())], QIDS)
    assert all_defective["overall"]["false_alarm_rate"] is None
    assert all_defective["overall"]["detection_rate"] == 0.5
    assert all_defective["by_defect_type"]["label_left"]["detection_rate"] is None
    assert all_defective["by_defect_type"]["label_left"]["false_alarm_rate"] is None


def test_questions_of_one_defect_type_share_a_row_and_catch_each_others_parts() -> None:
    qids = ["scratch_top", "scratch_edge", "crack"]
    types = {"scratch_top": "scratch", "scratch_edge": "scratch", "crack": "crack"}
    report = part_report_from_flags([({"scratch_top"}, {"scratch_edge"}), (set(), {"scratch_top", "crack"})],
                                    qids, types)
    assert list(report["by_defect_type"]) == ["scratch", "crack"]
    assert report["overall"]["caught"] == 1 and report["overall"]["flagged"] == 1
    assert report["by_defect_type"]["scratch"]["caught"] == 1
    assert report["by_defect_type"]["crack"]["flagged"] == 1


def test_flags_for_a_question_the_line_does_not_ask_are_an_error() -> None:
    with pytest.raises(ValueError, match="not among"):
        part_report_from_flags([(set(), {"dent"})], QIDS)


def test_reports_of_disjoint_parts_add_up() -> None:
    table, thresholds = _table()
    halves = [part_report(table.subset([0, 1, 2]), thresholds), part_report(table.subset([3, 4, 5]), thresholds)]
    assert sum_reports(halves) == EXPECTED


# --- thresholds for a budget --------------------------------------------------------------------


def _random_parts(seed: int, parts: int, questions: int, defect_rate: float, separation: float,
                  ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.zeros((parts, questions), dtype=np.int8)
    defective = rng.random(parts) < defect_rate
    for p in np.flatnonzero(defective):
        labels[p, rng.choice(questions, size=int(rng.integers(1, min(2, questions) + 1)), replace=False)] = 1
    scores = np.clip(rng.normal(0.3, 0.2, (parts, questions)) + separation * labels, 0.0, 1.0)
    if ties:  # coarse scores: many parts share a score, good and defective alike
        scores = np.round(scores * 8) / 8
    return scores, labels


def _flagged_good(scores: np.ndarray, labels: np.ndarray, thresholds: dict[str, float], qids: list[str]) -> int:
    t = np.array([thresholds[q] for q in qids])
    good = ~(labels == 1).any(axis=1)
    return int(((scores >= t) & good[:, None]).any(axis=1).sum())


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31), parts=st.integers(1, 120), questions=st.integers(1, 5),
       defect_rate=st.floats(0.0, 0.9), separation=st.floats(0.0, 0.6), ties=st.booleans(),
       budget=st.sampled_from([0.0, 0.01, 0.02, 0.05, 0.1, 0.3, 1.0]))
def test_the_budget_holds_on_the_calibration_data_and_beats_independent_thresholds(
    seed: int, parts: int, questions: int, defect_rate: float, separation: float, ties: bool, budget: float
) -> None:
    scores, labels = _random_parts(seed, parts, questions, defect_rate, separation, ties)
    qids = [f"q{j}" for j in range(questions)]
    chosen = budgeted_thresholds(scores, labels, budget)
    good = int((~(labels == 1).any(axis=1)).sum())
    flagged = _flagged_good(scores, labels, chosen.thresholds, qids)
    assert flagged == chosen.report["overall"]["flagged"]
    assert flagged <= math.floor(budget * good + 1e-9) == chosen.allowed_flagged
    if good:
        assert chosen.false_alarm_rate is not None and chosen.false_alarm_rate <= budget + 1e-12
    if budget == 0.0:
        assert flagged == 0
    baseline = independent_thresholds(scores, labels, budget)
    assert _flagged_good(scores, labels, baseline.thresholds, qids) <= chosen.allowed_flagged
    assert chosen.report["overall"]["caught"] >= baseline.report["overall"]["caught"]
    assert chosen.search["exact"]
    # the report of the chosen thresholds is the report anyone computes from them
    table = PartTable([str(i) for i in range(parts)], qids, scores, labels, np.ones(parts, dtype=int))
    assert part_report(table, chosen.thresholds) == chosen.report
    json.dumps(chosen.as_dict(), allow_nan=False)


def _brute_force_caught(scores: np.ndarray, labels: np.ndarray, budget: float) -> int:
    """The most defective parts any thresholds catch within the budget, trying every threshold."""
    truth = labels == 1
    good = ~truth.any(axis=1)
    allowed = math.floor(budget * good.sum() + 1e-9)
    candidates = [np.append(np.unique(scores[:, j]), np.inf) for j in range(scores.shape[1])]
    best = 0
    for t in itertools.product(*candidates):
        flagged = scores >= np.array(t)[None, :]
        if (flagged.any(axis=1) & good).sum() <= allowed:
            best = max(best, int((flagged & truth).any(axis=1).sum()))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_the_search_finds_the_optimum_on_small_fixtures(seed: int) -> None:
    scores, labels = _random_parts(seed, parts=14, questions=3, defect_rate=0.5, separation=0.25, ties=seed % 2 == 0)
    for budget in (0.0, 0.15, 0.35):
        chosen = budgeted_thresholds(scores, labels, budget)
        assert chosen.report["overall"]["caught"] == _brute_force_caught(scores, labels, budget)


def test_a_zero_budget_flags_no_good_part_even_when_good_parts_score_highest() -> None:
    scores = np.array([[0.99, 0.9], [0.95, 0.1], [0.5, 0.97], [0.2, 0.2], [1.0, 0.0]])
    labels = np.array([[0, 0], [1, 0], [0, 1], [0, 0], [0, 0]])
    chosen = budgeted_thresholds(scores, labels, 0.0, ["scratch", "crack"])
    assert chosen.report["overall"]["flagged"] == 0
    assert chosen.thresholds["scratch"] > 1.0  # a good part scores 1.0 on it: nothing can be flagged
    assert chosen.thresholds["crack"] > 0.9  # above every good part; catches the crack at 0.97
    assert chosen.report["overall"]["caught"] == 1 and chosen.detection_rate == 0.5


def test_a_question_without_defective_parts_gets_a_threshold_above_every_good_part() -> None:
    scores = np.array([[0.9, 0.4], [0.2, 0.45], [0.3, 0.1], [0.1, 0.3]])
    labels = np.array([[1, 0], [0, 0], [0, 0], [0, 0]])
    chosen = budgeted_thresholds(scores, labels, 0.5, ["scratch", "stain"])
    assert chosen.no_defective == ["stain"]
    assert chosen.thresholds["stain"] > 0.45
    assert chosen.per_question["stain"]["defective"] == 0
    assert chosen.per_question["stain"]["detection_rate"] is None
    assert "no defective part" in chosen.per_question["stain"]["note"]
    assert chosen.thresholds["scratch"] == pytest.approx((0.3 + 0.9) / 2)  # midway: the good 0.3 below, the 0.9 caught


def test_ties_between_good_and_defective_parts() -> None:
    # the defective part scores exactly what a good part scores: catching it flags that good part
    scores = np.array([[0.7], [0.7], [0.2], [0.1]])
    labels = np.array([[1], [0], [0], [0]])
    assert budgeted_thresholds(scores, labels, 0.0).detection_rate == 0.0
    assert budgeted_thresholds(scores, labels, 0.3).detection_rate == 0.0  # 0.3 * 3 good: 0 may be flagged
    chosen = budgeted_thresholds(scores, labels, 1 / 3)
    assert chosen.detection_rate == 1.0 and chosen.report["overall"]["flagged"] == 1
    assert chosen.thresholds["q0"] == pytest.approx(0.45)


def test_joint_thresholds_beat_one_cap_per_question() -> None:
    # 100 good parts, so 2 may be flagged at 2%. g1 scores high on both questions: flagged
    # once, it lowers both thresholds. Catching d1 costs scratch 2 good parts (g1, g2) and
    # catching d2 costs crack only g1; one cap for every question cannot buy that
    good = [[0.9, 0.9], [0.85, 0.1], [0.1, 0.85]] + [[0.05, 0.05]] * 97
    defective = [[0.8, 0.0], [0.0, 0.87], [0.0, 0.5]]  # d1 scratch, d2 and d3 crack
    scores = np.array(good + defective)
    labels = np.zeros_like(scores, dtype=np.int8)
    labels[100, 0] = labels[101, 1] = labels[102, 1] = 1
    chosen = budgeted_thresholds(scores, labels, 0.02, ["scratch", "crack"])
    baseline = independent_thresholds(scores, labels, 0.02, ["scratch", "crack"])
    assert chosen.allowed_flagged == 2
    assert chosen.report["overall"]["flagged"] == 2 and chosen.report["overall"]["caught"] == 2
    assert baseline.report["overall"]["caught"] == 1  # cap 1 each: only d2; cap 2 each flags 3 good parts
    assert budgeted_thresholds(scores, labels, 0.019, ["scratch", "crack"]).allowed_flagged == 1


def test_budget_out_of_range_is_an_error() -> None:
    with pytest.raises(ValueError, match="max_false_alarm_rate"):
        budgeted_thresholds(np.zeros((2, 1)), np.zeros((2, 1)), 1.5)


def test_cross_validation_reports_every_part_once() -> None:
    scores, labels = _random_parts(3, parts=90, questions=3, defect_rate=0.4, separation=0.5, ties=False)
    table = PartTable([str(i) for i in range(90)], ["a", "b", "c"], scores, labels, np.ones(90, dtype=int))
    folds = np.arange(90) % 3
    report = cross_validate(table, folds, 0.05)
    assert report["overall"]["parts"] == 90
    assert report["overall"]["defective"] == int(table.defective.sum())
