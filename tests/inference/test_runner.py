"""The model runner scores tracked frames as the bundle does: both views, mixed per question."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from inference.runner import ModelRunner
from ingest.synth import ALERT_QUESTIONS, SynthCamera
from model.bundle import load_bundle
from model.tracker import PartTracker
from schemas.config import validate_config

BUNDLE = Path(__file__).resolve().parents[2] / "models" / "default"


def test_runner_scores_the_part_view_like_the_bundle() -> None:
    bundle = load_bundle(BUNDLE, "cpu")
    assert bundle.part_head is not None, "the shipped bundle reads the part view"
    cfg = validate_config({"lines": [{"id": "line-a", "cameras": [{"id": "cam-1"}],
                                      "questions": [q.model_dump() for q in ALERT_QUESTIONS]}]})
    runner = ModelRunner(bundle, {line.id: line for line in cfg.lines}, cfg.inference, "w-test")
    frames = [image for image, _ in SynthCamera("line-a", "cam-1", 5, ["bracket", "housing"]).frames(24)]
    tracker = PartTracker("cam-1", None, (640, 480))
    boxes = [tracker.update(image, seq).box for seq, image in enumerate(frames)]
    assert 0 < sum(box is not None for box in boxes) < len(frames)
    squares = [bundle.encoder.preprocess.crop(image) for image in frames]
    views = [None if box is None else bundle.part_views([image], [box])[0] for image, box in zip(frames, boxes)]
    with torch.inference_mode():
        served = np.stack(runner.score(["line-a"] * len(frames), squares, views))
        offline = bundle.score_frames(frames, ALERT_QUESTIONS, boxes=boxes)
        whole = bundle.score_frames(frames, ALERT_QUESTIONS)
    np.testing.assert_allclose(served, offline, atol=1e-6)
    tracked = [i for i, box in enumerate(boxes) if box is not None]
    assert not np.allclose(served[tracked], whole[tracked])  # the part view changed the tracked frames' scores
    untracked = [i for i, box in enumerate(boxes) if box is None]
    np.testing.assert_allclose(served[untracked], whole[untracked], atol=1e-6)
