"""Train the MLLM head on labelled recordings, with the encoder frozen, and write a bundle.

Every labelled frame answers every question of its line (``FrameTruth.answers``), so a frame
is a row of yes/no questions. Frames are encoded once (the encoder is frozen) and the head is
trained on the cached tokens: each step asks every question of a batch of frames, sharing the
image prefix, with defective frames oversampled and a per-question weighting that makes
positives and negatives count equally. Validation is on parts held out from training (split by
part, not by frame: consecutive frames of one part are near duplicates); training stops when
the validation loss has not improved for ``patience`` evaluations and keeps the best weights.

The same code trains the ablation heads of the evaluation (``variant``): CLS token only,
position embeddings removed (from the encoder; or from the encoder, with the image tokens shuffled),
question not visible to the image-token weighting.

``calibrate`` refits an existing bundle's thresholds on other labelled recordings (a plant's
own line), under the same rule as training: best balanced accuracy, false-positive rate capped.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from ingest import synth
from ingest.recording import Recording
from model.encoder import EncoderOutput, FrameEncoder
from model.head import HeadConfig, MLLMHead
from schemas.config import Question, QuestionCategory

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
Log = Callable[[str], None]


class FinetuneConfig(BaseModel):
    head: HeadConfig = HeadConfig.tiny()
    variant: Variant = "full"
    image_tokens: Literal["patch", "cls_patch"] | None = Field(
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
    val_fraction: float = 0.15
    max_val_frames: int = Field(
        320, ge=1, description="validation frames scored at each evaluation (a random sample of the validation "
        "parts' frames): more gives a steadier loss to pick the kept step by, at the cost of time")
    frame_stride: int = Field(1, ge=1, description="use every n-th labelled frame")
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


# --- Data -------------------------------------------------------------------------------


# Patch tokens are nearly all of a training set's memory (64 x 192 floats a frame at the compact
# encoder: 13 GB in float32 for v18's 268k training frames, which left 24 GB machines under 2 GB
# free). Held in float16 they take half; the head casts each batch back to its own precision, and
# the rounding moved the shipped head's scores by at most 3e-4 on cached frames. The encoding
# cache stores them so too: every reader joins the pieces into this precision anyway, so float32
# on disk only doubled the cache and the page cache a run maps.
HELD_PATCH_DTYPE = torch.float16


@dataclass
class LabelledSet:
    """Encoded frames with their answers: labels (N, Q) in {0, 1}, -1 where a frame has no answer."""

    tokens: EncoderOutput
    labels: torch.Tensor
    groups: list[str]  # one id per physical part (or per empty-belt stretch): the unit of the split
    questions: list[Question]
    sources: list[str]

    def __len__(self) -> int:
        return self.labels.shape[0]

    def concat(self, other: LabelledSet) -> LabelledSet:
        return LabelledSet.join([self, other])

    @staticmethod
    def join(sets: Sequence[LabelledSet], rows: Sequence[np.ndarray] | None = None) -> LabelledSet:
        """The sets one after another (only the given ``rows`` of each), in one copy (the first set's questions).

        Rows are copied straight into tensors of the final size: sets memory-mapped from the
        cache are read once and never held in memory twice.
        """
        if rows is None:
            picks = [torch.arange(len(d)) for d in sets]
        else:
            picks = [torch.as_tensor(np.asarray(r), dtype=torch.long) for r in rows]

        def gather(tensors: list[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
            out = torch.empty((sum(len(p) for p in picks), *tensors[0].shape[1:]), dtype=dtype or tensors[0].dtype)
            at = 0
            for t, p in zip(tensors, picks):
                if t.dtype == out.dtype:
                    torch.index_select(t, 0, p, out=out[at : at + len(p)])
                else:
                    out[at : at + len(p)] = t[p]
                at += len(p)
            return out

        embeds = None if sets[0].tokens.image_embeds is None else gather([d.tokens.image_embeds for d in sets])
        tokens = EncoderOutput(embeds, gather([d.tokens.patch_tokens for d in sets], HELD_PATCH_DTYPE),
                               gather([d.tokens.cls_token for d in sets]))
        return LabelledSet(tokens, gather([d.labels for d in sets]),
                           [d.groups[i] for d, p in zip(sets, picks) for i in p.tolist()], sets[0].questions,
                           [s for d in sets for s in d.sources])

    def subset(self, index: Sequence[int] | np.ndarray) -> "LabelledSet":
        return LabelledSet.join([self], [np.asarray(index)])


def questions_of(recordings: Sequence[str | Path], include_relations: bool = False) -> list[Question]:
    """The questions stored in the recordings' metadata (synth writes its catalog there)."""
    seen: dict[str, Question] = {}
    for path in recordings:
        for raw in getattr(Recording(path).meta, "questions", None) or []:
            q = Question.model_validate(raw)
            if include_relations or q.category != QuestionCategory.relation:
                seen.setdefault(q.id, q)
    return list(seen.values())


def labelled_questions(recordings: Sequence[str | Path], worded_by: Sequence[Question]) -> list[Question]:
    """The questions the recordings' labels answer (``patchsight label``), as ``worded_by`` words them.

    A recorded camera's metadata lists no questions, only the ids its labels answer; their
    text comes from the bundle being adapted (or, failing that, the user's line config).
    """
    ids = sorted({qid for path in recordings for entry in Recording(path).entries if entry.truth
                  for qid in entry.truth.answers})
    known = {q.id: q for q in worded_by}
    unknown = [qid for qid in ids if qid not in known]
    if unknown:
        raise ValueError(f"the labels answer {', '.join(unknown)}, which no question here words: pass --config "
                         "and --line naming the line whose questions these are")
    return [known[qid] for qid in ids]


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not a decodable image")
    return image


def encode_for_training(encoder: FrameEncoder, images: list[np.ndarray], batch: int = 64) -> EncoderOutput:
    """The frames' tokens and pooled embedding on the host, as tensors that training can use."""
    parts = []
    for start in range(0, len(images), batch):
        enc = encoder.encode_frames(images[start : start + batch], pooled=True).to("cpu")
        # cloned out of inference mode, so that training can use them as ordinary tensors
        parts.append(EncoderOutput(enc.image_embeds.clone(), enc.patch_tokens.clone(), enc.cls_token.clone()))
    return EncoderOutput.cat(parts)


class NoLabelledFrames(ValueError):
    """Recordings that are labelled, yet none of whose frames (at the stride) carries an answer."""


def encode_recordings(
    encoder: FrameEncoder,
    recordings: Sequence[str | Path],
    questions: Sequence[Question],
    stride: int = 1,
    batch: int = 64,
    log: Log = print,
) -> LabelledSet:
    """Decode and encode every ``stride``-th labelled frame of the recordings (with the pooled embedding)."""
    ids = [q.id for q in questions]
    parts: list[EncoderOutput] = []
    labels: list[list[float]] = []
    groups: list[str] = []
    pending: list[np.ndarray] = []
    t0 = time.time()
    skipped = 0

    def flush() -> None:
        if pending:
            parts.append(encode_for_training(encoder, pending))
            pending.clear()

    for path in recordings:
        rec = Recording(path)
        if not rec.meta.labelled:
            raise ValueError(f"{path} has no ground truth: record it with labels (e.g. `patchsight synth`)")
        name = f"{rec.meta.line_id}/{rec.meta.camera_id}@{Path(path).name}"
        empty_run = 0
        for n, (entry, jpeg) in enumerate(rec.frames()):
            truth = entry.truth
            if truth is None or n % stride:
                continue
            if truth.part_id is None:
                empty_run += 1
            try:
                image = decode(jpeg)
            except ValueError:
                skipped += 1
                continue
            pending.append(image)
            labels.append([float(truth.answers[i]) if i in truth.answers else -1.0 for i in ids])
            groups.append(f"{name}#part{truth.part_id}" if truth.part_id is not None else f"{name}#empty{empty_run // 20}")
            if len(pending) >= batch:
                flush()
                log(f"encoded {len(groups)} frames ({len(groups) / (time.time() - t0):.0f}/s)")
    flush()
    if not groups:
        raise NoLabelledFrames("no labelled frames in the given recordings")
    if skipped:
        log(f"skipped {skipped} undecodable frames")
    return LabelledSet(EncoderOutput.cat(parts), torch.tensor(labels), groups, list(questions), [str(p) for p in recordings])


def cached_encoding(
    encoder: FrameEncoder,
    recordings: Sequence[str | Path],
    questions: Sequence[Question],
    stride: int,
    cache_dir: str | Path | None,
    log: Log = print,
) -> LabelledSet:
    """``encode_recordings``, each recording's encoding kept in ``cache_dir``.

    Per recording, so that several heads share one encoding and a run that adds recordings
    encodes only the new ones.
    """
    return LabelledSet.join(cached_pieces(encoder, recordings, questions, stride, cache_dir, log))


def cached_pieces(
    encoder: FrameEncoder,
    recordings: Sequence[str | Path],
    questions: Sequence[Question],
    stride: int,
    cache_dir: str | Path | None,
    log: Log = print,
) -> list[LabelledSet]:
    """``cached_encoding`` before the join: one set per recording that has labelled frames.

    Cached pieces are memory-mapped from their files, so holding all of them costs page
    cache, not memory, until they are joined or split. Files are only ever replaced by a
    rename, never rewritten in place, so a mapping stays valid while another run writes the
    same file. An unreadable file is encoded again. Patch tokens are stored in
    ``HELD_PATCH_DTYPE``; files with float32 ones, from before, are read as they are.
    """
    if cache_dir is None:
        return [encode_recordings(encoder, recordings, questions, stride, log=log)]

    common = {
        "questions": [q.id for q in questions], "stride": stride,
        "positions": encoder._saved_positions is None,
        # the bytes, not a float sum: a sum's rounding changes with the thread count
        "weights": hashlib.sha256(
            encoder.vision.embeddings.patch_embedding.weight.detach().float().cpu().numpy().tobytes()).hexdigest(),
    }
    paths = []
    for rec in recordings:
        key = json.dumps({**common, "recording": str(Path(rec).resolve()),
                          "size": (Path(rec) / "frames.bin").stat().st_size}, sort_keys=True)
        paths.append(Path(cache_dir) / f"encoded-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt")
    cached = [path.is_file() for path in paths]
    hits = sum(cached)
    if hits:
        log(f"using cached encodings of {hits} of {len(recordings)} recordings from {cache_dir}")
    if hits < len(recordings):
        log(f"encoding {len(recordings) - hits} recordings")
    sets: list[LabelledSet] = []
    for rec, path, is_cached in zip(recordings, paths, cached):
        saved = read_cached_piece(path, log) if is_cached else None
        if saved is None:
            try:
                data = encode_recordings(encoder, [rec], questions, stride, log=log)
            except NoLabelledFrames:
                continue  # others may have some; an empty piece is not cached, it costs nothing to read again
            path.parent.mkdir(parents=True, exist_ok=True)
            t = data.tokens
            # write then rename: heads trained side by side may share (and race for) one cache file
            partial = path.with_suffix(f".{os.getpid()}.partial")
            torch.save({"tokens": (t.image_embeds, t.patch_tokens.to(HELD_PATCH_DTYPE), t.cls_token),
                        "labels": data.labels, "groups": data.groups, "sources": data.sources}, partial)
            partial.replace(path)
            del data, t  # read back memory-mapped like the cached pieces, so new encodings leave memory too
            saved = torch.load(path, weights_only=False, mmap=True)
        sets.append(LabelledSet(EncoderOutput(*saved["tokens"]), saved["labels"], saved["groups"],
                                list(questions), saved["sources"]))
    if not sets:
        raise NoLabelledFrames("no labelled frames in the given recordings")
    return sets


def read_cached_piece(path: Path, log: Log = print) -> dict | None:
    """A cached encoding, memory-mapped; None (and a log line) when the file cannot be read, to encode again."""
    try:
        return torch.load(path, weights_only=False, mmap=True)
    except Exception as exc:  # a truncated or foreign file: the recording is still there to encode
        log(f"cached encoding {path} is unreadable ({type(exc).__name__}: {exc}); encoding its recording again")
        return None


def render_pairs(
    questions: Sequence[Question], n: int, seed: int, size: tuple[int, int] = (640, 480)
) -> tuple[list[np.ndarray], list[np.ndarray], list[dict[str, bool]]]:
    """``n`` pairs per question: (yes image, no image), identical but for the asked property.

    Each pair is one part under one camera look drawn from the pretraining's wide range, so that
    nothing but the property tells the two images apart; both go through JPEG like recorded
    frames. Returns the yes images, the no images (Q*n each, question-major) and, per image in
    that order (all yes images, then all no images), the answer to every catalog question.
    """
    from training.pretrain import random_look

    rng = np.random.default_rng([seed, 0xE7A1])
    pos, neg, pos_answers, neg_answers = [], [], [], []
    for q in questions:
        for _ in range(n):
            base = synth.sample_part(rng, str(rng.choice(list(synth.PART_TYPES))), defect_rate=0.0)
            no = synth.clear_defect(base, q.id, rng)
            if q.id == "label_near_gap":  # both images need an empty screw position, on opposite sides
                no = synth.clear_defect(base.replace(label_side=str(rng.choice(["left", "right"]))), q.id, rng)
            yes = synth.set_defect(no, q.id, rng)
            look = random_look(rng, size[0] / synth.BASE_WIDTH)
            x = float(rng.uniform(*synth.inspected_x_range(size, look.scale)))
            y = size[1] / 2 + float(rng.uniform(-0.04, 0.04)) * size[1]
            noise_seed = int(rng.integers(2**31))
            for spec, images, answers in ((yes, pos, pos_answers), (no, neg, neg_answers)):
                image = synth.render_part_frame(spec, np.random.default_rng(noise_seed), (x, y), look, size)
                _, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
                images.append(decode(jpeg.tobytes()))
                answers.append(spec.answers())
    return pos, neg, pos_answers + neg_answers


def encode_pairs(
    encoder: FrameEncoder, questions: Sequence[Question], n: int, seed: int, batch: int = 64, log: Log = print
) -> LabelledSet:
    """``render_pairs`` encoded and labelled for training; the two images of a pair share a group."""
    known = {q.id for q in synth.SYNTH_QUESTIONS}
    unknown = [q.id for q in questions if q.id not in known]
    if unknown:
        raise ValueError(f"twin pairs are rendered from the synthetic line's parts, which cannot show {unknown}")
    pos, neg, answers = render_pairs(questions, n, seed)
    tokens = encode_for_training(encoder, pos + neg, batch)
    labels = [[float(a[q.id]) if q.id in a else -1.0 for q in questions] for a in answers]
    groups = [f"pair{i % len(pos)}@{seed}" for i in range(len(answers))]
    log(f"rendered and encoded {len(pos)} twin pairs (seed {seed})")
    return LabelledSet(tokens, torch.tensor(labels), groups, list(questions), [f"pairs@{seed}"])


def split_by_group(pieces: Sequence[LabelledSet], val_fraction: float, seed: int) -> tuple[LabelledSet, LabelledSet]:
    """Training and validation sets of the pieces, split by group, each filled straight from the pieces.

    The same split as splitting the pieces' join, without ever holding the join.
    """
    rng = np.random.default_rng(seed)
    names = sorted({g for d in pieces for g in d.groups})
    rng.shuffle(names)
    val_names = set(names[: max(1, int(round(len(names) * val_fraction)))])
    in_val = [np.array([g in val_names for g in d.groups], dtype=bool) for d in pieces]
    return (LabelledSet.join(pieces, [np.flatnonzero(~v) for v in in_val]),
            LabelledSet.join(pieces, [np.flatnonzero(v) for v in in_val]))


# --- Metrics ----------------------------------------------------------------------------


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half); nan without both classes."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    values = np.concatenate([pos, neg])[order]
    ranks = np.empty(len(values))
    i = 0
    while i < len(values):  # average ranks over ties
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


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


