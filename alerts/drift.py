"""Score drift: each camera's live scores per question against the bundle's calibration reference.

The reference (schemas/drift.py) is ``score_reference`` in the ``bundle.json`` of the configured
model bundle (``model.bundle``), written by ``patchsight model calibrate``; only results of that
bundle's ``model_id`` are compared with it. Without a reference (an uncalibrated bundle, or the
bundle directory not on this host) drift monitoring is off and says why once.

Per (line, camera, question) a sliding window of the last ``alerts.drift.window_frames`` scored
frames is kept in memory: its share of frames in each reference bin gives the population
stability index (PSI) against the reference shares, and its share at or above the reference
threshold the above-threshold rate. Once the window is full, a drift condition starts when the PSI
passes ``psi_bound`` or the rate differs from the reference's by more than ``rate_bound``, and ends
when both are back under ``clear_ratio`` of their bounds (the gap between keeps one shift from
flapping). Windows are per camera because a camera's results stay on one partition and so on one
alert-service instance; they start empty after a restart or a rebalance.

Each start and end is a ``DriftEvent`` written to Redis by one Lua call (docs/redis-keys.md): the
``active`` hash holds a condition while it lasts, and an event is appended to the line's drift
stream and published only when the hash changes, so one drift condition makes one ``raised``
event (also across restarts and instances) and one ``cleared`` event.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import ValidationError

from runtime.log import get_logger
from schemas.config import DriftSettings
from schemas.drift import DriftEvent, DriftReference, ScoreReference, population_stability_index
from schemas.result import InspectionResult, ResultStatus

log = get_logger("alerts.drift")

STATUS_INTERVAL_S = 1.0  # how often the window measures are written for the dashboard

# KEYS: 1 active hash  2 event stream   ARGV: 1 field  2 event  3 event json  4 channel  5 stream maxlen
# Appends and publishes only when the active hash changes: a repeat (another instance, a restart) is silent.
_RECORD_EVENT = """
local changed
if ARGV[2] == 'raised' then
  changed = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[3])
else
  changed = redis.call('HDEL', KEYS[1], ARGV[1])
end
if changed == 0 then return nil end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'event', ARGV[3])
redis.call('PUBLISH', ARGV[4], '{"id":"' .. id .. '",' .. string.sub(ARGV[3], 2))
return id
"""


@dataclass(frozen=True)
class DriftKeys:
    """The drift keys of one key prefix (docs/redis-keys.md)."""

    prefix: str

    def active(self, line_id: str) -> str:
        return f"{self.prefix}:drift:active:{line_id}"

    def status(self, line_id: str) -> str:
        return f"{self.prefix}:drift:status:{line_id}"

    def events(self, line_id: str) -> str:
        return f"{self.prefix}:drift:events:{line_id}"

    def channel(self, line_id: str) -> str:
        return f"{self.prefix}:drift:live:{line_id}"


def read_drift(client: redis.Redis, keys: DriftKeys, line_id: str, recent: int = 20) -> dict:
    """What the dashboard shows of a line: each window's measures (``status``, by "camera/question"),
    the conditions raised and not cleared (``active``), and the latest ``recent`` events, newest first."""
    def decoded(raw: dict) -> dict:
        return {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in raw.items()}

    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.status(line_id))
    pipe.hgetall(keys.active(line_id))
    if recent:  # XREVRANGE refuses COUNT 0
        pipe.xrevrange(keys.events(line_id), count=recent)
    status, active, *found = pipe.execute()
    events = found[0] if found else []
    return {"status": decoded(status), "active": decoded(active),
            "events": [{"id": entry.decode() if isinstance(entry, bytes) else entry, **json.loads(fields[b"event"])}
                       for entry, fields in events]}


@dataclass(frozen=True)
class ModelReference:
    """The configured bundle's model id and its calibration reference."""

    model_id: str
    reference: DriftReference


