"""Does a cheaper decoding path move the model's scores? The worker's own paths, one against another.

    python bench/decode_scores.py --data DIR [DIR ...] [--compare reduced|batch] [--device cpu|cuda]
        [--bundle models/default] [--out FILE]

For every recording under ``--data`` (labelled, as ``patchsight synth`` writes them), each frame goes
through the worker's ``ModelRunner`` as a tracking camera's frame does, in recording order: decode,
the part tracker, the part view, the batch's squares normalised, the encoder and every question of
the synthetic catalog. Twice, by two decoding paths (``--compare``):

* ``reduced`` (default): the full-size JPEG against the reduced one (``inference.reduced_decode``),
  both by the decode threads (``decode_jpeg``: simplejpeg, OpenCV's pixels).
* ``batch``: the decode threads (reduced) against ``ModelRunner.decode_batch``, the path a
  worker takes on CUDA (``inference.gpu_jpeg_decode``): one ``decode_jpeg`` call a batch, the square
  resized and cropped by torch. With ``--device cpu`` (the default) torchvision's CPU decoder stands
  in for nvJPEG, which checks everything of that path but the GPU's own decoder; with ``--device
  cuda`` it is nvJPEG.

Reported (the names say which path: ``full``/``reduced``, or ``pool``/``batch``): how many frames each path scores (a frame without a part in the zone is not scored) and on
how many they disagree about the part, the score differences on frames both score, per question
the AUROC of each path against the recording's labels on those frames, and the alert decision: each
part's aggregate score (the bundle's ``part_aggregate``) against the bundle's part threshold, and on
how many parts the two paths decide differently. Writes bench/results/decode_scores.json by default.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

# bench/ingest.py would shadow the ingest package: import from the repository root instead
REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from inference.jpeg_batch import BatchJpegDecoder  # noqa: E402
from inference.runner import ModelRunner  # noqa: E402
from ingest.recording import Recording, find_recordings  # noqa: E402
from ingest.synth import ALERT_QUESTIONS  # noqa: E402
from model.bundle import load_bundle  # noqa: E402
from schemas.config import validate_config  # noqa: E402
from schemas.frame import FrameMessage, FrameMode  # noqa: E402
from schemas.part import aggregate_scores  # noqa: E402
from training.metrics import auroc  # noqa: E402

BATCH = 8


def score_recording(runner: ModelRunner, rec: Recording) -> dict[int, tuple[np.ndarray, str, int]]:
    """seq -> (scores, part id, box's longer side) of every frame the runner scores, in recording order, batches of ``BATCH``.

    A runner with a ``batch_decoder`` decodes ``BATCH`` frames at a time with it (``decode_batch``), as
    the model thread does on CUDA; otherwise frame by frame (``decode``), as the decode threads do."""
    out: dict[int, tuple[np.ndarray, str, int]] = {}
    pending: list[tuple[FrameMessage, object, object]] = []

    def flush() -> None:
        views = [runner.part_view(msg, decoded, part) for msg, decoded, part in pending]
        rows = runner.score(["line"] * len(pending), [decoded.square for _, decoded, _ in pending], views)
        for (msg, _, part), row in zip(pending, rows):
            out[msg.seq] = (row, part.part_id, max(part.box[2] - part.box[0], part.box[3] - part.box[1]))
        pending.clear()

    def decoded(msgs: list[FrameMessage]) -> list:
        made = runner.decode_batch(msgs) if runner.batch_decoder is not None else [runner.decode(msg) for msg in msgs]
        for msg, one in zip(msgs, made):
            if isinstance(one, str):
                raise ValueError(f"{rec.path} seq {msg.seq}: {one}")
        return made

    msgs = [FrameMessage(line_id="line", camera_id="cam", seq=entry.seq, capture_ns=entry.capture_ns,
                         width=rec.meta.width, height=rec.meta.height, mode=FrameMode.replay, payload=jpeg)
            for entry, jpeg in rec.frames()]
    for start in range(0, len(msgs), BATCH):
        chunk = msgs[start:start + BATCH]
        for msg, one in zip(chunk, decoded(chunk)):  # the tracker sees every frame, in order
            part = runner.find_part(msg, one)
            if part is not None:
                pending.append((msg, one, part))
            if len(pending) == BATCH:
                flush()
    if pending:
        flush()
    return out


def runner_for(bundle, reduced: bool, batched: bool = False) -> ModelRunner:  # type: ignore[no-untyped-def]
    """A runner decoding full-size or reduced; ``batched``: through ``decode_batch``, torchvision decoding on the
    bundle's device (nvJPEG on CUDA)."""
    cfg = validate_config({
        "inference": {"reduced_decode": reduced},
        "lines": [{"id": "line", "cameras": [{"id": "cam"}], "questions": [q.model_dump() for q in ALERT_QUESTIONS]}],
    })
    runner = ModelRunner(bundle, {line.id: line for line in cfg.lines}, cfg.inference, "bench")
    if batched:
        runner.batch_decoder = BatchJpegDecoder(runner.device)  # on the CPU too, where a worker would not batch
    return runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="recordings, or directories of them")
    parser.add_argument("--compare", choices=("reduced", "batch"), default="reduced",
                        help="reduced: full-size against reduced decoding; batch: the decode threads against the "
                             "batched (CUDA) decoding path, torchvision's CPU decoder standing in for nvJPEG")
    parser.add_argument("--bundle", type=Path, default=REPO / "models" / "default")
    parser.add_argument("--device", default="cpu", help="the model's device; with --compare batch on cuda, "
                        "the batched path decodes with nvJPEG")
    parser.add_argument("--out", type=Path, help="default: bench/results/decode_scores.json (reduced), "
                                                   "decode_scores_batch.json (batch)")
    args = parser.parse_args()
    name = "decode_scores.json" if args.compare == "reduced" else "decode_scores_batch.json"
    args.out = args.out or REPO / "bench" / "results" / name
    # each path: (its name in the report, reduced_decode, batched)
    first, second = (("full", False, False), ("reduced", True, False)) if args.compare == "reduced" \
        else (("pool", True, False), ("batch", True, True))
    one, two = first[0], second[0]
    torch.set_num_threads(1)
    bundle = load_bundle(args.bundle, args.device)
    qids = [q.id for q in ALERT_QUESTIONS]
    first_rows, second_rows, labels, sides, parts = [], [], [], [], []
    counts = {"frames": 0, f"scored_{one}": 0, f"scored_{two}": 0, "part_disagreements": 0, "part_id_differences": 0}
    started = time.perf_counter()
    for path in find_recordings(args.data):
        rec = Recording(path)
        # a fresh runner (fresh trackers) per recording and path: each camera's stream starts clean
        by_first = score_recording(runner_for(bundle, *first[1:]), rec)
        by_second = score_recording(runner_for(bundle, *second[1:]), rec)
        truth = rec.truth()
        counts["frames"] += len(rec)
        counts[f"scored_{one}"] += len(by_first)
        counts[f"scored_{two}"] += len(by_second)
        counts["part_disagreements"] += len(set(by_first) ^ set(by_second))
        for seq in sorted(set(by_first) & set(by_second)):
            counts["part_id_differences"] += by_first[seq][1] != by_second[seq][1]
            answers = truth[seq].answers if seq in truth else {}
            parts.append(f"{path}/{by_first[seq][1]}")
            first_rows.append(by_first[seq][0])
            sides.append(by_first[seq][2])
            second_rows.append(by_second[seq][0])
            labels.append([float(answers[q]) if q in answers else np.nan for q in qids])
        print(path, json.dumps(counts), flush=True)
    a, b, y = np.stack(first_rows), np.stack(second_rows), np.asarray(labels)
    diff = np.abs(a - b)
    thresholds = bundle.part_thresholds_for(ALERT_QUESTIONS)
    by_part: dict[str, list[int]] = {}
    for i, part in enumerate(parts):
        by_part.setdefault(part, []).append(i)
    per_question = {}
    for j, qid in enumerate(qids):
        known = ~np.isnan(y[:, j])
        before, after = auroc(a[known, j], y[known, j]), auroc(b[known, j], y[known, j])
        flagged = [[aggregate_scores(m[rows, j], bundle.part_aggregate) >= thresholds[j] for rows in by_part.values()]
                   for m in (a, b)]
        per_question[qid] = {f"auroc_{one}": round(before, 4), f"auroc_{two}": round(after, 4),
                             "auroc_change": round(after - before, 4), "positives": int(y[known, j].sum()),
                             "frames": int(known.sum()), "max_abs_score_diff": round(float(diff[:, j].max()), 4),
                             f"parts_flagged_{one}": int(sum(flagged[0])), f"parts_flagged_{two}": int(sum(flagged[1])),
                             "part_decisions_changed": int(sum(x != z for x, z in zip(*flagged)))}
    report = {
        "command": "python bench/decode_scores.py " + " ".join(f"--data {d}" for d in args.data) + f" --compare {args.compare}",
        "compare": {"reduced": "full: the decode threads, full size; reduced: the decode threads, reduced",
                    "batch": "pool: the decode threads, reduced; batch: decode_batch, torchvision's "
                             "decode_jpeg on the CPU standing in for nvJPEG"}[args.compare],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, 1 torch thread", "device": args.device,
        "bundle": str(args.bundle),
        "seconds": round(time.perf_counter() - started, 1), **counts,
        "mean_abs_score_diff": round(float(diff.mean()), 5), "p99_abs_score_diff": round(float(np.quantile(diff, 0.99)), 4),
        "max_abs_score_diff": round(float(diff.max()), 4),
        # a reduced decode's part view is cut from a full decode when the part spans fewer reduced pixels than this
        "encoder_px": bundle.encoder.preprocess.image_size, "part_box_side_px_min_median": [min(sides), float(np.median(sides))],
        "parts": len(by_part), "part_aggregate": bundle.part_aggregate,
        "part_decisions_changed": sum(q["part_decisions_changed"] for q in per_question.values()),
        "max_abs_auroc_change": round(float(np.nanmax([abs(q["auroc_change"]) for q in per_question.values()])), 4),
        "questions": per_question,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
