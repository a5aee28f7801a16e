"""The model runner scores tracked frames as the bundle does: both views, mixed per question."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
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
    pixels = [bundle.encoder.preprocess([image])[0] for image in frames]
    views = [None if box is None else bundle.part_views([image], [box])[0] for image, box in zip(frames, boxes)]
    with torch.inference_mode():
        served = np.stack(runner.score(["line-a"] * len(frames), pixels, views))
        offline = bundle.score_frames(frames, ALERT_QUESTIONS, boxes=boxes)
        whole = bundle.score_frames(frames, ALERT_QUESTIONS)
    np.testing.assert_allclose(served, offline, atol=1e-6)
    tracked = [i for i, box in enumerate(boxes) if box is not None]
    assert not np.allclose(served[tracked], whole[tracked])  # the part view changed the tracked frames' scores
    untracked = [i for i, box in enumerate(boxes) if box is None]
    np.testing.assert_allclose(served[untracked], whole[untracked], atol=1e-6)


def test_runner_serves_an_anomaly_question_from_the_memory_on_the_whole_frame() -> None:
    from model.anomaly import AnomalyMemory
    from schemas.config import Question

    bundle = load_bundle(BUNDLE, "cpu")
    odd = Question(id="odd", text="Is this part unlike the good parts?", defect_type="anomaly", kind="anomaly")
    questions = [*ALERT_QUESTIONS, odd]
    frames = [image for image, _ in SynthCamera("line-a", "cam-1", 5, ["bracket", "housing"]).frames(24)]
    with torch.inference_mode():
        tokens = bundle.encoder.encode_frames(frames[:12], pooled=False).feature_tokens
    memory = AnomalyMemory.fit(tokens[:8], coreset=256)
    bundle.anomaly = memory.normalised(memory.raw_scores(tokens[8:]))
    bundle.spec = bundle.spec.model_copy(update={"anomaly": "anomaly", "questions": [*bundle.spec.questions, odd]})
    cfg = validate_config({"lines": [{"id": "line-a", "cameras": [{"id": "cam-1"}],
                                      "questions": [q.model_dump() for q in questions]}]})
    runner = ModelRunner(bundle, {line.id: line for line in cfg.lines}, cfg.inference, "w-test")
    tracker = PartTracker("cam-1", None, (640, 480))
    boxes = [tracker.update(image, seq).box for seq, image in enumerate(frames)]
    pixels = [bundle.encoder.preprocess([image])[0] for image in frames]
    views = [None if box is None else bundle.part_views([image], [box])[0] for image, box in zip(frames, boxes)]
    with torch.inference_mode():
        served = np.stack(runner.score(["line-a"] * len(frames), pixels, views))
        offline = bundle.score_frames(frames, questions, boxes=boxes)
        whole = bundle.score_frames(frames, [odd])[:, 0]
    np.testing.assert_allclose(served, offline, atol=1e-6)
    np.testing.assert_allclose(served[:, -1], whole, atol=1e-6)  # the part view leaves the anomaly score alone
    assert served[:, -1].std() > 0  # frames of the 12 remembered or scaled and 12 new ones: not one constant


def test_a_line_asking_an_anomaly_question_needs_a_bundle_with_a_memory() -> None:
    from inference.runner import ModelLoadError, load_model

    cfg = validate_config({"model": {"bundle": str(BUNDLE), "device": "cpu"},
                           "lines": [{"id": "line-a", "cameras": [{"id": "cam-1"}], "questions": [
                               {"id": "odd", "text": "Is this part odd?", "defect_type": "anomaly", "kind": "anomaly"}]}]})
    with pytest.raises(ModelLoadError, match="no anomaly memory for the anomaly questions line-a/odd"):
        load_model(cfg)
