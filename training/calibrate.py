"""Refit a bundle's thresholds on labelled recordings it was not trained on (a plant's own line).

Two kinds of threshold, from the same frame scores:

* **Frame thresholds** (``spec.thresholds``), what the k-of-n debounce of cameras without part
  tracking compares each frame with: per question, the rule finetune applies to its validation
  parts, best balanced accuracy with the false-positive rate capped at ``max_fpr``
  (``training.metrics.best_threshold``).
* **Part thresholds** (``spec.parts``), what the alert service compares a part's aggregate
  score with. The frames are grouped into parts by their truth's part id, per recording (a
  frame without a part, an empty belt, is not inspected); per question a part's frame scores
  become one score with ``schemas.part`` (``aggregate``: mean, top3 or noisy_or, as the alert
  service computes it); and every question's part threshold is chosen together
  (``training.parts.budgeted_thresholds``) so that at most ``max_false_alarm_rate`` of the good
  parts are flagged by any question, with as many defective parts caught as that allows. The
  per-part report of the recordings at those thresholds (detection and false-alarm rate,
  overall and per defect type) is stored with them. With recordings from several ``folds``
  (the ``--data`` folders: e.g. one synth seed each), it also reports the thresholds chosen on
  all folds but one applied to that one, summed over the folds: what to expect on new parts.

A bundle with a part view (``spec.part_view``) is calibrated as the worker serves it: each
labelled frame on which the camera's tracker boxes a part is scored from both views (the
whole-frame head on the frame, the part head on the part view; ``training.views``), and the
parts are made of those frames only. First each question's view weight is chosen from
``training.views.WEIGHT_CHOICES`` for the best part AUROC (ties: nearest 0.5) and written to
``spec.part_view.weights`` (with a part readout, ``model.readout``, the readout's share of the
part view is chosen with it: ``spec.part_view.readout_weights``); then the part thresholds for
the budget, on the combined scores.
The frame thresholds stay the whole-frame head's, on every labelled frame.

A question of kind ``anomaly`` is scored by the bundle's anomaly memory (``model.anomaly``) and
labelled by the frames' defects where the labels do not answer it; its thresholds are chosen by
the same rules. It reads the whole frame only, also in a bundle with a part view.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from model.bundle import combine_views
from schemas.config import AlertPolicy, Question, QuestionCategory
from schemas.drift import DriftReference, ScoreReference
from schemas.part import PART_AGGREGATES
from training.data import LabelledSet, Log, frame_part_keys, recording_pieces
from training.metrics import MIN_EACH, auroc, best_threshold, head_margins, served_scores
from training.parts import budgeted_thresholds, cross_validate, group_parts
from training.views import choose_readout_weights, choose_view_weights, part_views


def part_aurocs(scores: np.ndarray, labels: np.ndarray, question_ids: Sequence[str]) -> dict[str, float | None]:
    """Per question, the AUROC of part (or frame) scores against their labels (1 / 0; -1 left out); None without both."""
    out: dict[str, float | None] = {}
    for j, qid in enumerate(question_ids):
        keep = labels[:, j] >= 0
        value = auroc(scores[keep, j], labels[keep, j]) if keep.any() else float("nan")
        out[qid] = None if np.isnan(value) else round(float(value), 4)
    return out


def calibrate_parts(
    scores: np.ndarray,
    labels: np.ndarray,
    keys: Sequence[str | None],
    questions: Sequence[Question],
    max_false_alarm_rate: float,
    aggregate: str = "mean",
    frame_folds: Sequence[str] | None = None,
) -> dict | None:
    """Part thresholds for a false-alarm budget from scored frames; None when no frame shows a part.

    ``scores`` and ``labels`` (N, Q) per frame, ``keys`` (N,) each frame's part (None: no part);
    ``frame_folds`` (N,) each frame's fold, for the cross-validated report (two folds at least).
    Returns what ``calibrate`` records: the thresholds, what they buy here (``report``, the shape
    of ``training.parts.part_report``), per question, and how they were found.
    """
    qids = [q.id for q in questions]
    types = {q.id: q.defect_type for q in questions}
    table = group_parts(scores, keys, labels, qids, aggregate)  # type: ignore[arg-type]
    if not len(table):
        return None
    chosen = budgeted_thresholds(table.scores, table.labels, max_false_alarm_rate, qids, types)
    per_question = chosen.per_question
    for qid, value in part_aurocs(table.scores, table.labels, qids).items():
        per_question[qid]["part_auroc"] = value
    record = {
        "aggregate": aggregate, "max_false_alarm_rate": max_false_alarm_rate,
        "allowed_flagged": chosen.allowed_flagged, "parts": len(table), "defective": int(table.defective.sum()),
        "good": int((~table.defective).sum()), "frames": int(table.frames.sum()),
        "thresholds": chosen.thresholds, "per_question": per_question, "no_defective": chosen.no_defective,
        "search": chosen.search, "report": chosen.report,
    }
    if frame_folds is not None:
        fold_of = {k: f for k, f in zip(keys, frame_folds) if k is not None}
        folds = np.array([fold_of[k] for k in table.keys])
        names = list(dict.fromkeys(folds.tolist()))
        if len(names) >= 2:
            record["cross_validated"] = {"folds": names,
                                         "report": cross_validate(table, folds, max_false_alarm_rate, types)}
    return record


def score_reference(scores: np.ndarray, keys: Sequence[str | None], questions: Sequence[Question],
                    thresholds: dict[str, float], source: str) -> DriftReference:
    """The served scores' distribution per question, for drift monitoring (schemas/drift.py).

    Only the frames the worker would score: those showing a part when the recordings name parts
    (a tracking camera skips the empty belt), else every frame. ``thresholds``: what the live
    results of such frames are compared with.
    """
    inspected = np.array([k is not None for k in keys], dtype=bool)
    rows = scores[inspected] if inspected.any() else scores
    return DriftReference(source=source, questions={
        q.id: ScoreReference.from_scores(rows[:, j].tolist(), float(thresholds[q.id])) for j, q in enumerate(questions)})


def _frame_thresholds(bundle, questions: Sequence[Question], scores: np.ndarray, labels: np.ndarray,  # type: ignore[no-untyped-def]
                      max_fpr: float | None) -> tuple[dict[str, float], dict[str, dict]]:
    previous = bundle.thresholds_for(questions)
    thresholds, per_question = dict(bundle.spec.thresholds), {}
    for j, q in enumerate(questions):
        y, s = labels[:, j], scores[:, j]
        t = best_threshold(s, y, default=float(previous[j]), max_fpr=max_fpr)
        thresholds[q.id] = t
        pos, neg = s[y == 1], s[y == 0]
        per_question[q.id] = {
            "threshold": t, "previous": float(previous[j]), "positives": len(pos), "negatives": len(neg),
            "false_positive_rate": round(float((neg >= t).mean()), 4) if len(neg) else None,
            "true_positive_rate": round(float((pos >= t).mean()), 4) if len(pos) else None,
            "auroc": round(auroc(s, y), 4) if len(pos) and len(neg) else None,
        }
    return thresholds, per_question


def _combined_views(bundle, views, questions: Sequence[Question], frame_scores: np.ndarray,  # type: ignore[no-untyped-def]
                    aggregate: str, fold_of: dict[str, str] | None) -> tuple:
    """The tracked frames scored from both views, at the view weights chosen for them:
    (scores, labels, part keys, folds or None, what was chosen)."""
    qids = [q.id for q in questions]
    frame = frame_scores[views.rows]
    asked = [j for j, q in enumerate(questions) if q.kind != "anomaly"]
    part = frame.copy()  # an anomaly question reads the whole frame alone: any weight leaves its score as it is
    part[:, asked] = torch.sigmoid(head_margins(bundle.part_head, views.data.tokens, [questions[j] for j in asked])).numpy()
    labels = views.data.labels.numpy()
    readout = bundle.readout_scores(views.data.tokens, questions)
    record = {"margin": bundle.spec.part_view.margin, "tracked_frames": len(views), "frames": len(frame_scores)}
    if readout is None:
        weights, by_weight = choose_view_weights(frame, part, labels, views.keys, qids, aggregate)
        record.update(weights=weights, part_auroc_by_weight=by_weight)
    else:
        fitted = [q.kind != "anomaly" and q.id in bundle.part_readout.question_ids for q in questions]
        weights, readout_weights, by_pair = choose_readout_weights(frame, part, readout, fitted, labels, views.keys,
                                                                   qids, aggregate)
        part = combine_views(part, readout, np.array([readout_weights.get(q, 0.0) for q in qids], dtype=np.float32))
        record.update(weights=weights, readout_weights=readout_weights, part_auroc_by_readout_and_view_weight=by_pair)
    combined = combine_views(frame, part, np.array([weights[q] for q in qids], dtype=np.float32))
    folds = None if fold_of is None else [fold_of[s] for s in views.sources]
    return combined, labels, views.keys, folds, record


def calibrate(
    bundle_dir: str | Path,
    recordings: Sequence[str | Path],
    max_fpr: float | None = 0.05,
    stride: int = 1,
    cache_dir: str | Path | None = None,
    log: Log = print,
    max_false_alarm_rate: float | None = None,
    aggregate: str = "mean",
    folds: Sequence[str] | None = None,
) -> dict:
    """Set a bundle's frame and part thresholds from labelled recordings and rewrite its bundle.json.

    Pass recordings the head was not trained on (a plant's own line, or fresh synth seeds):
    thresholds fitted on training frames would be too optimistic. A question the recordings
    do not answer (too few yes or no frames) keeps its frame threshold. ``max_false_alarm_rate``
    (default: ``AlertPolicy``'s) is the part budget; ``folds`` names each recording's fold (its
    ``--data`` folder; None: no cross-validated report). Recordings whose frames carry no part
    id (``patchsight label`` writes none) leave the bundle's part thresholds as they were.
    """
    from model.bundle import BUNDLE_FILE, PartVerdictSpec, load_bundle

    budget = AlertPolicy().max_false_alarm_rate if max_false_alarm_rate is None else max_false_alarm_rate
    if not 0.0 <= budget <= 1.0:
        raise ValueError(f"max_false_alarm_rate must be in [0, 1], got {budget}")
    if aggregate not in PART_AGGREGATES:
        raise ValueError(f"unknown part aggregate {aggregate!r}; known: {', '.join(PART_AGGREGATES)}")
    if folds is not None and len(folds) != len(recordings):
        raise ValueError(f"{len(folds)} folds for {len(recordings)} recordings")
    bundle = load_bundle(bundle_dir, device="cpu", dtype=torch.float32)
    questions = [q for q in bundle.spec.questions if q.category != QuestionCategory.relation]
    pieces = recording_pieces(bundle.encoder, recordings, questions, stride, cache_dir, log)
    keys = frame_part_keys(pieces)
    frame_folds = None
    if folds is not None:
        fold_of = dict(zip(map(str, recordings), folds))
        frame_folds = [fold_of[p.sources[0]] for p in pieces for _ in range(len(p))]
    views = part_views(bundle, pieces, recordings, questions, stride, cache_dir, log) \
        if bundle.part_head is not None else None
    data = LabelledSet.join(pieces)
    del pieces
    scores = served_scores(bundle, data.tokens, questions)
    labels = data.labels.numpy()
    thresholds, per_question = _frame_thresholds(bundle, questions, scores, labels, max_fpr)
    view_record = None
    if views is not None:
        scores, labels, keys, frame_folds, view_record = _combined_views(
            bundle, views, questions, scores, aggregate, None if folds is None else dict(zip(map(str, recordings), folds)))
    parts = calibrate_parts(scores, labels, keys, questions, budget, aggregate, frame_folds)
    if parts is None:
        log("no labelled frame carries a part id: the part thresholds are left as they were")
    record = {
        "command": " ".join(sys.argv),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "max_false_positive_rate": max_fpr,
        "data": [str(p) for p in recordings],
        "frames": len(data),
        "frame_stride": stride,
        "questions": per_question,
        "parts": parts if parts is not None else {"skipped": "no labelled frame carries a part id",
                                                  "max_false_alarm_rate": budget, "aggregate": aggregate},
    }
    if view_record is not None:
        record["part_view"] = view_record
    # A threshold written on a bundle question would override the calibrated one (thresholds_for,
    # part_thresholds_for): cleared where one was calibrated. The frame table keeps the value of
    # a question that was not refitted, so its frame threshold does not change.
    refit = {qid for qid, r in per_question.items() if min(r["positives"], r["negatives"]) >= MIN_EACH}
    if parts is not None:
        refit |= set(parts["thresholds"])
    spec_questions = [q.model_copy(update={"threshold": None}) if q.id in refit else q for q in bundle.spec.questions]
    update = {"thresholds": thresholds, "questions": spec_questions,
              "provenance": {**bundle.spec.provenance, "calibration": record}}
    if view_record is not None:
        weights = {**bundle.spec.part_view.weights, **view_record["weights"]}
        readout_weights = {**bundle.spec.part_view.readout_weights, **view_record.get("readout_weights", {})}
        update["part_view"] = bundle.spec.part_view.model_copy(update={"weights": weights,
                                                                       "readout_weights": readout_weights})
    if parts is not None:
        update["parts"] = PartVerdictSpec(aggregate=aggregate, thresholds=parts["thresholds"],  # type: ignore[arg-type]
                                          max_false_alarm_rate=budget, calibration=parts["report"])
    served_thresholds = {**thresholds, **(parts["thresholds"] if parts is not None else {})}
    update["score_reference"] = score_reference(scores, keys, questions, served_thresholds,
                                                source=f"model calibrate on {len(recordings)} recording(s), {record['at']}")
    spec = bundle.spec.model_copy(update=update)
    (Path(bundle_dir) / BUNDLE_FILE).write_text(spec.model_dump_json(indent=2))
    return record
