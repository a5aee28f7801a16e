"""Fit a bundle's part readout on labelled recordings (``patchsight model fit-readout``).

The readout (``model.readout.PatchReadout``) is a logistic regression per question on the part
view's patch tokens, each patch at its place. It reads the same part views the part head reads:
the labelled frames on which the camera's tracker boxes a part, cut as the bundle's part view
cuts them (``training.data.view_frames``), encoded by the frozen encoder (cached with
``cache_dir``, shared with finetune and calibrate). The parts are split as finetune splits
them (``val_fraction`` of them, by ``seed``); the readout is fitted on the rest and its AUROC on
the held-out parts' frames, and on the parts themselves (the mean of a part's frames), reported.

A question is fitted when the training parts' frames answer it both ways at least ``MIN_EACH``
times. The bundle gains ``part-readout.safetensors`` and ``spec.part_view.readout``; the readout
weights set before are dropped (they were chosen for another readout), so run ``patchsight model
calibrate`` next: it chooses each question's share of the readout and the part thresholds.
Nothing is written unless all of it is (``training.output``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from model.readout import READOUT_FILE, PatchReadout
from schemas.config import Question, QuestionCategory
from training.calibrate import part_aurocs
from training.data import (
    LabelledSet, Log, NoLabelledFrames, group_names, held_out_groups, recording_pieces, split_groups,
)
from training.metrics import MIN_EACH
from training.output import filled_on_success
from training.parts import group_parts


def fit_readout(
    bundle_dir: str | Path,
    recordings: Sequence[str | Path],
    stride: int = 1,
    cache_dir: str | Path | None = None,
    epochs: int = 4,
    val_fraction: float = 0.15,
    seed: int = 0,
    model_id: str | None = None,
    log: Log = print,
) -> dict:
    """Fit the part readout on the recordings' part views and write it into the bundle; returns what was recorded.

    ``model_id``: the bundle's new model id (None: kept), as a new head's would be."""
    from model.bundle import BUNDLE_FILE, load_bundle

    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if epochs < 1 or stride < 1:
        raise ValueError(f"epochs ({epochs}) and stride ({stride}) must be 1 or more")
    t0 = time.time()
    bundle = load_bundle(bundle_dir, device="cpu", dtype=torch.float32)
    if bundle.spec.part_view is None:
        raise ValueError(f"{bundle_dir} reads the whole frame only: a part readout reads the part view "
                         "(make one with `patchsight model finetune --view part`)")
    questions = readout_questions(bundle.spec.questions)
    try:
        pieces = recording_pieces(bundle.encoder, recordings, questions, stride, cache_dir, log, "part",
                                  bundle.spec.part_view.margin)
    except NoLabelledFrames:
        raise ValueError("no labelled frame of these recordings shows a part the tracker boxes: the readout reads "
                         "part views, cut from frames whose labels name their part (part_id; `patchsight label` "
                         "names none, docs/recording-format.md) where the camera's tracker finds it") from None
    train, val, val_keys = held_out_split(pieces, val_fraction, seed)
    labels = train.labels
    counts = [(int((labels[:, j] == 1).sum()), int((labels[:, j] == 0).sum())) for j in range(len(questions))]
    fitted = [j for j, (yes, no) in enumerate(counts) if min(yes, no) >= MIN_EACH]
    skipped = {questions[j].id: {"yes": yes, "no": no} for j, (yes, no) in enumerate(counts) if j not in fitted}
    if not fitted:
        raise ValueError(f"no question is answered yes and no {MIN_EACH} times or more by the training parts' "
                         f"tracked frames: {skipped}")
    patches, dim = train.tokens.feature_tokens.shape[1:]
    readout = PatchReadout(patches, dim, [questions[j].id for j in fitted])
    log(f"fitting the part readout: {len(train)} frames, {len(fitted)} questions, {epochs} epochs")
    losses = readout.fit(train.tokens.feature_tokens, labels[:, fitted], epochs=epochs, seed=seed)
    validation = _validation(readout, val, [questions[j] for j in fitted], val_keys)
    record = {
        "command": " ".join(sys.argv),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": [str(p) for p in recordings], "frame_stride": stride, "margin": bundle.spec.part_view.margin,
        "training_frames": len(train), "validation_frames": len(val), "val_fraction": val_fraction, "seed": seed,
        "epochs": epochs, "epoch_losses": [round(x, 5) for x in losses],
        "questions": readout.question_ids, "skipped": skipped, "validation": validation,
        "wall_s": round(time.time() - t0, 1),
    }
    bundle.part_readout = readout
    part_view = bundle.spec.part_view.model_copy(update={"readout": READOUT_FILE, "readout_weights": {}})
    spec = bundle.spec.model_copy(update={"part_view": part_view, "model_id": model_id or bundle.spec.model_id,
                                          "provenance": {**bundle.spec.provenance, "part_readout": record}})
    with filled_on_success(bundle_dir) as staging:
        readout.save(staging / READOUT_FILE)
        (staging / BUNDLE_FILE).write_text(spec.model_dump_json(indent=2))
    return record


def readout_questions(questions: Sequence[Question]) -> list[Question]:
    """The questions a part readout is fitted for: the yes/no ones, relations left out (as calibrate leaves them)."""
    return [q for q in questions if q.kind == "yes_no" and q.category != QuestionCategory.relation]


def held_out_split(pieces: Sequence[LabelledSet], val_fraction: float,
                   seed: int) -> tuple[LabelledSet, LabelledSet, list[str | None]]:
    """finetune's split of the pieces by part: (training frames, held-out frames, each held-out frame's part)."""
    val_names = held_out_groups(group_names(pieces), val_fraction, seed)
    train, val = split_groups(pieces, val_names)
    # a held-out frame's part is its recording and part id, in the order split_groups joins the frames
    keys = [f"{p.sources[0]}|{g}" if "#part" in g else None for p in pieces for g in p.groups if g in val_names]
    return train, val, keys


def held_out_aurocs(scores: np.ndarray, labels: np.ndarray, keys: Sequence[str | None],
                    question_ids: Sequence[str]) -> dict[str, dict]:
    """Per question, the AUROC of held-out frames' scores, and of their parts' (the mean of a part's frames)."""
    parts = group_parts(scores, keys, labels, question_ids, "mean")
    frame, part = part_aurocs(scores, labels, question_ids), part_aurocs(parts.scores, parts.labels, question_ids)
    return {qid: {"frame_auroc": frame[qid], "part_auroc": part[qid],
                  "defective_parts": int((parts.labels[:, j] == 1).sum()), "parts": int((parts.labels[:, j] >= 0).sum())}
            for j, qid in enumerate(question_ids)}


def _validation(readout: PatchReadout, val: LabelledSet, questions, keys) -> dict:  # type: ignore[no-untyped-def]
    """Per question, the readout's AUROC on the held-out parts' frames and on the parts (mean of their frames)."""
    if len(val) == 0:
        return {}
    qids = [q.id for q in questions]
    cols = [val.questions.index(q) for q in questions]
    scores = readout.scores(val.tokens.feature_tokens, qids).numpy()
    return held_out_aurocs(scores, val.labels.numpy()[:, cols], keys, qids)
