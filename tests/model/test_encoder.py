from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CLIPImageProcessor, CLIPModel

from model.encoder import EncoderConfig, FrameEncoder, FramePreprocessor


def test_shapes_and_default_feature_selection(clip, encoder, frames):
    out = encoder.encode_frames(frames)
    assert out.image_embeds.shape == (3, 16)
    assert out.feature_tokens.shape == (3, 16, 32)  # (32/8)^2 patches, no CLS
    assert out.cls_token.shape == (3, 32)
    assert encoder.num_tokens == 16

    pixels = encoder.preprocess(frames)
    ref = clip.vision_model(pixels, output_hidden_states=True)
    # LLaVA's default: penultimate layer, CLS dropped.
    torch.testing.assert_close(out.feature_tokens, ref.hidden_states[-2][:, 1:])
    torch.testing.assert_close(out.cls_token, ref.hidden_states[-2][:, 0])
    torch.testing.assert_close(out.image_embeds, clip.get_image_features(pixel_values=pixels).pooler_output)


@pytest.mark.parametrize("select,tokens", [("cls", 1), ("all", 17), ("patch", 16)])
def test_feature_select_and_layer(clip, frames, select, tokens):
    enc = FrameEncoder.from_clip(clip, EncoderConfig(feature_layer=1, feature_select=select))
    out = enc.encode_frames(frames)
    assert out.feature_tokens.shape == (3, tokens, 32)
    ref = clip.vision_model(enc.preprocess(frames), output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(out.feature_tokens, ref if select == "all" else ref[:, :1] if select == "cls" else ref[:, 1:])
    assert enc.num_tokens == tokens


def test_pooled_false_skips_projection(encoder, frames):
    out = encoder.encode_frames(frames, pooled=False)
    assert out.image_embeds is None
    torch.testing.assert_close(out.feature_tokens, encoder.encode_frames(frames).feature_tokens)


def test_frozen_and_inference_mode(encoder, frames):
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not encoder.training
    assert encoder.encode_frames(frames).feature_tokens.is_inference()


def test_position_embedding_ablation_zeroes_and_restores(clip, encoder, frames):
    before = encoder.encode_frames(frames).feature_tokens.clone()
    original = clip.vision_model.embeddings.position_embedding.weight.clone()
    with encoder.without_position_embeddings():
        assert torch.count_nonzero(clip.vision_model.embeddings.position_embedding.weight) == 0
        ablated = encoder.encode_frames(frames).feature_tokens.clone()
    assert not torch.allclose(before, ablated)
    torch.testing.assert_close(clip.vision_model.embeddings.position_embedding.weight, original)
    torch.testing.assert_close(encoder.encode_frames(frames).feature_tokens, before)

    by_config = FrameEncoder.from_clip(clip, EncoderConfig(position_embeddings=False))
    torch.testing.assert_close(by_config.encode_frames(frames).feature_tokens, ablated)
    by_config.set_position_embeddings(True)
    torch.testing.assert_close(clip.vision_model.embeddings.position_embedding.weight, original)


def test_preprocess_matches_clip_image_processor(tmp_path):
    rng = np.random.default_rng(1)
    # Smooth content: PIL's and OpenCV's bicubic kernels differ most on pixel noise.
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    import cv2

    frame = cv2.resize(small, (160, 120), interpolation=cv2.INTER_LINEAR)
    pre = FramePreprocessor(image_size=64, resize_to=72)
    pre.save_pretrained(tmp_path)
    hf = CLIPImageProcessor.from_pretrained(tmp_path)
    ref = hf(images=frame[:, :, ::-1].copy(), return_tensors="pt")["pixel_values"]
    ours = FramePreprocessor.from_pretrained(tmp_path)([frame])
    assert ours.shape == ref.shape == (1, 3, 64, 64)
    assert (ours - ref).abs().mean() < 0.05


def test_a_saved_preprocessor_config_is_written_back_unchanged(tmp_path):
    import json

    from model.encoder import CLIP_STD

    FramePreprocessor(image_size=64, resize_to=72).save_pretrained(tmp_path)
    first = (tmp_path / "preprocessor_config.json").read_text()
    for _ in range(3):  # each bundle round loads its encoder and saves it again
        FramePreprocessor.from_pretrained(tmp_path).save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").read_text() == first
    assert json.loads(first)["image_std"] == list(CLIP_STD)


def test_preprocess_rejects_bad_frames():
    pre = FramePreprocessor(32)
    with pytest.raises(ValueError, match="BGR uint8"):
        pre([np.zeros((10, 10, 4), dtype=np.uint8)])
    with pytest.raises(ValueError, match="BGR uint8"):
        pre([np.zeros((10, 10, 3), dtype=np.float32)])
    assert pre([np.zeros((10, 12), dtype=np.uint8)]).shape == (1, 3, 32, 32)  # grayscale is fine


def test_save_pretrained_loads_offline(clip, encoder, frames, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip.save_pretrained(tmp_path)
    encoder.preprocess.save_pretrained(tmp_path)
    loaded = FrameEncoder.from_pretrained(tmp_path, device="cpu")
    assert isinstance(loaded.vision, torch.nn.Module) and loaded.vision is not encoder.vision
    a, b = encoder.encode_frames(frames), loaded.encode_frames(frames)
    torch.testing.assert_close(a.feature_tokens, b.feature_tokens)
    torch.testing.assert_close(a.image_embeds, b.image_embeds)
    with pytest.raises(OSError):
        CLIPModel.from_pretrained(tmp_path / "missing", local_files_only=True)
