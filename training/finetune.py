"""Train the MLLM head on labelled recordings, with the encoder frozen, and write a bundle.

The head is trained on the encoded frames (``training.data``): each step asks every question of
a batch of frames, sharing the image prefix, with defective frames oversampled and a
per-question weighting that makes positives and negatives count equally. Validation is by part
(``training.validation``), one of two ways:

* a holdout (many parts): training stops when the validation loss on the held-out parts has not
  improved for ``patience`` evaluations and keeps the best weights;
* cross-validation (few parts, ``folds``): a head is trained so on each fold's complement, the
  step count with the lowest mean validation loss over the folds is chosen, and the head written
  is trained on every part for that many steps.

Each question's threshold comes from the held-out frames' scores (``training.metrics.best_threshold``;
under cross-validation, every frame's score from the fold that held its part out). Beside the
head, the same held-out frames are scored by its untrained starting point, the linear probe and
a good-only scorer, each AUROC with a bootstrap interval; a head that learned nothing, or is not
above its start and the probe, is refused (``HeadRefused``: nothing is written) unless
``keep_anyway``.

The same code trains the ablation heads of the evaluation (``variant``): CLS token only,
position embeddings removed (from the encoder; or from the encoder, with the image tokens shuffled),
question not visible to the image-token weighting.

``view="part"`` trains a bundle's part head instead (``model.views``): the frames are read as
the part view (``training.data.view_frames``: the part cut around the tracker's box), the head
starts from the ``--encoder`` bundle's part head, else (``init_head``) from its whole-frame head,
and the bundle written is the ``--encoder`` bundle as it was (encoder, whole-frame head, probe,
questions, thresholds, part thresholds) with ``part-head/`` and ``spec.part_view`` added; its
per-question view weights are left to ``patchsight model calibrate``.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, BeforeValidator, Field, field_validator

from ingest.recording import Recording
from model.encoder import FrameEncoder
from model.head import HeadConfig, MLLMHead, renamed_image_tokens
from model.views import PART_MARGIN
from schemas.config import Question
from training.data import (
    PARTLESS_RUN, LabelledSet, Log, cached_pieces, encode_pairs, group_names, held_out_groups, labelled_questions,
    questions_of, regroup_partless, split_groups,
)
from training.metrics import auroc, best_threshold, head_margins, reportable
from training.output import check_writable, filled_on_success
from training.provenance import bundle_provenance, earlier_round
from training.schedule import budget_progress, learning_rate
from training.validation import SCORERS, HeldOut, part_folds, refusal, validation_report

CV_FOLDS = 5  # folds of an automatic cross-validation (FinetuneConfig.folds None)


class HeadRefused(ValueError):
    """Validation says the head is not worth keeping (``training.validation.refusal``); nothing was written."""

Variant = Literal["full", "cls_only", "no_position", "no_position_at_all", "question_blind"]
VARIANTS: dict[str, str] = {
    "full": "patch tokens, position embeddings, question-aware (the shipped head)",
    "cls_only": "CLS token only instead of patch tokens",
    "no_position": "position embeddings removed from the encoder",
    "no_position_at_all": "position embeddings removed from the encoder, and the image tokens shuffled "
    "before the decoder",
    "question_blind": "image tokens pooled before the head sees the question",
}
# the variants whose encoder runs without its position embeddings, in training and in evaluation
WITHOUT_ENCODER_POSITIONS = frozenset({"no_position", "no_position_at_all"})


class FinetuneConfig(BaseModel):
    head: HeadConfig = HeadConfig.tiny()
    variant: Variant = "full"
    image_tokens: Annotated[Literal["patch", "cls_then_patch"], BeforeValidator(renamed_image_tokens)] | None = Field(
        None, description="what the head reads of the feature layer; None keeps a started head's choice "
        "(a new head takes head.image_tokens)")
    batch_frames: int = Field(24, ge=1, description="frames per step; every question is asked of each")
    defect_oversample: float = Field(0.5, ge=0, le=1, description="share of each batch drawn from frames with a defect")
    lr: float = Field(1e-3, gt=0)
    lr_decay: Literal["none", "cosine"] = Field(
        "none", description="none: the rate stays at lr after warmup; cosine: it falls to zero by the end of the "
        "run's budget (max_steps or time_limit_s, whichever comes first), a decay phase for a head that has "
        "trained at a constant rate")
    weight_decay: float = 0.01
    warmup_steps: int = Field(30, ge=1)
    max_steps: int = Field(3000, ge=0)
    eval_every: int = Field(40, ge=1)
    patience: int = Field(6, ge=1, description="evaluations without improvement before stopping")
    min_delta: float = 1e-3
    select_by: Literal["loss", "auroc"] = Field(
        "loss", description="what keeps a step and counts as improvement: the validation loss, or the "
        "validation AUROC (mean over questions); a long run's loss can rise from overconfidence while its "
        "ranking of frames, which thresholds and part verdicts use, still improves")
    val_fraction: float = Field(0.15, gt=0, lt=1, description="share of the parts a holdout validates on")
    folds: int | None = Field(
        None, ge=0, description="how the head is validated (training.validation): 0, a holdout of val_fraction of "
        "the parts; 2 or more, cross-validation over that many folds of the parts, then the head trained on every "
        "part for the step count they chose; None, cross-validation over CV_FOLDS folds when a holdout would hold "
        "fewer than min_val_parts parts, else a holdout")
    min_val_parts: int = Field(50, ge=1, description="fewer validation parts than this in a holdout: cross-validate (folds None)")
    partless_run: int = Field(
        PARTLESS_RUN, ge=1, description="frames without a part_id count as one part per this many, in recording "
        "order (consecutive video frames show the same stretch of belt); 1: each frame its own part (still images)")
    keep_anyway: bool = Field(
        False, description="write the head even when validation says it learned nothing, or is not above its "
        "starting point and the linear probe (training.validation.refusal)")
    max_val_frames: int = Field(
        320, ge=1, description="holdout: validation frames scored at each evaluation (a random sample of the "
        "validation parts' frames): more gives a steadier loss to pick the kept step by, at the cost of time. "
        "Cross-validation scores every frame of each fold")
    frame_stride: int = Field(1, ge=1, description="use every n-th labelled frame")
    view: Literal["frame", "part"] = Field(
        "frame", description="frame: train the whole-frame head; part: the part head, on the part view of the "
        "frames the tracker boxes (needs a bundle as the encoder)")
    margin: float = Field(PART_MARGIN, ge=0.0, le=1.0, description="part view: around the part's box, of its longer side")
    train_pairs: int = Field(
        0, ge=0, description="rendered twin pairs per question added to the training frames (not to validation): "
        "one part with and without the asked property, the unit of pair accuracy")
    train_pair_seed: int = Field(4001, description="their seed; evaluation renders its pairs from 9001")
    time_limit_s: float = Field(1800.0, gt=0)
    max_false_positive_rate: float | None = Field(
        0.05, ge=0, le=1, description="thresholds flag at most this share of clean validation frames (None: no cap)")
    # A fresh head starts with its projected image tokens at the scale of its text embeddings:
    # at the LM's default init the image tokens are ~20x larger and swamp the question tokens,
    # which the head must read to answer the right question.
    balance_projector_init: bool = True
    threads: int = Field(2, ge=1)
    device: str = Field("cpu", description="cpu | cuda | auto: where the frames are encoded and the head trains")
    seed: int = 0

    @field_validator("folds")
    @classmethod
    def _not_one_fold(cls, folds: int | None) -> int | None:
        if folds == 1:
            raise ValueError("one fold leaves nothing to train on: give 0 (a holdout) or 2 or more folds")
        return folds

    def head_config(self) -> HeadConfig:
        cfg = self.head if self.image_tokens is None else self.head.model_copy(update={"image_tokens": self.image_tokens})
        if self.variant == "cls_only":
            cfg = cfg.model_copy(update={"image_tokens": "cls"})
        elif self.variant == "no_position_at_all":
            cfg = cfg.model_copy(update={"shuffle_image_tokens": True})
        elif self.variant == "question_blind":
            cfg = cfg.model_copy(update={"question_aware": False})
        return cfg


# --- Training ---------------------------------------------------------------------------


def class_weights(labels: torch.Tensor, defect_share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-question weights (Q,) for positives and negatives so that both count half, under our sampling."""
    known = labels >= 0
    any_defect = ((labels == 1) & known).any(dim=1)
    # expected positive rate per question when a share of each batch comes from defective frames
    rate_all = ((labels == 1) & known).float().sum(0) / known.float().sum(0).clamp(min=1)
    d = labels[any_defect]
    dk = d >= 0
    rate_def = ((d == 1) & dk).float().sum(0) / dk.float().sum(0).clamp(min=1) if len(d) else rate_all
    p = (defect_share * rate_def + (1 - defect_share) * rate_all).clamp(1e-3, 1 - 1e-3)
    return 0.5 / p, 0.5 / (1 - p)


