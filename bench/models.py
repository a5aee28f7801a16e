"""Random-weight model bundles for the benchmarks: real architectures, no training, no download.

``random_bundle("compact")`` has the default bundle's architecture (compact CLIP,
tiny Llama head), so CPU timings match a trained default bundle's; "tiny" is the
test-sized one, for proving a code path in seconds.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPModel

from inference.bundle import Bundle
from inference.clip_baseline import clip_tokenizer
from inference.encoder import EncoderConfig, FrameEncoder, compact_clip_config
from inference.head import HeadConfig, MLLMHead, TinyDecoderConfig
from schemas.config import Question

SIZES = {
    "tiny": dict(
        clip=dict(image_size=32, patch_size=8, vision_width=32, vision_layers=3, vision_heads=2, text_width=32,
                  text_layers=2, text_heads=2, text_max_positions=32, projection_dim=16),
        decoder=TinyDecoderConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=256),
    ),
    # the default bundle's sizes (models/default/head/head_config.json)
    "compact": dict(clip={}, decoder=TinyDecoderConfig(intermediate_size=576)),
}

QUESTIONS = [
    Question(id="scratch", text="Is there a scratch on the left side of the part?", defect_type="scratch"),
    Question(id="label", text="Is the label missing?", defect_type="missing-label"),
    Question(id="holes", text="Are there fewer than four holes?", defect_type="holes", category="counting"),
]


def random_bundle(size: str = "compact", seed: int = 0, device: str = "cpu") -> Bundle:
    spec = SIZES[size]
    tokenizer = clip_tokenizer(num_merges=2000)
    torch.manual_seed(seed)
    clip = CLIPModel(compact_clip_config(text_vocab_size=len(tokenizer), **spec["clip"])).eval().requires_grad_(False)
    encoder = FrameEncoder.from_clip(clip, EncoderConfig())
    head = MLLMHead.create(HeadConfig.tiny(decoder=spec["decoder"]), encoder=encoder, device=device).eval()
    return Bundle.create(encoder, head, model_id=f"random-{size}-{seed}", clip=clip, clip_tokenizer=tokenizer,
                         questions=QUESTIONS, default_threshold=0.5)


def save_random_bundle(directory: Path, size: str = "compact", seed: int = 0) -> Path:
    return random_bundle(size, seed).save(directory, dtype=torch.float32)