def load_reference(bundle_dir: Path) -> ModelReference | str:
    """The bundle's reference, or why there is none (a sentence for the log and the dashboard)."""
    path = Path(bundle_dir) / "bundle.json"
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        return f"no reference: {path} does not exist on this host"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"no reference: cannot read {path}: {type(exc).__name__}"
    if not isinstance(spec, dict) or not spec.get("score_reference"):
        return f"no reference: {path} has no score_reference (run `patchsight model calibrate` on the bundle)"
    try:
        reference = DriftReference.model_validate(spec["score_reference"])
    except ValidationError as exc:
        first = exc.errors()[0]
        return f"no reference: score_reference in {path} is invalid at {'.'.join(map(str, first['loc']))}: {first['msg']}"
    return ModelReference(str(spec.get("model_id", "")), reference)


@dataclass
class ScoreWindow:
    """The last frames of one camera and question: their reference bins and whether each was above threshold."""

    reference: ScoreReference
    size: int
    bins: deque = field(default_factory=deque)
    above: deque = field(default_factory=deque)
    counts: list[int] = field(default_factory=list)
    above_count: int = 0
    state: str | None = None  # raised, cleared, None: not decided since the window filled

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.reference.shares)

    def add(self, score: float) -> None:
        b, up = self.reference.bin_of(score), score >= self.reference.threshold
        self.bins.append(b)
        self.above.append(up)
        self.counts[b] += 1
        self.above_count += up
        if len(self.bins) > self.size:
            self.counts[self.bins.popleft()] -= 1
            self.above_count -= self.above.popleft()

    @property
    def full(self) -> bool:
        return len(self.bins) >= self.size

    def psi(self) -> float:
        n = len(self.bins)
        return population_stability_index(self.reference.shares, [c / n for c in self.counts])

    def above_threshold_rate(self) -> float:
        return self.above_count / len(self.bins)


class DriftMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["line", "camera", "question"]
        self.psi = Gauge("patchsight_drift_psi", "PSI of the camera's score window against the calibration reference",
                         labels, registry=registry)
        self.rate = Gauge("patchsight_drift_above_threshold_rate", "Share of the window's frames at or above threshold",
                          labels, registry=registry)
        self.reference_rate = Gauge("patchsight_drift_reference_above_threshold_rate",
                                    "Share of the calibration frames at or above threshold", ["question"],
                                    registry=registry)
        self.active = Gauge("patchsight_drift_active", "1 while the camera's scores on the question have drifted",
                            labels, registry=registry)
        self.events = Counter("patchsight_drift_events", "Drift events written (raised, cleared)",
                              ["line", "question", "event"], registry=registry)


