"""The part decision: one verdict per part and camera, and one alert per defective part and line.

Pure and deterministic, like alerts/policy.py is for the k-of-n debounce: the same results
in the same order give the same verdicts, the same alert ids and the same count changes,
whatever the wall clock says (only the part timeout reads it, and only through the
``now_ns``/``seen_ns`` it is given). The store (alerts/store.py) applies what these
functions decide in one atomic Redis call.

**Per camera** (``PartState``, Redis JSON): the part in view, with per question the running
sums of its frames' scores (``schemas.part.PartScores``) and the best frame that carries a
thumbnail; the last seq and capture time (a result at or before both is a redelivery, as in
policy.py) and the seq epoch (bumped when the camera's publisher restarts its numbering).
A part ends when the camera's next result shows another part, shows no part (``skipped``
without ``part``; a stale skip says nothing about what is in view and neither ends nor
extends it), when the seq restarts, or when the camera sends nothing for the line's
``alert_policy.part_timeout_s`` (``decide_timeout``). Then ``decide_part`` returns the
camera's ``PartVerdict``: every question whose aggregate reached its threshold is a
finding; findings -> flagged, scored frames and no finding -> passed, none scored -> unscored.

**Per line** (``PartRecord``, one Redis hash per part): the part's verdict so far, over all
the cameras (and all the passes of one camera) that decided it. ``merge_part`` folds a
camera's verdict in: the verdict only rises (unscored < passed < flagged), so the counters
move once per part (a part passed by one camera and flagged by the next moves from passed to
flagged); the alert is created by the first flagging verdict and later ones merge their
findings into it (one finding per question and camera, the higher score kept). Merging is
commutative and idempotent, so the order in which cameras decide, or a verdict applied
twice, changes nothing but which camera is named as the one that raised the alert.

Part identity: a header part (``source == "header"``) is named by the camera or a PLC and is
unique per line, so every camera of the line that reports it reaches the same record and
alert: ``part_alert_id(line, part_id)``. A tracked part is unique per camera and seq epoch:
``part_alert_id(line, part_id, epoch)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.alert import DefectAlert, Finding, part_alert_id
from schemas.config import AlertPolicy, AlertSettings, LineConfig
from schemas.feedback import EvidenceFrame
from schemas.part import PartAggregate, PartObservation, PartScores, PartSource
from schemas.result import FrameRef, InspectionResult, ResultStatus

Verdict = Literal["unscored", "passed", "flagged"]
VERDICTS: tuple[Verdict, ...] = ("unscored", "passed", "flagged")  # in rising order
RANK = {v: i for i, v in enumerate(VERDICTS)}
INSPECTED = ("passed", "flagged")  # the parts the line's yield is computed on
# Skip reasons that say nothing about which part is in view (the worker skips a frame that
# is too old to matter before looking at it): such a result neither ends nor extends a part.
NO_OBSERVATION_SKIPS = ("stale",)
EVIDENCE_FRAMES_PER_PART = AlertSettings.model_fields["evidence_frames_per_part"].default


KeptFrame = tuple[int, str, int, int, tuple[int, int, int, int] | None]  # seq, topic, partition, offset, box


def _evidence_frame(camera_id: str, kept: KeptFrame) -> EvidenceFrame:
    seq, topic, partition, offset, box = kept
    return EvidenceFrame(camera_id=camera_id, seq=seq, topic=topic, partition=partition, offset=offset, box=box)


class Peak(BaseModel):
    """A question's highest-scoring frame of the part, and where it lies on the frames topic."""

    model_config = ConfigDict(extra="forbid")

    seq: int
    score: float
    frame: FrameRef
    box: tuple[int, int, int, int] | None = None  # the part's box on it


class QuestionPart(BaseModel):
    """One question on the part in view."""

    model_config = ConfigDict(extra="forbid")

    scores: PartScores = Field(default_factory=PartScores)
    threshold: float  # the part threshold the worker sent with the latest frame
    defect_type: str
    best: tuple[int, float] | None = None  # (seq, score) of its highest frame that carries a thumbnail
    peak: Peak | None = None  # its highest frame that the worker said where to find (the evidence)


