"""Redis as the alert store (key layout: docs/redis-keys.md).

Every write is one Lua script, so Redis applies it whole or not at all:

* ``apply_result`` stores a camera's new debounce state together with the
  alerts that state raised (record, thumbnail, event, counters, publish) and
  the camera's last-seen/fps. The state write is a compare-and-set on the last
  seq, so two service instances that briefly both own a camera during a
  consumer-group rebalance cannot both act on the same frame. Alert creation is
  idempotent on the alert id, which is derived from what caused the alert.
* ``apply_part`` stores what one result (or a part timeout) did on a part-tracking
  camera (alerts/parts.py decides): its part state, and for a part that ended the
  part's line record, the part counters, the part's alert (raised, or updated with
  another camera's findings) with its event, and the best frame's thumbnail. It is a
  compare-and-set on the camera's state revision, the part record's revision and the
  alert's state: ``step_part`` decides again from fresh state when one moved on.
* ``transition`` moves an alert open -> acknowledged -> resolved, refusing an
  illegal move, and appends/publishes the event in the same step.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import redis

from alerts.parts import PartDecision, PartMerge, PartRecord, PartState, merge_part
from alerts.policy import DebounceState, Decision
from schemas.alert import ALLOWED_TRANSITIONS, AlertState, DefectAlert
from schemas.config import AlertSettings, RedisSettings
from schemas.redaction import redact
from schemas.result import InspectionResult

# The camera's health hash and the line/camera sets, written with every result (both paths).
_CAMERA_HEALTH = r"""
local function camera_health(key, lines, cameras, seq, capture_ns, seen_ns, model, worker, status, line, camera)
  -- Frame rate from the camera's own seq/capture clock, smoothed.
  local prev = redis.call('HMGET', key, 'last_seq', 'last_capture_ns', 'fps')
  local fps = prev[3]
  if prev[1] and prev[2] then
    local frames = tonumber(seq) - tonumber(prev[1])
    local seconds = (tonumber(capture_ns) - tonumber(prev[2])) / 1e9
    if frames > 0 and seconds > 0 then
      local now = frames / seconds
      if fps then now = 0.8 * tonumber(fps) + 0.2 * now end
      fps = string.format('%.3f', now)
    end
  end
  redis.call('HSET', key, 'line_id', line, 'camera_id', camera, 'last_seq', seq, 'last_capture_ns', capture_ns,
    'last_seen_ns', seen_ns, 'model_id', model, 'worker_id', worker, 'last_status', status, 'fps', fps or '0')
  redis.call('SADD', lines, line)
  redis.call('SADD', cameras, camera)
end
"""

_APPLY_RESULT = _CAMERA_HEALTH + r"""
-- KEYS: 1 debounce  2 camera  3 events stream  4 counts  5 lines  6 unresolved  7 line alerts  8 line cameras
-- ARGV: 1 expected seq  2 new seq  3 capture_ns  4 state json  5 seen_ns  6 model_id  7 worker_id  8 status
--       9 line  10 camera  11 key prefix  12 channel  13 stream maxlen  14 thumbnail ttl  15 ops json  16.. thumbnails
local stored = redis.call('HGET', KEYS[1], 'seq')
if (stored or '-1') ~= ARGV[1] then
  return {'conflict', stored or '-1'}
end

local created = {}
for _, op in ipairs(cjson.decode(ARGV[15])) do
  local akey = ARGV[11] .. ':alert:' .. op.id
  if op.kind == 'raise' then
    if redis.call('EXISTS', akey) == 0 then
      redis.call('HSET', akey, unpack(op.fields))
      redis.call('ZADD', KEYS[6], op.raised_ms, op.id)
      redis.call('ZADD', KEYS[7], op.raised_ms, op.id)
      redis.call('HINCRBY', KEYS[4], op.defect_type, 1)
      if op.thumb > 0 then
        redis.call('SET', ARGV[11] .. ':thumb:' .. op.id, ARGV[op.thumb], 'EX', ARGV[14])
      end
      local sid = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[13], '*',
        'event', 'raised', 'alert_id', op.id, 'data', op.event)
      redis.call('PUBLISH', ARGV[12], '{"id":"' .. sid .. '",' .. string.sub(op.event, 2))
      table.insert(created, op.id)
    end
  elseif op.kind == 'extend' then
    if redis.call('EXISTS', akey) == 1 then
      local score = tonumber(redis.call('HGET', akey, 'score') or '0')
      if tonumber(op.score) > score then
        redis.call('HSET', akey, 'score', op.score)
        -- a k-of-n alert's one finding follows its score (the text Python wrote, so no float is re-encoded)
        local findings = redis.call('HGET', akey, 'findings')
        if findings then
          redis.call('HSET', akey, 'findings', (string.gsub(findings, '"score":[^,}]+', '"score":' .. op.score, 1)))
        end
      end
      redis.call('HSET', akey, 'last_defect_seq', op.seq)
    end
  end
