"""Measure per-part verdicts: which part aggregate to use, and what a false-alarm budget per part buys.

For every part aggregate of ``schemas.part`` (mean, top3, noisy_or), on labelled recordings
(``patchsight synth`` output, or recordings labelled with ``patchsight label``), it reports:

* frame AUROC per question: over every labelled frame (empty belt included), and over the
  frames that show a part (the frames the part scores are made of);
* part AUROC per question: each part's aggregate score against its truth (defective for the
  question if any of its frames answers it yes);
* the per-part report (``training.parts.part_report``) at part thresholds that
  ``training.parts.budgeted_thresholds`` chooses on the CALIBRATION recordings for the budget
  (default ``AlertPolicy.max_false_alarm_rate``, 0.02): on the calibration recordings themselves
  (in-sample: the budget holds there by construction), cross-validated by recording set on them
  (thresholds chosen on the other sets, applied to the held-out set, counts summed: an honest
  estimate from calibration data alone, and the basis for choosing the aggregate), and applied
  unchanged to the HELD-OUT recordings. Held-out recordings are measured, never used to choose.

For reference it also reports per-question independent thresholds at the same budget
(``independent_thresholds``), and today's per-frame rule: the bundle's frame thresholds with
the alert policy's k-of-n debounce over the part's frames (a part flagged for a question when
k of n consecutive frames of it are over the threshold).

Parts are keyed by recording and the truth's part id (each camera sees its own parts).
Frames are encoded once per recording and cached (``--cache-dir``); the head scores every
frame with ``bundle.score_encoded`` (the slow part on a CPU: about 16 frames/s on 2 cores), and
``--scores-dir`` keeps those scores, so that a rerun at another budget takes seconds.

Example (the recordings of issue 31's measurement)::

    .venv/bin/python scripts/measure_parts.py \\
        --calib /work/runs-parts/calib-s50{1..8} --heldout /work/runs-parts/heldout-s100{1..8} \\
        --heldout-subset heldout-s1001 heldout-s1002 \\
        --cache-dir /work/runs-parts/cache --scores-dir /work/runs-parts/scores \\
        --out /work/runs-parts/measure.json

Prints markdown tables; ``--out`` keeps every number as JSON.

``patchsight model calibrate`` does the one choice a bundle needs (one aggregate's part thresholds
for the budget, stored in bundle.json) and ``patchsight model eval`` reports per part at them; this
script is the measurement behind those defaults: every aggregate side by side, the reference rules,
calibration and held-out recordings in one run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ingest.recording import find_recordings  # noqa: E402
from schemas.config import AlertPolicy, QuestionCategory  # noqa: E402
from schemas.part import PART_AGGREGATES  # noqa: E402
from training.parts import (  # noqa: E402
    PartTable,
    aggregate_parts,
    budgeted_thresholds,
    cross_validate,
    independent_thresholds,
    part_report,
    report_from_matrices,
)


def _finetune():  # type: ignore[no-untyped-def]
    """training.data (torch, cv2), imported when first needed so that ``--help`` is quick."""
    import training.data as module

    return module


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """training.metrics.auroc (torch), imported when first needed."""
    from training.metrics import auroc

    return auroc(scores, labels)


# --- data ---------------------------------------------------------------------------------------


class Scored:
    """Every labelled frame of some recording sets, scored: scores and labels (N, Q), part keys, set names."""

    def __init__(self, scores: np.ndarray, labels: np.ndarray, keys: list[str | None], sets: list[str]) -> None:
        self.scores, self.labels, self.keys, self.sets = scores, labels, keys, sets


def _scores_file(scores_dir: str, bundle_dir: str, rec: Path, qids: list[str], stride: int) -> Path:
    """Where one recording's frame scores are kept: keyed by the bundle's spec and weights, the recording, questions, stride."""
    bundle_files = sorted(p for p in Path(bundle_dir).rglob("*") if p.is_file())
    key = json.dumps({"bundle": [(str(p.relative_to(bundle_dir)), p.stat().st_size, p.stat().st_mtime_ns) for p in bundle_files],
                      "bundle_json": hashlib.sha256((Path(bundle_dir) / "bundle.json").read_bytes()).hexdigest(),
                      "recording": str(rec.resolve()), "size": (rec / "frames.bin").stat().st_size,
                      "questions": qids, "stride": stride}, sort_keys=True)
    return Path(scores_dir) / f"scores-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def score_sets(bundle, bundle_dir: str, questions, paths: list[str], stride: int, cache_dir: str | None,  # type: ignore[no-untyped-def]
               scores_dir: str | None, log) -> Scored:
    """Encode (cached) and score the recordings under each path; a path is one recording set (e.g. one seed).

    With ``scores_dir``, each recording's frame scores, labels and groups are kept there too, so a
    rerun (another budget, another report) needs neither the encoder nor the head.
    """
    scores, labels, keys, sets = [], [], [], []
    qids = [q.id for q in questions]
    for path in paths:
        name = Path(path).name
        for rec in find_recordings([path]):
            kept = _scores_file(scores_dir, bundle_dir, rec, qids, stride) if scores_dir else None
            if kept is not None and kept.is_file():
                saved = np.load(kept)
                rec_scores, rec_labels, groups = saved["scores"], saved["labels"], saved["groups"].tolist()
            else:
                rec_scores, rec_labels, groups = np.zeros((0, len(qids))), np.zeros((0, len(qids))), []
                for piece in _finetune().cached_pieces(bundle.encoder, [rec], questions, stride, cache_dir, log=log):
                    rec_scores = np.concatenate([rec_scores] + [
                        bundle.score_encoded(piece.tokens.select(slice(start, start + 64)), questions)
                        for start in range(0, len(piece), 64)])
                    rec_labels = np.concatenate([rec_labels, piece.labels.numpy()])
                    groups += list(piece.groups)
                if kept is not None:
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    partial = kept.with_suffix(f".{os.getpid()}.partial.npz")
                    np.savez(partial, scores=rec_scores, labels=rec_labels, groups=np.array(groups, dtype=str))
                    partial.replace(kept)
            scores.append(np.asarray(rec_scores, dtype=np.float64))
            labels.append(np.asarray(rec_labels))
            keys += [f"{rec}|{g}" if "#part" in g else None for g in groups]
            sets += [name] * len(groups)
        log(f"scored {path}: {sum(1 for s in sets if s == name)} frames")
    return Scored(np.concatenate(scores), np.concatenate(labels), keys, sets)


def part_sets(table: PartTable, frames: Scored) -> np.ndarray:
    """The recording set of each part."""
    set_of = {k: s for k, s in zip(frames.keys, frames.sets) if k is not None}
    return np.array([set_of[k] for k in table.keys])


def k_of_n_flags(frames: Scored, table: PartTable, thresholds: np.ndarray, k: int, n: int) -> np.ndarray:
    """(P, Q): k of n consecutive frames of the part at or over the question's frame threshold."""
    rows: dict[str, list[int]] = {}
    for i, key in enumerate(frames.keys):
        if key is not None:
            rows.setdefault(key, []).append(i)
    out = np.zeros(table.scores.shape, dtype=bool)
    for p, key in enumerate(table.keys):
        over = frames.scores[rows[key]] >= thresholds[None, :]  # (F, Q), frames in recording order
        window = min(n, len(over))
        need = min(k, window)
        csum = np.concatenate([np.zeros((1, over.shape[1])), np.cumsum(over, axis=0)])
        counts = csum[window:] - csum[:-window]
        out[p] = (counts >= need).any(axis=0)
    return out