class OpenPart(BaseModel):
    """The part a camera has in view, and what its frames said so far."""

    model_config = ConfigDict(extra="forbid")

    part_id: str
    source: PartSource
    aggregate: PartAggregate
    first_seq: int
    last_seq: int
    first_capture_ns: int
    last_capture_ns: int
    model_id: str
    questions: dict[str, QuestionPart] = Field(default_factory=dict)
    # the scored frames the worker said where to find, every ``stride``-th of them (``keep_frame``), as
    # (seq, topic, partition, offset, box): plain tuples, as the state is copied and stored on every result
    frames: list[KeptFrame] = Field(default_factory=list)
    frames_offered: int = 0
    stride: int = 1

    def keep_frame(self, frame: KeptFrame, cap: int) -> None:
        """Keep the part's scored frames as evidence, at most ``cap``: all of them while they fit, then every
        second, fourth, ... one, so that a part held long in view (a stopped belt) keeps frames spread over
        its whole pass, and its state stays small."""
        if self.frames_offered % self.stride == 0:
            self.frames.append(frame)
            if len(self.frames) > cap:
                self.frames = self.frames[::2]
                self.stride *= 2
        self.frames_offered += 1


class PartState(BaseModel):
    """Everything the part decision remembers about one camera; persisted in Redis as JSON."""

    model_config = ConfigDict(extra="forbid")

    rev: int = 0  # bumped by every write: the store's compare-and-set
    last_seq: int = -1
    last_capture_ns: int = -1
    epoch: int = 0  # bumped when the camera's seq restarts
    seen_ns: int = 0  # service clock when the camera's last result was applied (for the timeout)
    part: OpenPart | None = None

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes | None) -> "PartState":
        return cls.model_validate_json(text) if text else cls()


@dataclass(frozen=True)
class PartVerdict:
    """One camera's decision on one part (one pass of the part through its view)."""

    line_id: str
    camera_id: str
    part_id: str
    source: PartSource
    part_key: str  # the part's alert id: names its line record and its alert
    epoch: int
    first_seq: int
    last_seq: int
    first_capture_ns: int
    last_capture_ns: int
    model_id: str
    verdict: Verdict
    findings: tuple[Finding, ...]  # strongest first
    scores: dict[str, float]  # every scored question's aggregate
    frames: int  # scored frames
    ended_by: str  # next-part, no-part, seq-restart, timeout
    thumbnail: str | None = None  # pending-thumbnail field of the best frame among the flagged questions
    thumbnail_score: float | None = None
    # the frames it was scored on (``OpenPart.keep_frame``), led by the peak frame of each flagged question,
    # strongest first, or, for a passed part, of the question nearest its threshold. Kept as evidence
    # (alerts/evidence.py): what an operator looks at, and what a recording of the part is made of.
    evidence: tuple[EvidenceFrame, ...] = ()
    closeness: float | None = None  # highest score/threshold ratio over the scored questions
    thresholds: dict[str, float] = field(default_factory=dict)  # every scored question's part threshold


@dataclass
class PartDecision:
    redelivery: bool  # seen before: nothing to do, nothing to write
    state: PartState
    ended: PartVerdict | None = None
    keep_thumbnail: str | None = None  # store this result's thumbnail under this pending field
    drop_thumbnails: list[str] = field(default_factory=list)  # pending fields nothing refers to any more


def thumbnail_field(epoch: int, seq: int) -> str:
    return f"{epoch}:{seq}"


def part_key(line_id: str, part_id: str, source: str, epoch: int) -> str:
    return part_alert_id(line_id, part_id, 0 if source == "header" else epoch)


