"""`model calibrate` chooses part thresholds for a false-alarm budget, and scripts/measure_parts.py still runs
(tiny models, two tiny synth seeds: fixtures in conftest.py)."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ingest.recording import Recording, find_recordings
from training import data as td
from training import metrics as tm
from training.calibrate import calibrate
from training.parts import REPORT_KEYS

ROOT = Path(__file__).resolve().parents[2]


def truth_parts(recs: list[Path]) -> dict[tuple[str, int], bool]:
    """(recording, part id) -> defective, from the recordings alone."""
    parts: dict[tuple[str, int], bool] = {}
    for rec in recs:
        for entry in Recording(rec).entries:
            if entry.truth is not None and entry.truth.part_id is not None:
                key = (str(rec), entry.truth.part_id)
                parts[key] = parts.get(key, False) or any(entry.truth.answers.values())
    return parts


def test_calibrate_writes_part_thresholds_and_the_budget_holds_on_the_calibration_data(calibrated, seed_dirs, workdir):
    from model.bundle import load_bundle

    path, record = calibrated
    bundle = load_bundle(path, device="cpu")
    parts = bundle.spec.parts
    questions = [q for q in bundle.spec.questions if q.category != "relation"]
    assert parts is not None and parts.aggregate == "mean" and parts.max_false_alarm_rate == 0.25
    assert set(parts.thresholds) == {q.id for q in questions}
    assert parts.calibration == record["parts"]["report"] and bundle.spec.provenance["calibration"] == record
    assert bundle.part_aggregate == "mean"
    assert list(bundle.part_thresholds_for(questions)) == pytest.approx([parts.thresholds[q.id] for q in questions])

    recs = find_recordings(seed_dirs)
    truth = truth_parts(recs)
    overall = parts.calibration["overall"]
    assert overall["parts"] == len(truth) == 16  # both seeds' parts, though their ids are the same
    assert overall["defective"] == sum(truth.values()) and overall["good"] == len(truth) - sum(truth.values())
    for row in [overall, *parts.calibration["by_defect_type"].values()]:
        assert set(row) == set(REPORT_KEYS)

    # the budget, counted again from the recordings: each part's mean frame score per question
    allowed = math.floor(0.25 * overall["good"])
    t = np.array([parts.thresholds[q.id] for q in questions])
    flagged_good = 0
    for rec in recs:
        (piece,) = td.recording_pieces(bundle.encoder, [rec], questions, 1, workdir / "parts-cache", lambda m: None)
        data = td.LabelledSet.join([piece])
        scores = torch.sigmoid(tm.head_margins(bundle.head, data.tokens, questions)).numpy()
        ids = np.array([-1 if e.truth.part_id is None else e.truth.part_id for e in Recording(rec).entries])
        for part_id in set(ids.tolist()) - {-1}:
            if not truth[(str(rec), part_id)]:
                flagged_good += bool((scores[ids == part_id].mean(axis=0) >= t).any())
    assert flagged_good == overall["flagged"] <= allowed
    # the cross-validated estimate covers every part once, one fold per --data folder
    cv = record["parts"]["cross_validated"]
    assert cv["folds"] == [str(d) for d in seed_dirs] and cv["report"]["overall"]["parts"] == 16


def test_calibrate_stores_the_served_scores_distribution_as_the_drift_reference(calibrated, seed_dirs, workdir):
    from model.bundle import load_bundle

    path, _ = calibrated
    bundle = load_bundle(path, device="cpu")
    questions = [q for q in bundle.spec.questions if q.category != "relation"]
    reference = bundle.spec.score_reference
    assert reference is not None and set(reference.questions) == {q.id for q in questions}
    # counted again from the recordings: the frames that show a part, scored as the worker scores them
    served = []
    for rec in find_recordings(seed_dirs):
        (piece,) = td.recording_pieces(bundle.encoder, [rec], questions, 1, workdir / "parts-cache", lambda m: None)
        scores = torch.sigmoid(tm.head_margins(bundle.head, td.LabelledSet.join([piece]).tokens, questions)).numpy()
        shows_part = np.array([e.truth.part_id is not None for e in Recording(rec).entries])
        served.append(scores[shows_part])
    served = np.concatenate(served)
    for j, q in enumerate(questions):
        ref = reference.questions[q.id]
        assert ref.frames == len(served)
        assert ref.threshold == pytest.approx(bundle.spec.parts.thresholds[q.id])
        assert ref.above_threshold_rate == pytest.approx(float((served[:, j] >= ref.threshold).mean()))
        counts = np.bincount([ref.bin_of(float(s)) for s in served[:, j]], minlength=len(ref.shares))
        assert counts / len(served) == pytest.approx(ref.shares)


def test_calibrate_takes_its_budget_from_the_lines_alert_policy_and_prints_what_it_buys(part_bundle, seed_dirs, workdir):
    from typer.testing import CliRunner

    from model.bundle import load_bundle
    from training.cli import model_app

    out = workdir / "parts-cli"
    shutil.copytree(part_bundle, out)
    config = workdir / "parts-line.yaml"
    config.write_text("lines:\n- id: press-3\n  cameras: [{id: press-3-top}]\n"
                      "  questions: [{id: scratch, text: 'Is there a scratch on the part?', defect_type: scratch}]\n"
                      "  alert_policy: {max_false_alarm_rate: 0.3}\n")
    runner = CliRunner()
    args = ["calibrate", str(out), "--data", str(seed_dirs[0]), "--data", str(seed_dirs[1]),
            "--cache", str(workdir / "parts-cache"), "--threads", "1", "--aggregate", "top3"]
    result = runner.invoke(model_app, [*args, "--config", str(config), "--line", "press-3"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "part thresholds" in said and "per part, calibration recordings: detection" in said
    assert "each of 2 --data folders with thresholds chosen on the others" in said
    parts = load_bundle(out, device="cpu").spec.parts
    assert parts.max_false_alarm_rate == 0.3 and parts.aggregate == "top3"

    result = runner.invoke(model_app, [*args, "--config", str(config), "--max-false-alarm-rate", "0"])
    assert result.exit_code == 0, result.output
    parts = load_bundle(out, device="cpu").spec.parts
    assert parts.max_false_alarm_rate == 0.0 and parts.calibration["overall"]["flagged"] == 0

    result = runner.invoke(model_app, [*args, "--config", str(config), "--line", "press-9"])
    assert result.exit_code == 1 and "no line 'press-9'" in result.output
    result = runner.invoke(model_app, [*args, "--aggregate", "max"])
    assert result.exit_code != 0 and "mean, top3, noisy_or" in result.output


def test_recordings_without_part_ids_leave_the_part_thresholds_as_they_were(calibrated, recordings, workdir):
    from ingest.label import label_recording
    from ingest.recording import RecordingMeta, RecordingWriter
    from model.bundle import load_bundle

    path, _ = calibrated
    out = workdir / "parts-unlabelled-parts"
    shutil.copytree(path, out, dirs_exist_ok=True)
    before = load_bundle(out, device="cpu").spec.parts
    camera = workdir / "parts-hand-labelled"  # what `record` and `label` write: answers, no part ids
    with RecordingWriter(camera, RecordingMeta(line_id="press-3", camera_id="press-3-top", fps=10, width=320,
                                               height=240, source="camera test")) as writer:
        for entry, jpeg in Recording(recordings[0]).frames():
            writer.append(entry.seq, entry.capture_ns, jpeg)
    label_recording(camera, "scratch", yes=[(5, 12)], no_rest=True)
    record = calibrate(out, [camera], max_fpr=0.1, log=lambda m: None)
    assert "skipped" in record["parts"]
    assert load_bundle(out, device="cpu").spec.parts == before


def test_the_part_measurement_script_runs(part_bundle, seed_dirs, workdir, capsys):
    spec = importlib.util.spec_from_file_location("measure_parts", ROOT / "scripts" / "measure_parts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = workdir / "measure.json"
    assert module.main(["--bundle", str(part_bundle), "--calib", str(seed_dirs[0]), "--heldout", str(seed_dirs[1]),
                        "--budget", "0.25", "--threads", "1", "--cache-dir", str(workdir / "parts-cache"),
                        "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["per_method"]) == {"mean", "top3", "noisy_or"}
    assert result["per_method"]["mean"]["budgeted"]["calibration"]["overall"]["parts"] == 8
    assert "Per part at thresholds chosen" in capsys.readouterr().out
