"""Tiny models and recordings shared by the training tests: made once per session, in seconds."""

from __future__ import annotations

from pathlib import Path

import shutil

import numpy as np
import pytest

from ingest import synth
from ingest.recording import find_recordings
from training import finetune as ft
from training.calibrate import calibrate
from training.pretrain import PretrainConfig, pretrain
from training_helpers import relabelled, tiny_config

SEEDS = (11, 12)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="session")
def tiny_clip(workdir) -> Path:
    cfg = PretrainConfig(
        image_size=32, patch_size=16, vision_width=32, vision_layers=2, vision_heads=2, text_width=32, text_layers=1,
        text_heads=2, text_merges=2000, projection_dim=16, batch_size=8, max_steps=3, render_width=160,
        log_every=1, threads=1, warmup_steps=1,
    )
    out = workdir / "clip"
    record = pretrain(cfg, out, log=lambda m: None)
    assert record["steps"] == 3 and all(np.isfinite(h["loss"]) for h in record["history"])
    return out


@pytest.fixture(scope="session")
def recordings(workdir) -> list[Path]:
    return synth.write_recordings(workdir / "rec", lines=1, cameras=2, frames=40, seed=5, size=(320, 240), defect_rate=0.8)


@pytest.fixture(scope="session")
def seed_dirs(workdir) -> list[Path]:
    """Two seeds with the same line, camera and part ids: parts must be told apart by recording."""
    for seed in SEEDS:
        synth.write_recordings(workdir / f"parts-s{seed}", lines=1, cameras=2, frames=60, seed=seed, size=(320, 240),
                               defect_rate=0.4)
    return [workdir / f"parts-s{seed}" for seed in SEEDS]


@pytest.fixture(scope="session")
def part_bundle(tiny_clip, recordings, workdir) -> Path:
    out = workdir / "parts-bundle"
    ft.finetune(tiny_config(max_steps=5), tiny_clip, recordings, out, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def calibrated(part_bundle, seed_dirs, workdir) -> tuple[Path, dict]:
    """A copy of the part bundle calibrated on both seeds at a budget of 25% (each seed its own fold)."""
    out = workdir / "parts-calibrated"
    shutil.copytree(part_bundle, out)
    recs = find_recordings(seed_dirs)
    folds = [str(r.parents[1]) for r in recs]
    record = calibrate(out, recs, max_fpr=0.1, cache_dir=workdir / "parts-cache", log=lambda m: None,
                       max_false_alarm_rate=0.25, aggregate="mean", folds=folds)
    return out, record


@pytest.fixture(scope="session")
def defect_recordings(seed_dirs, workdir) -> list[Path]:
    """The two seeds' four recordings (16 parts, 240 frames) relabelled to a plant's own question, ``defect``."""
    return [relabelled(rec, workdir / "defect" / f"{rec.parents[1].name}-{rec.name}") for rec in find_recordings(seed_dirs)]
