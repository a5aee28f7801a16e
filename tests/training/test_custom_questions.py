"""A plant's own question ("Is there a defect?"), end to end: finetune and eval through the commands.

The recording is the synthetic line's frames relabelled to that one question, so the rendered
pairs (which know only the synthetic line's defects) have nothing for it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ingest.recording import Recording
from training.cli import model_app
from training_helpers import relabelled

runner = CliRunner()
TINY = ["--decoder-width", "32", "--decoder-layers", "1", "--batch-frames", "8", "--lr", "3e-3", "--eval-every", "2",
        "--patience", "100", "--threads", "1", "--max-steps", "4"]


def said(result) -> str:  # rich wraps long lines
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def defect_bundle(tiny_clip, defect_recordings, workdir) -> Path:
    out = workdir / "defect-bundle"
    args = ["finetune", "--encoder", str(tiny_clip), "--out", str(out), "--folds", "0", "--val-fraction", "0.3",
            "--keep-anyway", *TINY]
    for rec in defect_recordings:
        args += ["--data", str(rec)]
    result = runner.invoke(model_app, args)
    assert result.exit_code == 0, result.output
    return out


def test_finetune_trains_the_recordings_own_question(defect_bundle):
    from model.bundle import load_bundle

    bundle = load_bundle(defect_bundle, device="cpu")
    assert [q.id for q in bundle.spec.questions] == ["defect"] and set(bundle.spec.thresholds) == {"defect"}
    validation = bundle.spec.provenance["finetune"]["validation"]
    assert validation["method"] == "holdout" and validation["folds"] == 1
    assert set(validation["scorers"]) == {"head", "start", "probe", "good_only"}
    assert set(validation["scorers"]["probe"]["per_question"]) == {"defect"}


def test_finetune_cross_validates_a_custom_question_from_the_command(tiny_clip, defect_recordings, workdir):
    out = workdir / "defect-cv"
    args = ["finetune", "--encoder", str(tiny_clip), "--out", str(out), "--folds", "3", "--keep-anyway", *TINY]
    result = runner.invoke(model_app, args + [a for rec in defect_recordings for a in ("--data", str(rec))])
    assert result.exit_code == 0, result.output
    assert "cross-validation, 3 folds" in said(result) and "the good-only scorer" in said(result)
    record = json.loads((out / "bundle.json").read_text())["provenance"]["finetune"]
    assert record["validation"]["method"] == "cross-validation" and len(record["folds"]) == 3


def test_twin_pairs_for_a_custom_question_fail_cleanly(tiny_clip, defect_recordings, workdir):
    out = workdir / "defect-pairs"
    result = runner.invoke(model_app, ["finetune", "--encoder", str(tiny_clip), "--out", str(out), "--folds", "0",
                                       "--train-pairs", "2", "--data", str(defect_recordings[0]), *TINY])
    assert result.exit_code == 1 and "cannot show ['defect']" in said(result)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not out.exists()


def test_eval_reports_a_custom_question_without_rendered_pairs(defect_bundle, defect_recordings, workdir):
    out = workdir / "defect-eval"
    data = [a for rec in defect_recordings for a in ("--data", str(rec))]
    result = runner.invoke(model_app, ["eval", str(defect_bundle), *data, "--out", str(out), "--pairs", "2",
                                       "--threads", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["pairs_missing"] == {"defect": "the synthetic line's parts cannot show it"}
    frames = sum(len([e for e in Recording(rec).entries if e.truth]) for rec in defect_recordings)
    for scorer in ("mllm_head", "clip_zero_shot", "clip_linear_probe"):
        row = report["scorers"][scorer]["per_question"]["defect"]
        assert row["frames"] == frames and row["pairs"] == 0 and row["positives"] > 0
        assert 0.0 <= row["auroc"] <= 1.0 and row["auroc"] == row["auroc_frames"]  # the frames' alone
        assert row["pair_accuracy"] != row["pair_accuracy"]  # nan: not measured
        low, high = row["auroc_frames_interval"]  # bootstrap over the recording's parts
        assert 0.0 <= low <= row["auroc_frames"] <= high <= 1.0
    # per part: the recording's part ids group the frames
    part = report["part_verdict"]["per_question"]["defect"]
    assert report["parts"]["overall"]["parts"] == 16 and 0 < part["defective"] < 16 and part["part_auroc"] is not None
    md = (out / "report.md").read_text()
    assert "No rendered pairs for `defect`: the synthetic line's parts cannot show it" in md
    assert "| defect | fine_detail | MLLM head |" in md
    assert "## Frame AUROC with its 95% interval" in md and "| defect | CLIP linear probe |" in md


def test_eval_without_pairs_and_with_ablations(tiny_clip, defect_bundle, defect_recordings, workdir):
    ablations = workdir / "defect-ablations"
    for variant in ("cls_only", "no_position"):
        result = runner.invoke(model_app, ["finetune", "--encoder", str(tiny_clip), "--out", str(ablations / variant),
                                           "--variant", variant, "--head-only", "--folds", "0", "--keep-anyway",
                                           "--data", str(defect_recordings[0]), *TINY])
        assert result.exit_code == 0, result.output
    out = workdir / "defect-eval-no-pairs"
    result = runner.invoke(model_app, ["eval", str(defect_bundle), "--data", str(defect_recordings[1]), "--out", str(out),
                                       "--pairs", "0", "--ablations", str(ablations), "--threads", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["pairs_missing"] == {"defect": "no pairs asked for (--pairs 0)"}
    assert {"ablation_cls_only", "ablation_no_position"} <= set(report["scorers"])
    assert report["targets"]["overall_pair_accuracy"]["note"] == "not measured"


def test_eval_on_the_synthetic_line_with_no_pairs(part_bundle, recordings, workdir):
    """--pairs 0 on the synthetic line's own questions: no traceback, every question's row says why."""
    out = workdir / "synth-eval-no-pairs"
    result = runner.invoke(model_app, ["eval", str(part_bundle), "--data", str(recordings[0]), "--out", str(out),
                                       "--pairs", "0", "--threads", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert set(report["pairs_missing"]) == {q["id"] for q in report["questions"]}
    assert all(m["pairs"] == 0 for m in report["scorers"]["mllm_head"]["per_question"].values())


def test_a_failed_eval_leaves_no_output_folder(defect_bundle, defect_recordings, workdir):
    unlabelled = workdir / "defect-unlabelled"
    relabelled(defect_recordings[0], unlabelled, answer=None)
    cases = [
        ["eval", str(workdir / "no-such-bundle"), "--data", str(defect_recordings[0])],
        ["eval", str(defect_bundle), "--data", str(unlabelled), "--pairs", "0"],  # fails after loading, in the encoding
        ["eval", str(defect_bundle), "--data", str(defect_recordings[0]), "--pairs", "-1"],
        ["eval", str(defect_bundle), "--data", str(defect_recordings[0]), "--threads", "0"],
    ]
    for i, args in enumerate(cases):
        out = workdir / f"failed-eval-{i}" / "report"
        result = runner.invoke(model_app, [*args, "--out", str(out)])
        assert result.exit_code != 0, args
        assert result.exception is None or isinstance(result.exception, SystemExit), args
        assert not out.parent.exists(), args
    (workdir / "eval-a-file").write_text("")
    result = runner.invoke(model_app, ["eval", str(defect_bundle), "--data", str(defect_recordings[0]), "--out",
                                       str(workdir / "eval-a-file" / "report"), "--pairs", "0", "--threads", "1"])
    assert result.exit_code == 1 and "is a file" in said(result) and "encoded" not in said(result)
