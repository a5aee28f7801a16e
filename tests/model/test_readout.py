"""The part readout: a logistic regression per question on patch tokens, each patch at its place."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.readout import PatchReadout
from training.metrics import auroc

PATCHES, DIM = 16, 8


def tokens_with_a_mark(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens; a third carry a mark at patch 5 (yes), a third the same mark at patch 9 (no): where counts."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, PATCHES, DIM, generator=g)
    kind = torch.arange(n) % 3
    tokens[kind == 1, 5, 2] += 4.0
    tokens[kind == 2, 9, 2] += 4.0
    labels = torch.stack([(kind == 1).float(), (kind == 0).float()], dim=1)  # q1: no mark anywhere
    return tokens.half(), labels


def test_a_fitted_readout_tells_where_a_mark_is_not_only_that_there_is_one():
    tokens, labels = tokens_with_a_mark(3000, 0)
    readout = PatchReadout(PATCHES, DIM, ["mark_at_5", "clean"])
    losses = readout.fit(tokens, labels, epochs=8, lr=1e-2, seed=0)
    assert losses[-1] < losses[0]
    test, truth = tokens_with_a_mark(600, 1)
    scores = readout.scores(test, ["mark_at_5", "clean"]).numpy()
    assert auroc(scores[:, 0], truth[:, 0].numpy()) > 0.97  # the mark at 9 is a "no"
    assert auroc(scores[:, 1], truth[:, 1].numpy()) > 0.93
    # a question's columns come back in the order asked
    np.testing.assert_allclose(readout.scores(test, ["clean"]).numpy()[:, 0], scores[:, 1], rtol=1e-6)


def test_unknown_labels_are_left_out_and_a_question_without_yes_is_refused():
    tokens, labels = tokens_with_a_mark(300, 0)
    labels[::2, 0] = -1  # half unknown: still fits
    PatchReadout(PATCHES, DIM, ["a", "b"]).fit(tokens, labels, epochs=1)
    sparse = torch.full_like(labels, -1.0)
    sparse[:4] = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat(2, 1)  # batches of 2: most answer nothing at all
    readout = PatchReadout(PATCHES, DIM, ["a", "b"])
    losses = readout.fit(tokens, sparse, epochs=1, batch=2)
    assert all(np.isfinite(losses)) and torch.isfinite(readout.weight).all()
    labels[:, 1] = 0
    with pytest.raises(ValueError, match=r"\['b'\] have no yes or no frames"):
        PatchReadout(PATCHES, DIM, ["a", "b"]).fit(tokens, labels, epochs=1)


def test_it_saves_and_loads_and_refuses_other_tokens_and_questions(tmp_path):
    tokens, labels = tokens_with_a_mark(300, 0)
    readout = PatchReadout(PATCHES, DIM, ["a", "b"])
    readout.fit(tokens, labels, epochs=1)
    readout.save(tmp_path / "r.safetensors", dtype=None)
    loaded = PatchReadout.load(tmp_path / "r.safetensors")
    assert loaded.question_ids == ["a", "b"] and loaded.shape == (PATCHES, DIM)
    torch.testing.assert_close(loaded.scores(tokens, ["a", "b"]), readout.scores(tokens, ["a", "b"]))
    readout.save(tmp_path / "half.safetensors")  # float16 weights, as a bundle keeps them: within a rounding
    half = PatchReadout.load(tmp_path / "half.safetensors")
    assert half.weight.dtype == torch.float32 and (tmp_path / "half.safetensors").stat().st_size < \
        (tmp_path / "r.safetensors").stat().st_size
    torch.testing.assert_close(half.scores(tokens, ["a", "b"]), readout.scores(tokens, ["a", "b"]), atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="not fitted for questions \\['c'\\]"):
        loaded.scores(tokens, ["a", "c"])
    with pytest.raises(ValueError, match="reads 16 patches of 8 channels"):
        loaded.scores(torch.zeros(2, 64, DIM), ["a"])
