"""Scoring labelled recordings from both views of a bundle with a part view (``model.views``), as the worker does.

The worker scores a frame on which its camera's tracker boxes a part from both views: the
whole-frame head on the frame, the part head on the part cut around the box, their log-odds
mixed per question (``model.bundle.combine_views``, the part view's share ``spec.part_view.weights``);
a frame without a tracked part is not inspected. Offline the same: ``two_views`` encodes the
recordings whole and in the part view (``training.data.view_frames``) and pairs each part-view
frame with its whole frame; the per-part grouping runs over those tracked frames only.

``choose_view_weights`` picks each question's share from ``WEIGHT_CHOICES``: the one whose part
scores (aggregated as the bundle's parts are) separate defective from good parts best (AUROC),
ties to the one nearest 0.5. With a part readout (``model.readout``), ``choose_readout_weights``
picks each question's pair of shares the same way: the readout's share of the part view, and the
part view's share of the whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from model.bundle import combine_views
from schemas.config import Question
from training.data import LabelledSet, Log, align_views, frame_part_keys, recording_pieces
from training.metrics import auroc
from training.parts import group_parts

WEIGHT_CHOICES = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class PartViews:
    """The part-view frames of some recordings: each one's row among the whole frames, and its part."""

    data: LabelledSet  # the part views, encoded, one row per tracked frame
    rows: np.ndarray  # (M,): the same frame's row in the joined whole-frame pieces
    keys: list[str | None]  # (M,): its part (recording and truth part id)
    sources: list[str]  # (M,): its recording

    def __len__(self) -> int:
        return len(self.rows)


def part_views(bundle, frame_pieces: Sequence[LabelledSet], recordings: Sequence[str | Path],  # type: ignore[no-untyped-def]
               questions: Sequence[Question], stride: int, cache_dir: str | Path | None, log: Log = print) -> PartViews:
    """The part views of the recordings' labelled frames that the tracker boxes, paired with ``frame_pieces``
    (``recording_pieces`` of the same recordings, questions and stride)."""
    margin = bundle.spec.part_view.margin
    pieces = recording_pieces(bundle.encoder, recordings, questions, stride, cache_dir, log, "part", margin)
    rows = align_views(frame_pieces, pieces)
    keys = frame_part_keys(pieces)
    sources = [p.sources[0] for p in pieces for _ in range(len(p))]
    return PartViews(LabelledSet.join(pieces), rows, keys, sources)


def view_aurocs(frame_scores: np.ndarray, part_scores: np.ndarray, labels: np.ndarray, keys: Sequence[str | None],
                question_ids: Sequence[str], aggregate: str, choices: Sequence[float] = WEIGHT_CHOICES) -> np.ndarray:
    """(W, Q) part AUROC of each question at each weight (NaN where its parts are not both good and defective)."""
    out = np.full((len(choices), len(question_ids)), np.nan)
    for i, w in enumerate(choices):
        table = group_parts(combine_views(frame_scores, part_scores, w), keys, labels, question_ids, aggregate)  # type: ignore[arg-type]
        for j in range(len(question_ids)):
            keep = table.labels[:, j] >= 0
            if keep.any():
                out[i, j] = auroc(table.scores[keep, j], table.labels[keep, j])
    return out


def choose_view_weights(frame_scores: np.ndarray, part_scores: np.ndarray, labels: np.ndarray,
                        keys: Sequence[str | None], question_ids: Sequence[str], aggregate: str = "mean",
                        choices: Sequence[float] = WEIGHT_CHOICES) -> tuple[dict[str, float], dict[str, dict]]:
    """Each question's part-view weight: the choice with the best part AUROC, ties to the one nearest 0.5
    (0.5 where no choice can be measured). Returns the weights and, per question, the AUROC at each choice."""
    aucs = view_aurocs(frame_scores, part_scores, labels, keys, question_ids, aggregate, choices)
    order = sorted(range(len(choices)), key=lambda i: (abs(choices[i] - 0.5), choices[i]))
    weights: dict[str, float] = {}
    for j, qid in enumerate(question_ids):
        best = _best_measured(order, aucs[:, j])
        weights[qid] = 0.5 if best is None else float(choices[best])
    table = {qid: {str(w): None if np.isnan(aucs[i, j]) else round(float(aucs[i, j]), 4) for i, w in enumerate(choices)}
             for j, qid in enumerate(question_ids)}
    return weights, table


def choose_readout_weights(frame_scores: np.ndarray, head_scores: np.ndarray, readout_scores: np.ndarray,
                           fitted: Sequence[bool], labels: np.ndarray, keys: Sequence[str | None],
                           question_ids: Sequence[str], aggregate: str = "mean",
                           choices: Sequence[float] = WEIGHT_CHOICES) -> tuple[dict[str, float], dict[str, float], dict]:
    """Each question's readout share of the part view and the part view's share of the whole, chosen together.

    The part view's score is the part head's and the readout's log-odds mixed at the readout share
    (``fitted[j]`` False: the readout does not answer question j, its share stays 0); the pair
    with the best part AUROC wins, ties to the one nearest (0.5, 0.5). Returns the view weights,
    the readout weights (fitted questions only) and, per question, the part AUROC at each pair
    (``{readout share: {view weight: AUROC}}``).
    """
    shares = list(choices)
    grid = np.stack([view_aurocs(frame_scores, combine_views(head_scores, readout_scores, r), labels, keys,
                                 question_ids, aggregate, choices) for r in shares])  # (R, W, Q)
    pairs = sorted(((a, b) for a in range(len(shares)) for b in range(len(choices))),
                   key=lambda ab: (abs(shares[ab[0]] - 0.5) + abs(choices[ab[1]] - 0.5), shares[ab[0]], choices[ab[1]]))
    weights: dict[str, float] = {}
    readout_weights: dict[str, float] = {}
    for j, qid in enumerate(question_ids):
        allowed = pairs if fitted[j] else [(a, b) for a, b in pairs if shares[a] == 0.0]
        best = _best_measured(allowed, grid[:, :, j])
        if best is None:  # nothing measurable: both views alike, the readout as much as the head
            weights[qid] = 0.5
            if fitted[j]:
                readout_weights[qid] = 0.5
            continue
        weights[qid] = float(choices[best[1]])
        if fitted[j]:
            readout_weights[qid] = float(shares[best[0]])
    table = {qid: {str(r): {str(w): None if np.isnan(grid[a, b, j]) else round(float(grid[a, b, j]), 4)
                            for b, w in enumerate(choices)}
                   for a, r in enumerate(shares) if fitted[j] or r == 0.0}
             for j, qid in enumerate(question_ids)}
    return weights, readout_weights, table


def _best_measured(order: Sequence, aucs: np.ndarray):  # type: ignore[no-untyped-def]
    """The one of ``order`` (indices into ``aucs``) whose AUROC is highest, the earliest of equals; None when all
    are NaN (not measurable)."""
    best, best_auc = None, -math.inf
    for i in order:
        if not np.isnan(aucs[i]) and aucs[i] > best_auc + 1e-12:
            best, best_auc = i, float(aucs[i])
    return best
