"""Evaluate a bundle on held-out recordings: CLIP zero-shot, CLIP linear probe and the MLLM head.

All three read the same frozen encoder, so differences come from how they read it:

* CLIP zero-shot: the pooled embedding against two captions per question;
* CLIP linear probe: a logistic regression per question on the pooled embedding;
* MLLM head: patch tokens, with position embeddings, weighted by the question.

Per question category (fine detail, spatial relation, counting, and relations between two
features that no caption or label ever stated) it reports accuracy and balanced accuracy at the
threshold each scorer uses, AUROC, and pair accuracy as Li, Koh & Du (2024) define it: an image
pair that differs only in the asked property counts as correct only if both images are
answered correctly. Pairs are rendered by ``ingest.synth`` from the seed given (never a
training seed), with a held-out camera look per pair, through JPEG like recorded frames.
A question the synthetic line's parts cannot show (a plant's own, e.g. "Is there a defect?")
has no pairs, nor has any question with ``pairs_per_question=0``: the report's ``pairs_missing``
says which and why, their pair accuracy is not measured and their AUROC is the frames' alone.
Nothing is written to ``out`` unless the whole report is (``training.output``).

Ablation heads (trained by ``patchsight model finetune --variant ...``) reproduce the paper's
decomposition: CLS token only, position embeddings removed, question not visible to the
image-token weighting.

Per part (issue 31): the frames showing a part (the truth's part id, per recording) become one
verdict per part, as the alert service makes it: the MLLM head's frame scores aggregated per
question with the bundle's ``part_aggregate`` and compared with its ``part_thresholds_for``
(calibrated by ``patchsight model calibrate`` for a false-alarm budget; a bundle without part
thresholds falls back to its frame thresholds). The JSON report's ``parts`` is the per-part report
(``training.parts.part_report``: detection and false-alarm rate, overall and per defect type);
``part_verdict`` adds the aggregate, the thresholds and part AUROC per question. Relation
questions are left out of it: no line asks them.

A bundle with a part view (``spec.part_view``) is evaluated as the worker serves it
(``training.views``): on each frame where the camera's tracker boxes a part, the MLLM head's
score is the whole-frame head's and the part head's (on the part view) mixed per question
with ``spec.part_view.weights``, and the per-part grouping runs over those tracked frames
only. The CLIP zero-shot baseline reads the same two views, its scores mixed with weight 0.5.
The linear probe and the ablation heads read the whole frame; rendered pairs are whole frames
(they have no tracked box), so pair accuracy is the whole-frame head's for every scorer.
``views`` in the JSON report says what each scorer read.

A question of kind ``anomaly`` (the bundle's, added to the recordings' questions) is scored by
the bundle's anomaly memory alone (``model.anomaly``), reported as the scorer ``anomaly_memory``,
and labelled by each frame's defects: "yes" on a frame with any defect. It has no rendered pairs,
it reads the whole frame also in a bundle with a part view, and its scores go into the per-part
report like the head's do for the other questions.

Output: ``report.md``, ``report.json`` (the same numbers) and PNG plots in one folder.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from model.encoder import EncoderOutput
from schemas.config import Question, QuestionCategory
from training.data import (
    LabelledSet, encode_recordings, frame_part_keys, questions_of, recording_pieces, render_pairs, renderable,
)
from training.finetune import WITHOUT_ENCODER_POSITIONS
from training.metrics import auroc, head_margins, reportable, served_scores
from training.output import check_writable, filled_on_success
from training.parts import group_parts, part_report
from training.validation import part_resamples, percentile_interval
from training.views import part_views

Log = Callable[[str], None]
CATEGORIES = [c.value for c in QuestionCategory]
TARGETS = {"spatial_pair_accuracy": 0.90, "overall_pair_accuracy": 0.95, "fine_detail_auroc": 0.98,
           "part_detection_rate": 0.95, "part_false_alarm_rate": 0.02}


@dataclass
class Scored:
    """Scores of one scorer: frames (N, Q) and pairs (positive, negative) per question, with thresholds (Q,)."""

    frames: np.ndarray
    pairs_pos: np.ndarray  # (P, Q): the image with the property (answer yes); nan for a question without pairs
    pairs_neg: np.ndarray  # (P, Q): the same image without it (answer no)
    thresholds: np.ndarray


# --- Metrics ------------------------------------------------------------------------------


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="mergesort")
    y = labels[order]
    tpr = np.concatenate([[0], np.cumsum(y == 1) / max(1, (y == 1).sum())])
    fpr = np.concatenate([[0], np.cumsum(y == 0) / max(1, (y == 0).sum())])
    return fpr, tpr


def question_metrics(s: Scored, labels: np.ndarray, j: int) -> dict[str, float]:
    y = labels[:, j]
    keep = y >= 0
    score, y = s.frames[keep, j], y[keep]
    t = float(s.thresholds[j])
    pred = score >= t
    pos, neg = y == 1, y == 0
    rendered = ~np.isnan(s.pairs_pos[:, j])  # none for a question the synthetic line cannot show
    pair_pos, pair_neg = s.pairs_pos[rendered, j], s.pairs_neg[rendered, j]
    pair_ok = (pair_pos >= t) & (pair_neg < t)
    return {
        "threshold": round(t, 4),
        "frames": int(len(y)),
        "positives": int(pos.sum()),
        "accuracy": float((pred == (y == 1)).mean()) if len(y) else float("nan"),
        "balanced_accuracy": float(0.5 * (pred[pos].mean() + (~pred[neg]).mean())) if pos.any() and neg.any() else float("nan"),
        "auroc": auroc(np.concatenate([score, pair_pos, pair_neg]),
                       np.concatenate([y, np.ones(len(pair_pos)), np.zeros(len(pair_neg))])),
        "auroc_frames": auroc(score, y),
        "pair_accuracy": float(pair_ok.mean()) if len(pair_ok) else float("nan"),
        "pairs": int(len(pair_ok)),
    }


def frame_auroc_interval(scores: np.ndarray, labels: np.ndarray, resamples: Sequence[np.ndarray]) -> list[float] | None:
    """The 95% bootstrap interval of the frames' AUROC of one question (``labels`` -1: not answered, left out)."""
    known = labels >= 0
    return percentile_interval([auroc(scores[d][known[d]], labels[d][known[d]]) for d in resamples])


