"""How finetune judges the head it trained, on parts it did not train on.

Validation is by part (the frames of one part are near duplicates). With many parts, one holdout
(``val_fraction`` of them) does; with few (a plant's first few dozen labelled parts) a holdout of
15% is a handful of frames, too few to choose a step count or a threshold by, so finetune
cross-validates instead: the parts are dealt into folds (the defective ones first, so that every
fold gets its share), a head is trained on each fold's complement, and every part's frames are
scored once by a head that never saw them (``part_folds``).

On those held-out frames, beside the head (``HeldOut``):

* ``start``: the head it started from, untrained (a new head's initialisation, or the head it
  continued), which the head must beat to have learned anything;
* ``probe``: the CLIP linear probe (``model.clip_baseline.LinearProbe``, the one the bundle
  ships) fitted on the same training frames' pooled embedding;
* ``good_only``: a scorer that needs no defect at all, one minus the cosine similarity of a
  frame's mean patch token to its nearest neighbour among the training frames with no defect
  (the same score for every question).

``validation_report`` gives each scorer's AUROC (the mean over questions) with a 95% interval
from a bootstrap over the held-out parts, and ``refusal`` says why a head should not be kept:
its best step was its first, or its AUROC is not above both its starting point's and the probe's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from model.encoder import EncoderOutput
from schemas.config import Question
from training.data import LabelledSet
from training.metrics import auroc, reportable

SCORERS = {"head": "the head", "start": "its starting point", "probe": "the linear probe",
           "good_only": "the good-only scorer"}
BOOTSTRAP = 1000


def part_folds(groups: Sequence[str], labels: np.ndarray, folds: int, seed: int) -> list[set[str]]:
    """The groups dealt into ``folds`` disjoint sets (fewer when there are fewer groups), defective groups first.

    A group is defective when any of its frames answers yes to any question; dealing those out
    first, round robin, gives each fold its share of them.
    """
    names = sorted(set(groups))
    defective = sorted({g for g, row in zip(groups, labels) if (row == 1).any()})
    good = sorted(set(names) - set(defective))
    rng = np.random.default_rng(seed)
    rng.shuffle(defective)
    rng.shuffle(good)
    k = min(folds, len(names))
    dealt: list[set[str]] = [set() for _ in range(k)]
    for i, name in enumerate(defective + good):
        dealt[i % k].add(name)
    return dealt


def mean_patch_tokens(tokens: EncoderOutput, batch: int = 1024) -> torch.Tensor:
    """Each frame's patch tokens averaged and L2-normalised, (N, D), a batch at a time (tokens may be memory-mapped)."""
    out = [tokens.feature_tokens[s : s + batch].float().mean(dim=1) for s in range(0, len(tokens), batch)]
    return F.normalize(torch.cat(out), dim=-1)


def good_only_scores(train: LabelledSet, held: LabelledSet, memory: int = 4096, seed: int = 0) -> np.ndarray:
    """(N,) how unlike the training frames with no defect each held-out frame is: 1 - cosine to the nearest one.

    At most ``memory`` good frames are kept (a random sample); nan when the training frames have no good one.
    """
    good = np.flatnonzero(~(train.labels == 1).any(dim=1).numpy())
    if len(good) == 0:
        return np.full(len(held), np.nan, dtype=np.float32)
    if len(good) > memory:
        good = np.sort(np.random.default_rng(seed).choice(good, memory, replace=False))
    reference = mean_patch_tokens(train.tokens.select(torch.as_tensor(good)))
    return (1.0 - (mean_patch_tokens(held.tokens) @ reference.T).max(dim=1).values).numpy()


def probe_scores(train: LabelledSet, held: LabelledSet) -> np.ndarray:
    """(N, Q) the linear probe's scores of the held-out frames, the probe fitted on the training frames."""
    from model.clip_baseline import LinearProbe

    probe = LinearProbe(train.tokens.image_embeds.shape[1], [q.id for q in train.questions])
    probe.fit(train.tokens.image_embeds, train.labels)
    return probe.predict(held.tokens.image_embeds).numpy()


