"""Webhooks: each alert event POSTed as signed JSON to every configured URL (docs/webhooks.md).

Delivery reads the lines' event streams through a Redis consumer group, so an
event is acknowledged only after every webhook got it or failed for good: a
service that dies mid-delivery leaves the event pending and it is delivered
again (receivers dedupe on ``X-Patchsight-Delivery``). Failures for good are
kept in the ``webhooks:failed`` stream.

Signature: ``X-Patchsight-Signature: sha256=hex(HMAC-SHA256(secret, f"{ts}.{body}"))``
with ``ts`` = ``X-Patchsight-Timestamp`` (Unix seconds). Receivers check it
with ``verify_signature``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import httpx
import redis

from alerts.store import RedisAlertStore
from runtime.log import get_logger
from schemas.config import Webhook

log = get_logger("alerts.webhooks")

GROUP = "webhooks"
RETRY_CAP_S = 60.0
# When the consumer group is first created it starts at the stream's beginning
# (so nothing written before the dispatcher started is missed); events older
# than this are not worth announcing any more.
MAX_EVENT_AGE_S = 3600.0


def signature(secret: str | bytes, timestamp: str, body: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str | bytes,
    timestamp: str,
    body: bytes,
    sig: str,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """True when ``sig`` signs ``timestamp`` + ``body`` with ``secret`` and the timestamp is recent.

    The tolerance bounds how long a captured request can be replayed.
    """
    try:
        sent = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), sig or "")


def _permanent(status: int) -> bool:
    # A 4xx means the receiver refuses this request; sending it again will not help.
    return 400 <= status < 500 and status not in (408, 425, 429)


class WebhookSender:
    """Delivers one body to one webhook with retries; records a failure for good in Redis."""

    def __init__(
        self,
        store: RedisAlertStore,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        on_outcome: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.client = client or httpx.Client()
        self.sleep = sleep
        self.on_outcome = on_outcome or (lambda outcome: None)

    def deliver(self, hook: Webhook, event_id: str, event: str, alert_id: str, body: bytes) -> bool:
        error = ""
        attempt = 0
        for attempt in range(1, hook.max_attempts + 1):
            ts = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "patchsight-alerts",
                "X-Patchsight-Event": event,
                "X-Patchsight-Delivery": event_id,
                "X-Patchsight-Timestamp": ts,
                "X-Patchsight-Signature": signature(hook.secret.get_secret_value(), ts, body),
            }
            try:
                response = self.client.post(hook.url, content=body, headers=headers, timeout=hook.timeout_s)
                if response.status_code < 300:
                    self.on_outcome("delivered")
                    return True
                error = f"HTTP {response.status_code}"
                if _permanent(response.status_code):
                    break
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            log.warning("webhook attempt failed", url=hook.url, event_id=event_id, attempt=attempt, error=error)
            if attempt < hook.max_attempts:
                self.on_outcome("retried")
                self.sleep(min(RETRY_CAP_S, hook.retry_initial_s * 2 ** (attempt - 1)))
        log.error("webhook delivery failed for good", url=hook.url, event_id=event_id, attempts=attempt, error=error)
        self.on_outcome("failed")
        self.store.record_failed_delivery(hook.url, event_id, alert_id, attempt, error, body)
        return False


class WebhookDispatcher:
    """Reads every line's event stream (consumer group ``webhooks``) and fans events out to the webhooks."""

    def __init__(
        self,
        store: RedisAlertStore,
        webhooks: list[Webhook],
        consumer: str,
        sender: WebhookSender | None = None,
        block_ms: int = 1000,
    ) -> None:
        self.store = store
        self.webhooks = webhooks
        self.consumer = consumer
        self.sender = sender or WebhookSender(store)
        self.block_ms = block_ms
        self._grouped: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=max(2, min(8, len(webhooks) * 2)), thread_name_prefix="webhook")
        self._last_claim = 0.0

    def _streams(self) -> list[str]:
        streams = []
        for line in self.store.lines():
            key = self.store.events_key(line)
            if key not in self._grouped:
                try:
                    self.store.redis.xgroup_create(key, GROUP, id="0", mkstream=True)
                except redis.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
                self._grouped.add(key)
            streams.append(key)
        return streams

    def step(self) -> int:
        """Deliver one batch: this consumer's pending events first, then new ones. Returns events handled."""
        streams = self._streams()
        if not streams:
            time.sleep(self.block_ms / 1000)
            return 0
        entries = self._read(streams, "0", block=None)
        if not entries:
            entries = self._claim_abandoned(streams) or self._read(streams, ">", block=self.block_ms)
        if not entries:
            return 0
        jobs = []
        for stream, eid, fields in entries:
            if (time.time() * 1000 - int(eid.split("-")[0])) / 1000 > MAX_EVENT_AGE_S:
                continue
            data = json.loads(fields[b"data"])
            body = json.dumps({"id": eid, **data}, separators=(",", ":")).encode()
            alert_id = data["alert"]["alert_id"]
            for hook in self.webhooks:
                jobs.append(self._pool.submit(self.sender.deliver, hook, eid, data["event"], alert_id, body))
        for job in jobs:
            job.result()
        pipe = self.store.redis.pipeline(transaction=False)
        for stream, eid, _ in entries:
            pipe.xack(stream, GROUP, eid)
        pipe.execute()
        return len(entries)

    def _read(self, streams: list[str], cursor: str, block: int | None) -> list[tuple[str, str, dict]]:
        reply = self.store.redis.xreadgroup(
            GROUP, self.consumer, {s: cursor for s in streams}, count=50, block=block
        )
        return [
            (stream.decode(), eid.decode(), fields)
            for stream, found in reply or []
            for eid, fields in found
            if fields  # a pending entry trimmed away by MAXLEN comes back empty
        ]

    def _claim_abandoned(self, streams: list[str]) -> list[tuple[str, str, dict]]:
        # Events a crashed instance read but never acknowledged: take them over after a minute.
        if time.monotonic() - self._last_claim < 30:
            return []
        self._last_claim = time.monotonic()
        claimed = []
        for stream in streams:
            _, found, *_ = self.store.redis.xautoclaim(stream, GROUP, self.consumer, min_idle_time=60_000, count=50)
            claimed += [(stream, eid.decode(), fields) for eid, fields in found if fields]
        return claimed

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.step()
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    self._grouped.clear()  # Redis lost its data (restarted without persistence): recreate the groups
                else:
                    log.error("webhook dispatcher error", error=str(exc))
                    stop.wait(1.0)
            except redis.RedisError as exc:
                log.warning("webhook dispatcher cannot reach redis; retrying", error=str(exc))
                stop.wait(1.0)
        self._pool.shutdown(wait=True)
