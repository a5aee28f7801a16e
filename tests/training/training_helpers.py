"""Tiny finetune settings shared by the training tests (CPU, seconds)."""

from __future__ import annotations

from model.head import HeadConfig, TinyDecoderConfig
from training import finetune as ft

TINY_HEAD = HeadConfig.tiny(decoder=TinyDecoderConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64))


def tiny_config(**kw) -> ft.FinetuneConfig:
    base = dict(head=TINY_HEAD, max_steps=30, eval_every=10, batch_frames=8, lr=3e-3, patience=100, threads=1,
                val_fraction=0.3, warmup_steps=1)
    return ft.FinetuneConfig(**{**base, **kw})