def _close(part: OpenPart, epoch: int, line_id: str, camera_id: str, line: LineConfig | None,
           ended_by: str) -> tuple[PartVerdict, list[str]]:
    """The verdict on a part that has ended, and the pending thumbnail fields it held."""
    configured = {q.id: q for q in line.questions} if line else {}
    findings: list[Finding] = []
    scores: dict[str, float] = {}
    thresholds: dict[str, float] = {}
    flagged_best: list[tuple[float, int]] = []
    for qid in sorted(part.questions):
        q = part.questions[qid]
        if q.scores.frames == 0:
            continue
        value = min(1.0, max(0.0, q.scores.value(part.aggregate)))
        scores[qid] = value
        c = configured.get(qid)
        threshold = thresholds[qid] = c.threshold_over(q.threshold) if c else q.threshold
        if value < threshold:
            continue
        findings.append(Finding(question_id=qid, question=c.text if c else qid,
                                defect_type=c.defect_type if c else q.defect_type,
                                score=value, threshold=threshold, camera_id=camera_id))
        if q.best is not None:
            flagged_best.append((q.best[1], -q.best[0]))
    findings.sort(key=_finding_order)
    held = sorted({thumbnail_field(epoch, q.best[0]) for q in part.questions.values() if q.best is not None})
    best = max(flagged_best) if flagged_best else None
    verdict: Verdict = "flagged" if findings else "passed" if scores else "unscored"
    return PartVerdict(
        line_id=line_id, camera_id=camera_id, part_id=part.part_id, source=part.source,
        part_key=part_key(line_id, part.part_id, part.source, epoch), epoch=epoch,
        first_seq=part.first_seq, last_seq=part.last_seq, first_capture_ns=part.first_capture_ns,
        last_capture_ns=part.last_capture_ns, model_id=part.model_id, verdict=verdict, findings=tuple(findings),
        scores=scores, frames=max((q.scores.frames for q in part.questions.values()), default=0),
        ended_by=ended_by, thumbnail=thumbnail_field(epoch, -best[1]) if best else None,
        thumbnail_score=best[0] if best else None, thresholds=thresholds,
        **_evidence(part, camera_id, scores, thresholds, {f.question_id for f in findings}),
    ), held


def _evidence(part: OpenPart, camera_id: str, scores: dict[str, float], thresholds: dict[str, float],
              flagged: set[str]) -> dict:
    """The frames to keep of a decided part, and how near its threshold the part came."""
    closeness = {qid: scores[qid] / thresholds[qid] if thresholds[qid] > 0 else float("inf") for qid in scores}
    chosen = flagged or ({max(closeness, key=lambda qid: (closeness[qid], qid))} if closeness else set())
    peaks = sorted((q.peak for qid, q in part.questions.items() if qid in chosen and q.peak is not None),
                   key=lambda peak: (-peak.score, peak.seq))
    frames: dict[int, EvidenceFrame] = {}
    for peak in peaks:
        frames.setdefault(peak.seq, EvidenceFrame(camera_id=camera_id, seq=peak.seq, box=peak.box,
                                                  **peak.frame.model_dump()))
    for kept in part.frames:
        if kept[0] not in frames:
            frames[kept[0]] = _evidence_frame(camera_id, kept)
    return {"evidence": tuple(frames.values()),
            "closeness": min(max(closeness.values()), 1e6) if closeness else None}


def _finding_order(f: Finding) -> tuple[float, str, str]:
    return (-f.score, f.question_id, f.camera_id)


def _opens(obs: PartObservation, result: InspectionResult) -> OpenPart:
    return OpenPart(part_id=obs.part_id, source=obs.source, aggregate=obs.aggregate, first_seq=result.seq,
                    last_seq=result.seq, first_capture_ns=result.capture_ns, last_capture_ns=result.capture_ns,
                    model_id=result.model_id)