class DriftMonitor:
    """Feeds each result's scores into its windows; ``flush`` writes the drift events, ``publish_status`` the
    windows' measures for the dashboard."""

    def __init__(self, settings: DriftSettings, reference: ModelReference | str, client: redis.Redis,
                 key_prefix: str, stream_maxlen: int, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.redis = client
        self.keys = DriftKeys(key_prefix)
        self.stream_maxlen = stream_maxlen
        self.metrics = DriftMetrics(registry)
        self.reference = reference if isinstance(reference, ModelReference) else None
        self.off_reason = None if settings.enabled else "off: alerts.drift.enabled is false"
        if self.off_reason is None and isinstance(reference, str):
            self.off_reason = reference
        if self.off_reason is None and self.reference is not None:
            for qid, ref in self.reference.reference.questions.items():
                self.metrics.reference_rate.labels(qid).set(ref.above_threshold_rate)
        self._windows: dict[tuple[str, str, str], ScoreWindow] = {}
        self._pending: list[DriftEvent] = []
        self._other_models: set[str] = set()
        self._record = client.register_script(_RECORD_EVENT)
        self._next_status = 0.0
        self._status_moved = False

    @property
    def watching(self) -> bool:
        return self.off_reason is None

    # --- the windows ---

    def observe(self, result: InspectionResult) -> None:
        """Add a scored result of the reference's model to its windows; start or end drift conditions."""
        if not self.watching or result.status != ResultStatus.ok or not result.scores:
            return
        assert self.reference is not None
        if result.model_id != self.reference.model_id:
            if result.model_id not in self._other_models:
                self._other_models.add(result.model_id)
                log.warning("results of another model than the bundle's reference: not compared for drift",
                            model=result.model_id, reference_model=self.reference.model_id)
            return
        for score in result.scores:
            reference = self.reference.reference.questions.get(score.question_id)
            if reference is None:
                continue  # a question the bundle was not calibrated on
            key = (result.line_id, result.camera_id, score.question_id)
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = ScoreWindow(reference, self.settings.window_frames)
            window.add(score.score)
            self._status_moved = True
            if window.full:
                self._judge(key, window, result.capture_ns)

    def _judge(self, key: tuple[str, str, str], window: ScoreWindow, ts_ns: int) -> None:
        s = self.settings
        psi, rate = window.psi(), window.above_threshold_rate()
        gap = abs(rate - window.reference.above_threshold_rate)
        self.metrics.psi.labels(*key).set(psi)
        self.metrics.rate.labels(*key).set(rate)
        reasons = []
        if psi > s.psi_bound:
            reasons.append(f"PSI {psi:.3f} > {s.psi_bound:g}")
        if gap > s.rate_bound:
            reasons.append(f"above-threshold rate {rate:.3f} vs reference "
                           f"{window.reference.above_threshold_rate:.3f} (bound {s.rate_bound:g})")
        if reasons:
            wanted = "raised"
        elif psi < s.psi_bound * s.clear_ratio and gap < s.rate_bound * s.clear_ratio:
            wanted = "cleared"
        else:
            return  # between the bounds: the condition stays as it is
        self.metrics.active.labels(*key).set(wanted == "raised")
        if wanted == window.state:
            return
        window.state = wanted
        assert self.reference is not None
        self._pending.append(DriftEvent(
            event=wanted, line_id=key[0], camera_id=key[1], question_id=key[2], model_id=self.reference.model_id,
            psi=psi, above_threshold_rate=rate,
            reference_above_threshold_rate=window.reference.above_threshold_rate,
            window_frames=len(window.bins), reasons=reasons, ts_ns=ts_ns))

    def forget(self) -> None:
        """Drop every window (the partitions were revoked: their cameras' results now go elsewhere)."""
        self._windows.clear()

    # --- Redis ---

    def flush(self) -> list[tuple[DriftEvent, str]]:
        """Write the pending events (idempotent: safe to retry after a Redis error); returns the events that
        changed Redis, with their stream ids."""
        written = []
        while self._pending:
            event = self._pending[0]
            entry = self._record(keys=[self.keys.active(event.line_id), self.keys.events(event.line_id)],
                                 args=[f"{event.camera_id}/{event.question_id}", event.event, event.to_json(),
                                       self.keys.channel(event.line_id), self.stream_maxlen])
            self._pending.pop(0)
            if entry is not None:
                self.metrics.events.labels(event.line_id, event.question_id, event.event).inc()
                log.warning(f"score drift {event.event}", line=event.line_id, camera=event.camera_id,
                            question=event.question_id, psi=round(event.psi, 3),
                            rate=round(event.above_threshold_rate, 3), reasons=event.reasons)
                written.append((event, entry.decode() if isinstance(entry, bytes) else entry))
        return written

    def publish_status(self, now: float | None = None, force: bool = False) -> None:
        """Every window's measures for the dashboard, at most once a second (``force``: now), when they moved.
        Best effort: a Redis error leaves them for the next call."""
        now = time.monotonic() if now is None else now
        if not self._status_moved or (now < self._next_status and not force):
            return
        try:
            self._write_status()
        except redis.RedisError as exc:
            log.debug("drift status not written; trying again later", error=str(exc))
            return
        self._next_status = now + STATUS_INTERVAL_S
        self._status_moved = False

    def _write_status(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for (line, camera, question), window in self._windows.items():
            status = {"window_frames": len(window.bins), "window_size": window.size, "state": window.state,
                      "reference_above_threshold_rate": window.reference.above_threshold_rate,
                      "ts_ns": time.time_ns()}
            if window.full:
                status |= {"psi": round(window.psi(), 4), "above_threshold_rate": round(window.above_threshold_rate(), 4)}
            pipe.hset(self.keys.status(line), f"{camera}/{question}", json.dumps(status, separators=(",", ":")))
        pipe.execute()
