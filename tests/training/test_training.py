"""Pretraining, finetuning and evaluation, end to end on tiny models and tiny recordings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ingest import synth
from ingest.recording import Recording
from training import data as td
from training import finetune as ft
from training import metrics as tm
from training.calibrate import calibrate
from training.pretrain import DEFECT_WORDS, PretrainConfig, make_caption, pretrain, random_view, scene_captions
from training_helpers import tiny_config

def test_pretrain_writes_a_clip_that_loads_offline(tiny_clip):
    from model.encoder import load_clip

    files = {p.name for p in tiny_clip.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json", "pretrain.json"} <= files
    clip = load_clip(tiny_clip, device="cpu", local_files_only=True)
    assert clip.config.vision_config.image_size == 32
    captions = json.loads((tiny_clip / "pretrain.json").read_text())["captions"]
    # web-style captions: the defect words are common, exact layout is rare
    fractions = captions["fraction_of_part_captions"]
    layout = sum(v for k, v in fractions.items() if k.startswith("layout:"))
    assert layout < 0.1 and fractions.get("defect_word:scratch", 0) > layout / 3


def test_captions_seldom_state_layout():
    from collections import Counter

    rng = np.random.default_rng(0)
    stats: Counter = Counter()
    caps = [make_caption(synth.PartSpec("bracket", label_side="left"), rng, 0.03, stats) for _ in range(2000)]
    assert 0 < sum("left" in c for c in caps) < 150
    assert all("bracket" in c for c in caps)


def test_a_hard_pair_is_a_twin_without_the_defect_and_a_caption_without_its_words():
    from collections import Counter

    rng = np.random.default_rng(3)
    cfg = PretrainConfig(hard_pair_rate=1.0)
    pairs = 0
    for _ in range(200):
        spec, look, position = random_view(rng, (320, 240), defect_rate=1.0, empty_rate=0.0)
        items = scene_captions(spec, rng, cfg, Counter())
        if len(items) == 1:
            assert not any(d in ("scratch", "crack", "stain", "missing_screw") for d in spec.defects)
            continue
        pairs += 1
        (shown, caption), (twin, twin_caption) = items
        (gone,) = set(shown.defects) - set(twin.defects)
        # the caption names the defect; the twin's is the same caption without those words
        assert any(caption.replace(" " + w, "", 1) == twin_caption for w in DEFECT_WORDS[gone]), (caption, twin_caption)
        a, b = (synth.render_part_frame(s, np.random.default_rng(7), position, look, (320, 240)) for s in (shown, twin))
        changed = (np.abs(a.astype(int) - b).max(axis=2) > 0).mean()
        assert 0 < changed < 0.05, (gone, changed)
    assert pairs > 20


def test_pretraining_continues_from_a_checkpoint(tiny_clip, workdir):
    from model.encoder import load_clip

    cfg = PretrainConfig(batch_size=8, max_steps=2, render_width=160, log_every=1, threads=1, warmup_steps=1,
                         hard_pair_rate=1.0, init_from=str(tiny_clip))
    record = pretrain(cfg, workdir / "continued-clip", log=lambda m: None)
    assert record["steps"] == 2 and record["config"]["vision_width"] == 32  # the checkpoint's size, not the default
    assert record["init_pretraining"]["steps"] == 3
    before = load_clip(tiny_clip, device="cpu", local_files_only=True).state_dict()
    after = load_clip(workdir / "continued-clip", device="cpu", local_files_only=True).state_dict()
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_finetune_lowers_the_loss_and_writes_a_loadable_bundle(tiny_clip, recordings, workdir):
    from model.bundle import load_bundle

    encoder, _, _, _ = ft.load_encoder(tiny_clip)
    questions = td.questions_of(recordings)
    data = td.encode_recordings(encoder, recordings, questions, log=lambda m: None)
    assert len(data) == 80 and data.labels.shape == (80, len(questions))
    head, record = ft.train_head(tiny_config(), encoder, data, data, log=lambda m: None)
    assert record["best_val_loss"] < record["history"][0]["val_loss"]

    out = workdir / "bundle"
    record = ft.finetune(tiny_config(max_steps=10), tiny_clip, recordings, out, log=lambda m: None, cache_dir=workdir / "cache")
    assert (workdir / "cache").is_dir() and any((workdir / "cache").iterdir())
    bundle = load_bundle(out, device="cpu")
    prov = bundle.spec.provenance
    assert prov["finetune"]["config"]["seed"] == 0 and len(prov["finetune"]["data"]) == 2
    assert "captions" in prov["encoder_pretraining"]
    assert set(bundle.spec.thresholds) == {q.id for q in questions}
    frame = synth.render_part_frame(synth.PartSpec("bracket"), np.random.default_rng(0), None, synth.CLEAN_LOOK, (320, 240))
    for scorer in ("head", "clip", "probe"):
        scores = bundle.score_frames([frame, frame], bundle.spec.questions, scorer=scorer)
        assert scores.shape == (2, len(questions)) and ((scores >= 0) & (scores <= 1)).all()


def test_select_by_auroc_keeps_the_step_with_the_best_validation_auroc(tiny_clip, recordings):
    encoder, _, _, _ = ft.load_encoder(tiny_clip)
    questions = td.questions_of(recordings)
    data = td.encode_recordings(encoder, recordings, questions, log=lambda m: None)
    _, record = ft.train_head(tiny_config(select_by="auroc", min_delta=0.0), encoder, data, data, log=lambda m: None)
    evals = record["history"]
    best_auroc = max(e["val_auroc"] for e in evals)
    assert record["best_val_auroc"] == best_auroc
    assert record["best_step"] == next(e["step"] for e in evals if e["val_auroc"] == best_auroc)


def test_a_recorded_camera_labelled_by_hand_adapts_a_bundle_with_its_wording(tiny_clip, recordings, workdir):
    """README's "Adapting the head to your line": record, label, finetune with no line config."""
    from model.bundle import load_bundle
    from ingest.label import label_recording
    from ingest.recording import RecordingMeta, RecordingWriter

    bundle = workdir / "bundle"
    if not bundle.is_dir():
        ft.finetune(tiny_config(max_steps=5), tiny_clip, recordings, bundle, log=lambda m: None)
    camera = workdir / "recorded-camera"  # no questions in its metadata, no truth: what `record` writes
    source = Recording(recordings[0])
    with RecordingWriter(camera, RecordingMeta(line_id="press-3", camera_id="press-3-top", fps=10, width=320,
                                               height=240, source="camera test")) as writer:
        for entry, jpeg in source.frames():
            writer.append(entry.seq, entry.capture_ns, jpeg)
    label_recording(camera, "scratch", yes=[(5, 12)], no_rest=True)

    out = workdir / "adapted"
    ft.finetune(tiny_config(max_steps=3), bundle, [camera], out, log=lambda m: None)
    scratch = next(q for q in td.questions_of(recordings) if q.id == "scratch")
    assert list(load_bundle(out, device="cpu").spec.questions) == [scratch]  # the bundle's wording

    label_recording(camera, "dent", yes=[(20, 22)])
    with pytest.raises(ValueError, match="the labels answer dent"):
        ft.finetune(tiny_config(max_steps=3), bundle, [camera], workdir / "adapted-2", log=lambda m: None)


