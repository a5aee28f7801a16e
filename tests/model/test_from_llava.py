"""`patchsight model from-llava` builds a loadable zero-shot bundle from local checkpoint folders."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import yaml

from model.bundle import load_bundle


def test_from_llava_cli_writes_a_bundle_that_loads_offline(tmp_path, llava_dir, clip, clip_tok, encoder, frames,
                                                           questions):
    clip_dir = tmp_path / "clip"
    clip.save_pretrained(clip_dir)
    clip_tok.save_pretrained(clip_dir)
    encoder.preprocess.save_pretrained(clip_dir)
    cfg = tmp_path / "lines.yaml"
    cfg.write_text(yaml.safe_dump({"lines": [{"id": "l1", "cameras": [{"id": "c1"}],
                                              "questions": [q.model_dump(mode="json") for q in questions]}]}))
    out = tmp_path / "bundle"
    run = subprocess.run(
        [sys.executable, "-m", "patchsight.cli", "model", "from-llava", "--llava", str(llava_dir), "--clip",
         str(clip_dir), "--questions", str(cfg), "--out", str(out), "--device", "cpu"],
        capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr[-2000:]

    bundle = load_bundle(out, device="cpu")
    assert [q.id for q in bundle.spec.questions] == [q.id for q in questions]
    head_scores = bundle.score_frames(frames, questions, scorer="head")
    clip_scores = bundle.score_frames(frames, questions, scorer="clip")
    assert head_scores.shape == clip_scores.shape == (3, 3)
    assert np.all((head_scores >= 0) & (head_scores <= 1))
    # one tower: the LLaVA head reads the bundle's CLIP encoder
    assert bundle.head.lm.model.vision_tower is bundle.encoder.vision
