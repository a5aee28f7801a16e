"""Few-shot finetuning: validation over parts (a holdout or cross-validation), the scorers beside the head,
the refusal of a head that learned nothing, and frames without a part id."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from model.encoder import EncoderOutput
from schemas.config import Question
from training import data as td
from training import finetune as ft
from training import validation as tv
from training.cli import model_app
from training_helpers import DEFECT, relabelled, tiny_config

runner = CliRunner()


def said(result) -> str:  # rich wraps long lines
    return " ".join(result.output.split())


def test_cross_validation_holds_every_part_out_once_then_trains_on_all_for_the_chosen_steps(
        tiny_clip, defect_recordings, workdir):
    seen: list[str] = []
    cfg = tiny_config(folds=3, max_steps=8, eval_every=2, frame_stride=2)
    record = ft.finetune(cfg, tiny_clip, defect_recordings, workdir / "fewshot-cv", log=seen.append,
                         cache_dir=workdir / "defect-cache")
    validation = record["validation"]
    assert validation["method"] == "cross-validation" and validation["folds"] == 3
    # every labelled frame is scored once, by the fold that held its part out
    # the 16 parts, and each recording's frames of an empty belt (fewer than 20: one run each)
    assert validation["frames"] == record["frames"] == 120 and validation["parts"] == 16 + 4
    assert sum(f["parts"] for f in record["folds"]) == 20 and sum(f["val_frames"] for f in record["folds"]) == 120
    # the step count with the lowest mean validation loss; the final head trained that long on every frame
    losses = {int(k): v for k, v in record["mean_val_loss"].items()}
    assert set(losses) == {0, 2, 4, 6, 8} and losses[record["best_step"]] == min(losses.values())
    assert record["steps"] == record["best_step"] and record["train_frames"] == 120
    assert record["stopped"] == "chosen_steps"
    for name in ("head", "start", "probe", "good_only"):
        row = validation["scorers"][name]
        low, high = row["interval"]
        assert 0.0 <= low <= row["auroc"] <= high <= 1.0, (name, row)
    assert record["best_val_auroc"] == validation["scorers"]["head"]["auroc"]
    assert set(record["thresholds"]) == {"defect"}
    assert any(m.startswith("fold 3/3:") for m in seen) and any("cross-validation chose step" in m for m in seen)


def test_cross_validation_by_auroc_chooses_the_step_the_folds_rank_best(tiny_clip, defect_recordings, workdir):
    cfg = tiny_config(folds=3, max_steps=8, eval_every=2, frame_stride=2, select_by="auroc")
    record = ft.finetune(cfg, tiny_clip, defect_recordings, workdir / "fewshot-cv-auroc", log=lambda m: None,
                         cache_dir=workdir / "defect-cache")
    aurocs = {int(k): v for k, v in record["mean_val_auroc"].items() if v is not None}
    best = max(aurocs.values())
    assert record["best_step"] == min(step for step, v in aurocs.items() if v == best)


def test_few_parts_are_cross_validated_and_many_held_out(tiny_clip, defect_recordings, workdir):
    encoder = ft.load_encoder(tiny_clip)[0]
    pieces = td.cached_pieces(encoder, defect_recordings, [DEFECT], 2, workdir / "defect-cache", lambda m: None)
    # 16 parts and 4 runs of empty belt: a 30% holdout would be 6 of them, under the 50 it takes to trust one
    folds = ft.validation_folds(tiny_config(folds=None), pieces, lambda m: None)
    assert len(folds) == ft.CV_FOLDS and set().union(*folds) == set(td.group_names(pieces))
    assert sum(len(f) for f in folds) == 20
    [holdout] = ft.validation_folds(tiny_config(folds=None, min_val_parts=6), pieces, lambda m: None)
    assert len(holdout) == 6
    with pytest.raises(ValueError, match="one fold leaves nothing"):
        tiny_config(folds=1)


def test_folds_deal_the_defective_parts_out_evenly():
    groups = [f"p{i}" for i in range(10) for _ in range(3)]  # three frames a part
    labels = np.array([[1.0] if i < 4 else [0.0] for i in range(10) for _ in range(3)])
    folds = tv.part_folds(groups, labels, 4, seed=1)
    assert len(folds) == 4 and sorted(g for f in folds for g in f) == sorted(set(groups))
    assert [len(f & {"p0", "p1", "p2", "p3"}) for f in folds] == [1, 1, 1, 1]
    assert len(tv.part_folds(groups, labels, 20, seed=1)) == 10  # no more folds than parts


def test_the_validation_report_bootstraps_over_parts():
    groups = [f"p{i}" for i in range(12) for _ in range(2)]
    labels = np.array([[float(i % 3 == 0)] for i in range(12) for _ in range(2)])
    rng = np.random.default_rng(0)
    held = tv.HeldOut(labels, groups, {"head": labels.copy(), "start": rng.random(labels.shape)})
    report = tv.validation_report(held, [DEFECT])
    assert report["parts"] == 12 and report["frames"] == 24 and report["positives"] == {"defect": 8}
    assert report["scorers"]["head"]["auroc"] == 1.0 and report["scorers"]["head"]["interval"] == [1.0, 1.0]
    start = report["scorers"]["start"]
    assert start["interval"][0] <= start["auroc"] <= start["interval"][1] and start["interval"][0] < start["interval"][1]


def test_the_good_only_scorer_ranks_a_frame_unlike_the_good_ones_higher():
    def tokens(rows: list[torch.Tensor]) -> EncoderOutput:
        patches = torch.stack([r.repeat(4, 1) for r in rows])  # four patch tokens alike: the mean is the row
        return EncoderOutput(torch.zeros(len(rows), 2), patches, torch.zeros(len(rows), 3))

    torch.manual_seed(0)
    good = [torch.tensor([1.0, 0.0, 0.0]) + 0.01 * torch.randn(3) for _ in range(5)]
    train = td.LabelledSet(tokens([*good, torch.tensor([0.0, 1.0, 0.0])]), torch.tensor([[0.0]] * 5 + [[1.0]]),
                           [f"p{i}" for i in range(6)], [DEFECT], ["t"])
    held = td.LabelledSet(tokens([torch.tensor([1.0, 0.01, 0.0]), torch.tensor([0.0, 0.0, 1.0])]),
                          torch.tensor([[0.0], [1.0]]), ["h0", "h1"], [DEFECT], ["h"])
    scores = tv.good_only_scores(train, held)
    assert scores[0] < 0.01 < 0.9 < scores[1]  # the defective training frame is not part of the memory


def test_refusal_names_what_the_head_did_not_beat():
    def report(head, start, probe):
        return {"scorers": {"head": {"auroc": head}, "start": {"auroc": start}, "probe": {"auroc": probe}}}

    assert tv.refusal(report(0.8, 0.5, 0.7), best_step=40) is None
    assert "not above the linear probe's 0.720" in tv.refusal(report(0.6, 0.5, 0.72), best_step=40)
    assert "not above its starting point's 0.610" in tv.refusal(report(0.6, 0.61, 0.5), best_step=40)
    assert "step 0" in tv.refusal(report(0.9, 0.5, 0.5), best_step=0)
    assert "no question has both yes and no" in tv.refusal(report(None, None, None), best_step=40)


def test_a_head_that_learned_nothing_is_refused_and_nothing_is_written(tiny_clip, defect_recordings, workdir):
    """The issue's run: the validation loss never improved, best step 0, and it wrote the untrained head."""
    out = workdir / "refused"
    args = ["finetune", "--encoder", str(tiny_clip), "--out", str(out), "--folds", "0", "--val-fraction", "0.3",
            "--lr", "1e-9", "--eval-every", "2", "--patience", "2", "--max-steps", "40", "--frame-stride", "2",
            "--decoder-width", "32", "--decoder-layers", "1", "--batch-frames", "8", "--threads", "1",
            "--cache", str(workdir / "defect-cache")]
    args += [a for rec in defect_recordings for a in ("--data", str(rec))]
    result = runner.invoke(model_app, args)
    assert result.exit_code == 1, result.output
    assert "finetune refused the head" in said(result) and "best validation step was step 0" in said(result)
    assert "--keep-anyway" in said(result) and not out.exists()

    result = runner.invoke(model_app, [*args, "--keep-anyway"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "bundle.json").read_text())["provenance"]["finetune"]
    assert record["best_step"] == 0 and record["stopped"] == "early_stop" and "step 0" in record["kept_anyway"]


