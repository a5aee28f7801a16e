"""Dead-letter records: a message a service could not process, with the reason.

The record keeps the original key, value and headers untouched, so a fixed
consumer can re-publish it, and adds ``ps-dlq-*`` headers that say why.
"""

from __future__ import annotations

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

    @classmethod
    def for_record(cls, record: ConsumedRecord, reason: str, error: str, service: str) -> "DeadLetter":
        """The dead letter of a record consumed from ``record.topic``, keeping its key, value and headers."""
        return cls(
            reason=reason, error=error, source_topic=record.topic, source_partition=record.partition,
            source_offset=record.offset, service=service, key=record.key, value=record.value,
            headers=[(k, v) for k, v in record.headers or () if v is not None],
        )

    def to_record(self) -> tuple[bytes | None, bytes, Headers]:
        extra = [
            ("ps-dlq-reason", self.reason.encode()),
            ("ps-dlq-error", self.error.encode()[:1024]),
            ("ps-dlq-source", f"{self.source_topic}/{self.source_partition}/{self.source_offset}".encode()),
            ("ps-dlq-service", self.service.encode()),
        ]
        original = [(k, v) for k, v in self.headers if not k.startswith("ps-dlq-") and v is not None]
        return self.key, self.value or b"", original + extra

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
            key=key,
            value=value,
            # Kafka allows null header values; the model keeps bytes only
            headers=[(k, v) for k, v in headers if not k.startswith("ps-dlq-") and v is not None],
        )


def _integer(text: str) -> int:
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses
    digits = text[1:] if text.startswith("-") else text
    return int(text) if digits.isascii() and digits.isdigit() else -1
