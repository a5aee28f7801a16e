"""Fit a bundle's anomaly memory from good parts only (``patchsight model fit-anomaly``).

For a line with good parts and almost no defects yet. The good frames are the labelled frames
of ``recordings`` whose truth names no defect and answers no question "yes", and every frame of
``good_recordings`` (recordings the user declares good-only, labelled or not). They are encoded
by the bundle's frozen encoder and split by part (a part's frames are near duplicates): the
memory (``model.anomaly.AnomalyMemory``) is built from the patch tokens of most parts, and its
score's scale is set by the raw scores of the held-out parts' frames, which it never saw, as
new good parts will be. The bundle gains the memory in ``anomaly/`` and, when it has none by that
id, a question of kind ``anomaly``. Thresholds set for that question before are dropped: they were
on another memory's scale (``patchsight model calibrate`` sets new ones). Nothing is written
unless all of it is (``training.output``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from pydantic import ValidationError

from ingest.recording import Recording
from model.anomaly import AnomalyMemory
from schemas.config import Question
from training.data import PARTLESS_RUN, Log, decode, held_out_groups, is_good, view_frames
from training.output import filled_on_success

ANOMALY_FOLDER = "anomaly"
DEFAULT_TEXT = "Is this part unlike the good parts?"


def good_frames(recordings: Sequence[str | Path], good_recordings: Sequence[str | Path],
                stride: int) -> Iterator[tuple[str, np.ndarray]]:
    """``(part, image)`` of every good frame: labelled good in ``recordings``, any in ``good_recordings``.

    A frame's part is its recording and its truth's part id; frames without one count as one
    part per ``PARTLESS_RUN`` in recording order, as everywhere in training.
    """
    for path in recordings:
        rec = Recording(path)
        if not rec.meta.labelled:
            raise ValueError(f"{path} has no labels to tell good frames by: pass it as --good if all its parts are good")
        partless = 0
        for _, truth, image in view_frames(rec, stride):
            if is_good(truth):
                yield _part_key(path, truth.part_id, partless), image
                partless += truth.part_id is None
    for path in good_recordings:
        partless = 0
        for n, (entry, jpeg) in enumerate(Recording(path).frames()):
            if n % stride:
                continue
            try:
                image = decode(jpeg)
            except ValueError:
                continue
            part_id = entry.truth.part_id if entry.truth is not None else None
            yield _part_key(path, part_id, partless), image
            partless += part_id is None


def _part_key(path: str | Path, part_id: int | None, partless: int) -> str:
    return f"{path}|part{part_id}" if part_id is not None else f"{path}|empty{partless // PARTLESS_RUN}"


def encode_good(encoder, frames: Iterator[tuple[str, np.ndarray]], batch: int = 64,  # type: ignore[no-untyped-def]
                log: Log = print) -> tuple[torch.Tensor, list[str]]:
    """The frames' patch tokens (N, T, D) in float16 on the host, and each frame's part."""
    tokens: list[torch.Tensor] = []
    parts: list[str] = []
    pending: list[np.ndarray] = []

    def flush() -> None:
        if pending:
            tokens.append(encoder.encode_frames(pending, pooled=False).feature_tokens.to("cpu", torch.float16))
            pending.clear()
            log(f"encoded {len(parts)} good frames")

    for part, image in frames:
        parts.append(part)
        pending.append(image)
        if len(pending) >= batch:
            flush()
    flush()
    if not parts:
        raise ValueError("no good frames in the given recordings")
    return torch.cat(tokens), parts


def anomaly_question(existing: Sequence[Question], question_id: str, text: str | None) -> Question:
    """The bundle's question of that id (it must be of kind anomaly), else a new one."""
    for q in existing:
        if q.id == question_id:
            if q.kind != "anomaly":
                raise ValueError(f"the bundle's question {question_id!r} is a yes/no question for the head; "
                                 "give the anomaly question another --question-id")
            return q if text is None else q.model_copy(update={"text": text})
    try:
        return Question(id=question_id, text=text or DEFAULT_TEXT, defect_type="anomaly", kind="anomaly")
    except ValidationError as exc:
        wrong = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"not a question for the bundle: {wrong}") from None