def test_frames_without_part_ids_are_grouped_by_the_run_asked_for(tiny_clip, recordings, workdir):
    partless = relabelled(recordings[0], workdir / "partless", keep_part_ids=False)  # 40 frames, none names a part
    encoder = ft.load_encoder(tiny_clip)[0]
    pieces = td.cached_pieces(encoder, [partless], [DEFECT], 1, None, lambda m: None)
    assert len(td.group_names(pieces)) == math.ceil(40 / td.PARTLESS_RUN) == 2
    td.regroup_partless(pieces, 1)
    assert len(td.group_names(pieces)) == 40
    td.regroup_partless(pieces, 8)
    assert len(td.group_names(pieces)) == 5 and pieces[0].groups[:9] == [pieces[0].groups[0]] * 8 + [pieces[0].groups[8]]

    out = workdir / "partless-bundle"
    result = runner.invoke(model_app, ["finetune", "--encoder", str(tiny_clip), "--data", str(partless), "--out",
                                       str(out), "--partless-run", "1", "--max-steps", "2", "--eval-every", "1",
                                       "--decoder-width", "32", "--decoder-layers", "1", "--batch-frames", "8",
                                       "--threads", "1", "--keep-anyway"])
    assert result.exit_code == 0, result.output
    assert "5-fold cross-validation over 40 parts" in said(result)
    # one part per 20 frames: two parts, a cross-validation of two folds
    result = runner.invoke(model_app, ["finetune", "--encoder", str(tiny_clip), "--data", str(partless), "--out",
                                       str(workdir / "partless-20"), "--max-steps", "2", "--eval-every", "1",
                                       "--decoder-width", "32", "--decoder-layers", "1", "--batch-frames", "8",
                                       "--threads", "1", "--keep-anyway"])
    assert result.exit_code == 0, result.output
    assert "2-fold cross-validation over 2 parts" in said(result)


def test_finetune_names_bad_flags_instead_of_a_traceback(tiny_clip, defect_recordings, workdir):
    base = ["finetune", "--encoder", str(tiny_clip), "--data", str(defect_recordings[0]), "--threads", "1"]
    for flags in (["--folds", "1"], ["--eval-every", "0"], ["--time-limit-min", "0"], ["--partless-run", "0"],
                  ["--val-fraction", "0"], ["--frame-stride", "0"]):
        out = workdir / "bad-flag" / flags[0].strip("-")
        result = runner.invoke(model_app, [*base, "--out", str(out), *flags])
        assert result.exit_code != 0, flags
        assert result.exception is None or isinstance(result.exception, SystemExit), flags
        assert not out.exists(), flags


def test_a_question_no_frame_answers_both_ways_cannot_be_judged():
    qs = [Question(id="a", text="Is it a?", defect_type="a")]
    held = tv.HeldOut(np.zeros((4, 1)), ["p0", "p0", "p1", "p1"], {"head": np.random.default_rng(0).random((4, 1))})
    report = tv.validation_report(held, qs)
    assert report["scorers"]["head"]["auroc"] is None and report["scorers"]["head"]["interval"] is None
