"""Train the MLLM head on labelled recordings, with the encoder frozen, and write a bundle.

The head is trained on the encoded frames (``training.data``): each step asks every question of
a batch of frames, sharing the image prefix, with defective frames oversampled and a
per-question weighting that makes positives and negatives count equally. Validation is on parts
held out from training; training stops when the validation loss has not improved for
``patience`` evaluations and keeps the best weights. Each question's threshold then comes from
the validation parts (``training.metrics.best_threshold``).

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
from pathlib import Path
from typing import Annotated, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, BeforeValidator, Field

from ingest.recording import Recording
from model.encoder import FrameEncoder
from model.head import HeadConfig, MLLMHead, renamed_image_tokens
from model.views import PART_MARGIN
from schemas.config import Question
from training.data import (
    LabelledSet, Log, cached_pieces, encode_pairs, labelled_questions, questions_of, split_by_group,
)
from training.metrics import auroc, best_threshold, head_margins
from training.provenance import bundle_provenance, earlier_round
from training.schedule import budget_progress, learning_rate

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
    lr: float = 1e-3
    lr_decay: Literal["none", "cosine"] = Field(
        "none", description="none: the rate stays at lr after warmup; cosine: it falls to zero by the end of the "
        "run's budget (max_steps or time_limit_s, whichever comes first), a decay phase for a head that has "
        "trained at a constant rate")
    weight_decay: float = 0.01
    warmup_steps: int = 30
    max_steps: int = 3000
    eval_every: int = 40
    patience: int = Field(6, description="evaluations without improvement before stopping")
    min_delta: float = 1e-3
    select_by: Literal["loss", "auroc"] = Field(
        "loss", description="what keeps a step and counts as improvement: the validation loss, or the "
        "validation AUROC (mean over questions); a long run's loss can rise from overconfidence while its "
        "ranking of frames, which thresholds and part verdicts use, still improves")
    val_fraction: float = 0.15
    max_val_frames: int = Field(
        320, ge=1, description="validation frames scored at each evaluation (a random sample of the validation "
        "parts' frames): more gives a steadier loss to pick the kept step by, at the cost of time")
    frame_stride: int = Field(1, ge=1, description="use every n-th labelled frame")
    view: Literal["frame", "part"] = Field(
        "frame", description="frame: train the whole-frame head; part: the part head, on the part view of the "
        "frames the tracker boxes (needs a bundle as the encoder)")
    margin: float = Field(PART_MARGIN, ge=0.0, le=1.0, description="part view: around the part's box, of its longer side")
    train_pairs: int = Field(
        0, ge=0, description="rendered twin pairs per question added to the training frames (not to validation): "
        "one part with and without the asked property, the unit of pair accuracy")
    train_pair_seed: int = Field(4001, description="their seed; evaluation renders its pairs from 9001")
    time_limit_s: float = 1800.0
    max_false_positive_rate: float | None = Field(
        0.05, ge=0, le=1, description="thresholds flag at most this share of clean validation frames (None: no cap)")
    # A fresh head starts with its projected image tokens at the scale of its text embeddings:
    # at the LM's default init the image tokens are ~20x larger and swamp the question tokens,
    # which the head must read to answer the right question.
    balance_projector_init: bool = True
    threads: int = 2
    device: str = Field("cpu", description="cpu | cuda | auto: where the frames are encoded and the head trains")
    seed: int = 0

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


def evaluate_head(head: MLLMHead, data: LabelledSet, w_pos: torch.Tensor, w_neg: torch.Tensor) -> dict[str, float]:
    head.eval()
    margin = head_margins(head, data.tokens, data.questions)
    loss = float(balanced_loss(margin, data.labels, w_pos, w_neg))
    scores = torch.sigmoid(margin).numpy()
    aucs = [auroc(scores[:, j], data.labels[:, j].numpy()) for j in range(len(data.questions))]
    aucs = [a for a in aucs if not math.isnan(a)]
    return {"loss": loss, "auroc": float(np.mean(aucs)) if aucs else float("nan")}


def train_head(
    cfg: FinetuneConfig,
    encoder: FrameEncoder,
    train: LabelledSet,
    val: LabelledSet,
    log: Log = print,
    init: MLLMHead | None = None,
) -> tuple[MLLMHead, dict]:
    """Train a head on cached tokens; returns the best head (by ``cfg.select_by``) and the run record."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    head = init
    if head is None:
        head = MLLMHead.create(cfg.head_config(), encoder=encoder, device=cfg.device, dtype=torch.float32)
        if cfg.balance_projector_init:
            with torch.no_grad():
                sample = head.projector(head.image_tokens(train.tokens.select(slice(0, 64))).float())
                scale = head.body.embed_tokens.weight.std() / sample.std()
                head.projector.linear_2.weight.mul_(scale)
                head.projector.linear_2.bias.mul_(scale)
    head.train()
    params = head.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    questions = train.questions
    w_pos, w_neg = class_weights(train.labels, cfg.defect_oversample)
    defective = np.nonzero(((train.labels == 1).any(dim=1)).numpy())[0]
    everything = np.arange(len(train))
    if len(val) > cfg.max_val_frames:
        val = val.subset(np.sort(rng.choice(len(val), cfg.max_val_frames, replace=False)))

    best = evaluate_head(head, val, w_pos, w_neg)
    best_state, best_step, bad_evals = copy.deepcopy(head.state_dict()), 0, 0
    history = [{"step": 0, "val_loss": best["loss"], "val_auroc": best["auroc"]}]
    log(f"step     0 val loss {best['loss']:.4f} auroc {best['auroc']:.3f}")
    t0 = time.time()
    running = None
    step = 0
    stopped = "max_steps"
    for step in range(1, cfg.max_steps + 1):
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
        if step % cfg.eval_every == 0:
            metrics = evaluate_head(head, val, w_pos, w_neg)
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
    head.load_state_dict(best_state)
    head.eval()
    record = {
        "variant": cfg.variant,
        "description": VARIANTS[cfg.variant],
        "steps": step,
        "best_step": best_step,
        "stopped": stopped,
        "best_val_loss": round(best["loss"], 4),
        "best_val_auroc": round(best["auroc"], 4),
        "wall_s": round(time.time() - t0, 1),
        "train_frames": len(train),
        "val_frames": len(val),
        "history": history,
    }
    return head, record


