"""Name the parts of a recording of your own (``patchsight model label-parts``).

``patchsight record`` and ``patchsight label`` write frames and answers, not which part a frame
shows; per-part validation, part thresholds and the part view need that (``truth.part_id``,
docs/recording-format.md, "Part ids"). A ``PartTracker`` for the recording's camera (its default
zone, as ``view_frames`` runs one for the part view) follows the parts through the frames in
order, and each frame on which it finds a part wholly inside the zone gets that part's number
(1, 2, ... in order of arrival); the other frames get none. The index is rewritten atomically.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ingest.label import write_index
from ingest.recording import FrameTruth, Recording, RecordingError
from model.tracker import PartTracker


def label_parts(path: str | Path) -> dict[str, int]:
    """Write each frame's part number as the tracker follows it; returns how many parts on how many frames.

    A recording that already names its parts (the synth's do) is refused: its ids would be replaced.
    """
    rec = Recording(path)
    named = [entry.seq for entry in rec.entries if entry.truth is not None and entry.truth.part_id is not None]
    if named:
        raise RecordingError(f"{rec.path} already names the parts of {len(named)} frames (the first: seq "
                             f"{named[0]}); naming them again would replace them")
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
    write_index(rec)
    return {"parts": len(numbers), "frames": frames}