def decide_part(state: PartState, result: InspectionResult, line: LineConfig | None, seen_ns: int,
                has_thumbnail: bool | None = None, evidence_frames: int = EVIDENCE_FRAMES_PER_PART) -> PartDecision:
    """Apply one result to a camera's part state; returns the new state (``state`` is not modified).

    ``has_thumbnail``: whether the result's thumbnail will be stored (default: it has one);
    ``evidence_frames``: how many of the part's frames to keep as evidence (``alerts.evidence_frames_per_part``).
    """
    if result.seq <= state.last_seq and result.capture_ns <= state.last_capture_ns:
        return PartDecision(redelivery=True, state=state)
    new = state.model_copy(deep=True)
    decision = PartDecision(redelivery=False, state=new)
    line_id, camera_id = result.line_id, result.camera_id

    def end(reason: str) -> None:
        assert new.part is not None
        decision.ended, held = _close(new.part, new.epoch, line_id, camera_id, line, reason)
        decision.drop_thumbnails += held
        new.part = None

    if result.seq <= new.last_seq:
        # The seq went back but the capture time moved on: the camera's publisher restarted its
        # numbering. The part in view is decided on what it had; frames of the new epoch start afresh.
        if new.part is not None:
            end("seq-restart")
        new.epoch += 1
    new.rev, new.last_seq, new.last_capture_ns, new.seen_ns = state.rev + 1, result.seq, result.capture_ns, seen_ns

    obs = result.part
    if obs is None:
        no_observation = result.status == ResultStatus.skipped and (result.skip_reason or "").startswith(
            NO_OBSERVATION_SKIPS)
        if new.part is not None and not no_observation and decision.ended is None:
            end("no-part")
        return decision
    if new.part is not None and (new.part.part_id, new.part.source) != (obs.part_id, obs.source):
        end("next-part")
    if new.part is None:
        new.part = _opens(obs, result)
    part = new.part
    part.last_seq, part.last_capture_ns, part.model_id = result.seq, result.capture_ns, result.model_id
    if result.status != ResultStatus.ok:
        return decision

    if result.frame is not None and result.scores:
        ref = result.frame
        part.keep_frame((result.seq, ref.topic, ref.partition, ref.offset, obs.box), evidence_frames)
    _add_scores(part, result, obs, new.epoch, decision,
                result.thumbnail_jpeg_b64 is not None if has_thumbnail is None else has_thumbnail)
    return decision


def _add_scores(part: OpenPart, result: InspectionResult, obs: PartObservation, epoch: int, decision: PartDecision,
                with_thumbnail: bool) -> None:
    """Fold a scored frame into the part's questions: their sums, peak frames and best thumbnails."""
    here = thumbnail_field(epoch, result.seq)
    for scored in result.scores:
        q = part.questions.get(scored.question_id)
        if q is None:
            q = part.questions[scored.question_id] = QuestionPart(threshold=scored.threshold,
                                                                  defect_type=scored.defect_type)
        q.scores.add(scored.score)
        q.threshold, q.defect_type = scored.threshold, scored.defect_type
        if result.frame is not None and (q.peak is None or scored.score > q.peak.score):
            q.peak = Peak(seq=result.seq, score=scored.score, frame=result.frame, box=obs.box)
        if with_thumbnail and (q.best is None or scored.score > q.best[1]):
            old = q.best
            q.best = (result.seq, scored.score)
            decision.keep_thumbnail = here
            if old is not None and all(other.best is None or other.best[0] != old[0]
                                       for other in part.questions.values()):
                decision.drop_thumbnails.append(thumbnail_field(epoch, old[0]))


def decide_timeout(state: PartState, line: LineConfig | None, line_id: str, camera_id: str,
                   now_ns: int) -> PartDecision | None:
    """End the camera's part when the camera has been quiet for the line's ``part_timeout_s``; None otherwise."""
    timeout_s = (line.alert_policy if line else AlertPolicy()).part_timeout_s
    if state.part is None or now_ns - state.seen_ns < timeout_s * 1e9:
        return None
    new = state.model_copy(deep=True)
    new.rev = state.rev + 1
    ended, held = _close(state.part, state.epoch, line_id, camera_id, line, "timeout")
    new.part = None
    return PartDecision(redelivery=False, state=new, ended=ended, drop_thumbnails=held)