def head_margins(head: MLLMHead, tokens: EncoderOutput, questions: Sequence[Question], batch: int = 32) -> torch.Tensor:
    """logit_yes - logit_no for every question of every frame, (N, Q), no grad."""
    out = []
    with torch.inference_mode():
        for s in range(0, len(tokens), batch):
            logits = head.logits(tokens.select(slice(s, s + batch)), list(questions))
            out.append((logits[..., 0] - logits[..., 1]).float().cpu())
    return torch.cat(out)


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
    """Train a head on cached tokens; returns the best head (by validation loss) and the run record."""
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
        lr = learning_rate(cfg, step, time.time() - t0)
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
            improved = metrics["loss"] < best["loss"] - cfg.min_delta
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


def learning_rate(cfg: FinetuneConfig, step: int, elapsed_s: float) -> float:
    """The rate for ``step``: a linear warmup, then constant or a cosine decay to zero.

    The decay follows whichever budget runs out first, steps or time, so that a time-limited run
    still ends at a rate near zero instead of being cut off mid-decay.
    """
    rate = cfg.lr * min(1.0, step / cfg.warmup_steps)
    if cfg.lr_decay == "cosine":
        progress = min(1.0, max(step / cfg.max_steps, elapsed_s / cfg.time_limit_s))
        rate *= 0.5 * (1.0 + math.cos(math.pi * progress))
    return rate


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
    init, init_bundle = None, None
    if init_head_from is not None:
        init, init_bundle = load_head(init_head_from, cfg.device)
        init.use_encoder(encoder)
    elif init_head and base is not None and cfg.variant == "full":
        init, init_bundle = base.head, base
    if init is not None:
        # A started head reads its image tokens the way this run asks (an ablation's change, or
        # CLS + patches): the projector maps one token at a time, so its weights fit either way.
        if cfg.image_tokens is None:
            cfg = cfg.model_copy(update={"image_tokens": "cls_patch" if init.config.image_tokens == "cls_patch" else "patch"})
        wanted = cfg.head_config()
        init.config = init.config.model_copy(update={
            "image_tokens": wanted.image_tokens, "question_aware": wanted.question_aware,
            "shuffle_image_tokens": wanted.shuffle_image_tokens})
    if cfg.head_config().image_tokens == "cls_patch" and encoder.config.feature_select != "patch":
        raise ValueError(f"the encoder already selects {encoder.config.feature_select!r} tokens; "
                         "image tokens 'cls_patch' needs one that selects patch tokens")
    pieces = cached_pieces(encoder, recordings, questions, cfg.frame_stride, cache_dir, log)
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
    log(f"{len(train)} training frames, {len(val)} validation frames (split by part)")
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
    probe = LinearProbe(train.tokens.image_embeds.shape[1], [q.id for q in questions])
    probe.fit(train.tokens.image_embeds, train.labels)
    provenance = {"finetune": {k: v for k, v in record.items() if k != "history"}, "finetune_history": record["history"]}
    pretrain_file = Path(encoder_source) / "pretrain.json"
    if pretrain_file.is_file():
        pre = json.loads(pretrain_file.read_text())
        provenance["encoder_pretraining"] = {k: v for k, v in pre.items() if k != "history"}
    elif base is not None:
        provenance["encoder_pretraining"] = base.spec.provenance.get("encoder_pretraining")
    if init_bundle is not None:
        # The head continued from another bundle's: keep how that one was made, to reproduce both steps.
        provenance["init_head"] = earlier_round({"model_id": init_bundle.spec.model_id, **{
            k: v for k, v in init_bundle.spec.provenance.items() if k in ("finetune", "init_head")}})
    elif init is not None:
        provenance["init_head"] = {"source": str(init_head_from)}
    bundle = Bundle.create(encoder, head, model_id, clip=clip, clip_tokenizer=tok, questions=questions,
                           thresholds=thresholds, provenance=provenance, probe=probe)
    bundle.save(out, dtype=torch.float16)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log(f"wrote bundle {model_id} ({size / 1e6:.1f} MB) -> {out}")
    record["bundle_bytes"] = size
    return record


def earlier_round(record: dict) -> dict:
    """How a starting head was made, as the next bundle keeps it: everything but the data lists,
    which shrink to a digest (count, sha256, sources) at every level of the nested rounds.

    Each round's list repeats the last one's and adds seeds; kept whole at every level, they were
    most of bundle.json, and it grew by a whole list a round.
    """
    out = dict(record)
    finetune_record = out.get("finetune")
    if isinstance(finetune_record, dict) and isinstance(finetune_record.get("data"), list):
        data = finetune_record["data"]
        out["finetune"] = {**finetune_record, "data": {
            "recordings": len(data),
            "sha256": hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest(),
            "sources": list(dict.fromkeys(str(d.get("source")) for d in data)),
        }}
    if isinstance(out.get("init_head"), dict):
        out["init_head"] = earlier_round(out["init_head"])
    return out


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