def test_finetune_from_a_bundles_head_keeps_how_that_head_was_made(tiny_clip, recordings, workdir):
    from model.bundle import load_bundle

    first, second = workdir / "first", workdir / "continued"
    ft.finetune(tiny_config(max_steps=5, seed=1), tiny_clip, recordings, first, log=lambda m: None,
                model_id="first", cache_dir=workdir / "cache")
    ft.finetune(tiny_config(max_steps=5), first, recordings, second, log=lambda m: None, model_id="continued",
                init_head=True, cache_dir=workdir / "cache")
    prov = load_bundle(second, device="cpu").spec.provenance
    assert prov["init_head"]["model_id"] == "first"
    assert prov["init_head"]["finetune"]["config"]["seed"] == 1 and prov["finetune"]["config"]["seed"] == 0
    assert "captions" in prov["encoder_pretraining"]
    # the round's own data stays a list; the earlier round's shrinks to a digest, one level deeper each round
    assert [d["path"] for d in prov["finetune"]["data"]] == [str(r) for r in recordings]
    digest = prov["init_head"]["finetune"]["data"]
    assert digest["recordings"] == len(recordings) and len(digest["sha256"]) == 64
    assert digest["sources"] == list(dict.fromkeys(d["source"] for d in prov["finetune"]["data"]))
    third = workdir / "third"
    ft.finetune(tiny_config(max_steps=2), second, recordings, third, log=lambda m: None, model_id="third",
                init_head=True, cache_dir=workdir / "cache")
    prov3 = load_bundle(third, device="cpu").spec.provenance
    assert prov3["init_head"]["model_id"] == "continued" and prov3["init_head"]["init_head"]["model_id"] == "first"
    assert prov3["init_head"]["finetune"]["data"] == digest
    assert prov3["init_head"]["init_head"]["finetune"]["data"] == digest


