"""Dead-letter records: a message a service could not process, with the reason.

The record keeps the original key, value and headers untouched, so a fixed
consumer can re-publish it, and adds ``ps-dlq-*`` headers that say why.

A dead letter always fits: the broker accepts a record up to its ``message.max.bytes``,
and the same record plus the ``ps-dlq-*`` headers may not fit any more. ``to_record(max_bytes)``
keeps the original whole when the dead letter fits in ``max_bytes``; otherwise it cuts the value
(then, rarely, the original headers from the last, then the key) to fit, and says so in
``ps-dlq-truncated``, with the original value's size and SHA-256 in ``ps-dlq-original-size`` and
``ps-dlq-original-sha256``, so the record can still be matched to the one the producer sent.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from schemas.frame import Headers


class ConsumedRecord(Protocol):
    """What a consumed Kafka record carries (kafka-python's ``ConsumerRecord`` has it all)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any


class DeadLetter(BaseModel):
    model_config = ConfigDict(frozen=True)

    reason: str  # a short code: malformed, unsupported-version, undecodable, unknown-line, ...
    error: str  # the human-readable message
    source_topic: str
    source_partition: int
    source_offset: int
    service: str  # who dead-lettered it, e.g. "inference/worker-1"
    key: bytes | None = None
    value: bytes | None = None
    headers: Headers = []
    # set when the dead letter holds a cut copy (to_record's max_bytes): what was cut, and the original value
    truncated: tuple[str, ...] = ()  # of "value", "headers", "key"
    original_size: int | None = None
    original_sha256: str | None = None

    @classmethod
    def for_record(cls, record: ConsumedRecord, reason: str, error: str, service: str) -> "DeadLetter":
        """The dead letter of a record consumed from ``record.topic``, keeping its key, value and headers."""
        return cls(
            reason=reason, error=error, source_topic=record.topic, source_partition=record.partition,
            source_offset=record.offset, service=service, key=record.key, value=record.value,
            headers=[(k, v) for k, v in record.headers or () if v is not None],
        )

    def to_record(self, max_bytes: int) -> tuple[bytes | None, bytes, Headers]:
        """Key, value and headers of the dead letter, within ``max_bytes`` as ``record_size`` counts them.

        ``max_bytes`` is the least of the producer's ``max_request_size`` and the broker's limit;
        it must leave room for the ``ps-dlq-*`` headers (a few kB), which are never cut.
        """
        extra = [
            ("ps-dlq-reason", self.reason.encode()),
            ("ps-dlq-error", self.error.encode()[:1024]),
            ("ps-dlq-source", f"{self.source_topic}/{self.source_partition}/{self.source_offset}".encode()),
            ("ps-dlq-service", self.service.encode()),
        ]
        original = [(k, v) for k, v in self.headers if not k.startswith("ps-dlq-") and v is not None]
        key, value = self.key, self.value or b""
        if record_size(key, value, original + extra) <= max_bytes:
            return key, value, original + extra
        return _cut_to_fit(key, value, original, extra, max_bytes)

    @classmethod
    def from_record(cls, key: bytes | None, value: bytes | None, headers: Headers) -> "DeadLetter":
        found = {k: v.decode("utf-8", "replace") for k, v in headers if k.startswith("ps-dlq-") and v is not None}
        source = found.get("ps-dlq-source", "?/-1/-1").rsplit("/", 2)
        return cls(
            reason=found.get("ps-dlq-reason", "unknown"),
            error=found.get("ps-dlq-error", ""),
            source_topic=source[0],
            source_partition=_integer(source[1]) if len(source) > 1 else -1,
            source_offset=_integer(source[2]) if len(source) > 2 else -1,
            service=found.get("ps-dlq-service", ""),
            truncated=tuple(part for part in found.get("ps-dlq-truncated", "").split(",") if part),
            original_size=_integer(found["ps-dlq-original-size"]) if "ps-dlq-original-size" in found else None,
            original_sha256=found.get("ps-dlq-original-sha256"),
            key=key,
            value=value,
            # Kafka allows null header values; the model keeps bytes only
            headers=[(k, v) for k, v in headers if not k.startswith("ps-dlq-") and v is not None],
        )


# Kafka's record format v2: a batch header, then per record at most 21 bytes of framing
# (length, attributes, timestamp and offset deltas) plus a varint (at most 5 bytes) before
# the key, the value, the header count and each header's name and value.
_BATCH_HEADER_BYTES = 61
_RECORD_FRAMING_BYTES = 21 + 3 * 5
_HEADER_FRAMING_BYTES = 2 * 5


def record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """An upper bound of the bytes the record takes alone in a record batch.

    That is what kafka-python compares with ``max_request_size`` and the broker with
    ``message.max.bytes``: a record within it passes both.
    """
    return (_BATCH_HEADER_BYTES + _RECORD_FRAMING_BYTES + len(key or b"") + len(value or b"")
            + sum(_HEADER_FRAMING_BYTES + len(k.encode()) + len(v) for k, v in headers))


def _cut_to_fit(
    key: bytes | None, value: bytes, original: Headers, extra: Headers, max_bytes: int
) -> tuple[bytes | None, bytes, Headers]:
    """The dead letter with its value cut; when even an empty value is too much, its original
    headers are dropped from the last, then its key is cut."""
    described = [("ps-dlq-original-size", str(len(value)).encode()),
                 ("ps-dlq-original-sha256", hashlib.sha256(value).hexdigest().encode())]

    def over(k: bytes | None, headers: Headers) -> int:
        # sized with the longest ps-dlq-truncated value, so whatever is cut still fits
        marks = [("ps-dlq-truncated", b"value,headers,key"), *described]
        return record_size(k, b"", headers + extra + marks) - max_bytes

    cut = []
    headers = list(original)
    while headers and over(key, headers) > 0:
        headers.pop()
    if len(headers) < len(original):
        cut.append("headers")
    excess = over(key, headers)
    if excess > 0 and key:
        key = key[: max(0, len(key) - excess)]
        cut.append("key")
    room = max(0, -over(key, headers))
    if room < len(value):
        cut.insert(0, "value")
    return key, value[:room], headers + extra + [("ps-dlq-truncated", ",".join(cut).encode()), *described]


def _integer(text: str) -> int:
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses
    digits = text[1:] if text.startswith("-") else text
    return int(text) if digits.isascii() and digits.isdigit() else -1