end

redis.call('HSET', KEYS[1], 'seq', ARGV[2], 'capture_ns', ARGV[3], 'state', ARGV[4])
camera_health(KEYS[2], KEYS[5], KEYS[8], ARGV[2], ARGV[3], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10])
return {'ok', table.concat(created, ',')}
"""

_TRANSITION = r"""
-- KEYS: 1 alert  2 unresolved  3 events stream
-- ARGV: 1 expected current state  2 fields json (flat list)  3 event json  4 channel  5 maxlen  6 target  7 alert id
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing', ''} end
if state ~= ARGV[1] then return {'changed', state} end
redis.call('HSET', KEYS[1], unpack(cjson.decode(ARGV[2])))
if ARGV[6] == 'resolved' then redis.call('ZREM', KEYS[2], ARGV[7]) end
local sid = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*',
  'event', ARGV[6], 'alert_id', ARGV[7], 'data', ARGV[3])
redis.call('PUBLISH', ARGV[4], '{"id":"' .. sid .. '",' .. string.sub(ARGV[3], 2))
return {'ok', sid}
"""


_APPLY_PART = _CAMERA_HEALTH + r"""
-- KEYS: 1 part state  2 camera  3 events stream  4 counts  5 lines  6 unresolved  7 line alerts  8 line cameras
--       9 part counts  10 pending thumbnails  11 open parts  [12 part record  13 alert  14 alert thumbnail]
-- ARGV: 1 expected rev  2 new rev  3 seq  4 capture_ns  5 state json  6 seen_ns  7 seen_ms  8 model_id
--       9 worker_id  10 status  11 line  12 camera  13 channel  14 stream maxlen  15 thumbnail ttl
--       16 open-parts member  17 '1' when a part is open after this  18 ops json  19 this result's thumbnail
local stored = redis.call('HGET', KEYS[1], 'rev') or '0'
if stored ~= ARGV[1] then return {'conflict', 'state'} end
local ops = cjson.decode(ARGV[18])
local m = ops.merge
if m then
  if (redis.call('HGET', KEYS[12], 'rev') or '0') ~= m.rev then return {'conflict', 'part'} end
  if (redis.call('HGET', KEYS[13], 'state') or '') ~= m.alert_state then return {'conflict', 'alert'} end
end

local event = ''
if m then
  redis.call('HSET', KEYS[12], unpack(m.record))
  redis.call('EXPIRE', KEYS[12], m.record_ttl)
  for name, delta in pairs(m.counts) do redis.call('HINCRBY', KEYS[9], name, delta) end
  local a = m.alert
  if a then
    redis.call('HSET', KEYS[13], unpack(a.fields))
    if a.event == 'raised' then
      redis.call('ZADD', KEYS[6], a.raised_ms, a.id)
      redis.call('ZADD', KEYS[7], a.raised_ms, a.id)
    end
    for _, defect in ipairs(a.defect_types) do redis.call('HINCRBY', KEYS[4], defect, 1) end
    local sid = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[14], '*',
      'event', a.event, 'alert_id', a.id, 'data', a.data)
    redis.call('PUBLISH', ARGV[13], '{"id":"' .. sid .. '",' .. string.sub(a.data, 2))
    event = a.event
  end
  if m.promote then
    local jpeg = redis.call('HGET', KEYS[10], m.promote)
    if jpeg then redis.call('SET', KEYS[14], jpeg, 'EX', ARGV[15]) end
  end
end
for _, name in ipairs(ops.drop) do redis.call('HDEL', KEYS[10], name) end
if ops.keep then
  redis.call('HSET', KEYS[10], ops.keep, ARGV[19])
  redis.call('EXPIRE', KEYS[10], ARGV[15])
end