def test_finetune_starts_from_another_bundles_head_on_a_new_encoder(tiny_clip, recordings, workdir):
    """A bundle's encoder pretrained further keeps the bundle's head as its new head's starting point."""
    from model.bundle import load_bundle

    first, continued_clip, second = workdir / "head-source", workdir / "clip-further", workdir / "new-encoder"
    ft.finetune(tiny_config(max_steps=5, seed=1), tiny_clip, recordings, first, log=lambda m: None, model_id="first")
    pretrain(PretrainConfig(batch_size=8, max_steps=1, render_width=160, threads=1, warmup_steps=1,
                            init_from=str(first)), continued_clip, log=lambda m: None)
    start = load_bundle(first, device="cpu").head.state_dict()
    seen = []
    original = ft.train_head

    def spy(cfg, encoder, train, val, log, init=None):
        seen.append({k: v.clone() for k, v in init.state_dict().items()})
        return original(cfg, encoder, train, val, log, init=init)

    ft.train_head = spy
    try:
        ft.finetune(tiny_config(max_steps=5), continued_clip, recordings, second, log=lambda m: None,
                    init_head_from=first)
    finally:
        ft.train_head = original
    assert seen and all(torch.equal(seen[0][k], start[k]) for k in start)
    prov = load_bundle(second, device="cpu").spec.provenance
    assert prov["init_head"]["model_id"] == "first"
    assert prov["encoder_pretraining"]["init_pretraining"]["steps"] == 3


def test_a_patch_head_starts_a_cls_then_patch_head(tiny_clip, recordings, workdir):
    """--image-tokens cls_then_patch from a patch-token bundle: the bundle written reads CLS + patches."""
    from model.bundle import load_bundle

    source, out = workdir / "patch-head", workdir / "cls-patch-head"
    ft.finetune(tiny_config(max_steps=3), tiny_clip, recordings, source, log=lambda m: None, model_id="patch")
    ft.finetune(tiny_config(image_tokens="cls_then_patch", max_steps=3), tiny_clip, recordings, out, log=lambda m: None,
                init_head_from=source)
    bundle = load_bundle(out, device="cpu")
    assert bundle.head.config.image_tokens == "cls_then_patch"
    _, jpeg = next(iter(Recording(recordings[0]).frames()))
    enc = bundle.encoder.encode_frames([td.decode(jpeg)])
    assert bundle.head.image_tokens(enc).shape[1] == enc.feature_tokens.shape[1] + 1
    scores = bundle.head.score(enc, bundle.spec.questions)
    assert scores.shape == (1, len(bundle.spec.questions)) and torch.all((scores >= 0) & (scores <= 1))

    # Started from that head with no choice made, a run keeps its CLS + patches; an ablation makes
    # its one change on top.
    blind = workdir / "blind-from-cls-patch-head"
    ft.finetune(tiny_config(max_steps=2, variant="question_blind"), tiny_clip, recordings, blind,
                log=lambda m: None, init_head_from=out, head_only=True)
    blind_config = json.loads((blind / "head_config.json").read_text())
    assert blind_config["question_aware"] is False and blind_config["image_tokens"] == "cls_then_patch"