def _mean(values: list[float]) -> float:
    v = [x for x in values if not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(v)) if v else float("nan")


def summarise(per_question: dict[str, dict[str, float]], questions: Sequence[Question]) -> dict[str, dict[str, float]]:
    """Per-category means of the per-question numbers, and 'overall' over the non-relation questions."""
    out: dict[str, dict[str, float]] = {}
    groups = {c: [q.id for q in questions if q.category.value == c] for c in CATEGORIES}
    groups["overall"] = [q.id for q in questions if q.category != QuestionCategory.relation]
    for name, ids in groups.items():
        ids = [i for i in ids if i in per_question]
        if not ids:
            continue
        out[name] = {k: _mean([per_question[i][k] for i in ids]) for k in ("accuracy", "balanced_accuracy", "auroc", "pair_accuracy")}
        out[name]["questions"] = len(ids)
    return out


# --- Evaluation ---------------------------------------------------------------------------


def load_ablations(directory: str | Path | None, encoder) -> dict[str, tuple[object, dict[str, float]]]:  # type: ignore[no-untyped-def]
    """variant -> (head, its validation thresholds), from the folders ``finetune --head-only`` wrote."""
    from model.head import MLLMHead

    heads: dict[str, tuple[object, dict[str, float]]] = {}
    if directory is None:
        return heads
    if not Path(directory).is_dir():
        raise ValueError(f"--ablations {directory} is not a folder")
    for sub in sorted(Path(directory).iterdir()):
        info = sub / "finetune.json"
        if sub.is_dir() and info.is_file():
            record = json.loads(info.read_text())
            head = MLLMHead.from_pretrained(sub, encoder=encoder, device="cpu", dtype=torch.float32)
            heads[record["variant"]] = (head, record["thresholds"])
    if not heads:  # a typo here would otherwise cost a full evaluation that reports the target unmeasured
        raise ValueError(f"no ablation heads in {directory} (folders that `finetune --head-only` wrote)")
    return heads