redis.call('HSET', KEYS[1], 'rev', ARGV[2], 'seq', ARGV[3], 'capture_ns', ARGV[4], 'state', ARGV[5])
if ARGV[17] == '1' then
  redis.call('ZADD', KEYS[11], ARGV[7], ARGV[16])
else
  redis.call('ZREM', KEYS[11], ARGV[16])
end
if ops.health then
  camera_health(KEYS[2], KEYS[5], KEYS[8], ARGV[3], ARGV[4], ARGV[6], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12])
end
return {'ok', event}
"""

# A part's line record is needed while its cameras can still report it; a week covers any line.
PART_RECORD_TTL_S = 7 * 24 * 3600
PART_COUNTERS = ("inspected", "passed", "flagged", "unscored")


class StateConflict(Exception):
    """Another writer moved the camera's debounce or part state, or the part's record, on; reload and decide again."""


@dataclass(frozen=True)
class PartStep:
    """What one result (or one part timeout) did to a camera's parts."""

    decision: PartDecision | None  # None: nothing was due (a timeout not reached)
    merge: PartMerge | None = None  # the line record's change, when a part ended
    event: str = ""  # raised | updated, when the part's alert was created or changed
    conflicts: int = 0  # times another writer moved the state on and the step was decided again


class AlertNotFound(LookupError):
    def __init__(self, alert_id: str) -> None:
        self.alert_id = alert_id
        super().__init__(f"no alert with id {alert_id!r}")


class IllegalTransition(ValueError):
    def __init__(self, alert_id: str, current: AlertState, target: AlertState) -> None:
        self.alert_id, self.current, self.target = alert_id, current, target
        allowed = ", ".join(sorted(s.value for s in ALLOWED_TRANSITIONS[current])) or "nothing (final state)"
        super().__init__(
            f"alert {alert_id} is {current.value}; it cannot become {target.value} (allowed from {current.value}: {allowed})"
        )


@dataclass(frozen=True)
class CameraHealth:
    line_id: str
    camera_id: str
    fps: float
    last_seq: int
    last_seen_ns: int
    model_id: str
    last_status: str

    def age_s(self, now_ns: int | None = None) -> float:
        return ((now_ns or time.time_ns()) - self.last_seen_ns) / 1e9

    def healthy(self, now_ns: int | None = None) -> bool:
        # Silent for several frame intervals (and at least 5 s) means the camera or its pipeline is stuck.
        limit = max(5.0, 5.0 / self.fps) if self.fps > 0 else 5.0
        return self.age_s(now_ns) <= limit


@dataclass(frozen=True)
class AlertEvent:
    """One entry of a line's event stream (and of its pub/sub channel)."""

    id: str  # the stream entry id
    event: str  # raised, acknowledged, resolved
    alert: DefectAlert
    by: str | None
    ts_ns: int

    @classmethod
    def from_json(cls, entry_id: str, data: str | bytes) -> "AlertEvent":
        raw = json.loads(data)
        return cls(entry_id, raw["event"], DefectAlert.model_validate(raw["alert"]), raw.get("by"), int(raw["ts_ns"]))


def event_json(event: str, alert: DefectAlert, by: str | None, ts_ns: int) -> str:
    return json.dumps(
        {"event": event, "alert": alert.model_dump(mode="json"), "by": by, "ts_ns": ts_ns}, separators=(",", ":")
    )


def _hash_fields(alert: DefectAlert) -> list[str]:
    flat: list[str] = []
    for name, value in alert.model_dump(mode="json").items():
        if value is not None:
            # lists (the findings) as JSON; scalars as their text
            flat += [name, json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)]
    return flat


def _alert_from_hash(raw: dict) -> DefectAlert:
    fields: dict[str, Any] = {_text(k): _text(v) for k, v in raw.items()}
    if "findings" in fields:
        fields["findings"] = json.loads(fields["findings"])
    return DefectAlert.model_validate(fields)


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def connect(settings: RedisSettings, **extra: Any) -> redis.Redis:
    options: dict[str, Any] = {"socket_timeout": 5.0, "socket_connect_timeout": 2.0, "health_check_interval": 10}
    options.update(extra)
    return redis.Redis.from_url(settings.url, **settings.client_kwargs(), **options)