# --- metrics ------------------------------------------------------------------------------------


def _auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    keep = labels >= 0
    value = _auroc(scores[keep], labels[keep])
    return None if math.isnan(value) else round(float(value), 4)


def frame_aurocs(frames: Scored, qids: list[str]) -> dict:
    in_part = np.array([k is not None for k in frames.keys])
    return {q: {"all_frames": _auc(frames.scores[:, j], frames.labels[:, j]),
                "part_frames": _auc(frames.scores[in_part, j], frames.labels[in_part, j])} for j, q in enumerate(qids)}


def part_aurocs(table: PartTable) -> dict:
    return {q: _auc(table.scores[:, j], table.labels[:, j].astype(float)) for j, q in enumerate(table.question_ids)}


def _mean(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return round(float(np.mean(v)), 4) if v else None


def by_set(table: PartTable, sets: np.ndarray, thresholds: dict, types: dict) -> dict:
    return {s: part_report(table.subset(sets == s), thresholds, types) for s in dict.fromkeys(sets.tolist())}


# --- output -------------------------------------------------------------------------------------


def _f(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _row(label: str, r: dict) -> str:
    o = r["overall"]
    return (f"| {label} | {_pct(o['detection_rate'])} ({o['caught']}/{o['defective']}) | "
            f"{_pct(o['false_alarm_rate'])} ({o['flagged']}/{o['good']}) | {o['wrong_defect']} |")


def markdown(result: dict) -> str:
    methods = result["methods"]
    qids = result["questions"]
    budget = result["budget"]
    out = [f"# Per-part measurement of `{result['model_id']}` (budget {budget:.0%} of good parts)", ""]
    for name in ("calibration", "heldout"):
        d = result["data"][name]
        out.append(f"- {name}: {d['frames']} frames, {d['parts']} parts ({d['defective']} defective, "
                   f"{d['good']} good), sets: {', '.join(d['sets'])}")
    out += ["", "## AUROC per question: frames vs parts", "",
            "Frame AUROC over frames that show a part (over every labelled frame in brackets); part AUROC per aggregate.", ""]
    head = "| question | cal frame | " + " | ".join(f"cal {m}" for m in methods) + " | held-out frame | " + \
        " | ".join(f"held-out {m}" for m in methods) + " |"
    out += [head, "|" + "---|" * (2 + 2 * len(methods) + 1)]
    for q in qids + ["mean"]:
        cells = []
        for name in ("calibration", "heldout"):
            f = result["frame_auroc"][name]
            if q == "mean":
                cells.append(f"{_f(_mean([f[x]['part_frames'] for x in qids]))} ({_f(_mean([f[x]['all_frames'] for x in qids]))})")
                cells += [_f(_mean([result["per_method"][m]["part_auroc"][name][x] for x in qids])) for m in methods]
            else:
                cells.append(f"{_f(f[q]['part_frames'])} ({_f(f[q]['all_frames'])})")
                cells += [_f(result["per_method"][m]["part_auroc"][name][q]) for m in methods]
        out.append(f"| {q} | " + " | ".join(cells) + " |")
    out += ["", f"## Per part at thresholds chosen on the calibration recordings for {budget:.0%}", "",
            "Detection = caught/defective parts; false alarms = flagged/good parts; wrong defect = defective parts "
            "flagged only for defects they do not have (counted as missed).", "",
            "| aggregate / data | detection | false alarms | wrong defect |", "|---|---|---|---|"]
    for m in methods:
        pm = result["per_method"][m]
        out.append(_row(f"{m}: calibration (in-sample)", pm["budgeted"]["calibration"]))
        out.append(_row(f"{m}: calibration, cross-validated by set", pm["budgeted"]["calibration_cv"]))
        out.append(_row(f"{m}: held-out", pm["budgeted"]["heldout"]))
        if "heldout_subset" in pm["budgeted"]:
            out.append(_row(f"{m}: held-out {'+'.join(result['heldout_subset'])}", pm["budgeted"]["heldout_subset"]))
    out += ["", "Reference rules on the same parts:", "", "| rule / data | detection | false alarms | wrong defect |",
            "|---|---|---|---|"]
    for m in methods:
        pm = result["per_method"][m]
        out.append(_row(f"{m}, independent per-question thresholds: calibration", pm["independent"]["calibration"]))
        out.append(_row(f"{m}, independent per-question thresholds: held-out", pm["independent"]["heldout"]))
    kofn = result["frame_rule"]
    out.append(_row(f"frame thresholds + {kofn['k']}-of-{kofn['n']}: calibration", kofn["calibration"]))
    out.append(_row(f"frame thresholds + {kofn['k']}-of-{kofn['n']}: held-out", kofn["heldout"]))
    rec = result["recommended"]
    out += ["", f"## Recommended from the calibration recordings: `{rec['method']}`", "", rec["why"], "",
            f"Thresholds ({rec['method']}, chosen on all calibration recordings):", "",
            "| question | threshold | cal detection | held-out detection | held-out flagged good |", "|---|---|---|---|---|"]
    pm = result["per_method"][rec["method"]]
    for q in qids:
        pq = pm["budgeted"]["choice"]["per_question"][q]
        held = pm["budgeted"]["heldout"]["by_defect_type"].get(q, {})
        out.append(f"| {q} | {pq['threshold']:.4f} | {_pct(pq['detection_rate'])} ({pq['caught']}/{pq['defective']}) | "
                   f"{_pct(held.get('detection_rate'))} ({held.get('caught')}/{held.get('defective')}) | "
                   f"{held.get('flagged')} |")
    return "\n".join(out) + "\n"


# --- the measurement ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--bundle", default=str(ROOT / "models" / "default"), help="model bundle (default: models/default)")
    parser.add_argument("--calib", nargs="+", required=True,
                        help="calibration recording sets (folders of recordings, e.g. one synth seed each): "
                        "thresholds and the aggregate are chosen here")
    parser.add_argument("--heldout", nargs="+", required=True, help="held-out recording sets: only measured")
    parser.add_argument("--heldout-subset", nargs="*", default=[],
                        help="names of held-out sets (folder names) also reported together, e.g. heldout-s1001 heldout-s1002")
    parser.add_argument("--budget", type=float, default=AlertPolicy().max_false_alarm_rate,
                        help="max share of good parts flagged by any question (default: the alert policy's, %(default)s)")
    parser.add_argument("--methods", nargs="+", default=list(PART_AGGREGATES), choices=list(PART_AGGREGATES))
    parser.add_argument("--cache-dir", default=None, help="keep each recording's encoding here (reruns skip the encoder)")
    parser.add_argument("--scores-dir", default=None,
                        help="keep each recording's frame scores here (reruns skip the encoder and the head)")
    parser.add_argument("--stride", type=int, default=1, help="use every n-th labelled frame")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default=None, help="write every number here as JSON")
    args = parser.parse_args(argv)

    import torch

    from model.bundle import load_bundle

    torch.set_num_threads(args.threads)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.0f}s] {msg}", file=sys.stderr, flush=True)

    bundle = load_bundle(args.bundle, device="cpu", dtype=torch.float32)
    questions = [q for q in bundle.spec.questions if q.category != QuestionCategory.relation]
    qids = [q.id for q in questions]
    types = {q.id: q.defect_type for q in questions}
    log(f"{bundle.model_id}: {len(qids)} questions")
    frames = {name: score_sets(bundle, args.bundle, questions, paths, args.stride, args.cache_dir, args.scores_dir, log)
              for name, paths in (("calibration", args.calib), ("heldout", args.heldout))}
    tables = {name: aggregate_parts(f.scores, f.keys, f.labels, qids, args.methods) for name, f in frames.items()}
    sets = {name: part_sets(tables[name][args.methods[0]], frames[name]) for name in frames}
    subset = np.isin(sets["heldout"], args.heldout_subset) if args.heldout_subset else None

    result: dict = {
        "bundle": args.bundle, "model_id": bundle.model_id, "budget": args.budget, "methods": args.methods,
        "questions": qids, "heldout_subset": args.heldout_subset,
        "data": {}, "frame_auroc": {}, "per_method": {},
    }
    for name, f in frames.items():
        t = tables[name][args.methods[0]]
        result["data"][name] = {"sets": list(dict.fromkeys(f.sets)), "frames": int(len(f.keys)),
                                "part_frames": int(sum(k is not None for k in f.keys)), "parts": len(t),
                                "defective": int(t.defective.sum()), "good": int((~t.defective).sum()),
                                "frames_per_part": round(float(t.frames.mean()), 1) if len(t) else None}
        result["frame_auroc"][name] = frame_aurocs(f, qids)

    for m in args.methods:
        cal, held = tables["calibration"][m], tables["heldout"][m]
        chosen = budgeted_thresholds(cal.scores, cal.labels, args.budget, qids, types)
        indep = independent_thresholds(cal.scores, cal.labels, args.budget, qids, types)
        log(f"{m}: thresholds chosen ({chosen.search})")
        budgeted = {
            "choice": chosen.as_dict(),
            "calibration": chosen.report,
            "calibration_cv": cross_validate(cal, sets["calibration"], args.budget, types),
            "heldout": part_report(held, chosen.thresholds, types),
            "heldout_by_set": by_set(held, sets["heldout"], chosen.thresholds, types),
        }
        if subset is not None:
            budgeted["heldout_subset"] = part_report(held.subset(subset), chosen.thresholds, types)
        result["per_method"][m] = {
            "part_auroc": {"calibration": part_aurocs(cal), "heldout": part_aurocs(held)},
            "budgeted": budgeted,
            "independent": {"thresholds": indep.thresholds, "calibration": indep.report,
                            "heldout": part_report(held, indep.thresholds, types)},
        }

    # today's rule, for reference: the bundle's frame thresholds and the k-of-n debounce over a part's frames
    policy = AlertPolicy()
    frame_thr = bundle.thresholds_for(questions)
    result["frame_rule"] = {"k": policy.k, "n": policy.n, "thresholds": dict(zip(qids, map(float, frame_thr)))}
    for name, f in frames.items():
        t = tables[name][args.methods[0]]
        result["frame_rule"][name] = report_from_matrices(
            t.labels == 1, k_of_n_flags(f, t, frame_thr, policy.k, policy.n), qids, types)

    # the aggregate, from calibration data alone: the best cross-validated detection rate among those
    # whose cross-validated false-alarm rate is within twice the budget, then the best mean part AUROC
    def key(m: str) -> tuple:
        cv = result["per_method"][m]["budgeted"]["calibration_cv"]["overall"]
        within = (cv["false_alarm_rate"] or 0.0) <= 2 * args.budget
        auc = _mean(list(result["per_method"][m]["part_auroc"]["calibration"].values())) or 0.0
        return (within, cv["detection_rate"] or 0.0, auc)

    best = max(args.methods, key=key)
    cv = result["per_method"][best]["budgeted"]["calibration_cv"]["overall"]
    result["recommended"] = {
        "method": best,
        "why": (f"highest detection rate when the thresholds are chosen on the other calibration sets and applied "
                f"to the remaining one ({_pct(cv['detection_rate'])}, false alarms {_pct(cv['false_alarm_rate'])}), "
                f"with the false-alarm rate within twice the budget; ties by mean part AUROC on the calibration data. "
                f"Chosen from calibration recordings only."),
    }
    result["wall_s"] = round(time.time() - t0, 1)
    text = markdown(result)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**result, "markdown": text}, indent=2, allow_nan=False) + "\n")
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
