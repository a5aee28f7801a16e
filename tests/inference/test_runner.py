"""The model runner scores tracked frames as the bundle does: both views, mixed per question; its JPEG decoder gives
OpenCV's pixels."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from inference.runner import ModelRunner, decode_jpeg, jpeg_header
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


def camera_like_frame(size: tuple[int, int], seed: int) -> np.ndarray:
    """A frame with texture and edges (smooth noise, a disc): what a JPEG decoder's IDCT and upsampling differ on."""
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), (0, 0), 2)
    cv2.circle(image, (size[0] // 2, size[1] // 2), min(size) // 4, (20, 200, 90), -1)
    return image


@pytest.mark.parametrize("size", [(640, 480), (641, 479), (1280, 720), (100, 80)])
def test_decode_jpeg_gives_opencvs_pixels_at_every_reduction(size: tuple[int, int]) -> None:
    image = camera_like_frame(size, seed=size[0])
    encodings = {
        "4:2:0 q85": [cv2.IMWRITE_JPEG_QUALITY, 85],
        "4:4:4 q95": [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444],
        "4:2:2 q70": [cv2.IMWRITE_JPEG_QUALITY, 70, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422],
        "progressive": [cv2.IMWRITE_JPEG_PROGRESSIVE, 1],
        "restart markers": [cv2.IMWRITE_JPEG_RST_INTERVAL, 4],
    }
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}
    for name, params in encodings.items():
        for grey in (False, True):
            data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if grey else image, params)[1].tobytes()
            header = jpeg_header(data)
            for reduction, flag in flags.items():
                opencv = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
                np.testing.assert_array_equal(decode_jpeg(data, header, reduction), opencv,
                                              err_msg=f"{name}, grey {grey}, 1/{reduction}")


def test_decode_jpeg_leaves_orientation_cmyk_and_damage_to_opencv() -> None:
    from PIL import Image

    image = camera_like_frame((160, 120), seed=3)
    rotated, cmyk = io.BytesIO(), io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: OpenCV turns the picture back
    Image.fromarray(image[:, :, ::-1]).save(rotated, "JPEG", exif=exif)
    Image.fromarray(image[:, :, ::-1]).convert("CMYK").save(cmyk, "JPEG")
    baseline = cv2.imencode(".jpg", image)[1].tobytes()
    cut_short = baseline[: len(baseline) * 3 // 4] + b"\xff\xd9"  # the scan ends early: OpenCV decodes what is there
    for data in (rotated.getvalue(), cmyk.getvalue(), cut_short):
        opencv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert opencv is not None
        np.testing.assert_array_equal(decode_jpeg(data, jpeg_header(data)), opencv)
    assert decode_jpeg(rotated.getvalue(), jpeg_header(rotated.getvalue())).shape == (160, 120, 3)
    truncated = baseline[: len(baseline) // 2]  # no end of image: neither decoder reads it
    assert decode_jpeg(truncated, jpeg_header(truncated)) is None
