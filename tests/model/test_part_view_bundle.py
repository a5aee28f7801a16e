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
