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


def served_as_the_worker_does(bundle, questions, frames):  # type: ignore[no-untyped-def]
    """The runner's scores of ``frames`` on one camera, with the tracker's boxes, and those boxes."""
    cfg = validate_config({"lines": [{"id": "line-a", "cameras": [{"id": "cam-1"}],
                                      "questions": [q.model_dump() for q in questions]}]})
    runner = ModelRunner(bundle, {line.id: line for line in cfg.lines}, cfg.inference, "w-test")
    tracker = PartTracker("cam-1", None, (640, 480))
    boxes = [tracker.update(image, seq).box for seq, image in enumerate(frames)]
    squares = [bundle.encoder.preprocess.crop(image) for image in frames]
    views = [None if box is None else bundle.encoder.preprocess.crop(bundle.part_views([image], [box])[0])
             for image, box in zip(frames, boxes)]
    with torch.inference_mode():
        served = np.stack(runner.score(["line-a"] * len(frames), squares, views))
    return served, boxes


def test_runner_scores_the_part_view_like_the_bundle() -> None:
    bundle = load_bundle(BUNDLE, "cpu")
    assert bundle.part_head is not None, "the shipped bundle reads the part view"
    frames = [image for image, _ in SynthCamera("line-a", "cam-1", 5, ["bracket", "housing"]).frames(24)]
    served, boxes = served_as_the_worker_does(bundle, ALERT_QUESTIONS, frames)
    assert 0 < sum(box is not None for box in boxes) < len(frames)
    with torch.inference_mode():
        offline = bundle.score_frames(frames, ALERT_QUESTIONS, boxes=boxes)
        whole = bundle.score_frames(frames, ALERT_QUESTIONS)
    np.testing.assert_allclose(served, offline, atol=1e-6)
    tracked = [i for i, box in enumerate(boxes) if box is not None]
    assert not np.allclose(served[tracked], whole[tracked])  # the part view changed the tracked frames' scores
    untracked = [i for i, box in enumerate(boxes) if box is None]
    np.testing.assert_allclose(served[untracked], whole[untracked], atol=1e-6)


def test_a_half_size_decode_keeps_boxes_and_part_views_in_frame_pixels() -> None:
    """640x480 JPEGs decode at 320x240 for the 128 px encoder; the tracker and the part view see the same parts."""
    import cv2

    from model.views import part_crop
    from schemas.frame import FrameMessage, FrameMode
    from schemas.part import PartObservation

    bundle = load_bundle(BUNDLE, "cpu")
    runners = {}
    for reduced in (False, True):
        cfg = validate_config({"inference": {"reduced_decode": reduced},
                               "lines": [{"id": "line-a", "cameras": [{"id": "cam-1"}],
                                          "questions": [q.model_dump() for q in ALERT_QUESTIONS]}]})
        runners[reduced] = ModelRunner(bundle, {line.id: line for line in cfg.lines}, cfg.inference, "w-test")
    messages = [FrameMessage(line_id="line-a", camera_id="cam-1", seq=seq, capture_ns=1, width=640, height=480,
                             mode=FrameMode.replay, payload=cv2.imencode(".jpg", image)[1].tobytes())
                for seq, (image, _) in enumerate(SynthCamera("line-a", "cam-1", 5, ["bracket", "housing"]).frames(24))]
    seen = {reduced: [] for reduced in runners}
    for msg in messages:
        for reduced, runner in runners.items():
            decoded = runner.decode(msg)
            assert (decoded.reduction, decoded.image.shape[:2]) == ((2, (240, 320)) if reduced else (1, (480, 640)))
            part = runner.find_part(msg, decoded)
            seen[reduced].append((decoded, part))
    tracked = 0
    for msg, (full, full_part), (half, half_part) in zip(messages, seen[False], seen[True]):
        assert (full_part is None) == (half_part is None)
        if full_part is None:
            continue
        tracked += 1
        assert full_part.part_id == half_part.part_id
        assert max(abs(a - b) for a, b in zip(full_part.box, half_part.box)) <= 8  # a cell across the belt
        # the part view is cut around the frame-pixel box scaled to the reduced image: the same encoder input
        full_view = runners[False].part_view(msg, full, full_part).astype(float)
        half_view = runners[True].part_view(msg, half, full_part)
        assert np.abs(full_view - half_view).mean() < 3  # grey levels: about 2.2 here
        # the whole frame's, resized as the full frame is (INTER_AREA: 0.4-0.6 here, bicubic from 320x240: 1.0-1.5)
        assert np.abs(full.square.astype(float) - half.square).mean() < 0.8
    assert tracked >= 5
    # a part that spans fewer reduced pixels than the encoder reads is cut from a full decode
    msg, (half, _) = messages[0], seen[True][0]
    tiny = PartObservation(part_id="cam-1.0", source="tracker", box=(300, 200, 400, 300))
    full_image = cv2.imdecode(np.frombuffer(msg.payload, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(runners[True].part_view(msg, half, tiny),
                                  bundle.encoder.preprocess.crop(part_crop(full_image, tiny.box)))


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
    served, boxes = served_as_the_worker_does(bundle, questions, frames)
    with torch.inference_mode():
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