# --- the line's record of a part, across cameras ---


class PartRecord(BaseModel):
    """What the line knows of one part so far; one Redis hash per part (docs/redis-keys.md)."""

    model_config = ConfigDict(extra="forbid")

    rev: int = 0  # bumped by every write: the store's compare-and-set
    verdict: Verdict | None = None  # None: no camera has decided it yet
    cameras: list[str] = Field(default_factory=list)  # the cameras that decided it
    thumbnail_score: float | None = None  # score of the frame whose thumbnail the alert shows


@dataclass
class PartMerge:
    record: PartRecord
    counts: dict[str, int]  # changes of the line's part counters (inspected, passed, flagged, unscored)
    alert: DefectAlert | None = None  # the alert as it is to be stored (new or updated); None: unchanged
    event: str | None = None  # raised | updated
    new_defect_types: list[str] = field(default_factory=list)  # defect types the alert did not list before
    promote_thumbnail: str | None = None  # pending field whose thumbnail becomes the alert's
    evidence: tuple[EvidenceFrame, ...] = ()  # frames of this camera to keep as the alert's evidence


def merge_part(record: PartRecord, existing: DefectAlert | None, verdict: PartVerdict, now_ns: int) -> PartMerge:
    """Fold one camera's verdict into the line's record of the part and its alert."""
    old = record.verdict
    new_verdict = verdict.verdict if old is None or RANK[verdict.verdict] > RANK[old] else old
    counts: dict[str, int] = {}
    if new_verdict != old:
        if old is not None:
            counts[old] = -1
        counts[new_verdict] = 1
        inspected = int(new_verdict in INSPECTED) - int(old in INSPECTED)
        if inspected:
            counts["inspected"] = inspected
    merged = PartMerge(
        record=PartRecord(rev=record.rev + 1, verdict=new_verdict,
                          cameras=sorted({*record.cameras, verdict.camera_id}),
                          thumbnail_score=record.thumbnail_score),
        counts=counts,
    )
    if not verdict.findings:
        return merged

    if existing is None:
        strongest = verdict.findings[0]
        merged.alert = DefectAlert(
            alert_id=verdict.part_key, line_id=verdict.line_id, camera_id=verdict.camera_id, part_id=verdict.part_id,
            findings=list(verdict.findings), question_id=strongest.question_id, question=strongest.question,
            defect_type=strongest.defect_type, score=strongest.score, threshold=strongest.threshold,
            first_seq=verdict.first_seq, last_seq=verdict.last_seq, first_capture_ns=verdict.first_capture_ns,
            trigger_capture_ns=verdict.last_capture_ns, raised_ns=now_ns, model_id=verdict.model_id,
        )
        merged.event = "raised"
        merged.new_defect_types = sorted({f.defect_type for f in verdict.findings})
    else:
        findings = {(f.question_id, f.camera_id): f for f in existing.findings}
        for f in verdict.findings:
            known = findings.get((f.question_id, f.camera_id))
            if known is None or f.score > known.score:
                findings[(f.question_id, f.camera_id)] = f
        ordered = sorted(findings.values(), key=_finding_order)
        if ordered != existing.findings:
            strongest = ordered[0]
            merged.alert = existing.model_copy(update={
                "findings": ordered, "question_id": strongest.question_id, "question": strongest.question,
                "defect_type": strongest.defect_type, "score": strongest.score, "threshold": strongest.threshold,
            })
            merged.event = "updated"
            before = {f.defect_type for f in existing.findings}
            merged.new_defect_types = sorted({f.defect_type for f in ordered} - before)
    if merged.alert is not None:
        merged.evidence = verdict.evidence
    if verdict.thumbnail is not None and (record.thumbnail_score is None
                                          or verdict.thumbnail_score > record.thumbnail_score):
        merged.promote_thumbnail = verdict.thumbnail
        merged.record.thumbnail_score = verdict.thumbnail_score
    return merged