def balanced_loss(margin: torch.Tensor, labels: torch.Tensor, w_pos: torch.Tensor, w_neg: torch.Tensor) -> torch.Tensor:
    keep = labels >= 0
    weight = torch.where(labels == 1, w_pos.expand_as(labels), w_neg.expand_as(labels))
    loss = F.binary_cross_entropy_with_logits(margin, labels.clamp(min=0), weight=weight * keep, reduction="sum")
    return loss / (weight * keep).sum().clamp(min=1e-6)


def evaluate_head(head: MLLMHead, data: LabelledSet, w_pos: torch.Tensor, w_neg: torch.Tensor) -> dict:
    """The balanced loss, the mean AUROC over questions and the scores (N, Q) of ``data``."""
    head.eval()
    margin = head_margins(head, data.tokens, data.questions)
    loss = float(balanced_loss(margin, data.labels, w_pos, w_neg))
    scores = torch.sigmoid(margin).numpy()
    aucs = [auroc(scores[:, j], data.labels[:, j].numpy()) for j in range(len(data.questions))]
    aucs = [a for a in aucs if not math.isnan(a)]
    return {"loss": loss, "auroc": float(np.mean(aucs)) if aucs else float("nan"), "scores": scores}


def head_scores(head: MLLMHead, data: LabelledSet) -> np.ndarray:
    """(N, Q) the head's yes-probabilities of every question of ``data``."""
    head.eval()
    return torch.sigmoid(head_margins(head, data.tokens, data.questions)).numpy()


