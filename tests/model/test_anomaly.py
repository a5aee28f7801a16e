"""The anomaly memory (PatchCore) and the bundle's anomaly questions, on tiny random-weight models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.anomaly import AnomalyMemory, coreset_indices
from model.bundle import Bundle, BundleError, load_bundle
from schemas.config import Question

ANOMALY = Question(id="odd", text="Is this part unlike the good parts?", defect_type="anomaly", kind="anomaly")


def clean_frame(rng: np.random.Generator) -> np.ndarray:
    """A grey belt with mild noise and a little brightness drift: what the good parts look like here."""
    base = int(rng.integers(110, 130))
    return np.clip(base + rng.normal(0, 4, (64, 64, 3)), 0, 255).astype(np.uint8)


def with_defect(frame: np.ndarray) -> np.ndarray:
    """The frame with one dark, sharp-edged blotch in a single patch's area."""
    out = frame.copy()
    out[24:34, 24:34] = (10, 10, 200)
    return out


def memory_of(encoder, frames: list[np.ndarray], scale_frames: list[np.ndarray]) -> AnomalyMemory:
    tokens = encoder.encode_frames(frames, pooled=False).feature_tokens
    memory = AnomalyMemory.fit(tokens, coreset=64, k=1)
    return memory.normalised(memory.raw_scores(encoder.encode_frames(scale_frames, pooled=False).feature_tokens))


def test_a_patch_unlike_every_remembered_one_scores_highest():
    rng = torch.Generator().manual_seed(0)
    good = torch.randn(20, 16, 8, generator=rng) * 0.1  # 20 frames of 16 patches, all near the origin
    memory = AnomalyMemory.fit(good, coreset=100, k=3)
    assert memory.patches.shape == (100, 8)  # 320 patches, the coreset keeps 100
    clean = torch.randn(4, 16, 8, generator=rng) * 0.1
    defect = clean.clone()
    defect[:, 5] += 2.0  # one patch of each frame far from all good patches
    raw_clean, raw_defect = memory.raw_scores(clean), memory.raw_scores(defect)
    assert (raw_defect > raw_clean + 1.0).all()
    memory = memory.normalised(memory.raw_scores(torch.randn(10, 16, 8, generator=rng) * 0.1))
    clean_score, defect_score = memory.score(clean), memory.score(defect)
    assert ((clean_score >= 0) & (clean_score <= 1)).all() and (defect_score > 0.99).all()
    assert (clean_score < 0.5).all()


def test_the_coreset_keeps_the_rare_patches():
    common = torch.zeros(500, 4) + torch.randn(500, 4, generator=torch.Generator().manual_seed(1)) * 0.01
    rare = torch.tensor([[5.0, 0, 0, 0], [0, -5.0, 0, 0]])
    chosen = coreset_indices(torch.cat([common, rare]), 8, seed=0)
    assert len(set(chosen.tolist())) == 8 and {500, 501} <= set(chosen.tolist())


def test_memory_without_a_scale_or_of_another_width_says_so():
    memory = AnomalyMemory.fit(torch.randn(2, 4, 8), coreset=8)
    with pytest.raises(ValueError, match="no normalisation"):
        memory.score(torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match="8-wide patches, the encoder gives 6"):
        memory.raw_scores(torch.randn(1, 4, 6))
    with pytest.raises(ValueError, match="no good patches"):
        AnomalyMemory.fit(torch.zeros(0, 4, 8), coreset=8)


def test_bundle_scores_a_defect_patch_above_clean_frames_through_score_frames(
        clip, clip_tok, encoder, head, questions, tmp_path):
    rng = np.random.default_rng(0)
    good = [clean_frame(rng) for _ in range(12)]
    bundle = Bundle.create(encoder, head, "tiny-anomaly", clip=clip, clip_tokenizer=clip_tok,
                           questions=[*questions, ANOMALY])
    asked = [questions[0], ANOMALY]
    with pytest.raises(ValueError, match="no anomaly memory"):
        bundle.score_frames(good[:1], asked)
    bundle.anomaly = memory_of(encoder, good[:8], good[8:])
    bundle.spec = bundle.spec.model_copy(update={"anomaly": "anomaly"})

    clean = [clean_frame(rng) for _ in range(4)]
    frames = clean + [with_defect(f) for f in clean]
    scores = bundle.score_frames(frames, asked)
    assert scores.shape == (8, 2) and np.all((scores >= 0) & (scores <= 1))
    assert scores[4:, 1].min() > scores[:4, 1].max()  # every defect frame above every clean one
    # the yes/no question is still the head's, unchanged by the anomaly column beside it
    np.testing.assert_allclose(scores[:, 0], bundle.score_frames(frames, [questions[0]])[:, 0], rtol=1e-5, atol=1e-6)
    # asked by id, the bundle's question list says it is an anomaly question
    np.testing.assert_allclose(bundle.score_frames(frames, ["odd"])[:, 0], scores[:, 1], rtol=1e-6)
    # the scorer does not matter to an anomaly question: the memory answers it
    np.testing.assert_allclose(bundle.score_frames(frames, [ANOMALY], scorer="clip")[:, 0], scores[:, 1], rtol=1e-6)
    assert bundle.part_view_weights([questions[0], ANOMALY]).tolist() == [0.5, 0.0]

    bundle.save(tmp_path / "b", dtype=None)
    assert (tmp_path / "b" / "anomaly" / "memory.safetensors").is_file()
    loaded = load_bundle(tmp_path / "b", device="cpu")
    assert loaded.anomaly is not None and loaded.describe()["anomaly"]["patches"] == len(bundle.anomaly.patches)
    # kept in float16 on disk: the scores move by rounding only
    np.testing.assert_allclose(loaded.score_frames(frames, asked)[:, 1], scores[:, 1], atol=2e-3)


def test_a_bundle_whose_memory_is_missing_is_refused(clip, clip_tok, encoder, head, tmp_path):
    bundle = Bundle.create(encoder, head, "tiny-anomaly", clip=clip, clip_tokenizer=clip_tok, questions=[ANOMALY])
    rng = np.random.default_rng(1)
    good = [clean_frame(rng) for _ in range(4)]
    bundle.anomaly = memory_of(encoder, good[:2], good[2:])
    bundle.spec = bundle.spec.model_copy(update={"anomaly": "anomaly"})
    bundle.save(tmp_path / "b", dtype=None)
    (tmp_path / "b" / "anomaly" / "memory.safetensors").unlink()
    with pytest.raises(BundleError, match="not a readable anomaly memory"):
        load_bundle(tmp_path / "b", device="cpu")
