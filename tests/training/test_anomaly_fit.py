"""A good-only line: `model fit-anomaly` from good parts, then calibrate and eval treat its question like any other."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ingest import synth
from ingest.recording import Recording, find_recordings
from training.cli import model_app
from training.data import decode, is_good
from training_helpers import relabelled

runner = CliRunner()


@pytest.fixture(scope="module")
def good_only(workdir) -> Path:
    """An unlabelled recording of a line whose parts are all good (as `patchsight record` makes one)."""
    [rec] = synth.write_recordings(workdir / "good-only-src", lines=1, cameras=1, frames=60, seed=21, size=(320, 240),
                                   defect_rate=0.0)
    return relabelled(rec, workdir / "good-only", answer=None)


@pytest.fixture()
def bundle(part_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(part_bundle, tmp_path / "bundle"))


def fit(bundle: Path, *args: str):
    return runner.invoke(model_app, ["fit-anomaly", str(bundle), "--coreset", "64", "--threads", "1", *args])


def test_fit_from_a_good_only_recording_scores_a_defect_patch_above_the_clean_frame(bundle, good_only):
    from model.bundle import load_bundle

    result = fit(bundle, "--good", str(good_only))
    assert result.exit_code == 0, result.output
    spec = json.loads((bundle / "bundle.json").read_text())
    assert spec["anomaly"] == "anomaly"
    [question] = [q for q in spec["questions"] if q["id"] == "anomaly"]
    assert question["kind"] == "anomaly" and question["defect_type"] == "anomaly"
    record = spec["provenance"]["anomaly"]
    assert record["good_frames"] == len(Recording(good_only).entries) and record["patches_kept"] == 64
    assert record["memory_parts"] + record["scale_parts"] == record["good_parts"] >= 2

    loaded = load_bundle(bundle, device="cpu")
    frames = [decode(jpeg) for _, jpeg in Recording(good_only).frames()][::10]
    defective = []
    for frame in frames:  # a saturated square across the middle of the central crop the encoder reads
        frame = frame.copy()
        frame[70:170, 110:210] = (0, 0, 255)
        defective.append(frame)
    scores = loaded.score_frames(frames + defective, [question["id"]])[:, 0]
    clean, defect = scores[: len(frames)], scores[len(frames):]
    assert (defect > clean).all(), (clean, defect)
    assert defect.mean() > 0.5 > np.median(clean)


def test_fit_from_labelled_recordings_remembers_only_their_good_frames(bundle, recordings):
    result = fit(bundle, "--question-id", "odd", "--question-text", "Does this part look odd?",
                 *[a for rec in recordings for a in ("--data", str(rec))])
    assert result.exit_code == 0, result.output
    spec = json.loads((bundle / "bundle.json").read_text())
    good = sum(is_good(e.truth) for rec in recordings for e in Recording(rec).entries if e.truth is not None)
    assert 0 < good < sum(len(Recording(rec).entries) for rec in recordings)  # the fixture has defective frames too
    assert spec["provenance"]["anomaly"]["good_frames"] == good
    assert {"id": "odd", "kind": "anomaly", "text": "Does this part look odd?"}.items() <= \
        [q for q in spec["questions"] if q["id"] == "odd"][0].items()


def test_calibrate_and_eval_treat_the_anomaly_question_like_any_other(bundle, good_only, seed_dirs, tmp_path):
    assert fit(bundle, "--good", str(good_only)).exit_code == 0
    result = runner.invoke(model_app, ["calibrate", str(bundle), "--data", str(seed_dirs[0]), "--data",
                                       str(seed_dirs[1]), "--threads", "1"])
    assert result.exit_code == 0, result.output
    spec = json.loads((bundle / "bundle.json").read_text())
    calibration = spec["provenance"]["calibration"]
    row = calibration["questions"]["anomaly"]  # labelled by the frames' defects
    defective = sum(not is_good(e.truth) for rec in find_recordings(seed_dirs) for e in Recording(rec).entries
                    if e.truth is not None)
    assert row["positives"] == defective and row["auroc"] is not None
    assert "anomaly" in spec["thresholds"] and "anomaly" in spec["parts"]["thresholds"]
    assert calibration["parts"]["per_question"]["anomaly"]["part_auroc"] is not None

    out = tmp_path / "eval"
    result = runner.invoke(model_app, ["eval", str(bundle), "--data", str(seed_dirs[0]), "--out", str(out),
                                       "--pairs", "2", "--threads", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["pairs_missing"]["anomaly"] == "an anomaly question: no property to render"
    memory = report["scorers"]["anomaly_memory"]["per_question"]
    assert list(memory) == ["anomaly"] and memory["anomaly"]["threshold"] == pytest.approx(spec["thresholds"]["anomaly"],
                                                                                             abs=1e-4)
    assert "anomaly" not in report["scorers"]["mllm_head"]["per_question"]  # the head does not answer it
    verdict = report["part_verdict"]["per_question"]["anomaly"]
    assert verdict["threshold"] == pytest.approx(spec["parts"]["thresholds"]["anomaly"])
    assert verdict["part_auroc"] is not None and "anomaly memory (good parts only)" in (out / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    ([], "no recordings"),
    (["--question-id", "scratch"], "is a yes/no question for the head"),
    (["--question-id", "not an id"], "not a question for the bundle: id: String should match pattern"),
])
def test_bad_input_fails_clearly_and_leaves_the_bundle_as_it_was(bundle, good_only, args, message):
    before = (bundle / "bundle.json").read_bytes()
    if args:
        args = [*args, "--good", str(good_only)]
    result = fit(bundle, *args)
    assert result.exit_code == 1 and message in " ".join(result.output.split()), result.output
    assert (bundle / "bundle.json").read_bytes() == before and not (bundle / "anomaly").exists()
    assert not list(bundle.parent.glob(".bundle-*"))  # no staging folder left behind


def test_good_frames_of_a_single_part_are_refused(bundle, workdir):
    [rec] = synth.write_recordings(workdir / "one-part", lines=1, cameras=1, frames=12, seed=22, size=(320, 240),
                                   defect_rate=1.0)
    good = [e.truth for e in Recording(rec).entries if is_good(e.truth)]
    assert good and {t.part_id for t in good} == {None}  # the good frames are one stretch of empty belt
    result = fit(bundle, "--data", str(rec))
    assert result.exit_code == 1 and "needs two parts at least" in " ".join(result.output.split()), result.output


def test_finetune_leaves_anomaly_questions_to_the_memory(tiny_clip, recordings, tmp_path):
    from schemas.config import Question
    from training import finetune as ft
    from training.data import questions_of
    from training_helpers import tiny_config

    odd = Question(id="odd", text="Is this part odd?", defect_type="anomaly", kind="anomaly")
    said: list[str] = []
    record = ft.finetune(tiny_config(max_steps=2, eval_every=1), tiny_clip, recordings, tmp_path / "b",
                         questions=[*questions_of(recordings), odd], log=said.append)
    spec = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert "odd" not in {q["id"] for q in spec["questions"]} and "odd" not in spec["thresholds"]
    assert any("not training the head on anomaly questions odd" in line for line in said)
    assert record["steps"] >= 1
