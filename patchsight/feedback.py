"""``patchsight feedback export``: what operators said, as labelled recordings a model can be calibrated on.

Every alert and review item of a line that has an operator's verdict and kept evidence frames
becomes one part of a recording (one recording per camera, docs/recording-format.md): its
evidence frames, each with the part's truth. A false alarm or a part confirmed good is good
(every question of the line answered no); a confirmed alert is defective for the questions of
its findings, or, where the operator named the defect, for the line's questions about that
defect type. A defective verdict that names no defect any question asks about cannot label a
question, so it is left out and counted (``skipped_unasked``).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from alerts.store import RedisAlertStore
from inference.runner import jpeg_size
from ingest.recording import FrameTruth, RecordingMeta, RecordingWriter
from schemas.config import LineConfig
from schemas.feedback import OperatorVerdict, VerdictSubject

DEFAULT_FPS = 10.0


@dataclass
class FeedbackExport:
    recordings: dict[str, Path] = field(default_factory=dict)  # camera -> recording written
    parts: Counter = field(default_factory=Counter)  # "good" / "defective" parts exported
    frames: int = 0
    skipped_unasked: int = 0  # defective verdicts whose defect no question of the line asks about
    skipped_no_evidence: int = 0  # verdicts whose subject kept no frame (not read back, missing or evicted)


@dataclass(frozen=True)
class _Judged:
    verdict: OperatorVerdict
    source_part_id: str | None
    first_capture_ns: int
    alerted_questions: tuple[str, ...]  # a confirmed alert without a named defect: its findings' questions


def _truth(line: LineConfig, judged: _Judged, part_number: int) -> FrameTruth | None:
    verdict = judged.verdict
    if not verdict.defective:
        answers = {q.id: False for q in line.questions}
        defects: list[str] = []
    else:
        if verdict.defect_type is not None:
            asked = [q.id for q in line.questions if q.defect_type == verdict.defect_type]
        else:
            asked = list(judged.alerted_questions)
        if not asked:
            return None
        answers = {qid: True for qid in asked}
        defect_of = {q.id: q.defect_type for q in line.questions}
        defects = sorted({verdict.defect_type} if verdict.defect_type else {defect_of.get(q, q) for q in asked})
    return FrameTruth(
        part_id=part_number,
        defects=defects,
        answers=answers,
        verdict=verdict.label,
        subject=verdict.subject.value,
        subject_id=verdict.subject_id,
        by=verdict.by,
        source_part_id=judged.source_part_id,
    )


def _judged(store: RedisAlertStore, subject: VerdictSubject, subject_id: str) -> _Judged | None:
    verdict = store.verdict(subject, subject_id)
    if verdict is None:
        return None
    if subject == VerdictSubject.alert:
        alert = store.get_alert(subject_id)
        if alert is None:
            return None
        questions = tuple(dict.fromkeys(f.question_id for f in alert.findings)) or (alert.question_id,)
        return _Judged(verdict, alert.part_id, alert.first_capture_ns, questions)
    item = store.get_review(subject_id)
    return _Judged(verdict, item.part_id, item.first_capture_ns, ()) if item is not None else None


def export_feedback(store: RedisAlertStore, line: LineConfig, out: Path) -> FeedbackExport:
    """Write the line's judged alerts and review items under ``out``, one recording per camera."""
    done = FeedbackExport()
    fps = {c.id: c.fps for c in line.cameras}
    writers: dict[str, RecordingWriter] = {}
    seqs: Counter = Counter()
    try:
        for subject, subject_id in store.judged(line.id):
            judged = _judged(store, subject, subject_id)
            if judged is None:
                continue
            names = store.evidence_frames(subject, subject_id)
            if not names:
                done.skipped_no_evidence += 1
                continue
            truth = _truth(line, judged, sum(done.parts.values()) + 1)
            if truth is None:
                done.skipped_unasked += 1
                continue
            boxes = store.evidence_boxes(subject, subject_id)
            done.parts["defective" if judged.verdict.defective else "good"] += 1
            for n, name in enumerate(names):
                jpeg = store.evidence(subject, subject_id, name)
                if jpeg is None:  # evicted while we read
                    continue
                camera, source_seq = name.split(":")
                writer = writers.get(camera)
                if writer is None:
                    width, height = jpeg_size(jpeg) or (0, 0)
                    meta = RecordingMeta(
                        line_id=line.id,
                        camera_id=camera,
                        fps=fps.get(camera, DEFAULT_FPS),
                        width=width,
                        height=height,
                        source=f"feedback line={line.id}",
                        created_ns=time.time_ns(),
                    )
                    writer = writers[camera] = RecordingWriter(out / camera, meta)
                    done.recordings[camera] = out / camera
                # the evidence keeps no per-frame capture time: the part's first frame's, in frame order
                writer.append(
                    seqs[camera],
                    judged.first_capture_ns + n,
                    jpeg,
                    FrameTruth(**truth.model_dump(exclude={"part_box"}), part_box=boxes.get(name),
                               source_seq=int(source_seq)),
                )
                seqs[camera] += 1
                done.frames += 1
    finally:
        for writer in writers.values():
            writer.close()
    return done
