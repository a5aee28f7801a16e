"""`model eval` reports per part at the bundle's part thresholds, and checks issue 31's per-part targets."""

from __future__ import annotations

import json

from ingest.recording import find_recordings
from training.parts import REPORT_KEYS


def test_eval_reports_per_part_at_the_bundles_part_thresholds(calibrated, seed_dirs, workdir):
    from training.evaluate import evaluate

    path, record = calibrated
    out = workdir / "parts-eval"
    report = evaluate(path, find_recordings(seed_dirs), out, pairs_per_question=1, threads=1, log=lambda m: None)
    saved = json.loads((out / "report.json").read_text())
    parts = saved["parts"]
    assert set(parts) == {"overall", "by_defect_type"}
    for row in [parts["overall"], *parts["by_defect_type"].values()]:
        assert set(row) == set(REPORT_KEYS)
    assert parts == report["parts"]
    # the calibration recordings themselves: the same parts (eval's frame scores come from float32 patch
    # tokens, calibration's from float16 ones, so a part at its threshold may fall either side)
    counts = ("parts", "defective", "good")
    assert [parts["overall"][k] for k in counts] == [record["parts"]["report"]["overall"][k] for k in counts]
    assert parts["overall"]["parts"] == 16
    detail = saved["part_verdict"]
    assert detail["calibrated"] and detail["aggregate"] == "mean" and detail["max_false_alarm_rate"] == 0.25
    assert set(detail["per_question"]) == set(record["parts"]["thresholds"])
    assert {"part_auroc", "frame_auroc", "threshold"} <= set(detail["per_question"]["scratch"])
    targets = saved["targets"]
    assert targets["part_detection_rate"]["value"] == parts["overall"]["detection_rate"]
    assert targets["part_false_alarm_rate"]["target"] == 0.02
    md = (out / "report.md").read_text()
    assert "## Per part (MLLM head)" in md and "| part_false_alarm_rate |" in md and "at most 2.0" in md


def test_part_targets_need_both_rates_and_are_not_met_unmeasured():
    from training.evaluate import check_targets

    metrics = {"pair_accuracy": 1.0, "auroc": 1.0, "accuracy": 1.0, "balanced_accuracy": 1.0}
    head = {"mllm_head": {"per_category": {c: metrics for c in ("spatial", "overall", "fine_detail")}}}

    def targets(detection, false_alarms):
        parts = {"overall": {"detection_rate": detection, "false_alarm_rate": false_alarms}, "by_defect_type": {}}
        t = check_targets({"scorers": head, "parts": parts})
        return t["part_detection_rate"]["met"], t["part_false_alarm_rate"]["met"]

    assert targets(0.95, 0.02) == (True, True)
    assert targets(0.94, 0.0) == (False, True)
    assert targets(1.0, 0.03) == (True, False)
    assert targets(None, None) == (False, False)
    unmeasured = check_targets({"scorers": head})
    assert not unmeasured["part_detection_rate"]["met"] and "not measured" in unmeasured["part_detection_rate"]["note"]