def val_thresholds(head: MLLMHead, val: LabelledSet, max_fpr: float | None) -> dict[str, float]:
    scores = torch.sigmoid(head_margins(head, val.tokens, val.questions)).numpy()
    # not rounded: a rounded threshold may drop below a clean frame's score and break the cap
    return {q.id: best_threshold(scores[:, j], val.labels[:, j].numpy(), max_fpr=max_fpr)
            for j, q in enumerate(val.questions)}

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
    encoder, clip, tok, base = load_encoder(encoder_source, cfg.variant, cfg.device)
    questions = list(questions or questions_of(recordings)
                     or labelled_questions(recordings, base.spec.questions if base is not None else []))
    if not questions:
        raise ValueError("no questions: label the recordings (`patchsight label`), or pass a line config's")
    log(f"{len(questions)} questions, variant {cfg.variant}, encoder {encoder_source}")
    Path(out).mkdir(parents=True, exist_ok=True)  # an output that cannot be written fails now, not after training
    # The starting head is resolved before the frames are encoded, so a bad choice fails in seconds.
    part_start = None
    if cfg.view == "part":
        cfg, init, part_start = starting_part_head(cfg, encoder, base, init_head, init_head_from, head_only)
        init_bundle = None
    else:
        cfg, init, init_bundle = starting_head(cfg, encoder, base, init_head, init_head_from)
    train, val, n_frames = training_sets(cfg, encoder, recordings, questions, cache_dir, log)
    head, record = train_head(cfg, encoder, train, val, log, init=init)
    head_device = head.device
    thresholds = val_thresholds(head, val, cfg.max_false_positive_rate)
    # bundles are written from the host, whatever trained them
    head, encoder = head.to("cpu"), encoder.to("cpu")
    if clip is not None:
        clip = clip.to("cpu")
    out = Path(out)
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
    if head_only:
        head.save_pretrained(out, dtype=torch.float16)
        (out / "finetune.json").write_text(json.dumps(record, indent=2) + "\n")
        log(f"wrote head ({cfg.variant}) -> {out}")
        return record
    if cfg.view == "part":
        return write_part_bundle(base, head, record, part_start, out, cfg.margin, model_id, log)
    probe = LinearProbe(train.tokens.image_embeds.shape[1], [q.id for q in questions])
    probe.fit(train.tokens.image_embeds, train.labels)
    provenance = bundle_provenance(record, encoder_source, base, init_bundle,
                                   init_head_from if init is not None else None)
    bundle = Bundle.create(encoder, head, model_id, clip=clip, clip_tokenizer=tok, questions=questions,
                           thresholds=thresholds, provenance=provenance, probe=probe)
    bundle.save(out, dtype=torch.float16)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log(f"wrote bundle {model_id} ({size / 1e6:.1f} MB) -> {out}")
    record["bundle_bytes"] = size
    return record


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
                      margin: float, model_id: str, log: Log = print) -> dict:
    """The ``--encoder`` bundle with ``head`` as its part head (``spec.part_view``), as ``model_id``, written to ``out``.

    Its view weights are left unset (0.5: both views alike) for ``model calibrate`` to choose;
    the provenance keeps the part round under ``part_view``.
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
    base.spec = base.spec.model_copy(update={
        "model_id": model_id, "part_view": PartViewSpec(margin=margin), "provenance": provenance})
    out = Path(out)
    base.save(out, dtype=torch.float16)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log(f"wrote bundle {base.spec.model_id} with a part head ({size / 1e6:.1f} MB) -> {out}; "
        f"run `patchsight model calibrate` on it for its view weights and part thresholds")
    record["bundle_bytes"] = size
    return record


def training_sets(
    cfg: FinetuneConfig,
    encoder: FrameEncoder,
    recordings: Sequence[str | Path],
    questions: Sequence[Question],
    cache_dir: str | Path | None,
    log: Log = print,
) -> tuple[LabelledSet, LabelledSet, int]:
    """(training set, validation set, labelled frames in the recordings): the recordings encoded and split by part."""
    pieces = cached_pieces(encoder, recordings, questions, cfg.frame_stride, cache_dir, log, cfg.view, cfg.margin)
    labels = torch.cat([d.labels for d in pieces])
    for j, q in enumerate(questions):
        log(f"  {q.id:16s} {int((labels[:, j] == 1).sum()):5d} yes {int((labels[:, j] == 0).sum()):5d} no")
    # Split straight from the pieces (memory-mapped when cached), so that no joined copy of every
    # frame is held beside the training and validation sets.
    train, val = split_by_group(pieces, cfg.val_fraction, cfg.seed)
    n_frames = len(labels)
    del pieces, labels
    if cfg.train_pairs:
        # Validation stays on the recordings, so early stopping and thresholds judge the line's own frames.
        train = train.concat(encode_pairs(encoder, questions, cfg.train_pairs, cfg.train_pair_seed, log=log))
    view = "" if cfg.view == "frame" else " (part view)"
    log(f"{len(train)} training frames, {len(val)} validation frames{view} (split by part)")
    return train, val, n_frames
