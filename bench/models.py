"""Random-weight model bundles for the benchmarks: real architectures, no training, no download.

``random_bundle("compact")`` has the default bundle's architecture (compact CLIP,
tiny Llama head), so CPU timings match a trained default bundle's; "tiny" is the
test-sized one, for proving a code path in seconds; "llava" is the paper's
(ViT-L/14-336 encoder, LLaVA-1.5-7B-shaped head), for a GPU only.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from transformers import CLIPModel, CLIPVisionConfig, CLIPVisionModel

from model.bundle import Bundle, load_bundle
from model.clip_baseline import clip_tokenizer
from model.encoder import EncoderConfig, FrameEncoder, FramePreprocessor, compact_clip_config
from model.head import HeadConfig, MLLMHead, TinyDecoderConfig
from schemas.config import Question

VIT_L14_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                   image_size=336, patch_size=14, projection_dim=768)
LLAVA_7B_LM = TinyDecoderConfig(vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32,
                                intermediate_size=11008, max_positions=4096)
TINY_VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56,
                patch_size=14, projection_dim=16)
TINY_LM = TinyDecoderConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=256)

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


def real_size_parts(device: torch.device, dtype: torch.dtype, tiny: bool = False) -> tuple[FrameEncoder, MLLMHead, float]:
    """The paper's encoder and a LLaVA-1.5-7B-shaped head (or tiny stand-ins), and the seconds they took."""
    start = time.perf_counter()
    previous = torch.get_default_dtype()
    # Allocate and initialise on the device, in the run dtype: a 7B random init on the
    # host would take minutes and 27 GB of RAM.
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            vision = CLIPVisionModel(CLIPVisionConfig(**(TINY_VIT if tiny else VIT_L14_336))).eval()
            image_size = vision.config.image_size
            encoder = FrameEncoder.from_vision_tower(vision, EncoderConfig(), FramePreprocessor(image_size))
            head = MLLMHead.create(HeadConfig.tiny(decoder=TINY_LM if tiny else LLAVA_7B_LM), encoder=encoder,
                                   device=device, dtype=dtype)
    finally:
        torch.set_default_dtype(previous)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return encoder, head, time.perf_counter() - start


def random_bundle(size: str = "compact", seed: int = 0, device: str = "cpu") -> Bundle:
    """A bundle of ``size`` on ``device``; off the CPU it goes through ``load_bundle`` as a worker's does."""
    if size == "llava":
        torch.manual_seed(seed)
        target = torch.device(device)
        if target.type != "cuda":
            raise ValueError("the llava size needs a CUDA GPU (a 7B head on CPU takes minutes per batch)")
        encoder, head, _ = real_size_parts(target, torch.float16)
        return Bundle.create(encoder, head, model_id=f"random-llava-{seed}", questions=QUESTIONS,
                             default_threshold=0.5)
    if torch.device(device).type != "cpu":
        with tempfile.TemporaryDirectory() as tmp:
            return load_bundle(save_random_bundle(Path(tmp), size, seed), device=device)
    spec = SIZES[size]
    tokenizer = clip_tokenizer(num_merges=2000)
    torch.manual_seed(seed)
    clip = CLIPModel(compact_clip_config(text_vocab_size=len(tokenizer), **spec["clip"])).eval().requires_grad_(False)
    encoder = FrameEncoder.from_clip(clip, EncoderConfig())
    head = MLLMHead.create(HeadConfig.tiny(decoder=spec["decoder"]), encoder=encoder, device="cpu").eval()
    return Bundle.create(encoder, head, model_id=f"random-{size}-{seed}", clip=clip, clip_tokenizer=tokenizer,
                         questions=QUESTIONS, default_threshold=0.5)


def save_random_bundle(directory: Path, size: str = "compact", seed: int = 0) -> Path:
    return random_bundle(size, seed).save(directory, dtype=torch.float32)
