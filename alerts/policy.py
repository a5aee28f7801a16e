"""The alert decision: k-of-n debounce with clear frames and a cooldown, per camera and question.

Pure and deterministic: the same results in the same order give the same
decisions and the same alert ids, whatever the wall clock says. That is what
makes a replay or a redelivery harmless.

Per camera and question the state keeps the observations of the last ``n``
frames (by seq), the active alert and how many below-threshold frames have
followed it. A defect is raised when ``k`` of the last ``n`` frames are above
threshold; it then stays raised (one alert, extended by each further defect
frame) until ``clear_frames`` consecutive frames are below threshold, and no
new alert starts within ``cooldown_s`` of capture time after that.

Skipped results (and frames that never arrived) are "no observation": they
neither count towards a defect nor towards clearing one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from schemas.alert import alert_id_for
from schemas.config import AlertPolicy, LineConfig
from schemas.result import InspectionResult, ResultStatus


@dataclass
class Observation:
    seq: int
    above: bool
    score: float
    capture_ns: int


@dataclass
class QuestionState:
    window: list[Observation] = field(default_factory=list)  # observations of the last n frames, seq order
    alert_id: str | None = None  # the alert raised and not yet cleared
    quiet_frames: int = 0  # consecutive below-threshold frames since the alert's last defect frame
    cooldown_until_ns: int = 0  # capture time before which no new alert starts


@dataclass
class DebounceState:
    """Everything the policy remembers about one camera; persisted in Redis as JSON."""

    last_seq: int = -1
    last_capture_ns: int = -1
    # Bumped when the camera's seq restarts (a restarted publisher counting from 0);
    # part of new alert ids so a reused seq cannot collide with an old alert.
    epoch: int = 0
    questions: dict[str, QuestionState] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "last_seq": self.last_seq,
                "last_capture_ns": self.last_capture_ns,
                "epoch": self.epoch,
                "questions": {
                    qid: {
                        "window": [[o.seq, int(o.above), o.score, o.capture_ns] for o in q.window],
                        "alert_id": q.alert_id,
                        "quiet_frames": q.quiet_frames,
                        "cooldown_until_ns": q.cooldown_until_ns,
                    }
                    for qid, q in self.questions.items()
                },
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes | None) -> "DebounceState":
        if not text:
            return cls()
        raw = json.loads(text)
        questions = {
            qid: QuestionState(
                window=[Observation(int(s), bool(a), float(sc), int(c)) for s, a, sc, c in q["window"]],
                alert_id=q.get("alert_id"),
                quiet_frames=int(q.get("quiet_frames", 0)),
                cooldown_until_ns=int(q.get("cooldown_until_ns", 0)),
            )
            for qid, q in raw.get("questions", {}).items()
        }
        return cls(int(raw["last_seq"]), int(raw["last_capture_ns"]), int(raw.get("epoch", 0)), questions)


@dataclass(frozen=True)
class Raise:
    """A new alert: k of the last n frames were above threshold."""

    alert_id: str
    question_id: str
    question: str
    defect_type: str
    score: float  # highest score in the window
    threshold: float
    first_seq: int
    last_seq: int
    first_capture_ns: int
    trigger_capture_ns: int


@dataclass(frozen=True)
class Extend:
    """The raised defect is still visible on this frame."""

    alert_id: str
    question_id: str
    seq: int
    score: float


@dataclass(frozen=True)
class Clear:
    """The raised defect has been gone for clear_frames frames; the camera/question may alert again."""

    alert_id: str
    question_id: str
    seq: int


@dataclass
class Decision:
    redelivery: bool  # seen before: nothing to do, nothing to write
    state: DebounceState
    raised: list[Raise] = field(default_factory=list)
    extended: list[Extend] = field(default_factory=list)
    cleared: list[Clear] = field(default_factory=list)


def decide(state: DebounceState, result: InspectionResult, line: LineConfig | None) -> Decision:
    """Apply one result to a camera's state; returns the new state (``state`` is not modified)."""
    if result.seq <= state.last_seq and result.capture_ns <= state.last_capture_ns:
        return Decision(redelivery=True, state=state)

    new = DebounceState.from_json(state.to_json())
    if result.seq <= new.last_seq:
        # The seq went back but the capture time moved on: the camera's publisher
        # restarted its numbering. Old windows are meaningless against new seqs.
        new.epoch += 1
        for q in new.questions.values():
            q.window = []
    new.last_seq, new.last_capture_ns = result.seq, result.capture_ns
    decision = Decision(redelivery=False, state=new)
    if result.status == ResultStatus.skipped:
        return decision

    policy = line.alert_policy if line else AlertPolicy()
    questions = {q.id: q for q in line.questions} if line else {}
    for scored in result.scores:
        configured = questions.get(scored.question_id)
        threshold = configured.threshold_over(scored.threshold) if configured is not None else scored.threshold
        above = scored.score >= threshold
        q = new.questions.setdefault(scored.question_id, QuestionState())
        q.window = [o for o in q.window if o.seq > result.seq - policy.n]
        q.window.append(Observation(result.seq, above, scored.score, result.capture_ns))

        if q.alert_id is not None:
            if above:
                q.quiet_frames = 0
                decision.extended.append(Extend(q.alert_id, scored.question_id, result.seq, scored.score))
                continue
            q.quiet_frames += 1
            if q.quiet_frames >= policy.clear_frames:
                decision.cleared.append(Clear(q.alert_id, scored.question_id, result.seq))
                # The cleared defect's frames must not count towards the next one.
                q.alert_id, q.quiet_frames, q.window = None, 0, []
                q.cooldown_until_ns = result.capture_ns + int(policy.cooldown_s * 1e9)
            continue

        hits = [o for o in q.window if o.above]
        if not above or len(hits) < policy.k or result.capture_ns < q.cooldown_until_ns:
            continue
        first = hits[0]
        alert_id = alert_id_for(result.line_id, result.camera_id, scored.question_id, first.seq, new.epoch)
        decision.raised.append(
            Raise(
                alert_id=alert_id,
                question_id=scored.question_id,
                question=configured.text if configured else scored.question_id,
                defect_type=configured.defect_type if configured else scored.defect_type,
                score=max(o.score for o in hits),
                threshold=threshold,
                first_seq=first.seq,
                last_seq=result.seq,
                first_capture_ns=first.capture_ns,
                trigger_capture_ns=result.capture_ns,
            )
        )
        q.alert_id, q.quiet_frames = alert_id, 0
    return decision
