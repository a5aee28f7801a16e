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
    views = [None if box is None else bundle.encoder.preprocess.crop(bundle.part_views([image], [box])[0])
             for image, box in zip(frames, boxes)]
    with torch.inference_mode():
        served = np.stack(runner.score(["line-a"] * len(frames), squares, views))
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