@dataclass
class HeldOut:
    """Held-out frames: labels (N, Q) in {0, 1, -1}, each frame's group, and each scorer's scores (N, Q)."""

    labels: np.ndarray
    groups: list[str]
    scores: dict[str, np.ndarray]

    @staticmethod
    def of(train: LabelledSet, held: LabelledSet, start: np.ndarray) -> "HeldOut":
        """The frames ``held`` out of ``train``: the start's scores, the probe's and the good-only scorer's fitted
        on ``train``; the head's (``scores["head"]``) are the caller's to add once it is trained."""
        good = good_only_scores(train, held)
        return HeldOut(held.labels.numpy(), list(held.groups), {
            "start": start, "probe": probe_scores(train, held),
            "good_only": np.repeat(good[:, None], len(held.questions), axis=1)})

    @staticmethod
    def join(folds: Sequence["HeldOut"]) -> "HeldOut":
        return HeldOut(np.concatenate([f.labels for f in folds]), [g for f in folds for g in f.groups],
                       {k: np.concatenate([f.scores[k] for f in folds]) for k in folds[0].scores})


def mean_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The mean over questions of each question's AUROC (questions without both answers left out); nan if none has both."""
    values = [auroc(scores[labels[:, j] >= 0, j], labels[labels[:, j] >= 0, j]) for j in range(labels.shape[1])]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def part_resamples(groups: Sequence[str], seed: int = 0, count: int = BOOTSTRAP) -> list[np.ndarray]:
    """``count`` bootstrap resamples of the frames: each draws the parts (``groups``, one per frame) with replacement
    and takes every frame of each part drawn, as frame indices."""
    names = sorted(set(groups))
    index = {g: i for i, g in enumerate(names)}
    code = np.array([index[g] for g in groups])
    rows = [np.flatnonzero(code == i) for i in range(len(names))]
    rng = np.random.default_rng([seed, 0xB007])
    return [np.concatenate([rows[i] for i in rng.integers(len(names), size=len(names))]) for _ in range(count)]


def percentile_interval(values: Sequence[float]) -> list[float] | None:
    """The 95% interval (2.5th and 97.5th percentiles, rounded to 4 places) of the resampled values that are
    not nan (a resample without both answers has no AUROC); None when none is."""
    kept = np.array([v for v in values if not math.isnan(v)])
    if not len(kept):
        return None
    return [round(float(np.percentile(kept, 2.5)), 4), round(float(np.percentile(kept, 97.5)), 4)]


def validation_report(held: HeldOut, questions: Sequence[Question], seed: int = 0) -> dict:
    """Each scorer's mean AUROC with a 95% bootstrap interval over the held-out parts, and its AUROC per question.

    Each resample draws the parts with replacement, the same draw for every scorer.
    """
    draws = part_resamples(held.groups, seed)
    report: dict = {"frames": len(held.groups), "parts": len(set(held.groups)),
                    "positives": {q.id: int((held.labels[:, j] == 1).sum()) for j, q in enumerate(questions)},
                    "scorers": {}}
    for name, scores in held.scores.items():
        point = mean_auroc(scores, held.labels)
        interval = percentile_interval([mean_auroc(scores[d], held.labels[d]) for d in draws])
        per_question = {q.id: reportable(auroc(scores[held.labels[:, j] >= 0, j], held.labels[held.labels[:, j] >= 0, j]))
                        for j, q in enumerate(questions)}
        report["scorers"][name] = {"auroc": reportable(point), "interval": interval,
                                   "per_question": per_question}
    return report


def refusal(report: dict, best_step: int) -> str | None:
    """Why the head should not be kept (None: keep it): it learned nothing, or it is not above its start and the probe."""
    if best_step == 0:
        return ("its best validation step was step 0: it learned nothing that held on the validation parts "
                "(the head written would be its untrained starting point)")
    scorers = report["scorers"]
    head = scorers["head"]["auroc"]
    if head is None:
        return "no question has both yes and no among the validation frames: nothing shows whether the head learned"
    beaten = [f"{SCORERS[name]}'s {scorers[name]['auroc']:.3f}" for name in ("start", "probe")
              if scorers.get(name, {}).get("auroc") is not None and head <= scorers[name]["auroc"]]
    if beaten:
        return f"its validation AUROC {head:.3f} is not above {' nor '.join(beaten)}"
    return None
