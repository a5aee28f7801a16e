"""Training the part view: encoding recordings as the tracker cuts them, `finetune --view part`, and `calibrate`
choosing the view weights and the part thresholds on the combined scores (tiny models: conftest.py)."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from ingest.recording import Recording, RecordingWriter, find_recordings
from model.tracker import PartTracker
from model.views import part_crop
from training import data as td
from training import finetune as ft
from training.provenance import earlier_round
from training.calibrate import calibrate
from training.views import WEIGHT_CHOICES, choose_view_weights
from training_helpers import tiny_config


@pytest.fixture(scope="session")
def view_bundle(part_bundle, recordings, workdir):
    out = workdir / "view-bundle"
    record = ft.finetune(tiny_config(max_steps=4, view="part", margin=0.08), part_bundle, recordings, out,
                         log=lambda m: None, init_head=True, cache_dir=workdir / "view-cache")
    return out, record


@pytest.fixture(scope="session")
def view_calibrated(view_bundle, seed_dirs, workdir):
    out = workdir / "view-calibrated"
    shutil.copytree(view_bundle[0], out)
    recs = find_recordings(seed_dirs)
    record = calibrate(out, recs, max_fpr=0.1, log=lambda m: None, max_false_alarm_rate=0.25,
                       folds=[str(r.parents[1]) for r in recs])
    return out, record


def test_part_view_encoding_keeps_the_tracked_labelled_frames_with_their_seqs(tiny_clip, recordings, workdir):
    encoder = ft.load_encoder(tiny_clip)[0]
    questions = td.questions_of(recordings)
    rec = recordings[0]
    part = td.encode_recordings(encoder, [rec], questions, log=lambda m: None, view="part", margin=0.06)
    frame = td.encode_recordings(encoder, [rec], questions, log=lambda m: None)
    recording = Recording(rec)
    tracker = PartTracker(recording.meta.camera_id, None, (recording.meta.width, recording.meta.height))
    expected = []
    for entry, jpeg in recording.frames():
        box = tracker.update(td.decode(jpeg), entry.seq).box
        if box is not None and entry.truth is not None and entry.truth.part_id is not None:
            expected.append(entry.seq)
    assert expected and part.seqs == expected and len(part) == len(expected)
    assert frame.seqs == td.labelled_seqs(rec, 1) and len(frame.seqs) > len(part.seqs)
    rows = td.align_views([frame], [part])
    assert [frame.seqs[i] for i in rows] == part.seqs
    assert torch.equal(frame.labels[torch.as_tensor(rows)], part.labels)
    assert all("#part" in g for g in part.groups)


def test_a_frame_whose_truth_boxes_the_part_is_cut_there_without_the_tracker(recordings, workdir):
    # a recording as `feedback export` writes it: parts' frames only, out of stream order, each with the box
    # the worker's tracker drew; no tracker could follow it, and none has to
    source = Recording(recordings[0])
    tracker = PartTracker(source.meta.camera_id, None, (source.meta.width, source.meta.height))
    tracked = []
    for entry, jpeg in source.frames():
        box = tracker.update(td.decode(jpeg), entry.seq).box
        if box is not None and entry.truth is not None and entry.truth.part_id is not None:
            tracked.append((entry, jpeg, box))
    picked = tracked[::-3][:4]
    out = workdir / "boxed-recording"
    with RecordingWriter(out, source.meta.model_copy()) as writer:
        for n, (entry, jpeg, box) in enumerate(picked):
            writer.append(n, entry.capture_ns, jpeg, entry.truth.model_copy(update={"part_box": box}))
    read = list(td.view_frames(Recording(out), view="part", margin=0.06))
    assert [seq for seq, _, _ in read] == list(range(len(picked)))
    for (_, truth, image), (entry, jpeg, box) in zip(read, picked):
        assert truth.part_box == box
        assert np.array_equal(image, part_crop(td.decode(jpeg), box, 0.06))


def test_the_cache_keys_on_the_view_and_margin_and_whole_frame_files_keep_their_names(tiny_clip, recordings, workdir):
    encoder = ft.load_encoder(tiny_clip)[0]
    questions = td.questions_of(recordings)
    cache = workdir / "key-cache"
    logs: list[str] = []
    frame = td.cached_pieces(encoder, recordings, questions, 1, cache, logs.append)
    names = {p.name for p in cache.iterdir()}
    assert len(names) == len(recordings)
    part = td.cached_pieces(encoder, recordings, questions, 1, cache, logs.append, "part", 0.06)
    wider = td.cached_pieces(encoder, recordings, questions, 1, cache, logs.append, "part", 0.2)
    assert len({p.name for p in cache.iterdir()}) == 3 * len(recordings)
    logs.clear()
    again = td.cached_pieces(encoder, recordings, questions, 1, cache, logs.append, "part", 0.06)
    assert any(f"cached encodings of {len(recordings)} of {len(recordings)}" in m for m in logs)
    assert [p.seqs for p in again] == [p.seqs for p in part]
    assert not torch.equal(part[0].tokens.feature_tokens, wider[0].tokens.feature_tokens)
    # a whole-frame file from before seqs were kept still gives them (from the recording's index)
    path = next(cache / n for n in names)
    saved = torch.load(path, weights_only=False)
    del saved["seqs"]
    torch.save(saved, path)
    frame_again = td.cached_pieces(encoder, recordings, questions, 1, cache, lambda m: None)
    assert [p.seqs for p in frame_again] == [p.seqs for p in frame]
    assert {p.name for p in cache.iterdir()} >= names


def test_finetune_view_part_adds_a_part_head_to_the_encoder_bundle(view_bundle, part_bundle):
    from model.bundle import load_bundle

    out, record = view_bundle
    base, bundle = load_bundle(part_bundle, device="cpu"), load_bundle(out, device="cpu")
    assert bundle.part_head is not None and bundle.spec.part_view.margin == 0.08
    assert bundle.spec.part_view.weights == {}
    assert bundle.spec.thresholds == base.spec.thresholds and bundle.spec.questions == base.spec.questions
    assert bundle.spec.model_id == base.spec.model_id and bundle.probe is not None
    for name, value in base.head.state_dict().items():  # the whole-frame head is the encoder bundle's
        assert torch.equal(bundle.head.state_dict()[name], value)
    part_round = bundle.spec.provenance["part_view"]
    assert part_round["finetune"]["config"]["view"] == "part" and part_round["init_head"]["from"] == "whole-frame head"
    # the whole-frame round is kept, its data list as a digest (an earlier round now)
    assert bundle.spec.provenance["finetune"] == earlier_round({"finetune": base.spec.provenance["finetune"]})["finetune"]
    assert bundle.spec.provenance["finetune"]["data"]["recordings"] == len(base.spec.provenance["finetune"]["data"])
    assert record["steps"] == 4 and record["config"]["margin"] == 0.08


def test_finetune_view_part_needs_a_bundle_and_no_ablation(tiny_clip, part_bundle, recordings, workdir):
    with pytest.raises(ValueError, match="bundle"):
        ft.finetune(tiny_config(max_steps=1, view="part"), tiny_clip, recordings, workdir / "x", log=lambda m: None)
    with pytest.raises(ValueError, match="variant"):
        ft.finetune(tiny_config(max_steps=1, view="part", variant="cls_only"), part_bundle, recordings,
                    workdir / "x", log=lambda m: None)


def test_a_second_part_round_starts_from_the_part_head(view_bundle, recordings, workdir):
    out = workdir / "view-bundle-2"
    ft.finetune(tiny_config(max_steps=1, view="part", margin=0.08), view_bundle[0], recordings, out,
                log=lambda m: None)
    from model.bundle import load_bundle

    started = load_bundle(out, device="cpu").spec.provenance["part_view"]["init_head"]
    assert started["from"] == "part head" and started["finetune"]["steps"] == 4


def test_calibrate_chooses_view_weights_and_part_thresholds_on_the_combined_scores(view_calibrated, seed_dirs):
    from model.bundle import load_bundle

    path, record = view_calibrated
    bundle = load_bundle(path, device="cpu")
    questions = [q for q in bundle.spec.questions if q.category != "relation"]
    weights = bundle.spec.part_view.weights
    assert set(weights) == {q.id for q in questions} and set(weights.values()) <= set(WEIGHT_CHOICES)
    assert record["part_view"]["weights"] == weights and bundle.spec.part_view.margin == 0.08
    parts = bundle.spec.parts
    assert parts is not None and set(parts.thresholds) == {q.id for q in questions}

    # the budget, counted again as the worker scores: tracker boxes, both views, per truth part
    scores, keys, defective = [], [], {}
    for rec_path in find_recordings(seed_dirs):
        rec = Recording(rec_path)
        tracker = PartTracker(rec.meta.camera_id, None, (rec.meta.width, rec.meta.height))
        for entry, jpeg in rec.frames():
            image = td.decode(jpeg)
            box = tracker.update(image, entry.seq).box
            truth = entry.truth
            if box is None or truth is None or truth.part_id is None:
                continue
            scores.append(bundle.score_frames([image], questions, boxes=[box])[0])
            key = (str(rec_path), truth.part_id)
            keys.append(key)
            defective[key] = defective.get(key, False) or any(truth.answers[q.id] for q in questions)
    scores = np.array(scores)
    t = np.array([parts.thresholds[q.id] for q in questions])
    good = [k for k, d in defective.items() if not d]
    flagged = sum(bool((scores[[i for i, k in enumerate(keys) if k == key]].mean(axis=0) >= t).any()) for key in good)
    assert flagged <= math.floor(0.25 * len(good))
    assert record["parts"]["parts"] == len(defective) and record["parts"]["good"] == len(good)
    assert record["part_view"]["tracked_frames"] == len(keys)


def test_view_weights_are_chosen_by_part_auroc_ties_nearest_half():
    keys = ["a", "a", "b", "b", "c", "c"]
    labels = np.array([[1, 1], [1, 1], [0, 0], [0, 0], [0, 0], [0, 0]])
    frame = np.array([[0.2, 0.5]] * 2 + [[0.9, 0.5]] * 2 + [[0.1, 0.5]] * 2)  # question 0: the frame view is wrong
    part = np.array([[0.6, 0.5]] * 2 + [[0.1, 0.5]] * 2 + [[0.2, 0.5]] * 2)  # question 1: neither view says anything
    weights, table = choose_view_weights(frame, part, labels, keys, ["q0", "q1"])
    # q0 separates its parts at 0.75 and 1 alike (not at 0.5 or below): the tie goes to the one nearer 0.5
    assert table["q0"] == {"0.0": 0.5, "0.25": 0.5, "0.5": 0.5, "0.75": 1.0, "1.0": 1.0}
    assert weights == {"q0": 0.75, "q1": 0.5} and table["q1"]["0.5"] == 0.5


def test_eval_scores_both_views_and_groups_parts_over_tracked_frames(view_calibrated, seed_dirs, workdir):
    import json

    from training.evaluate import evaluate

    path, record = view_calibrated
    out = workdir / "view-eval"
    report = evaluate(path, find_recordings(seed_dirs), out, pairs_per_question=1, threads=1, log=lambda m: None)
    saved = json.loads((out / "report.json").read_text())
    assert saved["part_view"]["tracked_frames"] == record["part_view"]["tracked_frames"]
    assert saved["part_view"]["weights"]["scratch"] == record["part_view"]["weights"]["scratch"]
    assert "part view" in saved["views"]["mllm_head"] and "part view" in saved["views"]["clip_zero_shot"]
    assert saved["views"]["clip_linear_probe"] == "whole frame"
    assert saved["part_verdict"]["frames"] == record["part_view"]["tracked_frames"]
    counts = ("parts", "defective", "good")
    assert [report["parts"]["overall"][k] for k in counts] == [record["parts"]["report"]["overall"][k] for k in counts]
    assert "Part view: the tracker boxed a part on" in (out / "report.md").read_text()


def test_eval_of_a_bundle_without_a_part_view_reads_whole_frames(calibrated, seed_dirs, workdir):
    from training.evaluate import evaluate

    report = evaluate(calibrated[0], find_recordings(seed_dirs), workdir / "frame-eval", pairs_per_question=1,
                      threads=1, log=lambda m: None)
    assert "part_view" not in report and set(report["views"].values()) == {"whole frame (rendered pairs have no tracked box)",
                                                                           "whole frame"}


def test_cli_finetune_view_part(part_bundle, recordings, workdir):
    from typer.testing import CliRunner

    from model.bundle import load_bundle
    from training.cli import model_app

    out = workdir / "cli-view-bundle"
    args = ["finetune", "--encoder", str(part_bundle), "--data", str(recordings[0]), "--out", str(out), "--view",
            "part", "--margin", "0.1", "--init-head", "--max-steps", "2", "--eval-every", "1", "--batch-frames", "4",
            "--lr", "2e-4", "--lr-decay", "cosine", "--threads", "1", "--cache", str(workdir / "cli-view-cache")]
    # two steps of a tiny head learn nothing that validation would credit: the flags are what is tested here
    result = CliRunner().invoke(model_app, [*args, "--keep-anyway"])
    assert result.exit_code == 0, result.output
    assert load_bundle(out, device="cpu").spec.part_view.margin == 0.1
    bad = CliRunner().invoke(model_app, [*args[:8], "sideways"])
    assert bad.exit_code != 0 and "--view" in bad.output


@pytest.fixture(scope="session")
def readout_calibrated(view_bundle, recordings, seed_dirs, workdir):
    from training.readout import fit_readout

    out = workdir / "readout-calibrated"
    shutil.copytree(view_bundle[0], out)
    fitted = fit_readout(out, recordings, cache_dir=workdir / "view-cache", epochs=2, log=lambda m: None)
    recs = find_recordings(seed_dirs)
    record = calibrate(out, recs, max_fpr=0.1, log=lambda m: None, max_false_alarm_rate=0.25,
                       folds=[str(r.parents[1]) for r in recs])
    return out, fitted, record


def test_fit_readout_then_calibrate_chooses_the_readout_share_and_the_worker_path_serves_it(readout_calibrated, seed_dirs):
    from model.bundle import combine_views, load_bundle

    path, fitted, record = readout_calibrated
    bundle = load_bundle(path, device="cpu")
    assert bundle.part_readout is not None and bundle.part_readout.question_ids == fitted["questions"]
    assert fitted["validation"] and set(fitted["validation"]) <= set(fitted["questions"])
    shares = bundle.spec.part_view.readout_weights
    assert shares == record["part_view"]["readout_weights"] and set(shares) == set(fitted["questions"])
    assert set(shares.values()) <= set(WEIGHT_CHOICES)
    by_pair = record["part_view"]["part_auroc_by_readout_and_view_weight"]
    measured = 0
    for qid, share in shares.items():  # the chosen pair is the best one calibrate measured
        aurocs = [a for row in by_pair[qid].values() for a in row.values() if a is not None]
        if aurocs:  # (a question whose calibration parts are all good or all defective has none)
            measured += 1
            assert by_pair[qid][str(share)][str(bundle.spec.part_view.weights[qid])] == max(aurocs)
    assert measured

    # a frame as the worker scores it: the whole frame, the part head and the readout on the part view
    questions = [q for q in bundle.spec.questions if q.category != "relation"]
    rec = Recording(find_recordings(seed_dirs)[0])
    tracker = PartTracker(rec.meta.camera_id, None, (rec.meta.width, rec.meta.height))
    for entry, jpeg in rec.frames():
        image = td.decode(jpeg)
        box = tracker.update(image, entry.seq).box
        if box is not None:
            break
    view = bundle.encode(bundle.part_views([image], [box]))
    frame = bundle.score_frames([image], questions)
    head = bundle.score_encoded(view, questions, "part_head")
    part = combine_views(head, bundle.readout_scores(view, questions), bundle.readout_weights(questions))
    expected = combine_views(frame, part, bundle.part_view_weights(questions))
    np.testing.assert_allclose(bundle.score_frames([image], questions, boxes=[box]), expected, rtol=1e-4, atol=1e-5)


def test_readout_shares_are_chosen_with_the_view_weights_ties_nearest_half():
    from training.views import choose_readout_weights

    keys = ["a", "a", "b", "b", "c", "c"]
    labels = np.array([[1, 1], [1, 1], [0, 0], [0, 0], [0, 0], [0, 0]])
    frame = np.array([[0.5, 0.5]] * 6)  # says nothing
    head = np.array([[0.2, 0.2]] * 2 + [[0.9, 0.9]] * 2 + [[0.1, 0.1]] * 2)  # wrong about part b
    readout = np.array([[0.7, 0.7]] * 2 + [[0.1, 0.1]] * 2 + [[0.2, 0.2]] * 2)  # right
    weights, shares, table = choose_readout_weights(frame, head, readout, [True, False], labels, keys, ["q0", "q1"])
    # q0: only a readout share of 0.75 or 1 separates the parts, at any view weight above 0: nearest (0.5, 0.5) wins
    assert shares == {"q0": 0.75} and weights["q0"] == 0.5
    assert table["q0"]["0.75"]["0.5"] == 1.0 and table["q0"]["0.5"]["0.5"] == 0.5
    # q1: the readout was not fitted for it, so its share stays 0 and only the view weight is chosen
    assert "q1" not in shares and list(table["q1"]) == ["0.0"] and weights["q1"] == 0.5


def test_cli_fit_readout_refuses_a_bundle_without_a_part_view(part_bundle, recordings, workdir):
    from typer.testing import CliRunner

    from training.cli import model_app

    before = sorted(p.name for p in part_bundle.iterdir())
    result = CliRunner().invoke(model_app, ["fit-readout", str(part_bundle), "--data", str(recordings[0]),
                                            "--threads", "1"])
    assert result.exit_code == 1 and "reads the whole frame only" in " ".join(result.output.split())
    assert sorted(p.name for p in part_bundle.iterdir()) == before


def test_eval_of_a_bundle_with_a_part_readout_says_so_and_applies_its_shares(readout_calibrated, seed_dirs, workdir):
    from training.evaluate import evaluate

    path, _, record = readout_calibrated
    report = evaluate(path, find_recordings(seed_dirs), workdir / "readout-eval", pairs_per_question=1, threads=1,
                      log=lambda m: None)
    assert "part readout" in report["views"]["mllm_head"]
    shares = report["part_view"]["readout_weights"]
    assert {q: w for q, w in shares.items() if q in record["part_view"]["readout_weights"]} == \
        record["part_view"]["readout_weights"]
    counts = ("parts", "defective", "good", "caught", "flagged")
    # the same frames, scores and thresholds as calibrate's own report on these recordings
    assert [report["parts"]["overall"][k] for k in counts] == [record["parts"]["report"]["overall"][k] for k in counts]


def test_cli_fit_readout_writes_the_readout_and_the_new_model_id(view_bundle, recordings, workdir):
    from typer.testing import CliRunner

    from model.bundle import load_bundle
    from training.cli import model_app

    out = workdir / "cli-readout"
    shutil.copytree(view_bundle[0], out)
    result = CliRunner().invoke(model_app, ["fit-readout", str(out), "--data", str(recordings[0]), "--data",
                                            str(recordings[1]), "--epochs", "1", "--model-id", "tiny-v2",
                                            "--cache", str(workdir / "view-cache"), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "part readout, held-out parts" in result.output and "model calibrate" in result.output
    bundle = load_bundle(out, device="cpu")
    assert bundle.model_id == "tiny-v2" and bundle.part_readout is not None
    assert bundle.spec.provenance["part_readout"]["epochs"] == 1 and bundle.spec.part_view.readout_weights == {}


def test_fit_readout_on_recordings_whose_labels_name_no_part_says_why_and_writes_nothing(view_bundle, recordings,
                                                                                        workdir):
    from training.readout import fit_readout
    from training_helpers import relabelled

    partless = relabelled(recordings[0], workdir / "readout-partless", answer="scratch", keep_part_ids=False)
    out = workdir / "readout-partless-bundle"
    shutil.copytree(view_bundle[0], out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(ValueError, match="no labelled frame of these recordings shows a part the tracker boxes"):
        fit_readout(out, [partless], log=lambda m: None)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_a_new_part_round_keeps_the_readout_at_the_same_margin_and_drops_it_at_another(readout_calibrated,
                                                                                      recordings, workdir):
    from model.bundle import load_bundle

    start = readout_calibrated[0]
    for margin, kept in ((0.08, True), (0.12, False)):
        out = workdir / f"part-round-from-readout-{margin}"
        ft.finetune(tiny_config(max_steps=2, view="part", margin=margin), start, recordings, out,
                    log=lambda m: None, cache_dir=workdir / "view-cache")
        bundle = load_bundle(out, device="cpu")
        assert (bundle.part_readout is not None) == kept and bundle.spec.part_view.readout_weights == {}
        assert (out / "part-readout.safetensors").is_file() == kept