def test_calibrate_rewrites_thresholds_under_the_false_positive_cap(tiny_clip, recordings, workdir):
    from model.bundle import load_bundle

    out = workdir / "to-calibrate"
    ft.finetune(tiny_config(max_steps=5), tiny_clip, recordings, out, log=lambda m: None, cache_dir=workdir / "cache")
    before = load_bundle(out, device="cpu").spec
    # a threshold written on a bundle question overrides the bundle's table: calibration must clear it
    spec = json.loads((out / "bundle.json").read_text())
    for q in spec["questions"]:
        q["threshold"] = 0.999
    (out / "bundle.json").write_text(json.dumps(spec))
    record = calibrate(out, recordings, max_fpr=0.1, cache_dir=workdir / "cache", log=lambda m: None)
    after = load_bundle(out, device="cpu")
    assert after.spec.provenance["calibration"] == record
    assert after.spec.provenance["finetune"] == before.provenance["finetune"]  # how the head was made is kept
    questions = [q for q in after.spec.questions if q.category != "relation"]
    data = td.encode_recordings(after.encoder, recordings, questions, log=lambda m: None)
    scores = torch.sigmoid(tm.head_margins(after.head, data.tokens, questions)).numpy()
    thresholds = after.thresholds_for(questions)
    for j, q in enumerate(questions):
        r = record["questions"][q.id]
        assert after.spec.thresholds[q.id] == r["threshold"] == pytest.approx(float(thresholds[j]))
        negatives = scores[data.labels[:, j].numpy() == 0, j]
        if min(r["positives"], r["negatives"]) >= tm.MIN_EACH:  # a question the recordings answer is refitted
            assert r["false_positive_rate"] <= 0.1
            assert (negatives >= r["threshold"]).mean() == pytest.approx(r["false_positive_rate"], abs=1e-4)
        else:
            assert r["threshold"] == r["previous"]


def test_eval_reports_every_scorer_and_category(tiny_clip, recordings, workdir):
    from training.evaluate import evaluate

    bundle = workdir / "bundle"
    if not bundle.is_dir():
        ft.finetune(tiny_config(max_steps=5), tiny_clip, recordings, bundle, log=lambda m: None)
    ablations = workdir / "ablations"
    for variant in ("cls_only", "question_blind", "no_position", "no_position_at_all"):
        ft.finetune(tiny_config(max_steps=3, variant=variant), tiny_clip, recordings, ablations / variant,
                    log=lambda m: None, head_only=True)
    out = workdir / "eval"
    report = evaluate(bundle, recordings[:1], out, ablations=ablations, pairs_per_question=2, threads=1, log=lambda m: None)
    assert {p.name for p in out.iterdir()} >= {"report.md", "report.json", "roc.png", "categories.png"}
    scorers = {"clip_zero_shot", "clip_linear_probe", "mllm_head", "ablation_cls_only", "ablation_question_blind",
               "ablation_no_position", "ablation_no_position_at_all"}
    assert set(report["scorers"]) == scorers
    for name in scorers:
        cats = report["scorers"][name]["per_category"]
        assert {"fine_detail", "spatial", "counting", "overall"} <= set(cats)
        # the relation question was never trained: the head and CLIP still answer it, the probe cannot
        assert ("relation" in cats) == (name != "clip_linear_probe")
    md = (out / "report.md").read_text()
    for label in ("CLIP zero-shot", "CLIP linear probe", "MLLM head", "head: CLS only", "head: no position emb.",
                  "head: no positions at all", "head: question-blind pooling", "label_near_gap", "spatial_pair_accuracy"):
        assert label in md
    assert json.loads((out / "report.json").read_text())["targets"] == report["targets"]


