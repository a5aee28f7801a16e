"""Typed errors raised when a message or a configuration cannot be read.

Every service catches ``SchemaError`` at its boundary: a malformed message is
dead-lettered or reported, never allowed to crash the process.
"""

from __future__ import annotations


class SchemaError(ValueError):
    """A message or document does not follow the patchsight contract."""

    reason = "invalid"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class UnsupportedSchemaVersion(SchemaError):
    """The message was written with a schema version this reader cannot read."""

    reason = "unsupported-version"


class MalformedMessage(SchemaError):
    """A header or field is missing, of the wrong type, or out of range."""

    reason = "malformed"


class ConfigError(SchemaError):
    """The configuration file or an environment override is invalid."""

    reason = "bad-config"
