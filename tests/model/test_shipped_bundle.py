"""The shipped bundle (models/default) loads from disk as it was written and scores as it did.

models/default was written before the encoder's and the head's token choices were renamed; its
head_config.json still says ``"image_tokens": "cls_patch"``. The scores below were measured with
the code of that time, on frames rendered from fixed seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ingest import synth

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "default"
QUESTION_IDS = ["scratch", "crack", "stain", "missing_screw", "label_left", "part_flipped", "connector_left",
                "hole_count"]
# bundle.score_frames(frames(), questions), measured before the rename (rounded to 6 decimals)
EXPECTED = [
    [0.008847, 0.006306, 0.001096, 0.001342, 5.5e-05, 0.001072, 8.3e-05, 0.315115],
    [0.209356, 0.995649, 0.960084, 0.103708, 6.3e-05, 0.000225, 9.1e-05, 0.001053],
    [0.571542, 0.38477, 0.105589, 0.564886, 6.7e-05, 0.051639, 0.000147, 0.005833],
    [0.005818, 0.00415, 0.004867, 0.020267, 0.999893, 0.180572, 0.000417, 0.329246],
    [0.204572, 0.43288, 0.000225, 0.551657, 7.5e-05, 0.000205, 0.000105, 0.000731],
]


def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(30)
    look = synth.CameraLook(noise_sigma=3)
    out = []
    for i, part_type in enumerate(sorted(synth.PART_TYPES)):
        spec = synth.PartSpec(part_type, seed=300 + i)
        if i % 2:
            spec = synth.set_defect(spec, ["scratch", "crack", "stain", "label_left", "missing_screw"][i % 5])
        out.append(synth.render_part_frame(spec, rng, None, look))
    return out


@pytest.mark.skipif(not (SHIPPED / "bundle.json").is_file(), reason="models/default not built yet")
def test_the_shipped_bundle_loads_and_scores_as_it_did(monkeypatch):
    from model.bundle import load_bundle

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bundle = load_bundle(SHIPPED, device="cpu")
    questions = list(bundle.spec.questions)
    assert [q.id for q in questions] == QUESTION_IDS
    np.testing.assert_allclose(bundle.score_frames(frames(), questions), EXPECTED, atol=2e-4, rtol=0)


@pytest.mark.skipif(not (SHIPPED / "bundle.json").is_file(), reason="models/default not built yet")
def test_the_shipped_head_config_says_cls_patch_and_loads_as_cls_then_patch():
    import json

    from model.head import HeadConfig

    on_disk = json.loads((SHIPPED / "head" / "head_config.json").read_text())
    assert on_disk["image_tokens"] == "cls_patch"  # written before the rename: models/default is never rewritten
    assert HeadConfig.model_validate(on_disk).image_tokens == "cls_then_patch"


def test_old_token_choices_load_under_their_new_names():
    from model.bundle import BundleSpec
    from model.encoder import EncoderConfig
    from model.head import HeadConfig
    from training.finetune import FinetuneConfig

    assert EncoderConfig(feature_select="cls_patch").feature_select == "all"
    spec = BundleSpec.model_validate({"model_id": "old", "encoder": {"config": {"feature_select": "cls_patch"}}})
    assert spec.encoder.config.feature_select == "all"
    assert '"feature_select":"all"' in spec.model_dump_json()  # saved again, it carries the new name
    assert HeadConfig(image_tokens="cls_patch").image_tokens == "cls_then_patch"
    assert FinetuneConfig(image_tokens="cls_patch").image_tokens == "cls_then_patch"
    for name in ("patch", "cls"):
        assert EncoderConfig(feature_select=name).feature_select == name
        assert HeadConfig(image_tokens=name).image_tokens == name