def test_eval_and_finetune_name_a_bad_path_instead_of_failing_with_a_traceback(tiny_clip, recordings, workdir):
    from typer.testing import CliRunner

    from training.cli import model_app

    runner = CliRunner()

    def said(result) -> str:  # rich wraps long lines
        return " ".join(result.output.split())

    rec = str(recordings[0])
    bundle = workdir / "bundle"
    if not bundle.is_dir():
        ft.finetune(tiny_config(max_steps=5), tiny_clip, recordings, bundle, log=lambda m: None)

    result = runner.invoke(model_app, ["eval", str(workdir / "missing"), "--data", rec, "--out", str(workdir / "e1")])
    assert result.exit_code == 1 and "eval failed" in said(result) and "not a model bundle" in said(result)
    # an --ablations folder without heads fails before the encoding, not after a report without them
    empty = workdir / "no-heads"
    empty.mkdir()
    result = runner.invoke(model_app, ["eval", str(bundle), "--data", rec, "--ablations", str(empty),
                                 "--out", str(workdir / "e2"), "--pairs", "2", "--threads", "1"])
    assert result.exit_code == 1 and "no ablation heads" in said(result)
    assert not (workdir / "e2" / "report.md").exists()

    result = runner.invoke(model_app, ["finetune", "--encoder", str(workdir / "no-such-clip"), "--data", rec,
                                 "--out", str(workdir / "f1"), "--max-steps", "1", "--threads", "1"])
    assert result.exit_code == 1 and "cannot load the encoder" in said(result)
    assert result.exception is None or isinstance(result.exception, SystemExit)

    (workdir / "a-file").write_text("")  # an --out under a file fails before any training, not after it
    result = runner.invoke(model_app, ["finetune", "--encoder", str(bundle), "--data", rec, "--out",
                                 str(workdir / "a-file" / "out"), "--max-steps", "1", "--threads", "1"])
    assert result.exit_code == 1 and "finetune failed" in said(result) and "encoded" not in said(result)


