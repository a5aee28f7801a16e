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
* ``verdict`` stores an operator's verdict next to its alert (or reviewed part), and for an
  alert appends/publishes the ``verdict`` event in the same step.
* ``store_evidence`` keeps one frame an alert or review asked for (``apply_result``,
  ``apply_part`` and ``offer_review`` ask, in the step that raised it), evicting the line's
  oldest evidence to stay within ``alerts.evidence_max_bytes_per_line``.
* ``offer_review`` keeps the passed part nearest a threshold of the line's current review
  slot, and turns the previous slot's candidate into a review item.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import redis
from pydantic import BaseModel

from alerts.parts import PartDecision, PartMerge, PartRecord, PartState, merge_part
from alerts.policy import DebounceState, Decision
from schemas.alert import ALLOWED_TRANSITIONS, AlertState, DefectAlert
from schemas.config import AlertSettings, RedisSettings
from schemas.feedback import EvidenceFrame, OperatorVerdict, ReviewItem, VerdictSubject
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
      for _, w in ipairs(op.evidence or {}) do redis.call('HSET', ARGV[11] .. ':evidence:wanted', w[1], w[2]) end
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
--       9 part counts  10 pending thumbnails  11 open parts  [12 part record  13 alert  14 alert thumbnail
--       15 wanted evidence]
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
    for _, w in ipairs(a.evidence or {}) do redis.call('HSET', KEYS[15], w[1], w[2]) end
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

_VERDICT = r"""
-- KEYS: 1 subject (alert or review record)  2 verdict  3 line verdicts  4 events stream  5 open reviews
-- ARGV: 1 expected alert state  2 expected alert findings  3 verdict fields json (flat list)  4 line member
--       5 ts ms  6 event json ('' for a review: no event)  7 channel  8 maxlen  9 subject id  10 review id or ''
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing', ''} end
if ARGV[6] ~= '' then
  -- the event carries the alert as read: it must still be so
  local now = redis.call('HMGET', KEYS[1], 'state', 'findings')
  if (now[1] or '') ~= ARGV[1] or (now[2] or '') ~= ARGV[2] then return {'changed', ''} end
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], unpack(cjson.decode(ARGV[3])))
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])
if ARGV[10] ~= '' then redis.call('ZREM', KEYS[5], ARGV[10]) end
local sid = ''
if ARGV[6] ~= '' then
  sid = redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'event', 'verdict', 'alert_id', ARGV[9], 'data', ARGV[6])
  redis.call('PUBLISH', ARGV[7], '{"id":"' .. sid .. '",' .. string.sub(ARGV[6], 2))
end
return {'ok', sid}
"""

_STORE_EVIDENCE = r"""
-- KEYS: 1 wanted evidence  2 the owner's evidence  3 line evidence index  4 line evidence sizes  5 line evidence total
--       6 the owner's evidence boxes
-- ARGV: 1 wanted field  2 frame name  3 jpeg  4 bound (bytes)  5 owner member  6 owner ms  7 key prefix
--       8 the part's box on the frame ("x0,y0,x1,y1"; '' when none)
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return {'done', 0, 0} end  -- another instance kept it
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return {'done', 0, 0} end
local size = string.len(ARGV[3])
if size > tonumber(ARGV[4]) then return {'too-large', 0, 0} end
local total = tonumber(redis.call('GET', KEYS[5]) or '0')
local evicted, freed = 0, 0
while total + size > tonumber(ARGV[4]) do
  -- the oldest owner goes whole: its frames, its size and its place in the index
  local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  local oldest = first[1]
  if not oldest then break end
  if oldest ~= ARGV[5] and tonumber(first[2]) > tonumber(ARGV[6]) then
    -- the frame's own alert/review is older than all that is kept: it is the one to go
    return {'evicted', evicted + 1, freed + size}
  end
  local bytes = tonumber(redis.call('HGET', KEYS[4], oldest) or '0')
  redis.call('DEL', ARGV[7] .. ':evidence:' .. oldest, ARGV[7] .. ':evidencebox:' .. oldest)
  redis.call('ZREM', KEYS[3], oldest)
  redis.call('HDEL', KEYS[4], oldest)
  total = total - bytes
  evicted = evicted + 1
  freed = freed + bytes
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if ARGV[8] ~= '' then redis.call('HSET', KEYS[6], ARGV[2], ARGV[8]) end
redis.call('ZADD', KEYS[3], 'NX', ARGV[6], ARGV[5])
redis.call('HINCRBY', KEYS[4], ARGV[5], size)
redis.call('SET', KEYS[5], total + size)
return {'kept', evicted, freed}
"""

