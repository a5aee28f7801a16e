"""How well a head's scores separate yes from no: AUROC, and the threshold rule.

A question's threshold is the one with the best balanced accuracy among those that flag at most
``max_fpr`` of the clean frames (``best_threshold``); finetune applies it to its validation parts
and ``calibrate`` to a plant's own recordings. ``head_margins`` gives the scores they are computed on,
``served_scores`` the bundle's as the worker serves them (anomaly questions from its anomaly memory).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from model.encoder import EncoderOutput
    from model.head import MLLMHead
    from schemas.config import Question


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half); nan without both classes."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    values = np.concatenate([pos, neg])
    order = np.argsort(values, kind="mergesort")
    # the average rank of each run of tied values (ranks from 1); vectorised: bootstraps call this thousands of times
    _, first, count = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(first + (count + 1) / 2, count)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def reportable(value: float) -> float | None:
    """A metric as reports hold it: rounded to 4 places, None where it is undefined (nan)."""
    return None if math.isnan(value) else round(float(value), 4)


MIN_EACH = 5  # fewer yes (or no) frames than this, and a question keeps its default threshold


def best_threshold(
    scores: np.ndarray, labels: np.ndarray, default: float = 0.5, min_each: int = MIN_EACH, max_fpr: float | None = None,
) -> float:
    """The threshold with the best balanced accuracy on held-out frames; ``default`` if too few of either class.

    ``max_fpr`` caps the share of negative frames the threshold may flag. Without it, a question
    whose scores barely separate gets a threshold near "always yes" (balanced accuracy rewards
    the recall it buys), and operators would get an alert on nearly every clean part.
    """
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) < min_each or len(neg) < min_each:
        return default
    # the last candidate flags nothing: it is always allowed, whatever the cap
    candidates = np.unique(np.concatenate([scores, [default, scores.max() + 1e-6]]))
    best, best_t = -1.0, default
    for t in candidates:
        fpr = (neg >= t).mean()
        if max_fpr is not None and fpr > max_fpr:
            continue
        acc = 0.5 * ((pos >= t).mean() + 1.0 - fpr)
        # ties: prefer the one nearer the default, so thresholds do not sit on a single frame
        if acc > best + 1e-9 or (abs(acc - best) <= 1e-9 and abs(t - default) < abs(best_t - default)):
            best, best_t = acc, float(t)
    # midway between the chosen score and the next lower one: a margin for unseen frames
    # (no score lies between them, so the rates, and the cap, hold at the midpoint too)
    lower = scores[scores < best_t]
    return float((best_t + lower.max()) / 2) if len(lower) else best_t


def head_margins(head: MLLMHead, tokens: EncoderOutput, questions: Sequence[Question], batch: int = 32) -> torch.Tensor:
    """logit_yes - logit_no for every question of every frame, (N, Q), no grad."""
    out = []
    with torch.inference_mode():
        for s in range(0, len(tokens), batch):
            logits = head.logits(tokens.select(slice(s, s + batch)), list(questions))
            out.append((logits[..., 0] - logits[..., 1]).float().cpu())
    return torch.cat(out)


def served_scores(bundle, tokens: EncoderOutput, questions: Sequence[Question],  # type: ignore[no-untyped-def]
                  batch: int = 1024) -> np.ndarray:
    """P(yes) (N, Q) as the worker serves it from the whole frame: the bundle's head answers the yes/no
    questions, its anomaly memory the anomaly ones (``batch`` frames at a time: the tokens may be memory-mapped)."""
    memory_cols = [j for j, q in enumerate(questions) if q.kind == "anomaly"]
    asked = [j for j in range(len(questions)) if j not in memory_cols]
    scores = np.empty((len(tokens), len(questions)), dtype=np.float32)
    if asked:
        margins = head_margins(bundle.head, tokens, [questions[j] for j in asked])
        scores[:, asked] = torch.sigmoid(margins).numpy()
    if memory_cols:
        for s in range(0, len(tokens), batch):
            scores[s : s + batch, memory_cols] = bundle.anomaly_scores(tokens.select(slice(s, s + batch)))[:, None]
    return scores