def evaluate(
    bundle_path: str | Path,
    recordings: Sequence[str | Path],
    out: str | Path,
    ablations: str | Path | None = None,
    pairs_per_question: int = 40,
    pair_seed: int = 9001,
    threads: int = 2,
    log: Log = print,
) -> dict:
    """Score everything, write ``out/report.md``, ``out/report.json`` and plots; returns the report dict."""
    from model.bundle import load_bundle

    torch.set_num_threads(threads)
    t0 = time.time()
    out = Path(out)
    check_writable(out)  # before the slow part; the folder itself is made only when the report is written
    bundle = load_bundle(bundle_path, device="cpu", dtype=torch.float32)
    ablation_heads = load_ablations(ablations, bundle.encoder)  # before the slow part: a bad folder fails now
    questions = questions_of(recordings, include_relations=True) or list(bundle.spec.questions)
    asked = {q.id for q in questions}  # the bundle's anomaly questions are answered by any labelled frame's defects
    questions += [q for q in bundle.spec.questions if q.kind == "anomaly" and q.id not in asked]
    trained = {q.id for q in bundle.spec.questions}
    missing = pairs_missing(questions, pairs_per_question)  # a bad --pairs fails here, before the slow part
    log(f"evaluating {bundle.model_id} on {len(recordings)} recordings, {len(questions)} questions")
    pieces = recording_pieces(bundle.encoder, recordings, questions, 1, None, log)  # one per recording: part keys
    part_keys = frame_part_keys(pieces)
    # the bootstrap's unit: a part (its frames are near duplicates), a frame where there is none
    resamples = part_resamples([k or f"frame {i}" for i, k in enumerate(part_keys)])
    views = tracked_views(bundle, pieces, recordings, questions, log)
    data = LabelledSet(EncoderOutput.cat([p.tokens for p in pieces]), torch.cat([p.labels for p in pieces]),
                       [g for p in pieces for g in p.groups], list(questions), [s for p in pieces for s in p.sources])
    del pieces
    labels = data.labels.numpy()
    rendered = [j for j, q in enumerate(questions) if q.id not in missing]
    pos_frames, neg_frames, _ = render_pairs([questions[j] for j in rendered], pairs_per_question, pair_seed)
    log(f"rendered {len(pos_frames)} image pairs (seed {pair_seed})"
        + (f"; none for {', '.join(missing)}" if missing else ""))

    def encode(frames: list[np.ndarray]) -> EncoderOutput | None:
        return encode_images(bundle.encoder, frames)

    enc_pos, enc_neg = encode(pos_frames), encode(neg_frames)
    Q = len(questions)

    def pair_view(score: Callable[[EncoderOutput], np.ndarray], tokens: EncoderOutput | None) -> np.ndarray:
        return pair_scores(score, tokens, rendered, pairs_per_question, Q)

    def head_scores(head, tokens: EncoderOutput) -> np.ndarray:  # type: ignore[no-untyped-def]
        return without_memory_cols(lambda qs: torch.sigmoid(head_margins(head, tokens, qs)).numpy(), questions)

    def run_head(head, frames_tok, pos_tok, neg_tok, thresholds) -> Scored:  # type: ignore[no-untyped-def]
        score = lambda tok: head_scores(head, tok)  # noqa: E731
        return Scored(score(frames_tok), pair_view(score, pos_tok), pair_view(score, neg_tok), thresholds)

    head_thr = np.array([bundle.spec.thresholds.get(q.id, bundle.spec.default_threshold) for q in questions])
    scorers: dict[str, Scored] = {}
    log("scoring: MLLM head")
    scorers["mllm_head"] = run_head(bundle.head, data.tokens, enc_pos, enc_neg, head_thr)
    log("scoring: CLIP zero-shot")
    clip = lambda tok: without_memory_cols(lambda qs: bundle.clip.score(tok, qs).float().numpy(), questions)  # noqa: E731
    scorers["clip_zero_shot"] = Scored(clip(data.tokens), pair_view(clip, enc_pos), pair_view(clip, enc_neg), np.full(Q, 0.5))
    if bundle.probe is not None:
        log("scoring: CLIP linear probe")
        ids = [q.id for q in questions if q.id in bundle.probe.question_ids]

        def probe(tok: EncoderOutput) -> np.ndarray:
            full = np.full((len(tok), Q), np.nan, dtype=np.float32)
            p = bundle.probe.predict(tok.image_embeds).numpy()
            for j, q in enumerate(questions):
                if q.id in ids:
                    full[:, j] = p[:, bundle.probe.question_ids.index(q.id)]
            return full

        scorers["clip_linear_probe"] = Scored(probe(data.tokens), pair_view(probe, enc_pos), pair_view(probe, enc_neg),
                                              np.full(Q, 0.5))

    # frames, pair positives, pair negatives without position embeddings: encoded once, for every such ablation
    no_position: tuple[EncoderOutput, EncoderOutput | None, EncoderOutput | None] | None = None
    for variant, (head, head_thresholds) in ablation_heads.items():
        log(f"scoring: ablation {variant}")
        thr = np.array([float(head_thresholds.get(q.id, 0.5)) for q in questions])
        if variant in WITHOUT_ENCODER_POSITIONS:
            if no_position is None:
                with bundle.encoder.without_position_embeddings():
                    data_np = encode_recordings(bundle.encoder, recordings, questions, log=lambda m: None)
                    no_position = (data_np.tokens, encode(pos_frames), encode(neg_frames))
            scorers[f"ablation_{variant}"] = run_head(head, *no_position, thr)
        else:
            scorers[f"ablation_{variant}"] = run_head(head, data.tokens, enc_pos, enc_neg, thr)

    scorers.update(memory_scorer(bundle, data.tokens, questions, head_thr, log))
    read, part_keys, view_info = score_part_views(
        bundle, views, questions, scorers, part_keys,
        lambda tok: bundle.with_readout(head_scores(bundle.part_head, tok), tok, questions), clip, log)
    report: dict = {
        "bundle": str(bundle_path),
        "model_id": bundle.model_id,
        "recordings": [str(p) for p in recordings],
        "frames": int(len(labels)),
        "pair_seed": pair_seed,
        "pairs_per_question": pairs_per_question,
        "pairs_missing": missing,
        "questions": [q.model_dump(mode="json", exclude_none=True) | {"trained": q.id in trained} for q in questions],
        "scorers": {},
        "views": {**read, "pairs": "whole frame (rendered pairs have no tracked box)"},
        **view_info,
    }
    for name, s in scorers.items():
        per_q = {}
        for j, q in enumerate(questions):
            if np.isnan(s.frames[:, j]).all():
                continue  # a probe has no answer to a question it never had labels for
            per_q[q.id] = question_metrics(s, labels, j)
            per_q[q.id]["auroc_frames_interval"] = frame_auroc_interval(s.frames[:, j], labels[:, j], resamples)
        report["scorers"][name] = {"per_question": per_q, "per_category": summarise(per_q, questions)}
    report["parts"], report["part_verdict"] = part_reports(bundle, questions, served_frames(scorers, questions),
                                                           labels, part_keys)
    report["targets"] = check_targets(report)
    report["wall_s"] = round(time.time() - t0, 1)
    with filled_on_success(out) as staging:
        (staging / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
        plot(report, scorers, labels, questions, staging)
        (staging / "report.md").write_text(markdown(report))
    log(f"report -> {out}")
    return report


def encode_images(encoder, frames: list[np.ndarray]) -> EncoderOutput | None:  # type: ignore[no-untyped-def]
    """The frames encoded 64 at a time; None for no frames."""
    if not frames:
        return None
    return EncoderOutput.cat([encoder.encode_frames(frames[i : i + 64]) for i in range(0, len(frames), 64)])


def memory_scorer(bundle, tokens: EncoderOutput, questions: Sequence[Question], thresholds: np.ndarray,  # type: ignore[no-untyped-def]
                  log: Log = print) -> dict[str, Scored]:
    """``{"anomaly_memory": its scores}``: the anomaly questions' columns, nan in the others; {} without anomaly questions."""
    cols = [j for j, q in enumerate(questions) if q.kind == "anomaly"]
    if not cols:
        return {}
    log("scoring: anomaly memory")
    frames = np.full((len(tokens), len(questions)), np.nan, dtype=np.float32)
    frames[:, cols] = served_scores(bundle, tokens, [questions[j] for j in cols])
    no_pairs = np.full((0, len(questions)), np.nan, dtype=np.float32)
    return {"anomaly_memory": Scored(frames, no_pairs, no_pairs, thresholds)}


def served_frames(scorers: dict[str, Scored], questions: Sequence[Question]) -> np.ndarray:
    """The frame scores the worker serves: the MLLM head's, the anomaly memory's for the anomaly questions."""
    served = scorers["mllm_head"].frames.copy()
    cols = [j for j, q in enumerate(questions) if q.kind == "anomaly"]
    if cols:
        served[:, cols] = scorers["anomaly_memory"].frames[:, cols]
    return served


def without_memory_cols(score: Callable[[list[Question]], np.ndarray], questions: Sequence[Question]) -> np.ndarray:
    """``score`` of the yes/no questions, (N, Q) with nan in the anomaly questions' columns (the memory answers those)."""
    asked = [j for j, q in enumerate(questions) if q.kind != "anomaly"]
    part = score([questions[j] for j in asked])
    full = np.full((part.shape[0], len(questions)), np.nan, dtype=np.float32)
    full[:, asked] = part
    return full


def pair_scores(score: Callable[[EncoderOutput], np.ndarray], tokens: EncoderOutput | None, rendered: Sequence[int],
                n: int, questions: int) -> np.ndarray:
    """(n, Q): question j's pairs scored on question j; nan in the columns of questions without pairs.

    ``tokens``: the pair images of the ``rendered`` questions (columns), ``n`` each, question-major.
    """
    view = np.full((n, questions), np.nan, dtype=np.float32)
    if tokens is not None:
        scores_all = score(tokens)
        for r, j in enumerate(rendered):
            view[:, j] = scores_all[r * n : (r + 1) * n, j]
    return view


def pairs_missing(questions: Sequence[Question], pairs_per_question: int) -> dict[str, str]:
    """question id -> why it has no rendered pairs (its pair accuracy is not measured, its AUROC is the frames' alone)."""
    if pairs_per_question < 0:
        raise ValueError(f"--pairs {pairs_per_question}: give 0 or more image pairs per question")
    if pairs_per_question == 0:
        return {q.id: "no pairs asked for (--pairs 0)" for q in questions}
    return {q.id: "an anomaly question: no property to render" if q.kind == "anomaly" else
            "the synthetic line's parts cannot show it" for q in questions if q.kind == "anomaly" or not renderable(q)}


def tracked_views(bundle, pieces: Sequence[LabelledSet], recordings: Sequence[str | Path],  # type: ignore[no-untyped-def]
                  questions: Sequence[Question], log: Log = print):
    """The part views of the frames the tracker boxes (``training.views.part_views``); None without a part view."""
    return None if bundle.part_head is None else part_views(bundle, pieces, recordings, questions, 1, None, log)


def score_part_views(bundle, views, questions: Sequence[Question], scorers: dict[str, Scored],  # type: ignore[no-untyped-def]
                     keys: Sequence[str | None], part_head: Callable, clip: Callable,
                     log: Log = print) -> tuple[dict[str, str], list, dict]:
    """With part ``views``, the tracked frames' MLLM head and CLIP zero-shot scores from both views, in place in ``scorers``.

    Returns what each scorer read, the frames' part keys (None where the tracker boxed no part),
    and the report's ``part_view`` entry: margin, tracked frames and weights (no entry without ``views``).
    """
    from model.bundle import combine_views

    read = {name: "whole frame" for name in scorers}
    if views is None:
        return read, list(keys), {}
    log(f"scoring: the part views of {len(views)} tracked frames (MLLM part head, CLIP zero-shot)")
    both = "whole frame; on tracked frames also the part view"
    rows = views.rows
    head = scorers["mllm_head"].frames
    head[rows] = combine_views(head[rows], part_head(views.data.tokens), bundle.part_view_weights(questions))
    zero_shot = scorers["clip_zero_shot"].frames
    zero_shot[rows] = combine_views(zero_shot[rows], clip(views.data.tokens), 0.5)
    readout = " and part readout, mixed by spec.part_view.readout_weights" if bundle.part_readout is not None else ""
    read.update(mllm_head=f"{both} (part head{readout}; log-odds mixed by spec.part_view.weights)",
                clip_zero_shot=f"{both} (log-odds mixed 50/50)")
    tracked = np.zeros(len(keys), dtype=bool)
    tracked[rows] = True
    info = {"margin": bundle.spec.part_view.margin, "tracked_frames": len(views), "frames": len(keys),
            "weights": dict(zip([q.id for q in questions], map(float, bundle.part_view_weights(questions))))}
    if bundle.part_readout is not None:
        info["readout_weights"] = dict(zip([q.id for q in questions], map(float, bundle.readout_weights(questions))))
    return read, [k if t else None for k, t in zip(keys, tracked)], {"part_view": info}


def part_reports(bundle, questions: Sequence[Question], frame_scores: np.ndarray, labels: np.ndarray,  # type: ignore[no-untyped-def]
                 keys: Sequence[str | None]) -> tuple[dict, dict]:
    """The per-part report at the bundle's part thresholds, and how it was made (with part AUROC per question)."""
    cols = [j for j, q in enumerate(questions) if q.category != QuestionCategory.relation]
    part_questions = [questions[j] for j in cols]
    qids = [q.id for q in part_questions]
    types = {q.id: q.defect_type for q in part_questions}
    table = group_parts(frame_scores[:, cols], keys, labels[:, cols], qids, bundle.part_aggregate)
    thresholds = dict(zip(qids, map(float, bundle.part_thresholds_for(part_questions))))
    report = part_report(table, thresholds, types)
    flagged = table.scores >= np.array([thresholds[q] for q in qids])[None, :]
    good = ~table.defective
    in_part = np.array([k is not None for k in keys], dtype=bool)
    per_question = {}
    for j, qid in enumerate(qids):
        own = table.labels[:, j] == 1
        keep = table.labels[:, j] >= 0
        frames = labels[in_part, cols[j]]
        per_question[qid] = {
            "threshold": thresholds[qid],
            "part_auroc": reportable(auroc(table.scores[keep, j], table.labels[keep, j])),
            "frame_auroc": reportable(auroc(frame_scores[in_part, cols[j]][frames >= 0], frames[frames >= 0])),
            "defective": int(own.sum()), "caught": int((own & flagged[:, j]).sum()),
            "good_flagged": int((good & flagged[:, j]).sum()),
        }
    parts = bundle.spec.parts
    detail = {
        "aggregate": bundle.part_aggregate,
        "calibrated": parts is not None,
        "max_false_alarm_rate": parts.max_false_alarm_rate if parts is not None else None,
        "frames": int(table.frames.sum()),
        "frames_per_part": round(float(table.frames.mean()), 1) if len(table) else None,
        "per_question": per_question,
    }
    return report, detail


def _part_targets(report: dict) -> dict:
    """Issue 31's per-part targets: detection rate >= 0.95 with a false-alarm rate <= 0.02 (not met unless measured)."""
    overall = (report.get("parts") or {}).get("overall")
    out = {}
    for name, key, at_most in (("part_detection_rate", "detection_rate", False),
                               ("part_false_alarm_rate", "false_alarm_rate", True)):
        value, target = (overall or {}).get(key), TARGETS[name]
        row = {"value": value, "target": target, "at_most": at_most,
               "met": value is not None and (value <= target if at_most else value >= target)}
        if overall is None:
            row["note"] = "not measured (no per-part report)"
        elif value is None:
            row["note"] = "no defective parts" if key == "detection_rate" else "no good parts"
        out[name] = row
    return out


def check_targets(report: dict) -> dict:
    head = report["scorers"]["mllm_head"]["per_category"]
    checks = {
        "spatial_pair_accuracy": (head.get("spatial", {}).get("pair_accuracy", float("nan")), TARGETS["spatial_pair_accuracy"]),
        "overall_pair_accuracy": (head.get("overall", {}).get("pair_accuracy", float("nan")), TARGETS["overall_pair_accuracy"]),
        "fine_detail_auroc": (head.get("fine_detail", {}).get("auroc", float("nan")), TARGETS["fine_detail_auroc"]),
    }
    out = {k: {"value": v, "target": t, "met": bool(v >= t)} for k, (v, t) in checks.items()}
    for row in out.values():
        if math.isnan(row["value"]):  # e.g. no rendered pairs, or no question of the category
            row["note"] = "not measured"
    full = head.get("overall", {}).get("pair_accuracy", float("nan"))
    ablations = [name for name in report["scorers"] if name.startswith("ablation_")]
    for name in ablations:
        v = report["scorers"][name]["per_category"].get("overall", {}).get("pair_accuracy", float("nan"))
        out[f"{name}_below_full"] = {"value": v, "target": full, "met": bool(v < full)}
    if not ablations:  # a target that was not measured is not met
        out["ablations_below_full"] = {"value": None, "target": full, "met": False, "note": "not measured (no --ablations)"}
    out.update(_part_targets(report))
    return out


# --- Output -------------------------------------------------------------------------------

LABELS = {
    "clip_zero_shot": "CLIP zero-shot", "clip_linear_probe": "CLIP linear probe", "mllm_head": "MLLM head",
    "ablation_cls_only": "head: CLS only", "ablation_no_position": "head: no position emb.",
    "ablation_no_position_at_all": "head: no positions at all",
    "ablation_question_blind": "head: question-blind pooling",
    "anomaly_memory": "anomaly memory (good parts only)",
}


def _pct(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _auc(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def markdown(report: dict) -> str:
    sc = report["scorers"]
    main = [k for k in ("clip_zero_shot", "clip_linear_probe", "mllm_head", "anomaly_memory") if k in sc]
    abl = [k for k in sc if k.startswith("ablation_")]
    cats = ["fine_detail", "spatial", "counting", "overall", "relation"]
    lines = [
        f"# Evaluation of `{report['model_id']}`",
        "",
        f"Held-out data: {report['frames']} frames from {len(report['recordings'])} recordings; "
        f"{report['pairs_per_question']} image pairs per question (seed {report['pair_seed']}). "
        "Accuracy and balanced accuracy are per frame at the scorer's threshold; AUROC pools frames and pair images; "
        "pair accuracy counts a pair correct only if both images are answered correctly. "
        "`overall` averages the fine-detail, spatial and counting questions; `relation` questions were never "
        "stated by a caption nor trained on.",
        *pair_lines(report),
        *view_lines(report),
        "",
        "## Per category",
        "",
        "| category | scorer | accuracy | balanced acc. | pair acc. | AUROC |",
        "|---|---|---|---|---|---|",
    ]
    for c in cats:
        for k in main:
            m = sc[k]["per_category"].get(c)
            if m:
                lines.append(f"| {c} | {LABELS[k]} | {_pct(m['accuracy'])} | {_pct(m['balanced_accuracy'])} | "
                             f"{_pct(m['pair_accuracy'])} | {_auc(m['auroc'])} |")
    if abl:
        lines += ["", "## Ablations (the paper's decomposition)", "",
                  "| category | head | pair acc. | AUROC | balanced acc. |", "|---|---|---|---|---|"]
        for c in cats:
            for k in ["mllm_head"] + abl:
                m = sc[k]["per_category"].get(c)
                if m:
                    lines.append(f"| {c} | {LABELS.get(k, k)} | {_pct(m['pair_accuracy'])} | {_auc(m['auroc'])} | "
                                 f"{_pct(m['balanced_accuracy'])} |")
    lines += ["", "## Per question", "",
              "| question | category | scorer | threshold | accuracy | balanced acc. | pair acc. | AUROC | positives/frames |",
              "|---|---|---|---|---|---|---|---|---|"]
    cat_of = {q["id"]: q["category"] for q in report["questions"]}
    for q in report["questions"]:
        for k in main + abl:
            m = sc[k]["per_question"].get(q["id"])
            if m:
                lines.append(f"| {q['id']} | {cat_of[q['id']]} | {LABELS.get(k, k)} | {m['threshold']:.3f} | "
                             f"{_pct(m['accuracy'])} | {_pct(m['balanced_accuracy'])} | {_pct(m['pair_accuracy'])} | "
                             f"{_auc(m['auroc'])} | {m['positives']}/{m['frames']} |")
    lines += ["", "## Frame AUROC with its 95% interval (1000 bootstrap draws of the parts)", "",
              "| question | scorer | frame AUROC | 95% interval |", "|---|---|---|---|"]
    for q in report["questions"]:
        for k in main + abl:
            m = sc[k]["per_question"].get(q["id"])
            if m:
                span = m.get("auroc_frames_interval")
                shown = "n/a" if span is None else f"{span[0]:.3f}-{span[1]:.3f}"
                lines.append(f"| {q['id']} | {LABELS.get(k, k)} | {_auc(m['auroc_frames'])} | {shown} |")
    lines += part_markdown(report)
    lines += ["", "## Targets (MLLM head)", "", "| target | value | required | met |", "|---|---|---|---|"]
    for name, t in report["targets"].items():
        fmt = _auc if "auroc" in name else _pct
        met = "yes" if t["met"] else f"**no**: {t['note']}" if t.get("note") else "**no**"
        required = f"at most {fmt(t['target'])}" if t.get("at_most") else fmt(t["target"])
        lines.append(f"| {name} | {fmt(t['value'])} | {required} | {met} |")
    lines += ["", "Plots: `roc.png` (ROC per category), `categories.png` (pair accuracy and AUROC per category).", ""]
    return "\n".join(lines)


def pair_lines(report: dict) -> list[str]:
    """Which questions have no rendered pairs, and why (nothing when every question has them)."""
    missing = report.get("pairs_missing") or {}
    if not missing:
        return []
    by_reason: dict[str, list[str]] = {}
    for qid, reason in missing.items():
        by_reason.setdefault(reason, []).append(f"`{qid}`")
    said = "; ".join(f"{', '.join(ids)}: {reason}" for reason, ids in by_reason.items())
    return ["", f"No rendered pairs for {said}. Their pair accuracy is n/a and their AUROC is the frames' alone."]


def view_lines(report: dict) -> list[str]:
    """What each scorer read, for a bundle with a part view (nothing otherwise: every scorer read the whole frame)."""
    info = report.get("part_view")
    if info is None:
        return []
    weights = ", ".join(f"{q} {w:g}" for q, w in info["weights"].items())
    read = "; ".join(f"{LABELS.get(k, k)}: {v}" for k, v in report["views"].items())
    return ["", f"Part view: the tracker boxed a part on {info['tracked_frames']} of {info['frames']} frames; there "
            f"the part (margin {info['margin']:g}) was read too. Views read: {read}. The part view's share of each "
            f"question's log-odds (MLLM head): {weights}. Per part, only the tracked frames count, as the worker "
            "serves the bundle."]


def part_markdown(report: dict) -> list[str]:
    """The per-part tables: the report by defect type, then thresholds and AUROC per question."""
    parts, detail = report.get("parts"), report.get("part_verdict")
    if parts is None or detail is None:
        return []
    how = (f"part thresholds calibrated for a false-alarm budget of {_pct(detail['max_false_alarm_rate'])}% of good parts"
           if detail["calibrated"] else "no part thresholds in the bundle: its frame thresholds stand in for them")
    lines = ["", "## Per part (MLLM head)", "",
             f"The frames that show a part ({detail['frames']}, {detail['frames_per_part']} per part) become one verdict "
             f"per part and question: the `{detail['aggregate']}` of the part's frame scores against the part threshold "
             f"({how}). A defective part is caught when a question of its defect type flags it; a good part counts as "
             "flagged when any question flags it; wrong defect: defective parts flagged only for defects they do not "
             "have (counted as missed).", "",
             "| defect type | parts | defective | caught | missed | detection rate | good | flagged | false-alarm rate "
             "| wrong defect |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in [("**all**", parts["overall"]), *parts["by_defect_type"].items()]:
        lines.append(f"| {name} | {r['parts']} | {r['defective']} | {r['caught']} | {r['missed']} | "
                     f"{_pct(r['detection_rate'])} | {r['good']} | {r['flagged']} | {_pct(r['false_alarm_rate'])} | "
                     f"{r['wrong_defect']} |")
    lines += ["", "| question | part threshold | part AUROC | frame AUROC (part frames) | caught / defective "
              "| good parts flagged |", "|---|---|---|---|---|---|"]
    for qid, q in detail["per_question"].items():
        lines.append(f"| {qid} | {q['threshold']:.3f} | {_auc(q['part_auroc'])} | {_auc(q['frame_auroc'])} | "
                     f"{q['caught']}/{q['defective']} | {q['good_flagged']} |")
    return lines


def plot(report: dict, scorers: dict[str, Scored], labels: np.ndarray, questions: Sequence[Question], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = [c for c in ["fine_detail", "spatial", "counting", "relation"] if any(q.category.value == c for q in questions)]
    fig, axes = plt.subplots(1, len(cats), figsize=(4.2 * len(cats), 4), squeeze=False)
    for ax, c in zip(axes[0], cats):
        cols = [j for j, q in enumerate(questions) if q.category.value == c]
        for name, s in scorers.items():
            sc, ys = [], []
            for j in cols:
                if np.isnan(s.frames[:, j]).all():
                    continue
                keep = labels[:, j] >= 0
                pos, neg = s.pairs_pos[:, j], s.pairs_neg[:, j]
                pos, neg = pos[~np.isnan(pos)], neg[~np.isnan(neg)]
                sc += [s.frames[keep, j], pos, neg]
                ys += [labels[keep, j], np.ones(len(pos)), np.zeros(len(neg))]
            if not sc:
                continue
            fpr, tpr = roc_curve(np.concatenate(sc), np.concatenate(ys))
            auc = report["scorers"][name]["per_category"].get(c, {}).get("auroc", float("nan"))
            ax.plot(fpr, tpr, label=f"{LABELS.get(name, name)} ({_auc(auc)})", linestyle="-" if not name.startswith("ablation") else ":")
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.5)
        ax.set_title(c.replace("_", " "))
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=110)
    plt.close(fig)

    cats = ["fine_detail", "spatial", "counting", "relation", "overall"]
    names = list(report["scorers"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.8 / len(names)
    for k, metric in enumerate(("pair_accuracy", "auroc")):
        ax = axes[k]
        for i, name in enumerate(names):
            vals = [report["scorers"][name]["per_category"].get(c, {}).get(metric, float("nan")) for c in cats]
            ax.bar(np.arange(len(cats)) + i * width, [0 if math.isnan(v) else v for v in vals], width, label=LABELS.get(name, name))
        ax.set_xticks(np.arange(len(cats)) + width * (len(names) - 1) / 2)
        ax.set_xticklabels([c.replace("_", "\n") for c in cats])
        ax.set_ylim(0, 1.02)
        ax.set_title(metric.replace("_", " "))
        if k == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "categories.png", dpi=110)
    plt.close(fig)