def fit_anomaly(
    bundle_dir: str | Path,
    recordings: Sequence[str | Path] = (),
    good_recordings: Sequence[str | Path] = (),
    question_id: str = "anomaly",
    question_text: str | None = None,
    coreset: int = 2048,
    k: int = 1,
    holdout: float = 0.25,
    z_at_half: float = 3.0,
    stride: int = 1,
    seed: int = 0,
    log: Log = print,
) -> dict:
    """Fit the memory of good parts and write it into the bundle; returns what was recorded."""
    from model.bundle import BUNDLE_FILE, load_bundle

    if not recordings and not good_recordings:
        raise ValueError("no recordings: pass labelled ones (--data) or good-only ones (--good)")
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be between 0 and 1, got {holdout}")
    if coreset < 1 or k < 1 or stride < 1:
        raise ValueError(f"coreset ({coreset}), k ({k}) and stride ({stride}) must be 1 or more")
    t0 = time.time()
    bundle = load_bundle(bundle_dir, device="cpu", dtype=torch.float32)
    question = anomaly_question(bundle.spec.questions, question_id, question_text)  # a bad id fails before encoding
    tokens, parts = encode_good(bundle.encoder, good_frames(recordings, good_recordings, stride), log=log)
    names = sorted(set(parts))
    if len(names) < 2:
        raise ValueError(f"good frames of {len(names)} part: the memory needs two parts at least, "
                         "one to remember and one to set its scale")
    held = set(sorted(held_out_groups(names, holdout, seed))[: len(names) - 1])  # one part at least is remembered
    in_held = torch.tensor([p in held for p in parts])
    memory = AnomalyMemory.fit(tokens[~in_held], coreset, k, seed)
    held_tokens = tokens[in_held]
    memory = memory.normalised(memory.raw_scores(held_tokens), z_at_half)
    held_scores = memory.score(held_tokens)
    record = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "question_id": question.id,
        "data": [str(p) for p in recordings], "good": [str(p) for p in good_recordings], "frame_stride": stride,
        "good_frames": len(parts), "good_parts": len(names),
        "memory_parts": len(names) - len(held), "memory_frames": int((~in_held).sum()),
        "scale_parts": len(held), "scale_frames": int(in_held.sum()),
        "patches_seen": int((~in_held).sum()) * tokens.shape[1], "patches_kept": len(memory.patches),
        "held_out_good_above_half": round(float((held_scores >= 0.5).float().mean()), 4),
        "seed": seed, "wall_s": round(time.time() - t0, 1),
    }
    memory = AnomalyMemory(memory.patches, memory.config.model_copy(update={"provenance": record}))
    bundle.anomaly = memory
    questions = [question if q.id == question.id else q for q in bundle.spec.questions]
    if question not in questions:
        questions.append(question)
    update = {"anomaly": ANOMALY_FOLDER, "questions": questions,
              "thresholds": {q: t for q, t in bundle.spec.thresholds.items() if q != question.id},
              "provenance": {**bundle.spec.provenance, "anomaly": record}}
    if bundle.spec.parts is not None:
        kept = {q: t for q, t in bundle.spec.parts.thresholds.items() if q != question.id}
        update["parts"] = bundle.spec.parts.model_copy(update={"thresholds": kept})
    spec = bundle.spec.model_copy(update=update)
    with filled_on_success(bundle_dir) as staging:
        memory.save(staging / ANOMALY_FOLDER)
        (staging / BUNDLE_FILE).write_text(spec.model_dump_json(indent=2))
    log(f"anomaly memory: {len(memory.patches)} of {record['patches_seen']} patches of {record['memory_parts']} good "
        f"parts; scale from {record['scale_frames']} frames of {record['scale_parts']} other good parts, "
        f"{record['held_out_good_above_half']:.1%} of them at 0.5 or above")
    return record
