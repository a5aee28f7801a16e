"""Tiny finetune settings shared by the training tests (CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

from ingest.recording import FrameTruth, Recording, RecordingMeta, RecordingWriter
from model.head import HeadConfig, TinyDecoderConfig
from schemas.config import Question
from training import finetune as ft

TINY_HEAD = HeadConfig.tiny(decoder=TinyDecoderConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64))


def tiny_config(**kw) -> ft.FinetuneConfig:
    """A holdout run (folds 0) that keeps its head whatever validation says: a head of a few steps on a CLIP of
    three learns little, and the tests that use these settings test other things (test_fewshot.py tests the
    cross-validation and the refusal)."""
    base = dict(head=TINY_HEAD, max_steps=30, eval_every=10, batch_frames=8, lr=3e-3, patience=100, threads=1,
                val_fraction=0.3, warmup_steps=1, folds=0, keep_anyway=True)
    return ft.FinetuneConfig(**{**base, **kw})


DEFECT = Question(id="defect", text="Is there a defect?", defect_type="defect")


def relabelled(source: Path, out: Path, answer: str | None = "defect", keep_part_ids: bool = True) -> Path:
    """A copy of a synth recording whose labels answer one question of a plant's own, ``defect``: any defect at all.

    ``answer=None`` writes no labels (a recording as ``patchsight record`` makes it); without
    ``keep_part_ids`` the labels name no parts, as ``patchsight label`` writes them.
    """
    rec = Recording(source)
    meta = RecordingMeta(**{k: v for k, v in rec.meta.model_dump().items() if k not in ("questions", "labelled")},
                         questions=[DEFECT.model_dump(mode="json")] if answer else [])
    with RecordingWriter(out, meta) as writer:
        for entry, jpeg in rec.frames():
            truth = None
            if answer is not None and entry.truth is not None:
                truth = FrameTruth(part_id=entry.truth.part_id if keep_part_ids else None,
                                   defects=["defect"] if entry.truth.defects else [],
                                   answers={answer: bool(entry.truth.defects)})
            writer.append(entry.seq, entry.capture_ns, jpeg, truth)
    return out