_OFFER_REVIEW = r"""
-- KEYS: 1 the line's review candidate  2 open reviews  3 line reviews  4 wanted evidence
-- ARGV: 1 slot  2 closeness  3 candidate json ({id, fields, evidence, ms}; '' only closes ended slots)  4 key prefix
-- A slot keeps one candidate, the nearest a threshold so far; once its slot has ended, it becomes a review item.
local function promote(text)
  local c = cjson.decode(text)
  redis.call('HSET', ARGV[4] .. ':review:' .. c.id, unpack(c.fields))
  redis.call('ZADD', KEYS[2], c.ms, c.id)
  redis.call('ZADD', KEYS[3], c.ms, c.id)
  for _, w in ipairs(c.evidence) do redis.call('HSET', KEYS[4], w[1], w[2]) end
  return c.id
end
local cur = redis.call('HMGET', KEYS[1], 'slot', 'closeness', 'candidate')
local promoted = ''
if cur[1] then
  local held, slot = tonumber(cur[1]), tonumber(ARGV[1])
  if slot < held then return {'late', ''} end  -- another instance's clock is ahead: its slot stands
  if slot > held then
    promoted = promote(cur[3])
    redis.call('DEL', KEYS[1])
  elseif ARGV[3] == '' or tonumber(ARGV[2]) <= tonumber(cur[2]) then
    return {'kept', ''}
  end
end
if ARGV[3] == '' then return {'closed', promoted} end
redis.call('HSET', KEYS[1], 'slot', ARGV[1], 'closeness', ARGV[2], 'candidate', ARGV[3])
return {'candidate', promoted}
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


class ReviewNotFound(LookupError):
    def __init__(self, review_id: str) -> None:
        self.review_id = review_id
        super().__init__(f"no review item with id {review_id!r}")


@dataclass(frozen=True)
class WantedEvidence:
    """A frame an alert or review item asked to keep, not yet read back from Kafka."""

    field: str  # its field in the wanted-evidence hash
    subject: VerdictSubject
    owner_id: str  # the alert or review id
    line_id: str
    frame: EvidenceFrame
    owner_ms: int  # when its alert was raised (review item sampled): the order evidence is evicted in

    @property
    def owner(self) -> str:
        return f"{self.subject.value}:{self.owner_id}"


@dataclass(frozen=True)
class EvidenceKept:
    # kept | done (already kept, or by another instance) | too-large (bigger than the whole bound) |
    # evicted (its alert/review is older than all the line keeps: evicted on arrival, counted in ``evicted``)
    outcome: str
    evicted: int  # alerts/reviews whose evidence was evicted to make room
    freed_bytes: int


def wanted_evidence_pairs(subject: VerdictSubject, owner_id: str, line_id: str,
                          frames: tuple[EvidenceFrame, ...] | list[EvidenceFrame], owner_ns: int) -> list[list[str]]:
    """The wanted-evidence hash entries (field, value) that ask to keep ``frames`` for one owner."""
    return [[f"{subject.value}:{owner_id}|{frame.name}",
             json.dumps({"line_id": line_id, "frame": frame.model_dump(), "ms": owner_ns // 1_000_000},
                        separators=(",", ":"))]
            for frame in frames]


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
    event: str  # raised, updated, acknowledged, resolved, verdict
    alert: DefectAlert
    by: str | None
    ts_ns: int
    verdict: OperatorVerdict | None = None  # with a verdict event

    @classmethod
    def from_json(cls, entry_id: str, data: str | bytes) -> "AlertEvent":
        raw = json.loads(data)
        verdict = OperatorVerdict.model_validate(raw["verdict"]) if raw.get("verdict") else None
        return cls(entry_id, raw["event"], DefectAlert.model_validate(raw["alert"]), raw.get("by"), int(raw["ts_ns"]),
                   verdict)


def event_json(event: str, alert: DefectAlert, by: str | None, ts_ns: int,
               verdict: OperatorVerdict | None = None) -> str:
    body: dict[str, Any] = {"event": event, "alert": alert.model_dump(mode="json"), "by": by, "ts_ns": ts_ns}
    if verdict is not None:
        body["verdict"] = verdict.model_dump(mode="json")
    return json.dumps(body, separators=(",", ":"))


def _hash_fields(record: BaseModel) -> list[str]:
    flat: list[str] = []
    for name, value in record.model_dump(mode="json").items():
        if value is not None:
            # lists (the findings) as JSON; scalars as their text
            flat += [name, json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)]
    return flat


def _alert_from_hash(raw: dict) -> DefectAlert:
    fields: dict[str, Any] = {_text(k): _text(v) for k, v in raw.items()}
    if "findings" in fields:
        fields["findings"] = json.loads(fields["findings"])
    return DefectAlert.model_validate(fields)


def _review_from_hash(raw: dict) -> ReviewItem | None:
    return ReviewItem.model_validate(_decoded_hash(raw, ("scores", "thresholds", "evidence"))) if raw else None


def _decoded_hash(raw: dict, json_fields: tuple[str, ...]) -> dict[str, Any]:
    fields: dict[str, Any] = {_text(k): _text(v) for k, v in raw.items()}
    for name in json_fields:
        if name in fields:
            fields[name] = json.loads(fields[name])
    return fields


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _frame_order(name: str) -> tuple[str, int]:
    camera, _, seq = name.rpartition(":")
    return camera, int(seq) if seq.isdigit() else -1


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
        self._verdict = client.register_script(_VERDICT)
        self._store_evidence = client.register_script(_STORE_EVIDENCE)
        self._offer_review = client.register_script(_OFFER_REVIEW)

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

    def verdict_key(self, subject: VerdictSubject, subject_id: str) -> str:
        return f"{self.prefix}:verdict:{subject.value}:{subject_id}"

    def line_verdicts_key(self, line_id: str) -> str:
        return f"{self.prefix}:verdicts:{line_id}"

    def evidence_key(self, subject: VerdictSubject, owner_id: str) -> str:
        return f"{self.prefix}:evidence:{subject.value}:{owner_id}"

    def evidence_boxes_key(self, subject: VerdictSubject, owner_id: str) -> str:
        return f"{self.prefix}:evidencebox:{subject.value}:{owner_id}"

    @property
    def wanted_evidence_key(self) -> str:
        return f"{self.prefix}:evidence:wanted"

    def evidence_index_key(self, line_id: str) -> str:
        return f"{self.prefix}:evidenceindex:{line_id}"

    def evidence_sizes_key(self, line_id: str) -> str:
        return f"{self.prefix}:evidencesizes:{line_id}"

    def evidence_total_key(self, line_id: str) -> str:
        return f"{self.prefix}:evidencebytes:{line_id}"

    def review_key(self, review_id: str) -> str:
        return f"{self.prefix}:review:{review_id}"

    @property
    def open_reviews_key(self) -> str:
        return f"{self.prefix}:reviews:open"

    def line_reviews_key(self, line_id: str) -> str:
        return f"{self.prefix}:reviews:line:{line_id}"

    def review_candidate_key(self, line_id: str) -> str:
        return f"{self.prefix}:reviewslot:{line_id}"

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
        # the frame that completed the window is the alert's evidence
        evidence = [EvidenceFrame(camera_id=camera, seq=result.seq, **result.frame.model_dump())] if result.frame else []
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
                    "evidence": wanted_evidence_pairs(VerdictSubject.alert, alert.alert_id, line, evidence,
                                                      alert.raised_ns),
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
                     self.thumbnail_key(ended.part_key), self.wanted_evidence_key]
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
                    "evidence": wanted_evidence_pairs(VerdictSubject.alert, merge.alert.alert_id, line_id,
                                                      merge.evidence, merge.alert.raised_ns),
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

    # --- operator verdicts (schemas/feedback.py) ---

    def record_verdict(self, alert_id: str, defective: bool, by: str, defect_type: str | None = None,
                       now_ns: int | None = None) -> OperatorVerdict:
        """An operator's verdict on an alert: confirmed (``defective``) or a false alarm.

        Stored next to the alert (a later verdict replaces it) and announced as a ``verdict``
        event in the same step. Raises AlertNotFound; ValueError for a defect type on a false alarm.
        """
        now_ns = now_ns or time.time_ns()
        for _ in range(5):
            raw = self.redis.hgetall(self.alert_key(alert_id))
            if not raw:
                raise AlertNotFound(alert_id)
            alert = _alert_from_hash(raw)
            verdict = OperatorVerdict(subject=VerdictSubject.alert, subject_id=alert_id, line_id=alert.line_id,
                                      part_id=alert.part_id, defective=defective, defect_type=defect_type, by=by,
                                      ts_ns=now_ns)
            outcome, _ = self._verdict(
                keys=[self.alert_key(alert_id), self.verdict_key(VerdictSubject.alert, alert_id),
                      self.line_verdicts_key(alert.line_id), self.events_key(alert.line_id), self.open_reviews_key],
                args=[_text(raw.get(b"state")) or "", _text(raw.get(b"findings")) or "",
                      json.dumps(_hash_fields(verdict)), f"alert:{alert_id}", str(now_ns // 1_000_000),
                      event_json("verdict", alert, by, now_ns, verdict), self.channel(alert.line_id),
                      str(self.settings.stream_maxlen), alert_id, ""],
            )
            if outcome == b"ok":
                return verdict
            if outcome == b"missing":
                raise AlertNotFound(alert_id)
            # the alert changed between our read and our write: announce it as it is now
        raise RuntimeError(f"alert {alert_id} kept changing; try again")

    def record_review_verdict(self, review_id: str, defective: bool, by: str, defect_type: str | None = None,
                              now_ns: int | None = None) -> OperatorVerdict:
        """An operator's verdict on a reviewed part: good, or defective (optionally which defect)."""
        now_ns = now_ns or time.time_ns()
        item = self.get_review(review_id)
        if item is None:
            raise ReviewNotFound(review_id)
        verdict = OperatorVerdict(subject=VerdictSubject.review, subject_id=review_id, line_id=item.line_id,
                                  part_id=item.part_id, defective=defective, defect_type=defect_type, by=by,
                                  ts_ns=now_ns)
        outcome, _ = self._verdict(
            keys=[self.review_key(review_id), self.verdict_key(VerdictSubject.review, review_id),
                  self.line_verdicts_key(item.line_id), self.events_key(item.line_id), self.open_reviews_key],
            args=["", "", json.dumps(_hash_fields(verdict)), f"review:{review_id}", str(now_ns // 1_000_000), "", "",
                  str(self.settings.stream_maxlen), review_id, review_id],
        )
        if outcome == b"missing":
            raise ReviewNotFound(review_id)
        return verdict

    def verdicts(self, subject: VerdictSubject, subject_ids: list[str]) -> dict[str, OperatorVerdict]:
        """The verdicts given on these alerts or review items (those without one are left out)."""
        pipe = self.redis.pipeline(transaction=False)
        for subject_id in subject_ids:
            pipe.hgetall(self.verdict_key(subject, subject_id))
        return {subject_id: OperatorVerdict.model_validate(_decoded_hash(raw, ()))
                for subject_id, raw in zip(subject_ids, pipe.execute()) if raw}

    def verdict(self, subject: VerdictSubject, subject_id: str) -> OperatorVerdict | None:
        return self.verdicts(subject, [subject_id]).get(subject_id)

    def judged(self, line_id: str) -> list[tuple[VerdictSubject, str]]:
        """(subject, id) of every alert and review item of the line an operator gave a verdict on, oldest first."""
        members = (_text(m).split(":", 1) for m in self.redis.zrange(self.line_verdicts_key(line_id), 0, -1))
        return [(VerdictSubject(subject), subject_id) for subject, subject_id in members]

    # --- evidence: full-resolution frames of alerts and review items (alerts/evidence.py reads them back) ---

    def wanted_evidence(self, count: int = 50) -> list[WantedEvidence]:
        """Some of the frames asked for and not yet kept (any order)."""
        _, found = self.redis.hscan(self.wanted_evidence_key, 0, count=count)
        wanted = []
        for name, value in list(found.items())[:count]:
            field, raw = _text(name), json.loads(value)
            subject, owner_id = field.split("|", 1)[0].split(":", 1)
            wanted.append(WantedEvidence(field, VerdictSubject(subject), owner_id, raw["line_id"],
                                         EvidenceFrame.model_validate(raw["frame"]), int(raw["ms"])))
        return wanted

    def keep_evidence(self, wanted: WantedEvidence, jpeg: bytes) -> EvidenceKept:
        """Keep one wanted frame, evicting the line's oldest evidence (whole alerts/reviews) beyond the bound."""
        outcome, evicted, freed = self._store_evidence(
            keys=[self.wanted_evidence_key, self.evidence_key(wanted.subject, wanted.owner_id),
                  self.evidence_index_key(wanted.line_id), self.evidence_sizes_key(wanted.line_id),
                  self.evidence_total_key(wanted.line_id), self.evidence_boxes_key(wanted.subject, wanted.owner_id)],
            args=[wanted.field, wanted.frame.name, jpeg, str(self.settings.evidence_max_bytes_per_line),
                  wanted.owner, str(wanted.owner_ms), self.prefix,
                  ",".join(map(str, wanted.frame.box)) if wanted.frame.box else ""],
        )
        return EvidenceKept(_text(outcome), int(evicted), int(freed))

    def drop_wanted(self, wanted: WantedEvidence) -> None:
        """Give up on a wanted frame (no longer on Kafka)."""
        self.redis.hdel(self.wanted_evidence_key, wanted.field)

    def evidence_frames(self, subject: VerdictSubject, owner_id: str) -> list[str]:
        """Names (``{camera}:{seq}``) of the frames kept for an alert or review item."""
        return self.evidence_frames_of(subject, [owner_id])[owner_id]

    def evidence_frames_of(self, subject: VerdictSubject, owner_ids: list[str]) -> dict[str, list[str]]:
        """``evidence_frames`` of several alerts or review items, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for owner_id in owner_ids:
            pipe.hkeys(self.evidence_key(subject, owner_id))
        return {owner_id: sorted((_text(name) for name in names), key=_frame_order)
                for owner_id, names in zip(owner_ids, pipe.execute())}

    def evidence(self, subject: VerdictSubject, owner_id: str, name: str) -> bytes | None:
        return self.redis.hget(self.evidence_key(subject, owner_id), name)

    def evidence_boxes(self, subject: VerdictSubject, owner_id: str) -> dict[str, tuple[int, int, int, int]]:
        """The part's box on each kept frame that the worker tracked it on, by frame name."""
        raw = self.redis.hgetall(self.evidence_boxes_key(subject, owner_id))
        return {_text(name): tuple(int(v) for v in _text(box).split(",")) for name, box in raw.items()}  # type: ignore[misc]

    def evidence_bytes(self, line_id: str) -> int:
        return int(self.redis.get(self.evidence_total_key(line_id)) or 0)

    # --- the review sample of passed parts (alerts/review.py decides) ---

    def offer_review(self, item: ReviewItem | None, line_id: str, slot: int) -> tuple[str, str | None]:
        """Offer a passed part for the line's review ``slot`` (None: only close the slots that have ended).

        Returns (outcome, the id of the previous slot's candidate if it became a review item now);
        outcome: candidate (it is the slot's nearest so far), kept (the slot holds a nearer one),
        closed, late (a later slot is already open).
        """
        candidate = ""
        if item is not None:
            candidate = json.dumps({
                "id": item.review_id, "fields": _hash_fields(item), "ms": item.sampled_ns // 1_000_000,
                "evidence": wanted_evidence_pairs(VerdictSubject.review, item.review_id, line_id, item.evidence,
                                                  item.sampled_ns),
            }, separators=(",", ":"))
        outcome, promoted = self._offer_review(
            keys=[self.review_candidate_key(line_id), self.open_reviews_key, self.line_reviews_key(line_id),
                  self.wanted_evidence_key],
            args=[str(slot), repr(item.closeness) if item else "-1", candidate, self.prefix],
        )
        return _text(outcome), _text(promoted) or None

    def get_review(self, review_id: str) -> ReviewItem | None:
        return _review_from_hash(self.redis.hgetall(self.review_key(review_id)))

    def list_reviews(self, line_id: str | None = None, open_only: bool = True, limit: int = 200) -> list[ReviewItem]:
        """Newest first: the review items awaiting a verdict, or (``open_only=False``) all of one line."""
        if open_only:
            # one index across lines: a line's items are picked out of all of them below
            ids = self.redis.zrevrange(self.open_reviews_key, 0, -1 if line_id else limit - 1)
        else:
            if line_id is None:
                raise ValueError("all review items are listed per line")
            ids = self.redis.zrevrange(self.line_reviews_key(line_id), 0, limit - 1)
        pipe = self.redis.pipeline(transaction=False)
        for review_id in ids:
            pipe.hgetall(self.review_key(_text(review_id)))
        items = [item for item in map(_review_from_hash, pipe.execute()) if item is not None]
        return [i for i in items if line_id is None or i.line_id == line_id][:limit]

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
