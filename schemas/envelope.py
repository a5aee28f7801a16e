"""JSON messages on Kafka: a versioned pydantic model as the record value.

Results, alerts and dead-letter records are small and read by many consumers,
so they travel as JSON. Each carries ``schema_version`` in the body and in a
``ps-schema`` header, so a reader can refuse a future version before parsing.
"""

from __future__ import annotations

from typing import ClassVar, Iterable, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from schemas.errors import MalformedMessage, UnsupportedSchemaVersion
from schemas.frame import Headers

MAX_JSON_BYTES = 4 * 1024 * 1024


class VersionedMessage(BaseModel):
    """Base for JSON messages; subclasses set ``SCHEMA_VERSION`` and ``KIND``."""

    model_config = ConfigDict(extra="forbid")

    SCHEMA_VERSION: ClassVar[int] = 1
    KIND: ClassVar[str] = "message"

    schema_version: int = 1

    def record_key(self) -> bytes:
        raise NotImplementedError

    def to_record(self) -> tuple[bytes, bytes, Headers]:
        headers = [("ps-schema", str(self.SCHEMA_VERSION).encode()), ("ps-kind", self.KIND.encode())]
        return self.record_key(), self.to_json(), headers

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, value: bytes | str | None) -> Self:
        if not value:
            raise MalformedMessage("empty value", field="value")
        if len(value) > MAX_JSON_BYTES:
            raise MalformedMessage("value larger than 4 MiB", field="value")
        try:
            body = cls.__pydantic_validator__.validate_json(value, strict=False)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or cls.KIND
            if first["loc"] and first["loc"][0] == "schema_version":
                raise UnsupportedSchemaVersion(first["msg"], field="schema_version") from None
            raise MalformedMessage(first["msg"], field=loc) from None
        if body.schema_version != cls.SCHEMA_VERSION:
            raise UnsupportedSchemaVersion(
                f"{cls.KIND} schema version {body.schema_version}; this reader understands {cls.SCHEMA_VERSION}",
                field="schema_version",
            )
        return body

    @classmethod
    def from_record(cls, value: bytes | None, headers: Iterable[tuple[str, bytes | None]] | None = None) -> Self:
        for name, raw in headers or ():
            if name == "ps-schema" and raw is not None and raw != str(cls.SCHEMA_VERSION).encode():
                raise UnsupportedSchemaVersion(
                    f"{cls.KIND} schema version {raw[:16]!r}; this reader understands {cls.SCHEMA_VERSION}",
                    field="ps-schema",
                )
        return cls.from_json(value)