def test_pair_images_differ_only_in_the_asked_property():
    qs = [q for q in synth.SYNTH_QUESTIONS if q.id in ("label_left", "scratch")]
    pos, neg, answers = td.render_pairs(qs, 2, seed=1, size=(320, 240))
    assert len(pos) == len(neg) == 4 and len(answers) == 8
    for i, (a, b) in enumerate(zip(pos, neg)):
        diff = np.abs(a.astype(int) - b.astype(int)).max(axis=2) > 40
        assert 0 < diff.mean() < 0.1  # a small region changed, the rest is the same scene
        asked = qs[i // 2].id
        yes, no = answers[i], answers[len(pos) + i]
        assert yes[asked] and not no[asked]
        assert {k: v for k, v in yes.items() if k != asked} == {k: v for k, v in no.items() if k != asked}


def test_the_encoding_cache_follows_the_encoder_weights(tiny_clip, recordings, workdir):
    encoder = ft.load_encoder(tiny_clip)[0]
    questions = td.questions_of(recordings)
    seen: list[str] = []
    td.cached_encoding(encoder, recordings[:1], questions, 4, workdir / "cache-weights", seen.append)
    td.cached_encoding(encoder, recordings[:1], questions, 4, workdir / "cache-weights", seen.append)
    assert sum("using cached encodings of 1 of 1" in m for m in seen) == 1
    # Two weights swapped: the same sum, another encoder, so the cache must not answer.
    weight = encoder.vision.embeddings.patch_embedding.weight
    with torch.no_grad():
        flat = weight.view(-1)
        flat[[0, 1]] = flat[[1, 0]].clone()
    td.cached_encoding(encoder, recordings[:1], questions, 4, workdir / "cache-weights", seen.append)
    assert sum("using cached encodings" in m for m in seen) == 1


def test_a_run_with_more_recordings_encodes_only_the_new_ones(tiny_clip, recordings, workdir):
    encoder = ft.load_encoder(tiny_clip)[0]
    questions = td.questions_of(recordings)
    cache = workdir / "cache-grow"
    first = td.cached_encoding(encoder, recordings[:1], questions, 2, cache, lambda m: None)
    assert len(list(cache.glob("encoded-*.pt"))) == 1
    seen: list[str] = []
    both = td.cached_encoding(encoder, recordings, questions, 2, cache, seen.append)
    assert any("using cached encodings of 1 of 2" in m for m in seen)
    assert len(list(cache.glob("encoded-*.pt"))) == 2  # the second recording's, and nothing else
    fresh = td.encode_recordings(encoder, recordings, questions, 2, log=lambda m: None)
    assert len(both) == len(fresh) == 40 and both.groups == fresh.groups and both.sources == fresh.sources
    assert torch.equal(both.labels, fresh.labels)
    # the joined set holds its patch tokens in float16: the fresh float32 encoding, rounded
    torch.testing.assert_close(both.tokens.feature_tokens, fresh.tokens.feature_tokens.to(td.HELD_PATCH_DTYPE))
    torch.testing.assert_close(both.tokens.feature_tokens[: len(first)], first.tokens.feature_tokens)


def test_the_cache_stores_patch_tokens_in_half_precision_and_still_reads_float32_files(tiny_clip, recordings, workdir):
    encoder = ft.load_encoder(tiny_clip)[0]
    questions = td.questions_of(recordings)
    cache = workdir / "cache-half"
    half = td.cached_encoding(encoder, recordings[:1], questions, 2, cache, lambda m: None)
    [path] = list(cache.glob("encoded-*.pt"))
    saved = torch.load(path, weights_only=False)
    embeds, patches, cls = saved["tokens"]
    assert patches.dtype == td.HELD_PATCH_DTYPE and cls.dtype == embeds.dtype == torch.float32
    fresh = td.encode_recordings(encoder, recordings[:1], questions, 2, log=lambda m: None)
    # a file written before, with float32 patch tokens, under the same name
    torch.save({**saved, "tokens": (embeds, fresh.tokens.feature_tokens, cls)}, path)
    assert torch.load(path, weights_only=False)["tokens"][1].dtype == torch.float32
    seen: list[str] = []
    old = td.cached_encoding(encoder, recordings[:1], questions, 2, cache, seen.append)
    assert any("using cached encodings of 1 of 1" in m for m in seen) and not any("encoding 1" in m for m in seen)
    assert old.tokens.feature_tokens.dtype == td.HELD_PATCH_DTYPE and old.groups == half.groups
    assert torch.equal(old.tokens.feature_tokens, half.tokens.feature_tokens)
    assert torch.equal(old.tokens.cls_token, half.tokens.cls_token) and torch.equal(old.labels, half.labels)


def test_splitting_cached_pieces_gives_the_split_of_their_join(tiny_clip, recordings, workdir):
    encoder, _, _, _ = ft.load_encoder(tiny_clip)
    questions = td.questions_of(recordings)
    joined = td.encode_recordings(encoder, recordings, questions, 2, log=lambda m: None)
    td.cached_pieces(encoder, recordings, questions, 2, workdir / "cache-split", lambda m: None)
    pieces = td.cached_pieces(encoder, recordings, questions, 2, workdir / "cache-split", lambda m: None)  # read back
    assert len(pieces) == len(recordings) > 1
    train, val = td.split_by_group(pieces, 0.3, seed=5)
    want_train, want_val = td.split_by_group([joined], 0.3, seed=5)
    assert set(train.groups).isdisjoint(val.groups) and len(train) + len(val) == len(joined)
    for got, want in ((train, want_train), (val, want_val)):
        assert len(got) > 0 and got.groups == want.groups and torch.equal(got.labels, want.labels)
        torch.testing.assert_close(got.tokens.feature_tokens, want.tokens.feature_tokens)
        torch.testing.assert_close(got.tokens.cls_token, want.tokens.cls_token)
        torch.testing.assert_close(got.tokens.image_embeds, want.tokens.image_embeds)


def test_a_training_set_holds_patch_tokens_in_half_precision_and_the_head_scores_them_alike(tiny_clip, recordings):
    from model.head import MLLMHead

    encoder, _, _, _ = ft.load_encoder(tiny_clip)
    questions = td.questions_of(recordings)
    encoded = td.encode_recordings(encoder, recordings, questions, 2, log=lambda m: None)  # as the encoder gave it
    held, _ = td.split_by_group([encoded], 0.0001, seed=0)  # what training holds: a join of the pieces
    assert encoded.tokens.feature_tokens.dtype == torch.float32
    assert held.tokens.feature_tokens.dtype == td.HELD_PATCH_DTYPE == torch.float16
    assert held.tokens.cls_token.dtype == held.tokens.image_embeds.dtype == torch.float32  # the probe fits on these
    kept = torch.as_tensor([i for i, g in enumerate(encoded.groups) if g in set(held.groups)])  # in order
    torch.testing.assert_close(held.tokens.feature_tokens.float(), encoded.tokens.feature_tokens[kept], rtol=1e-3, atol=1e-3)
    assert 0 < len(kept) == len(held) < len(encoded)
    head = MLLMHead.create(tiny_config().head_config(), encoder=encoder, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        full = head.logits(encoded.tokens.select(kept), questions)
        half = head.logits(held.tokens, questions)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=1e-2, atol=1e-2)


def test_an_unreadable_cached_encoding_is_encoded_again(tiny_clip, recordings, workdir):
    encoder, _, _, _ = ft.load_encoder(tiny_clip)
    questions = td.questions_of(recordings)
    cache = workdir / "cache-broken"
    td.cached_pieces(encoder, recordings[:1], questions, 2, cache, lambda m: None)
    [path] = list(cache.glob("encoded-*.pt"))
    path.write_bytes(path.read_bytes()[:200])  # cut off, as by a full disk or a killed copy
    seen = []
    again = td.cached_pieces(encoder, recordings[:1], questions, 2, cache, seen.append)
    assert any("is unreadable" in m and "encoding its recording again" in m for m in seen)
    fresh = td.encode_recordings(encoder, recordings[:1], questions, 2, log=lambda m: None)
    assert again[0].groups == fresh.groups and torch.equal(again[0].labels, fresh.labels)
    torch.testing.assert_close(again[0].tokens.feature_tokens, fresh.tokens.feature_tokens.to(td.HELD_PATCH_DTYPE))
    seen.clear()
    td.cached_pieces(encoder, recordings[:1], questions, 2, cache, seen.append)  # the rewritten file reads
    assert not any("unreadable" in m for m in seen) and not any(m.startswith("encoded ") for m in seen)


def test_finetune_adds_twin_pairs_to_training_only(tiny_clip, recordings, workdir):
    plain = ft.finetune(tiny_config(max_steps=2), tiny_clip, recordings, workdir / "plain", log=lambda m: None,
                        head_only=True, cache_dir=workdir / "cache")
    seen = []
    record = ft.finetune(tiny_config(max_steps=2, train_pairs=3), tiny_clip, recordings, workdir / "paired",
                         log=seen.append, head_only=True, cache_dir=workdir / "cache")
    questions = td.questions_of(recordings)
    assert record["train_frames"] == plain["train_frames"] + 2 * 3 * len(questions)
    assert record["val_frames"] == plain["val_frames"]
    assert record["frames"] == plain["frames"] == plain["train_frames"] + plain["val_frames"]  # the recordings' frames
    assert record["config"]["train_pairs"] == 3 and any("twin pairs (seed 4001)" in m for m in seen)


def test_twin_pairs_need_questions_the_synthetic_parts_can_show(tiny_clip):
    from schemas.config import Question

    encoder, _, _, _ = ft.load_encoder(tiny_clip)
    with pytest.raises(ValueError, match="cannot show"):
        td.encode_pairs(encoder, [Question(id="burr", text="Is there a burr?", defect_type="burr")], 1, seed=1)


def test_a_cosine_run_records_its_falling_rate(tiny_clip, recordings):
    encoder, _, _, _ = ft.load_encoder(tiny_clip)
    data = td.encode_recordings(encoder, recordings, td.questions_of(recordings), log=lambda m: None)
    _, record = ft.train_head(tiny_config(lr_decay="cosine"), encoder, data, data, log=lambda m: None)
    rates = [h["lr"] for h in record["history"][1:]]
    assert len(rates) == 3 and rates[0] > rates[1] > rates[2] and rates[2] < 1e-4 * rates[0]


def test_the_validation_sample_has_the_size_asked_for(tiny_clip, recordings):
    encoder, _, _, _ = ft.load_encoder(tiny_clip)
    data = td.encode_recordings(encoder, recordings, td.questions_of(recordings), log=lambda m: None)
    _, record = ft.train_head(tiny_config(max_steps=10, max_val_frames=7), encoder, data, data, log=lambda m: None)
    assert record["val_frames"] == 7 and len(data) > 7


def test_auroc_and_threshold():
    y = np.array([0, 0, 0, 1, 1])
    assert tm.auroc(np.array([0.1, 0.2, 0.3, 0.8, 0.9]), y) == 1.0
    assert tm.auroc(np.array([0.9, 0.8, 0.3, 0.2, 0.1]), y) == 0.0
    assert tm.auroc(np.array([0.5] * 5), y) == 0.5
    assert np.isnan(tm.auroc(np.array([0.1, 0.2]), np.array([0, 0])))
    t = tm.best_threshold(np.array([0.1] * 6 + [0.3] * 6), np.array([0] * 6 + [1] * 6))
    assert 0.1 < t <= 0.3


def test_ablation_target_without_ablations_is_not_met():
    from training.evaluate import check_targets, markdown

    metrics = {"pair_accuracy": 1.0, "auroc": 1.0, "accuracy": 1.0, "balanced_accuracy": 1.0}
    head = {"per_category": {c: metrics for c in ("spatial", "overall", "fine_detail")}}
    targets = check_targets({"scorers": {"mllm_head": head}})
    assert targets["spatial_pair_accuracy"]["met"] and not targets["ablations_below_full"]["met"]
    report = {"model_id": "m", "frames": 0, "recordings": [], "pairs_per_question": 0, "pair_seed": 0,
              "questions": [], "scorers": {"mllm_head": {**head, "per_question": {}}}, "targets": targets}
    assert "| ablations_below_full | n/a | 100.0 | **no**: not measured" in markdown(report)


def test_threshold_under_a_false_positive_cap():
    # barely separated: negatives 0.00..0.99, positives 0.20..0.99; "always yes" has the best balanced accuracy
    neg, pos = np.linspace(0, 0.99, 100), np.linspace(0.2, 0.99, 20)
    scores, labels = np.concatenate([neg, pos]), np.array([0] * 100 + [1] * 20)
    uncapped = tm.best_threshold(scores, labels)
    assert (neg >= uncapped).mean() > 0.5
    capped = tm.best_threshold(scores, labels, max_fpr=0.05)
    assert (neg >= capped).mean() <= 0.05 and (pos >= capped).mean() > 0
    # a cap of 0 still yields a threshold: one above every negative
    assert (neg >= tm.best_threshold(scores, labels, max_fpr=0.0)).sum() == 0
    # a well-separated question is not moved by the cap
    sep = np.concatenate([np.linspace(0, 0.4, 100), np.linspace(0.6, 1, 20)])
    assert tm.best_threshold(sep, labels, max_fpr=0.05) == tm.best_threshold(sep, labels)


SHIPPED = Path(__file__).resolve().parents[2] / "models" / "default"


@pytest.mark.skipif(not (SHIPPED / "bundle.json").is_file(), reason="models/default not built yet")
def test_shipped_bundle_loads_offline_and_scores_sensibly(monkeypatch):
    from model.bundle import load_bundle

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    size = sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file())
    assert size <= 25 * 2**20
    bundle = load_bundle(SHIPPED, device="cpu")
    questions = list(bundle.spec.questions)
    col = {q.id: i for i, q in enumerate(questions)}
    thresholds = bundle.thresholds_for(questions)
    rng = np.random.default_rng(77)
    look = synth.CameraLook(noise_sigma=3)
    # Missing screws and hole counts are not asserted: the shipped head misses its targets there
    # (held-out AUROC 0.935 and 0.904, docs/evaluation.md), and on a few of these parts they lower
    # the score.
    diffs: dict[str, list[float]] = {"scratch": [], "crack": [], "stain": [], "label_left": []}
    for i, part_type in enumerate(sorted(synth.PART_TYPES) * 2):
        clean = synth.PartSpec(part_type, seed=100 + i)
        obvious = clean.replace(scratch=True, crack=True, stain=True, label_side="left", holes=5)
        specs = [clean, obvious] + [synth.set_defect(clean, d) for d in diffs]
        scores = bundle.score_frames([synth.render_part_frame(s, rng, None, look) for s in specs], questions)
        # a clearly defective part is flagged more strongly than the same part without defects
        assert (scores[1] / thresholds).max() > (scores[0] / thresholds).max()
        for k, d in enumerate(diffs, start=2):
            diffs[d].append(float(scores[k, col[d]] - scores[0, col[d]]))
    # each planted defect raises its own question's score on average over ten parts
    assert all(np.mean(v) > 0 for v in diffs.values()), {d: np.mean(v) for d, v in diffs.items()}
    assert np.mean(diffs["label_left"]) > 0.3  # the spatial question the head reads best (docs/evaluation.md)
    provenance = bundle.spec.provenance
    assert provenance["finetune"]["command"] and provenance["encoder_pretraining"]["captions"]
