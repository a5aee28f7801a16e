"""A bundle with a part view: its part head saves and loads, and ``score_frames(..., boxes=)`` mixes the views
by the per-question weights (0: the whole-frame head alone, 1: the part head on the part views)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.bundle import Bundle, BundleSpec, PartViewSpec, combine_views, load_bundle
from model.head import HeadConfig, MLLMHead
from model.views import part_crop

BOXES = [(10, 8, 40, 30), None, (0, 0, 20, 48)]


@pytest.fixture()
def part_bundle(clip, clip_tok, encoder, head, questions, tiny_decoder) -> Bundle:
    bundle = Bundle.create(encoder, head, "tiny-parts", clip=clip, clip_tokenizer=clip_tok, questions=questions)
    torch.manual_seed(7)
    bundle.part_head = MLLMHead.create(HeadConfig.tiny(decoder=tiny_decoder), encoder=encoder, device="cpu")
    bundle.spec = bundle.spec.model_copy(update={"part_view": PartViewSpec(margin=0.1)})
    return bundle


def with_weights(bundle: Bundle, weights: dict[str, float]) -> Bundle:
    bundle.spec = bundle.spec.model_copy(update={"part_view": bundle.spec.part_view.model_copy(update={"weights": weights})})
    return bundle


def test_a_part_head_saves_and_loads(part_bundle, frames, questions, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with_weights(part_bundle, {"scratch": 0.25, "holes": 1.0})
    part_bundle.save(tmp_path / "b", dtype=None)
    assert (tmp_path / "b" / "part-head" / "head_config.json").is_file()
    loaded = load_bundle(tmp_path / "b", device="cpu")
    assert loaded.part_head is not None and loaded.part_head.encoder is loaded.encoder
    assert loaded.spec.part_view == PartViewSpec(margin=0.1, weights={"scratch": 0.25, "holes": 1.0})
    np.testing.assert_allclose(loaded.part_view_weights(questions), [0.25, 0.5, 1.0])
    np.testing.assert_allclose(loaded.score_frames(frames, questions, boxes=BOXES),
                               part_bundle.score_frames(frames, questions, boxes=BOXES), rtol=1e-5, atol=1e-6)
    assert loaded.describe()["part_view"]["margin"] == 0.1


def test_weight_0_is_the_whole_frame_head_and_1_the_part_head_on_the_crops(part_bundle, frames, questions):
    ids = [q.id for q in questions]
    frame_only = part_bundle.score_frames(frames, questions, scorer="head")
    crops = [part_crop(frames[i], BOXES[i], 0.1) for i in (0, 2)]
    part_only = part_bundle.score_encoded(part_bundle.encode(crops), questions, "part_head")

    scores = with_weights(part_bundle, dict.fromkeys(ids, 0.0)).score_frames(frames, questions, boxes=BOXES)
    np.testing.assert_allclose(scores, frame_only, rtol=1e-4, atol=1e-5)

    scores = with_weights(part_bundle, dict.fromkeys(ids, 1.0)).score_frames(frames, questions, boxes=BOXES)
    np.testing.assert_allclose(scores[[0, 2]], part_only, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores[1], frame_only[1], rtol=1e-5, atol=1e-6)  # no box: the whole frame

    mixed = with_weights(part_bundle, {"scratch": 0.0, "label": 1.0}).score_frames(frames, questions, boxes=BOXES)
    expected = combine_views(frame_only[[0, 2]], part_only, np.array([0.0, 1.0, 0.5], dtype=np.float32))
    np.testing.assert_allclose(mixed[[0, 2]], expected, rtol=1e-4, atol=1e-5)


def test_a_bundle_without_a_part_view_ignores_boxes(clip, clip_tok, encoder, head, questions, frames):
    bundle = Bundle.create(encoder, head, "tiny", clip=clip, clip_tokenizer=clip_tok, questions=questions)
    np.testing.assert_allclose(bundle.score_frames(frames, questions, boxes=BOXES), bundle.score_frames(frames, questions))
    with pytest.raises(ValueError, match="part view"):
        Bundle(BundleSpec(model_id="x", part_view=PartViewSpec()), encoder, head)


def with_readout(bundle: Bundle, question_ids: list[str], readout_weights: dict[str, float]) -> Bundle:
    from model.readout import READOUT_FILE, PatchReadout

    patches, dim = bundle.encoder.num_tokens, bundle.encoder.vision.config.hidden_size
    torch.manual_seed(3)
    readout = PatchReadout(patches, dim, question_ids)
    with torch.no_grad():
        readout.weight.normal_(0, 0.05)
    bundle.part_readout = readout
    bundle.spec = bundle.spec.model_copy(update={"part_view": bundle.spec.part_view.model_copy(
        update={"readout": READOUT_FILE, "readout_weights": readout_weights})})
    return bundle


def test_a_part_readout_mixes_into_the_part_view_per_question_and_saves_and_loads(
        part_bundle, frames, questions, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ids = [q.id for q in questions]
    with_weights(part_bundle, dict.fromkeys(ids, 1.0))  # the part view alone, to see its own score
    crops = part_bundle.encode([part_crop(frames[i], BOXES[i], 0.1) for i in (0, 2)])
    head_only = part_bundle.score_frames(frames, questions, boxes=BOXES)[[0, 2]]
    # the readout answers two of the three questions: the third keeps the part head's score
    with_readout(part_bundle, ids[:2], {ids[0]: 1.0, ids[1]: 0.25})
    readout = part_bundle.part_readout.scores(crops.feature_tokens, ids[:2]).numpy()
    np.testing.assert_allclose(part_bundle.readout_weights(questions), [1.0, 0.25, 0.0])
    scores = part_bundle.score_frames(frames, questions, boxes=BOXES)
    np.testing.assert_allclose(scores[[0, 2], 0], readout[:, 0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores[[0, 2], 1], combine_views(head_only[:, 1], readout[:, 1], 0.25), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores[[0, 2], 2], head_only[:, 2], rtol=1e-4, atol=1e-5)

    part_bundle.save(tmp_path / "b", dtype=None)
    loaded = load_bundle(tmp_path / "b", device="cpu")
    assert loaded.part_readout is not None and loaded.spec.part_view.readout == "part-readout.safetensors"
    np.testing.assert_allclose(loaded.score_frames(frames, questions, boxes=BOXES), scores, rtol=1e-4, atol=1e-5)

    (tmp_path / "b" / "part-readout.safetensors").write_bytes(b"not safetensors")
    from model.bundle import BundleError

    with pytest.raises(BundleError, match="part-readout.safetensors is not a part readout"):
        load_bundle(tmp_path / "b", device="cpu")
