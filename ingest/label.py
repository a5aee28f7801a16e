"""Labelling a recording: write yes/no answers into its index.

After ``patchsight record``, an engineer marks which frames show a defect::

    patchsight label REC --question scratch --yes 120-135 --yes 410-422
    patchsight label REC --question scratch --no-rest

``--yes``/``--no`` take seq ranges; ``--no-rest`` answers "no" for every frame
of that question not answered yet. The index is rewritten atomically (a temp
file renamed over it), so an interrupted label run never corrupts a recording.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ingest.recording import FrameTruth, Recording, RecordingError
from schemas.frame import ID_PATTERN


def parse_ranges(specs: list[str]) -> list[tuple[int, int]]:
    """``["3", "10-20"]`` -> ``[(3, 3), (10, 20)]``; raises ValueError naming a bad range."""
    ranges = []
    for spec in specs:
        first, sep, last = spec.partition("-")
        if not first.strip().isdigit() or (sep and not last.strip().isdigit()):
            raise ValueError(f"not a seq or seq range: {spec!r} (use 12 or 12-40)")
        lo, hi = int(first), int(last) if sep else int(first)
        if hi < lo:
            raise ValueError(f"range runs backwards: {spec!r}")
        ranges.append((lo, hi))
    return ranges


def label_recording(
    path: str | Path,
    question_id: str,
    yes: list[tuple[int, int]] = (),  # type: ignore[assignment]
    no: list[tuple[int, int]] = (),  # type: ignore[assignment]
    no_rest: bool = False,
) -> dict[str, int]:
    """Set answers for one question; returns how many frames got yes/no in this call."""
    if not re.match(ID_PATTERN, question_id):
        # a label under an id no config can hold would never be trained or evaluated on
        raise ValueError(f"not a question id: {question_id!r} (letters, digits, '_', '.', '-'; as in the line config)")
    rec = Recording(path)
    overlap = [(a, b) for a, b in yes for c, d in no if a <= d and c <= b]
    if overlap:
        raise RecordingError(f"a seq range is both yes and no: {overlap[0]}")
    seqs = [entry.seq for entry in rec.entries]
    for lo, hi in [*yes, *no]:
        if not any(lo <= seq <= hi for seq in seqs):  # a typo would otherwise label nothing, silently
            held = f"seqs {min(seqs)}-{max(seqs)}" if seqs else "no frames"
            raise RecordingError(f"no frame has a seq in {lo}-{hi} ({rec.path} holds {held})")
    counts = {"yes": 0, "no": 0}
    for entry in rec.entries:
        truth = entry.truth or FrameTruth()
        answer: bool | None = None
        if any(lo <= entry.seq <= hi for lo, hi in yes):
            answer = True
        elif any(lo <= entry.seq <= hi for lo, hi in no) or (no_rest and question_id not in truth.answers):
            answer = False
        if answer is None:
            continue
        truth.answers[question_id] = answer
        if answer and question_id not in truth.defects:
            truth.defects.append(question_id)
        if not answer and question_id in truth.defects:
            truth.defects.remove(question_id)
        entry.truth = truth
        counts["yes" if answer else "no"] += 1

    write_index(rec)
    if counts["yes"] or counts["no"]:
        rec.meta.labelled = True
        (rec.path / "meta.json").write_text(rec.meta.model_dump_json(indent=2) + "\n")
    return counts


def write_index(rec: Recording) -> None:
    """Rewrite the recording's index from its entries as they are now, atomically (a temp file renamed over it)."""
    index = rec.path / "index.jsonl"
    tmp = index.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as out:
        for entry in rec.entries:
            out.write(entry.model_dump_json(exclude_none=True) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, index)