def new_head(cfg: FinetuneConfig, encoder: FrameEncoder, sample: LabelledSet) -> MLLMHead:
    """A head of ``cfg.head_config()``, its projector scaled on up to 64 frames of ``sample`` (``balance_projector_init``)."""
    torch.manual_seed(cfg.seed)
    head = MLLMHead.create(cfg.head_config(), encoder=encoder, device=cfg.device, dtype=torch.float32)
    if cfg.balance_projector_init:
        with torch.no_grad():
            tokens = head.image_tokens(sample.tokens.select(slice(0, 64))).float()
            scale = head.body.embed_tokens.weight.std() / head.projector(tokens).std()
            head.projector.linear_2.weight.mul_(scale)
            head.projector.linear_2.bias.mul_(scale)
    return head


def validation_sample(val: LabelledSet, cfg: FinetuneConfig) -> LabelledSet:
    """At most ``cfg.max_val_frames`` frames of a holdout, drawn at random: the frames each evaluation scores."""
    if len(val) <= cfg.max_val_frames:
        return val
    rng = np.random.default_rng(cfg.seed)
    return val.subset(np.sort(rng.choice(len(val), cfg.max_val_frames, replace=False)))


def train_head(
    cfg: FinetuneConfig,
    encoder: FrameEncoder,
    train: LabelledSet,
    val: LabelledSet | None,
    log: Log = print,
    init: MLLMHead | None = None,
    steps: int | None = None,
    trace: dict[int, np.ndarray] | None = None,
) -> tuple[MLLMHead, dict]:
    """Train a head on cached tokens; returns the best head (by ``cfg.select_by``) and the run record.

    Without ``val`` (cross-validation's final run) it trains ``steps`` steps and keeps the last
    weights; the schedule spans ``cfg.max_steps`` either way, so that the final run's rate
    follows the folds'. ``trace``, when given, gets each evaluation's validation scores by step.
    """
    head = init if init is not None else new_head(cfg, encoder, train)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    head.train()
    params = head.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    questions = train.questions
    w_pos, w_neg = class_weights(train.labels, cfg.defect_oversample)
    defective = np.nonzero(((train.labels == 1).any(dim=1)).numpy())[0]
    everything = np.arange(len(train))
    last = cfg.max_steps if steps is None else steps

    best = {"loss": float("nan"), "auroc": float("nan")}
    history: list[dict] = []
    if val is not None:
        best = evaluate_head(head, val, w_pos, w_neg)
        history.append({"step": 0, "val_loss": best["loss"], "val_auroc": best["auroc"]})
        if trace is not None:
            trace[0] = best["scores"]
        log(f"step     0 val loss {best['loss']:.4f} auroc {best['auroc']:.3f}")
    best_state, best_step, bad_evals = copy.deepcopy(head.state_dict()), 0, 0
    t0 = time.time()
    running = None
    step = 0
    stopped = "max_steps"
    for step in range(1, last + 1):
        lr = learning_rate(step, peak=cfg.lr, warmup_steps=cfg.warmup_steps, decay=cfg.lr_decay,
                           progress=budget_progress(step, cfg.max_steps, time.time() - t0, cfg.time_limit_s))
        for g in opt.param_groups:
            g["lr"] = lr
        n_def = int(round(cfg.batch_frames * cfg.defect_oversample)) if len(defective) else 0
        idx = np.concatenate([rng.choice(defective, n_def), rng.choice(everything, cfg.batch_frames - n_def)])
        batch = train.tokens.select(torch.as_tensor(idx))
        head.train()
        logits = head.logits(batch, questions)
        loss = balanced_loss(logits[..., 0] - logits[..., 1], train.labels[idx].to(head.device),
                             w_pos.to(head.device), w_neg.to(head.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if val is not None and step % cfg.eval_every == 0:
            metrics = evaluate_head(head, val, w_pos, w_neg)
            if trace is not None:
                trace[step] = metrics["scores"]
            history.append({"step": step, "train_loss": round(running, 4), "val_loss": round(metrics["loss"], 4),
                            "val_auroc": round(metrics["auroc"], 4), "lr": float(f"{lr:.3g}"),
                            "elapsed_s": round(time.time() - t0, 1)})
            improved = (metrics["auroc"] > best["auroc"] + cfg.min_delta if cfg.select_by == "auroc"
                        else metrics["loss"] < best["loss"] - cfg.min_delta)
            log(f"step {step:5d} train loss {running:.4f} val loss {metrics['loss']:.4f} "
                f"auroc {metrics['auroc']:.3f} {'*' if improved else ' '} {time.time() - t0:.0f}s")
            if improved:
                best, best_step, bad_evals = metrics, step, 0
                best_state = copy.deepcopy(head.state_dict())
            else:
                bad_evals += 1
                if bad_evals >= cfg.patience:
                    stopped = "early_stop"
                    break
        if time.time() - t0 > cfg.time_limit_s:
            stopped = "time_limit"
            break
    if val is None:
        best_step = step
        history.append({"step": step, "train_loss": None if running is None else round(running, 4)})
    else:
        head.load_state_dict(best_state)
    head.eval()
    record = {
        "variant": cfg.variant,
        "description": VARIANTS[cfg.variant],
        "steps": step,
        "best_step": best_step,
        "stopped": stopped,
        "best_val_loss": reportable(best["loss"]),
        "best_val_auroc": reportable(best["auroc"]),
        "wall_s": round(time.time() - t0, 1),
        "train_frames": len(train),
        "val_frames": 0 if val is None else len(val),
        "history": history,
    }
    return head, record


# --- Validation: a holdout, or cross-validation over parts (training.validation) ----------


def validation_folds(cfg: FinetuneConfig, pieces: Sequence[LabelledSet], log: Log = print) -> list[set[str]]:
    """The validation parts: one set (a holdout of ``val_fraction``) or one per fold (cross-validation)."""
    names = group_names(pieces)
    if len(names) < 2:
        raise ValueError(f"the labelled frames are {len(names)} part: validation needs at least 2 (frames without a "
                         "part_id count as one part per --partless-run)")
    holdout = held_out_groups(names, cfg.val_fraction, cfg.seed)
    folds = cfg.folds
    if folds is None:
        folds = CV_FOLDS if len(holdout) < cfg.min_val_parts else 0
    if folds == 0:
        log(f"validation: a holdout of {len(holdout)} of {len(names)} parts")
        return [holdout]
    groups = [g for p in pieces for g in p.groups]
    dealt = part_folds(groups, torch.cat([p.labels for p in pieces]).numpy(), folds, cfg.seed)
    log(f"validation: {len(dealt)}-fold cross-validation over {len(names)} parts")
    return dealt


def holdout(cfg: FinetuneConfig, encoder: FrameEncoder, pieces: Sequence[LabelledSet], val_names: set[str],
            head: MLLMHead, pairs: LabelledSet | None, log: Log = print) -> tuple[MLLMHead, dict, HeldOut, LabelledSet]:
    """Train on the parts outside ``val_names``, keep the step with the best validation loss.

    Returns the head, its run record, the validation parts scored by every scorer, and the training set.
    """
    train, val = split_groups(pieces, val_names)
    if pairs is not None:  # validation stays on the recordings: the line's own frames judge the head
        train = train.concat(pairs)
    log(f"{len(train)} training frames, {len(val)} validation frames (split by part)")
    held = HeldOut.of(train, val, start=head_scores(head, val))
    head, record = train_head(cfg, encoder, train, validation_sample(val, cfg), log, init=head)
    held.scores["head"] = head_scores(head, val)
    return head, record, held, train


def cross_validate(cfg: FinetuneConfig, encoder: FrameEncoder, pieces: Sequence[LabelledSet], folds: list[set[str]],
                   head: MLLMHead, pairs: LabelledSet | None, log: Log = print) -> tuple[MLLMHead, dict, HeldOut, LabelledSet]:
    """Train from ``head`` on each fold's complement; then on every part for the step count with the best mean
    validation loss (or AUROC, ``cfg.select_by``) over the folds, among the steps every fold reached.

    Returns the final head, its run record, every part's frames scored by the fold that held it
    out (the head at the chosen step), and the final training set.
    """
    start = copy.deepcopy(head.state_dict())
    fold_held, traces, curves, runs = [], [], [], []
    for k, names in enumerate(folds, start=1):
        train, val = split_groups(pieces, names)
        if pairs is not None:
            train = train.concat(pairs)
        log(f"fold {k}/{len(folds)}: {len(train)} training frames, {len(val)} validation frames")
        head.load_state_dict(start)
        fold_held.append(HeldOut.of(train, val, start=head_scores(head, val)))
        trace: dict[int, np.ndarray] = {}
        _, run = train_head(cfg, encoder, train, val, lambda m, k=k: log(f"fold {k} {m}"), init=head, trace=trace)
        traces.append(trace)
        curves.append({h["step"]: (h["val_loss"], h["val_auroc"]) for h in run["history"]})
        runs.append({key: run[key] for key in ("steps", "best_step", "stopped", "train_frames", "val_frames")}
                    | {"parts": len(names)})
    reached = sorted(set.intersection(*(set(curve) for curve in curves)))
    with warnings.catch_warnings():  # a step no fold can rank (no fold with both answers) has no mean AUROC
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = {step: np.nanmean([curve[step] for curve in curves], axis=0) for step in reached}  # (loss, AUROC)
    by_auroc = cfg.select_by == "auroc"
    chosen = min(reached, key=lambda step: (-np.nan_to_num(mean[step][1], nan=-1.0) if by_auroc else mean[step][0],
                                            step))
    for held, trace in zip(fold_held, traces):
        held.scores["head"] = trace[chosen]
    log(f"cross-validation chose step {chosen} (mean validation loss {mean[chosen][0]:.4f}, AUROC "
        f"{mean[chosen][1]:.3f}, by {cfg.select_by}); training on every part for {chosen} steps")
    train = LabelledSet.join(pieces)
    if pairs is not None:
        train = train.concat(pairs)
    head.load_state_dict(start)
    head, record = train_head(cfg, encoder, train, None, log, init=head, steps=chosen)
    record.update(best_step=chosen, best_val_loss=round(float(mean[chosen][0]), 4), folds=runs,
                  mean_val_loss={str(step): round(float(m[0]), 4) for step, m in mean.items()},
                  mean_val_auroc={str(step): reportable(float(m[1])) for step, m in mean.items()})
    if record["stopped"] == "max_steps":  # it ran the steps it was given: the folds' choice
        record["stopped"] = "chosen_steps"
    return head, record, HeldOut.join(fold_held), train


# --- The command --------------------------------------------------------------------------


def load_encoder(source: str | Path, variant: Variant = "full", device: str = "cpu"):  # type: ignore[no-untyped-def]
    """(encoder, clip_model, clip_tokenizer, base_bundle_or_None) from a CLIP folder or a bundle."""
    from transformers import CLIPTokenizer

    from model.bundle import BUNDLE_FILE, load_bundle
    from model.encoder import EncoderConfig, FramePreprocessor, load_clip

    source = Path(source)
    if (source / BUNDLE_FILE).is_file():
        bundle = load_bundle(source, device=device, dtype=torch.float32)
        encoder, clip, tok = bundle.encoder, bundle.clip_model, bundle.clip.tokenizer if bundle.clip else None
    else:
        bundle = None
        try:
            clip = load_clip(source, device=device, dtype=torch.float32, local_files_only=True)
        except OSError as exc:  # transformers' own message is about repo ids, even for a mistyped folder
            raise ValueError(f"cannot load the encoder {source}: it is not a bundle, a CLIP folder or a "
                             f"hub id in the local cache ({exc})") from None
        preprocess = FramePreprocessor.from_pretrained(source) if (source / "preprocessor_config.json").is_file() else None
        encoder = FrameEncoder.from_clip(clip, EncoderConfig(), preprocess)
        tok = CLIPTokenizer.from_pretrained(str(source), local_files_only=True)
    encoder.set_position_embeddings(variant not in WITHOUT_ENCODER_POSITIONS)
    return encoder, clip, tok, bundle


def load_head(source: str | Path, device: str = "cpu"):  # type: ignore[no-untyped-def]
    """(head, its bundle or None) from a bundle or a head folder (``--head-only`` output)."""
    from model.bundle import BUNDLE_FILE, load_bundle

    source = Path(source)
    if (source / BUNDLE_FILE).is_file():
        bundle = load_bundle(source, device=device, dtype=torch.float32)
        return bundle.head, bundle
    return MLLMHead.from_pretrained(source, device=device, dtype=torch.float32), None


def finetune(
    cfg: FinetuneConfig,
    encoder_source: str | Path,
    recordings: Sequence[str | Path],
    out: str | Path,
    questions: Sequence[Question] | None = None,
    model_id: str = "patchsight-compact",
    log: Log = print,
    init_head: bool = False,
    head_only: bool = False,
    cache_dir: str | Path | None = None,
    init_head_from: str | Path | None = None,
) -> dict:
    """Encode the recordings, train the head, and write a bundle (or, ``head_only``, just the head) to ``out``.

    ``init_head`` starts from the head of the ``encoder_source`` bundle (full variant only);
    ``init_head_from`` from the head of another bundle or head folder, e.g. after the encoder
    was pretrained further, when its features moved but a trained head is still a better
    start than a random one.
    """
    from model.bundle import Bundle
    from model.clip_baseline import LinearProbe

    torch.set_num_threads(cfg.threads)
    t_start = time.time()
    check_writable(out)  # an output that cannot be written fails now, not after training
    encoder, clip, tok, base = load_encoder(encoder_source, cfg.variant, cfg.device)
    questions = list(questions or questions_of(recordings)
                     or labelled_questions(recordings, base.spec.questions if base is not None else []))
    memory_only = [q.id for q in questions if q.kind == "anomaly"]
    if memory_only:  # scored by the anomaly memory, which `model fit-anomaly` fits after finetune
        log(f"not training the head on anomaly questions {', '.join(memory_only)}: fit them with `model fit-anomaly`")
        questions = [q for q in questions if q.kind != "anomaly"]
    if not questions:
        raise ValueError("no questions: label the recordings (`patchsight label`), or pass a line config's")
    log(f"{len(questions)} questions, variant {cfg.variant}, encoder {encoder_source}")
    # The starting head is resolved before the frames are encoded, so a bad choice fails in seconds.
    part_start = None
    if cfg.view == "part":
        cfg, init, part_start = starting_part_head(cfg, encoder, base, init_head, init_head_from, head_only)
        init_bundle = None
    else:
        cfg, init, init_bundle = starting_head(cfg, encoder, base, init_head, init_head_from)
    # twin pairs first: a question the synthetic line cannot show fails before the recordings are encoded
    pairs = encode_pairs(encoder, questions, cfg.train_pairs, cfg.train_pair_seed, log=log) if cfg.train_pairs else None
    pieces = encoded_pieces(cfg, encoder, recordings, questions, cache_dir, log)
    n_frames = sum(len(p) for p in pieces)
    folds = validation_folds(cfg, pieces, log)
    head = init if init is not None else new_head(cfg, encoder, pieces[0])
    if len(folds) == 1:
        head, record, held, train = holdout(cfg, encoder, pieces, folds[0], head, pairs, log)
    else:
        head, record, held, train = cross_validate(cfg, encoder, pieces, folds, head, pairs, log)
    del pieces
    # not rounded: a rounded threshold may drop below a clean frame's score and break the cap
    thresholds = {q.id: best_threshold(held.scores["head"][:, j], held.labels[:, j], max_fpr=cfg.max_false_positive_rate)
                  for j, q in enumerate(questions)}
    report = validation_report(held, questions, cfg.seed)
    record["validation"] = {"method": "holdout" if len(folds) == 1 else "cross-validation", "folds": len(folds),
                            **report}
    record["best_val_auroc"] = report["scorers"]["head"]["auroc"]
    log_validation(report, log)
    reason = refusal(report, record["best_step"])
    if reason is not None:
        if not cfg.keep_anyway:
            raise HeadRefused(f"the head was not written: {reason}. Pass --keep-anyway (keep_anyway) to write it anyway")
        log(f"keeping the head anyway (keep_anyway): {reason}")
        record["kept_anyway"] = reason
    head_device = head.device
    # bundles are written from the host, whatever trained them
    head, encoder = head.to("cpu"), encoder.to("cpu")
    if clip is not None:
        clip = clip.to("cpu")
    record.update({
        "command": " ".join(sys.argv),
        "config": cfg.model_dump(mode="json"),
        "encoder_source": str(encoder_source),
        "data": [{"path": str(p), "source": Recording(p).meta.source} for p in recordings],
        "frames": n_frames,
        "thresholds": thresholds,
        "total_wall_s": round(time.time() - t_start, 1),
        "torch": torch.__version__,
        "threads": cfg.threads,
        "device": torch.cuda.get_device_name() if str(head_device).startswith("cuda") else str(head_device),
    })
    with filled_on_success(out) as staging:
        if head_only:
            head.save_pretrained(staging, dtype=torch.float16)
            (staging / "finetune.json").write_text(json.dumps(record, indent=2) + "\n")
        elif cfg.view == "part":
            write_part_bundle(base, head, record, part_start, staging, cfg.margin, model_id)
        else:
            probe = LinearProbe(train.tokens.image_embeds.shape[1], [q.id for q in questions])
            probe.fit(train.tokens.image_embeds, train.labels)
            provenance = bundle_provenance(record, encoder_source, base, init_bundle,
                                           init_head_from if init is not None else None)
            bundle = Bundle.create(encoder, head, model_id, clip=clip, clip_tokenizer=tok, questions=questions,
                                   thresholds=thresholds, provenance=provenance, probe=probe)
            bundle.save(staging, dtype=torch.float16)
        record["bundle_bytes"] = sum(f.stat().st_size for f in staging.rglob("*") if f.is_file())
    if head_only:
        log(f"wrote head ({cfg.variant}) -> {out}")
    elif cfg.view == "part":
        log(f"wrote bundle {model_id} with a part head ({record['bundle_bytes'] / 1e6:.1f} MB) -> {out}; "
            "run `patchsight model calibrate` on it for its view weights and part thresholds")
    else:
        log(f"wrote bundle {model_id} ({record['bundle_bytes'] / 1e6:.1f} MB) -> {out}")
    return record


def log_validation(report: dict, log: Log = print) -> None:
    """One line per scorer: its AUROC on the validation parts with the bootstrap interval."""
    log(f"validation: {report['frames']} frames of {report['parts']} parts, AUROC (mean over questions, 95% interval "
        "by bootstrap over parts):")
    for name, row in report["scorers"].items():
        interval = "" if row["interval"] is None else f" [{row['interval'][0]:.3f}, {row['interval'][1]:.3f}]"
        value = "n/a" if row["auroc"] is None else f"{row['auroc']:.3f}"
        log(f"  {SCORERS[name]:22s} {value}{interval}")


def starting_head(
    cfg: FinetuneConfig,
    encoder: FrameEncoder,
    base,  # type: ignore[no-untyped-def]  # the --encoder bundle, or None
    init_head: bool,
    init_head_from: str | Path | None,
) -> tuple[FinetuneConfig, MLLMHead | None, object | None]:
    """(the config, with a started head's image tokens; the head to start from or None; its bundle or None)."""
    init, init_bundle = None, None
    if init_head_from is not None:
        init, init_bundle = load_head(init_head_from, cfg.device)
        init.use_encoder(encoder)
    elif init_head and base is not None and cfg.variant == "full":
        init, init_bundle = base.head, base
    cfg = _read_as_asked(cfg, encoder, init)
    return cfg, init, init_bundle


def _read_as_asked(cfg: FinetuneConfig, encoder: FrameEncoder, init: MLLMHead | None) -> FinetuneConfig:
    """The config with a started head's image tokens; the started head set to read them as the run asks."""
    if init is not None:
        # A started head reads its image tokens the way this run asks (an ablation's change, or
        # CLS + patches): the projector maps one token at a time, so its weights fit either way.
        if cfg.image_tokens is None:
            cfg = cfg.model_copy(update={"image_tokens": "cls_then_patch" if init.config.image_tokens == "cls_then_patch" else "patch"})
        wanted = cfg.head_config()
        init.config = init.config.model_copy(update={
            "image_tokens": wanted.image_tokens, "question_aware": wanted.question_aware,
            "shuffle_image_tokens": wanted.shuffle_image_tokens})
    if cfg.head_config().image_tokens == "cls_then_patch" and encoder.config.feature_select != "patch":
        raise ValueError(f"the encoder already selects {encoder.config.feature_select!r} tokens; "
                         "image tokens 'cls_then_patch' needs one that selects patch tokens")
    return cfg


def starting_part_head(
    cfg: FinetuneConfig,
    encoder: FrameEncoder,
    base,  # type: ignore[no-untyped-def]  # the --encoder bundle, or None
    init_head: bool,
    init_head_from: str | Path | None,
    head_only: bool = False,
) -> tuple[FinetuneConfig, MLLMHead | None, dict | None]:
    """A part-view run's start: (the config; the head to start from or None; where it came from, for the provenance).

    ``init_head_from`` when given; else the ``--encoder`` bundle's part head when it has one; else,
    with ``init_head``, a copy of its whole-frame head; else a new head.
    """
    if base is None:
        raise ValueError("--view part adds a part head to a bundle: pass a bundle as --encoder")
    if cfg.variant != "full" or head_only:
        raise ValueError("--view part trains the part head of a bundle: no --variant, no --head-only")
    if cfg.train_pairs:
        raise ValueError("--view part reads tracked parts; rendered twin pairs (--train-pairs) have no part box")
    init, start = None, None
    if init_head_from is not None:
        init, _ = load_head(init_head_from, cfg.device)
        init.use_encoder(encoder)
        start = {"source": str(init_head_from)}
    elif base.part_head is not None:
        init = base.part_head
        start = {"from": "part head", **earlier_round({"model_id": base.spec.model_id, **{
            k: v for k, v in (base.spec.provenance.get("part_view") or {}).items() if k in ("finetune", "init_head")}})}
    elif init_head:
        # a copy read from the bundle's folder: the whole-frame head itself is saved unchanged beside it
        init = MLLMHead.from_pretrained(Path(base.directory) / base.spec.head, encoder=encoder, device=cfg.device,
                                        dtype=torch.float32)
        start = {"from": "whole-frame head", "model_id": base.spec.model_id}
    return _read_as_asked(cfg, encoder, init), init, start


def write_part_bundle(base, head: MLLMHead, record: dict, start: dict | None, out: str | Path,  # type: ignore[no-untyped-def]
                      margin: float, model_id: str) -> None:
    """The ``--encoder`` bundle with ``head`` as its part head (``spec.part_view``), as ``model_id``, written to ``out``.

    Its view weights are left unset (0.5: both views alike) for ``model calibrate`` to choose;
    the provenance keeps the part round under ``part_view``. A part readout of the ``--encoder``
    bundle (``model.readout``) reads the encoder's part-view tokens, not the head: it is kept when
    the part view is cut at the same margin (its shares unset too), and dropped when not.
    """
    from model.bundle import PartViewSpec

    part_round: dict = {"finetune": {k: v for k, v in record.items() if k != "history"},
                        "finetune_history": record["history"]}
    if start is not None:
        part_round["init_head"] = start
    base.head = base.head.to("cpu")
    base.part_head = head.to("cpu")
    if base.probe is not None:
        base.probe = base.probe.to("cpu")
    # the whole-frame head's round becomes an earlier one: its data list shrinks to a digest, as a started
    # head's does (the bundle keeps its size budget with a second head in it)
    provenance = {**base.spec.provenance, "part_view": part_round}
    if isinstance(provenance.get("finetune"), dict):
        provenance["finetune"] = earlier_round({"finetune": provenance["finetune"]})["finetune"]
    readout = None
    if base.part_readout is not None and base.spec.part_view.margin == margin:
        readout = base.spec.part_view.readout
    else:
        base.part_readout = None  # fitted on part views cut at another margin
    base.spec = base.spec.model_copy(update={
        "model_id": model_id, "part_view": PartViewSpec(margin=margin, readout=readout), "provenance": provenance})
    base.save(Path(out), dtype=torch.float16)


def encoded_pieces(
    cfg: FinetuneConfig,
    encoder: FrameEncoder,
    recordings: Sequence[str | Path],
    questions: Sequence[Question],
    cache_dir: str | Path | None,
    log: Log = print,
) -> list[LabelledSet]:
    """The recordings encoded (one piece per recording with a cache), their part-less frames grouped by ``cfg.partless_run``."""
    pieces = cached_pieces(encoder, recordings, questions, cfg.frame_stride, cache_dir, log, cfg.view, cfg.margin)
    regroup_partless(pieces, cfg.partless_run)
    labels = torch.cat([d.labels for d in pieces])
    for j, q in enumerate(questions):
        log(f"  {q.id:16s} {int((labels[:, j] == 1).sum()):5d} yes {int((labels[:, j] == 0).sum()):5d} no")
    if cfg.view == "part":
        log(f"{len(labels)} frames in the part view")
    return pieces
