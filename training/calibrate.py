"""Refit a bundle's thresholds on labelled recordings it was not trained on (a plant's own line).

The rule is the one finetune applies to its validation parts: best balanced accuracy, with the
false-positive rate capped (``training.metrics.best_threshold``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from schemas.config import QuestionCategory
from training.data import Log, cached_encoding
from training.metrics import MIN_EACH, auroc, best_threshold, head_margins


def calibrate(
    bundle_dir: str | Path,
    recordings: Sequence[str | Path],
    max_fpr: float | None = 0.05,
    stride: int = 1,
    cache_dir: str | Path | None = None,
    log: Log = print,
) -> dict:
    """Set a bundle's thresholds from labelled recordings and rewrite its bundle.json.

    Pass recordings the head was not trained on (a plant's own line, or fresh synth seeds):
    thresholds fitted on training frames would be too optimistic. A question the recordings
    do not answer (too few yes or no frames) keeps its threshold.
    """
    from model.bundle import BUNDLE_FILE, load_bundle

    bundle = load_bundle(bundle_dir, device="cpu", dtype=torch.float32)
    questions = [q for q in bundle.spec.questions if q.category != QuestionCategory.relation]
    data = cached_encoding(bundle.encoder, recordings, questions, stride, cache_dir, log)
    scores = torch.sigmoid(head_margins(bundle.head, data.tokens, questions)).numpy()
    previous = bundle.thresholds_for(questions)
    thresholds, per_question = dict(bundle.spec.thresholds), {}
    for j, q in enumerate(questions):
        y, s = data.labels[:, j].numpy(), scores[:, j]
        t = best_threshold(s, y, default=float(previous[j]), max_fpr=max_fpr)
        thresholds[q.id] = t
        pos, neg = s[y == 1], s[y == 0]
        per_question[q.id] = {
            "threshold": t, "previous": float(previous[j]), "positives": len(pos), "negatives": len(neg),
            "false_positive_rate": round(float((neg >= t).mean()), 4) if len(neg) else None,
            "true_positive_rate": round(float((pos >= t).mean()), 4) if len(pos) else None,
            "auroc": round(auroc(s, y), 4) if len(pos) and len(neg) else None,
        }
    record = {
        "command": " ".join(sys.argv),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "max_false_positive_rate": max_fpr,
        "data": [str(p) for p in recordings],
        "frames": len(data),
        "frame_stride": stride,
        "questions": per_question,
    }
    # A threshold written on a bundle question would override the calibrated one (thresholds_for).
    refit = {qid for qid, r in per_question.items() if min(r["positives"], r["negatives"]) >= MIN_EACH}
    spec_questions = [q.model_copy(update={"threshold": None}) if q.id in refit else q for q in bundle.spec.questions]
    spec = bundle.spec.model_copy(update={"thresholds": thresholds, "questions": spec_questions,
                                          "provenance": {**bundle.spec.provenance, "calibration": record}})
    (Path(bundle_dir) / BUNDLE_FILE).write_text(spec.model_dump_json(indent=2))
    return record