class RedisAlertStore:
    def __init__(self, client: redis.Redis, settings: AlertSettings) -> None:
        self.redis = client
        self.settings = settings
        self.prefix = settings.key_prefix
        self._apply = client.register_script(_APPLY_RESULT)
        self._transition = client.register_script(_TRANSITION)
        self._apply_part = client.register_script(_APPLY_PART)

    # --- key layout (docs/redis-keys.md) ---

    def alert_key(self, alert_id: str) -> str:
        return f"{self.prefix}:alert:{alert_id}"

    def thumbnail_key(self, alert_id: str) -> str:
        return f"{self.prefix}:thumb:{alert_id}"

    def events_key(self, line_id: str) -> str:
        return f"{self.prefix}:events:{line_id}"

    def channel(self, line_id: str) -> str:
        return f"{self.prefix}:live:{line_id}"

    def counts_key(self, line_id: str) -> str:
        return f"{self.prefix}:counts:{line_id}"

    def debounce_key(self, line_id: str, camera_id: str) -> str:
        return f"{self.prefix}:debounce:{line_id}:{camera_id}"

    def camera_key(self, line_id: str, camera_id: str) -> str:
        return f"{self.prefix}:camera:{line_id}:{camera_id}"

    @property
    def lines_key(self) -> str:
        return f"{self.prefix}:lines"

    @property
    def unresolved_key(self) -> str:
        return f"{self.prefix}:alerts:unresolved"

    def line_alerts_key(self, line_id: str) -> str:
        return f"{self.prefix}:alerts:line:{line_id}"

    def line_cameras_key(self, line_id: str) -> str:
        return f"{self.prefix}:cameras:{line_id}"

    def part_state_key(self, line_id: str, camera_id: str) -> str:
        return f"{self.prefix}:partstate:{line_id}:{camera_id}"

    def pending_thumbnails_key(self, line_id: str, camera_id: str) -> str:
        return f"{self.prefix}:partframes:{line_id}:{camera_id}"

    def part_record_key(self, part_key: str) -> str:
        return f"{self.prefix}:part:{part_key}"

    def part_counts_key(self, line_id: str) -> str:
        return f"{self.prefix}:partcounts:{line_id}"

    @property
    def open_parts_key(self) -> str:
        return f"{self.prefix}:openparts"

    @property
    def failed_deliveries_key(self) -> str:
        return f"{self.prefix}:webhooks:failed"

    # --- the service's write path ---

    def load_debounce(self, line_id: str, camera_id: str) -> DebounceState:
        return DebounceState.from_json(self.redis.hget(self.debounce_key(line_id, camera_id), "state"))

    def apply(
        self,
        result: InspectionResult,
        previous: DebounceState,
        decision: Decision,
        alerts: list[DefectAlert],
        thumbnail: bytes | None,
        seen_ns: int,
    ) -> list[str]:
        """Store one decided result atomically; returns the ids of the alerts newly created.

        Raises StateConflict when the stored state is no longer ``previous``.
        """
        line, camera = result.line_id, result.camera_id
        ops: list[dict[str, Any]] = []
        thumbnails: list[bytes] = []
        for alert in alerts:
            thumb_arg = 0
            if thumbnail is not None:
                thumbnails.append(thumbnail)
                thumb_arg = 15 + len(thumbnails)
            ops.append(
                {
                    "kind": "raise",
                    "id": alert.alert_id,
                    "fields": _hash_fields(alert),
                    "raised_ms": alert.raised_ns // 1_000_000,
                    "defect_type": alert.defect_type,
                    "thumb": thumb_arg,
                    "event": event_json("raised", alert, None, alert.raised_ns),
                }
            )
        for ext in decision.extended:
            ops.append({"kind": "extend", "id": ext.alert_id, "score": repr(ext.score), "seq": str(ext.seq)})
        keys = [
            self.debounce_key(line, camera),
            self.camera_key(line, camera),
            self.events_key(line),
            self.counts_key(line),
            self.lines_key,
            self.unresolved_key,
            self.line_alerts_key(line),
            self.line_cameras_key(line),
        ]
        args: list[Any] = [
            str(previous.last_seq),
            str(decision.state.last_seq),
            str(decision.state.last_capture_ns),
            decision.state.to_json(),
            str(seen_ns),
            result.model_id,
            result.worker_id,
            result.status.value,
            line,
            camera,
            self.prefix,
            self.channel(line),
            str(self.settings.stream_maxlen),
            str(self.settings.thumbnail_ttl_s),
            json.dumps(ops, separators=(",", ":")),
            *thumbnails,
        ]
        outcome, value = self._apply(keys=keys, args=args)
        if outcome == b"conflict":
            raise StateConflict(f"{line}/{camera}: stored seq {_text(value)}, expected {previous.last_seq}")
        return [i for i in _text(value).split(",") if i]

    # --- the part path (alerts/parts.py decides, this stores) ---

    def load_part_state(self, line_id: str, camera_id: str) -> PartState:
        return PartState.from_json(self.redis.hget(self.part_state_key(line_id, camera_id), "state"))

    def load_part(self, part_key: str) -> tuple[PartRecord, DefectAlert | None]:
        """The line's record of a part, and its alert if it has one."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.part_record_key(part_key))
        pipe.hgetall(self.alert_key(part_key))
        raw_record, raw_alert = pipe.execute()
        alert = _alert_from_hash(raw_alert) if raw_alert else None
        if raw_record:
            raw = {_text(k): _text(v) for k, v in raw_record.items()}
            record = PartRecord(rev=int(raw.get("rev") or 0), verdict=raw.get("verdict") or None,
                                cameras=json.loads(raw.get("cameras") or "[]"),
                                thumbnail_score=float(raw["thumbnail_score"]) if raw.get("thumbnail_score") else None)
        elif alert is not None:
            # the record expired and the part came back: its alert already counted it as flagged
            record = PartRecord(verdict="flagged", cameras=[alert.camera_id])
        else:
            record = PartRecord()
        return record, alert

    def step_part(
        self,
        line_id: str,
        camera_id: str,
        decide: Callable[[PartState], PartDecision | None],
        now_ns: int,
        result: InspectionResult | None = None,
        thumbnail: bytes | None = None,
        attempts: int = 5,
    ) -> PartStep:
        """Load the camera's part state, ``decide`` on it, merge an ended part into its line record, store.

        ``result``: the result decided on (None for a part timeout). Decides again from fresh
        state when another writer moved the camera's state or the part's record on meanwhile.
        """
        for conflicts in range(attempts):
            state = self.load_part_state(line_id, camera_id)
            decision = decide(state)
            if decision is None or decision.redelivery:
                return PartStep(decision, conflicts=conflicts)
            merge, alert = None, None
            if decision.ended is not None:
                record, alert = self.load_part(decision.ended.part_key)
                merge = merge_part(record, alert, decision.ended, now_ns)
            try:
                event = self._apply_part_step(line_id, camera_id, state, decision, merge, alert, result, thumbnail,
                                              now_ns)
            except StateConflict:
                continue
            return PartStep(decision, merge, event, conflicts)
        raise StateConflict(f"{line_id}/{camera_id}: part state or part record kept changing")

    def _apply_part_step(
        self,
        line_id: str,
        camera_id: str,
        previous: PartState,
        decision: PartDecision,
        merge: PartMerge | None,
        alert: DefectAlert | None,
        result: InspectionResult | None,
        thumbnail: bytes | None,
        now_ns: int,
    ) -> str:
        new = decision.state
        ops: dict[str, Any] = {"drop": decision.drop_thumbnails}
        if decision.keep_thumbnail and thumbnail is not None:
            ops["keep"] = decision.keep_thumbnail
        if result is not None:
            ops["health"] = True
        keys = [
            self.part_state_key(line_id, camera_id),
            self.camera_key(line_id, camera_id),
            self.events_key(line_id),
            self.counts_key(line_id),
            self.lines_key,
            self.unresolved_key,
            self.line_alerts_key(line_id),
            self.line_cameras_key(line_id),
            self.part_counts_key(line_id),
            self.pending_thumbnails_key(line_id, camera_id),
            self.open_parts_key,
        ]
        if merge is not None:
            ended = decision.ended
            assert ended is not None
            keys += [self.part_record_key(ended.part_key), self.alert_key(ended.part_key),
                     self.thumbnail_key(ended.part_key)]
            record = merge.record
            m: dict[str, Any] = {
                "rev": str(record.rev - 1),
                "alert_state": alert.state.value if alert is not None else "",
                "record": ["rev", str(record.rev), "verdict", record.verdict, "cameras", json.dumps(record.cameras),
                           "line_id", line_id, "part_id", ended.part_id, "source", ended.source,
                           *(["thumbnail_score", repr(record.thumbnail_score)] if record.thumbnail_score is not None
                             else [])],
                "record_ttl": PART_RECORD_TTL_S,
                "counts": merge.counts,
            }
            if merge.alert is not None:
                m["alert"] = {
                    "id": merge.alert.alert_id,
                    "event": merge.event,
                    "fields": _hash_fields(merge.alert),
                    "raised_ms": str(merge.alert.raised_ns // 1_000_000),
                    "defect_types": merge.new_defect_types,
                    "data": event_json(merge.event or "raised", merge.alert, None, now_ns),
                }
            if merge.promote_thumbnail:
                m["promote"] = merge.promote_thumbnail
            ops["merge"] = m
        args: list[Any] = [
            str(previous.rev),
            str(new.rev),
            str(new.last_seq),
            str(new.last_capture_ns),
            new.to_json(),
            str(now_ns),
            str(now_ns // 1_000_000),
            result.model_id if result else "",
            result.worker_id if result else "",
            result.status.value if result else "",
            line_id,
            camera_id,
            self.channel(line_id),
            str(self.settings.stream_maxlen),
            str(self.settings.thumbnail_ttl_s),
            f"{line_id}:{camera_id}",
            "1" if new.part is not None else "0",
            json.dumps(ops, separators=(",", ":")),
            thumbnail if thumbnail is not None and "keep" in ops else b"",
        ]
        outcome, value = self._apply_part(keys=keys, args=args)
        if outcome == b"conflict":
            raise StateConflict(f"{line_id}/{camera_id}: the {_text(value)} moved on")
        return _text(value) or ""

    def open_parts(self, seen_before_ns: int | None = None) -> list[tuple[str, str]]:
        """(line, camera) of the cameras with a part in view, last heard of before ``seen_before_ns``."""
        top = "+inf" if seen_before_ns is None else seen_before_ns // 1_000_000
        members = self.redis.zrangebyscore(self.open_parts_key, "-inf", top)
        return [tuple(_text(m).split(":", 1)) for m in members]  # type: ignore[misc]

    def part_counts(self, line_id: str) -> dict[str, int]:
        """The line's parts: inspected (passed + flagged), passed, flagged, unscored (no frame was scored)."""
        raw = {_text(k): int(v) for k, v in self.redis.hgetall(self.part_counts_key(line_id)).items()}
        return {name: raw.get(name, 0) for name in PART_COUNTERS}

    # --- operators ---

    def transition(self, alert_id: str, target: AlertState, by: str, now_ns: int | None = None) -> DefectAlert:
        """Move an alert to ``target`` (acknowledged or resolved), recording who and when."""
        now_ns = now_ns or time.time_ns()
        for _ in range(5):
            alert = self.get_alert(alert_id)
            if alert is None:
                raise AlertNotFound(alert_id)
            if target not in ALLOWED_TRANSITIONS[alert.state]:
                raise IllegalTransition(alert_id, alert.state, target)
            who = {"state": target, f"{target.value}_by": by, f"{target.value}_ns": now_ns}
            updated = alert.model_copy(update=who)
            fields = ["state", target.value, f"{target.value}_by", by, f"{target.value}_ns", str(now_ns)]
            outcome, value = self._transition(
                keys=[self.alert_key(alert_id), self.unresolved_key, self.events_key(alert.line_id)],
                args=[
                    alert.state.value,
                    json.dumps(fields),
                    event_json(target.value, updated, by, now_ns),
                    self.channel(alert.line_id),
                    str(self.settings.stream_maxlen),
                    target.value,
                    alert_id,
                ],
            )
            if outcome == b"ok":
                return updated
            if outcome == b"missing":
                raise AlertNotFound(alert_id)
            # Someone else moved it between our read and our write: judge again against the new state.
        raise RuntimeError(f"alert {alert_id} kept changing; try again")

    def acknowledge(self, alert_id: str, by: str) -> DefectAlert:
        return self.transition(alert_id, AlertState.acknowledged, by)

    def resolve(self, alert_id: str, by: str) -> DefectAlert:
        return self.transition(alert_id, AlertState.resolved, by)

    # --- reads ---

    def get_alert(self, alert_id: str) -> DefectAlert | None:
        raw = self.redis.hgetall(self.alert_key(alert_id))
        if not raw:
            return None
        return _alert_from_hash(raw)

    def thumbnail(self, alert_id: str) -> bytes | None:
        return self.redis.get(self.thumbnail_key(alert_id))

    def list_alerts(self, line_id: str | None = None, unresolved_only: bool = True, limit: int = 200) -> list[DefectAlert]:
        """Newest first: the unresolved ones, or (``unresolved_only=False``) all, of one line or every line."""
        if unresolved_only:
            # one index across lines: a line's alerts are picked out of all of them below
            scored = self.redis.zrevrange(self.unresolved_key, 0, -1 if line_id else limit - 1, withscores=True)
        else:
            lines = [line_id] if line_id else self.lines()
            pipe = self.redis.pipeline(transaction=False)  # one round trip, however many lines
            for line in lines:
                pipe.zrevrange(self.line_alerts_key(line), 0, limit - 1, withscores=True)
            scored = sorted((a for per_line in pipe.execute() for a in per_line), key=lambda item: item[1],
                            reverse=True)[:limit]
        ids = [_text(alert_id) for alert_id, _ in scored]
        pipe = self.redis.pipeline(transaction=False)
        for alert_id in ids:
            pipe.hgetall(self.alert_key(alert_id))
        alerts = []
        for raw in pipe.execute():
            if raw:
                alert = _alert_from_hash(raw)
                if line_id is None or alert.line_id == line_id:
                    alerts.append(alert)
        return alerts[:limit]

    def lines(self) -> list[str]:
        return sorted(_text(x) for x in self.redis.smembers(self.lines_key))

    def cameras(self, line_id: str | None = None) -> list[CameraHealth]:
        found = []
        for line in [line_id] if line_id else self.lines():
            for camera in sorted(_text(c) for c in self.redis.smembers(self.line_cameras_key(line))):
                raw = {_text(k): _text(v) for k, v in self.redis.hgetall(self.camera_key(line, camera)).items()}
                if raw:
                    found.append(
                        CameraHealth(
                            line_id=line,
                            camera_id=camera,
                            fps=float(raw.get("fps") or 0),
                            last_seq=int(raw.get("last_seq") or -1),
                            last_seen_ns=int(raw.get("last_seen_ns") or 0),
                            model_id=raw.get("model_id") or "",
                            last_status=raw.get("last_status") or "",
                        )
                    )
        return found

    def counts(self, line_id: str) -> dict[str, int]:
        return {_text(k): int(v) for k, v in self.redis.hgetall(self.counts_key(line_id)).items()}

    def events(self, line_id: str, after: str = "0-0", count: int = 100) -> list[AlertEvent]:
        entries = self.redis.xrange(self.events_key(line_id), min=f"({after}" if after != "0-0" else "-", count=count)
        return [AlertEvent.from_json(_text(eid), fields[b"data"]) for eid, fields in entries]

    def follow(self, line_ids: list[str], block_ms: int = 1000, start: str = "$") -> Iterator[AlertEvent | None]:
        """Yield new events of these lines as they arrive (None after each quiet ``block_ms``)."""
        cursors = {self.events_key(line): start for line in line_ids}
        while True:
            batch = self.redis.xread(cursors, block=block_ms, count=100)
            if not batch:
                yield None
                continue
            for stream, entries in batch:
                for eid, fields in entries:
                    cursors[_text(stream)] = _text(eid)
                    yield AlertEvent.from_json(_text(eid), fields[b"data"])

    # --- webhook failures ---

    def record_failed_delivery(self, url: str, event_id: str, alert_id: str, attempts: int, error: str, body: bytes) -> None:
        """Keep a delivery that failed for good; secrets in the URL (and in an error quoting it) are masked."""
        self.redis.xadd(
            self.failed_deliveries_key,
            {
                "url": redact(url),
                "event_id": event_id,
                "alert_id": alert_id,
                "attempts": attempts,
                "error": redact(error[:1000]),
                "failed_ns": time.time_ns(),
                "body": body,
            },
            maxlen=self.settings.stream_maxlen,
            approximate=True,
        )

    def failed_deliveries(self, count: int = 100) -> list[dict[str, str]]:
        entries = self.redis.xrevrange(self.failed_deliveries_key, count=count)
        return [{"id": _text(eid), **{_text(k): _text(v) for k, v in f.items()}} for eid, f in entries]
