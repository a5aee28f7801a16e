"""Labelling a recording: write yes/no answers into its index.

After ``patchsight record``, an engineer marks which frames show a defect::

    patchsight label REC --question scratch --yes 120-135 --yes 410-422
    patchsight label REC --question scratch --no-rest

``--yes``/``--no`` take seq ranges; ``--no-rest`` answers "no" for every frame
of that question not answered yet. ``--parts`` names the part each frame shows
(``truth.part_id``) as the camera's part tracker follows it, so that the recording
can be grouped by part and read through the part view (docs/recording-format.md,
"Part ids"). The index is rewritten atomically (a temp file renamed over it), so
an interrupted label run never corrupts a recording.
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

    _write_index(rec)
    if counts["yes"] or counts["no"]:
        rec.meta.labelled = True
        (rec.path / "meta.json").write_text(rec.meta.model_dump_json(indent=2) + "\n")
    return counts


def label_parts(path: str | Path) -> dict[str, int]:
    """Name the part each frame shows as the camera's tracker follows it; returns the parts and frames named.

    A ``PartTracker`` for the recording's camera (its default zone, as ``model finetune --view
    part``, ``calibrate`` and ``eval`` run one over a recording) sees every frame in order; a frame
    on which it finds a part wholly inside the zone gets that part's number (1, 2, ... in order of
    arrival) as ``truth.part_id``, every other frame none. A recording that already names its
    parts (the synth's do) is refused: its ids would be replaced.
    """
    import cv2
    import numpy as np

    from model.tracker import PartTracker

    rec = Recording(path)
    named = [entry.seq for entry in rec.entries if entry.truth is not None and entry.truth.part_id is not None]
    if named:
        raise RecordingError(f"{rec.path} already names the parts of {len(named)} frames (the first: seq "
                             f"{named[0]}); --parts would replace them")
    tracker = PartTracker(rec.meta.camera_id, None, (rec.meta.width, rec.meta.height))
    numbers: dict[str, int] = {}
    frames = 0
    for entry, jpeg in rec.frames():
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if image is None:  # an undecodable frame shows no part the tracker can see; the belt moves on
            continue
        part = tracker.update(image, entry.seq).part_id
        if part is None:
            continue
        truth = entry.truth or FrameTruth()
        truth.part_id = numbers.setdefault(part, len(numbers) + 1)
        entry.truth = truth
        frames += 1
    _write_index(rec)
    return {"parts": len(numbers), "frames": frames}


def _write_index(rec: Recording) -> None:
    index = rec.path / "index.jsonl"
    tmp = index.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as out:
        for entry in rec.entries:
            out.write(entry.model_dump_json(exclude_none=True) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, index)
