from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from model.bundle import Bundle, BundleError, load_bundle
from model.clip_baseline import LinearProbe
from training.cli import model_app


@pytest.fixture()
def bundle(clip, clip_tok, encoder, head, questions) -> Bundle:
    probe = LinearProbe(16, [q.id for q in questions])
    torch.nn.init.normal_(probe.weight)
    return Bundle.create(
        encoder, head, "tiny-test-v1", clip=clip, clip_tokenizer=clip_tok, questions=questions,
        thresholds={"scratch": 0.3, "label": 0.4}, provenance={"made_by": "test", "seed": 0}, probe=probe,
    )


def test_one_encoder_feeds_every_scorer(bundle, frames, questions):
    assert bundle.head.encoder is bundle.encoder and bundle.clip.encoder is bundle.encoder
    calls = []
    hook = bundle.encoder.register_forward_hook(lambda *a: calls.append(1))
    enc = bundle.encode(frames)
    head = bundle.score_encoded(enc, questions, "head")
    clip = bundle.score_encoded(enc, questions, "clip")
    probe = bundle.score_encoded(enc, questions, "probe")
    assert len(calls) == 1  # three scorers, Q questions each, one encoder pass
    for s in (head, clip, probe):
        assert s.shape == (3, 3) and s.dtype == np.float32 and np.all((s >= 0) & (s <= 1))
    calls.clear()
    np.testing.assert_allclose(bundle.score_frames(frames, questions), head, rtol=1e-5, atol=1e-6)
    assert len(calls) == 1
    hook.remove()


def test_thresholds_line_overrides_bundle(bundle, questions):
    # scratch: bundle 0.3; label: the line's 0.8 beats the bundle's 0.4; holes: the default.
    np.testing.assert_allclose(bundle.thresholds_for(questions), [0.3, 0.8, 0.5])


def test_save_load_round_trip_offline(bundle, frames, questions, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bundle.save(tmp_path / "b", dtype=None)
    loaded = load_bundle(tmp_path / "b", device="cpu")
    assert loaded.model_id == "tiny-test-v1"
    assert loaded.spec.provenance == {"made_by": "test", "seed": 0}
    assert loaded.spec.questions == bundle.spec.questions
    assert loaded.head.encoder is loaded.encoder and loaded.clip.encoder is loaded.encoder
    for scorer in ("head", "clip", "probe"):
        np.testing.assert_allclose(
            loaded.score_frames(frames, questions, scorer), bundle.score_frames(frames, questions, scorer),
            rtol=1e-5, atol=1e-6,
        )
    spec = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert spec["thresholds"] == {"scratch": 0.3, "label": 0.4} and spec["encoder"]["source"] == "encoder"


def test_fp16_save_is_smaller_and_close(bundle, frames, questions, tmp_path):
    before = bundle.score_frames(frames, questions)
    bundle.save(tmp_path / "fp32", dtype=None)
    bundle.save(tmp_path / "fp16")
    np.testing.assert_array_equal(bundle.score_frames(frames, questions), before)  # live model untouched
    size = lambda d: sum(f.stat().st_size for f in d.rglob("*.safetensors"))  # noqa: E731
    assert size(tmp_path / "fp16") < 0.6 * size(tmp_path / "fp32")
    loaded = load_bundle(tmp_path / "fp16", device="cpu")
    assert loaded.encoder.dtype == torch.float32  # CPU computes in fp32
    np.testing.assert_allclose(loaded.score_frames(frames, questions), before, atol=0.02)


def test_bad_bundles_raise_typed_errors(tmp_path):
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text('{"model_id": ""}')
    with pytest.raises(BundleError, match="invalid"):
        load_bundle(tmp_path)


def test_empty_batch_and_unknown_scorer(bundle, questions, frames):
    assert bundle.score_frames([], questions).shape == (0, 3)
    with pytest.raises(ValueError, match="scorer"):
        bundle.score_frames(frames, questions, scorer="nope")


def test_cli_model_info(bundle, tmp_path):
    bundle.save(tmp_path / "b")
    result = CliRunner().invoke(model_app, ["info", str(tmp_path / "b"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output[result.output.index("{"):])
    assert info["model_id"] == "tiny-test-v1" and info["head"]["backend"] == "tiny"
    assert info["thresholds"] == {"scratch": 0.3, "label": 0.4}
    result = CliRunner().invoke(model_app, ["info", str(tmp_path / "b")])
    assert result.exit_code == 0 and "tiny-test-v1" in result.output and "scratch" in result.output
    result = CliRunner().invoke(model_app, ["info", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "cannot read bundle" in result.output
