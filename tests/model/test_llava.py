"""The LLaVA backend, on a tiny random LlavaForConditionalGeneration saved with save_pretrained."""

from __future__ import annotations

import pytest
import torch

from model.encoder import EncoderConfig, FrameEncoder
from model.head import HeadConfig, MLLMHead


def test_loads_offline_and_shares_the_encoder(llava_dir, clip, encoder, frames, questions, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    head = MLLMHead.from_llava(llava_dir, encoder=encoder, device="cpu")
    assert head.lm.model.vision_tower is encoder.vision is clip.vision_model
    assert head.projector is head.lm.model.multi_modal_projector
    scores = head.score(encoder.encode_frames(frames), questions)
    assert scores.shape == (3, 3) and torch.all((scores >= 0) & (scores <= 1))


def test_matches_llava_own_forward(llava_dir, encoder, frames, questions):
    """Our prefix/prompt assembly gives LLaVA's own next-token logits for <image> prompts."""
    head = MLLMHead.from_llava(llava_dir, encoder=encoder, device="cpu")
    llava, tok = head.lm, head.tokenizer
    pixels = encoder.preprocess(frames)
    n_image = encoder.num_tokens
    ours = head.logits(encoder(pixels), questions)
    for qi, q in enumerate(questions):
        ids = (
            tok.encode(head.config.prefix, add_special_tokens=False)
            + [llava.config.image_token_id] * n_image
            + tok.encode(head.config.prompt.format(question=q.text), add_special_tokens=False)
        )
        input_ids = torch.tensor([ids] * len(frames))
        with torch.inference_mode():
            logits = llava(input_ids=input_ids, pixel_values=pixels).logits[:, -1]
        torch.testing.assert_close(ours[:, qi], logits[:, [head.yes_id, head.no_id]].float(), rtol=1e-4, atol=1e-4)


def test_encoder_built_from_llava_tower(llava_dir, frames, questions):
    head = MLLMHead.from_llava(llava_dir, device="cpu")
    enc = head.encoder
    assert enc.vision is head.lm.model.vision_tower
    assert enc.projection is None and enc.config == EncoderConfig(feature_layer=-2, feature_select="patch")
    out = enc.encode_frames(frames)
    assert out.image_embeds is None
    assert head.score(out, questions).shape == (3, 3)


def test_mismatched_feature_layer_is_refused(llava_dir, clip):
    enc = FrameEncoder.from_clip(clip, EncoderConfig(feature_layer=-1))
    with pytest.raises(ValueError, match="trained on"):
        MLLMHead.from_llava(llava_dir, encoder=enc, device="cpu")


def test_config_round_trip(llava_dir, encoder, frames, questions, tmp_path):
    head = MLLMHead.create(HeadConfig.llava(str(llava_dir)), encoder=encoder, device="cpu")
    head.save_pretrained(tmp_path / "head")
    assert (tmp_path / "head" / "llava" / "config.json").is_file()  # a local source is copied in
    loaded = MLLMHead.from_pretrained(tmp_path / "head", encoder=encoder, device="cpu")
    out = encoder.encode_frames(frames)
    torch.testing.assert_close(loaded.score(out, questions), head.score(out, questions))
