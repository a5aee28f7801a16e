"""Tiny random-weight models shared by the perception tests (CPU, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CLIPModel, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from model.clip_baseline import clip_tokenizer
from model.encoder import EncoderConfig, FrameEncoder, compact_clip_config
from model.head import HeadConfig, MLLMHead, TinyDecoderConfig, compact_tokenizer
from schemas.config import Question

torch.set_num_threads(2)

TINY_DECODER = TinyDecoderConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=256)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: loads real pretrained weights (SmolLM2); seconds to tens of seconds")


def tiny_clip_config(text_vocab_size: int):
    return compact_clip_config(
        image_size=32, patch_size=8, vision_width=32, vision_layers=3, vision_heads=2,
        text_width=32, text_layers=2, text_heads=2, text_vocab_size=text_vocab_size,
        text_max_positions=32, projection_dim=16,
    )


@pytest.fixture(scope="session")
def clip_tok():
    return clip_tokenizer(num_merges=2000)


@pytest.fixture()
def clip(clip_tok) -> CLIPModel:
    torch.manual_seed(0)
    return CLIPModel(tiny_clip_config(len(clip_tok))).eval().requires_grad_(False)


@pytest.fixture()
def encoder(clip) -> FrameEncoder:
    return FrameEncoder.from_clip(clip, EncoderConfig())


@pytest.fixture()
def tiny_decoder() -> TinyDecoderConfig:
    return TINY_DECODER.model_copy()


@pytest.fixture()
def head(encoder) -> MLLMHead:
    torch.manual_seed(0)
    return MLLMHead.create(HeadConfig.tiny(decoder=TINY_DECODER), encoder=encoder, device="cpu")


@pytest.fixture()
def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]


@pytest.fixture()
def questions() -> list[Question]:
    return [
        Question(id="scratch", text="Is there a scratch on the left side of the part?", defect_type="scratch"),
        Question(id="label", text="Is the label missing?", defect_type="missing-label", threshold=0.8),
        Question(
            id="holes", text="Are there fewer than four holes?", defect_type="holes", category="counting",
            clip_positive="a plate with three holes", clip_negative="a plate with four holes",
        ),
    ]


@pytest.fixture()
def llava_dir(tmp_path, clip, encoder):
    tokenizer = compact_tokenizer()
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=clip.config.vision_config.to_dict(), text_config=text.to_dict(),
        image_token_index=len(tokenizer) - 1, vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    torch.manual_seed(1)
    llava = LlavaForConditionalGeneration(config).eval()
    # LLaVA-1.5 keeps CLIP's tower frozen: its weights are the encoder's.
    llava.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    llava.save_pretrained(tmp_path / "llava")
    tokenizer.save_pretrained(tmp_path / "llava")
    encoder.preprocess.save_pretrained(tmp_path / "llava")
    return tmp_path / "llava"
