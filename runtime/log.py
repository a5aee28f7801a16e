"""Structured logging for every patchsight process (structlog).

Services log JSON, one event per line, so a log shipper can index them;
a terminal gets readable colour output. Bind ``line``, ``camera`` and ``seq``
into events with ``log.bind(...)`` so every message says which frame it is about.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any, Literal

import structlog

LogFormat = Literal["json", "console", "auto"]

# Values of these keys are never written, whatever a caller passes in.
_SECRET_KEYS = re.compile(r"pass(word)?|secret|token|sasl_plain_password|authorization", re.I)
# user:password@ in URLs (redis://user:pw@host, rtsp://user:pw@cam)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s:]*:[^/@\s]*@", re.I)
# key=value / 'key': 'value' with a secret-like key, as printed by dict reprs and config dumps
# (kafka-python logs its whole configuration, sasl_plain_password included, at DEBUG)
_SECRET_ASSIGNMENT = re.compile(
    r"""(?P<key>[\w.-]*(?:passw(?:or)?d|pass|secret|token)['"]?\s*[:=]\s*)"""
    r"""(?:'[^']*'|"[^"]*"|[^\s,;&'"})\]]+)""",
    re.I,
)


def redact(text: str) -> str:
    """Mask credentials embedded in URLs and the values of secret-like ``key=value`` pairs."""
    text = _URL_CREDENTIALS.sub(r"\g<scheme>***:***@", text)
    return _SECRET_ASSIGNMENT.sub(r"\g<key>'***'", text)


def _redact_value(key: str, value: Any) -> Any:
    if _SECRET_KEYS.search(key) and value is not None:
        return "***"
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value(key, v) for v in value]
    return value


def _redact_event(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in list(event.items()):
        event[key] = _redact_value(key, value)
    return event


class RedactingFilter(logging.Filter):
    """Applies ``redact`` to records of stdlib loggers (kafka-python, redis-py, uvicorn)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure_logging(fmt: LogFormat = "auto", level: str | None = None) -> None:
    """Set up structlog for this process. Call once, at process start."""
    level_name = (level or os.environ.get("PATCHSIGHT_LOG_LEVEL", "INFO")).upper()
    if fmt == "auto":
        fmt = os.environ.get("PATCHSIGHT_LOG_FORMAT", "console" if sys.stderr.isatty() else "json")  # type: ignore[assignment]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level_name)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # kafka-python logs through stdlib logging; keep its chatter at WARNING.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def get_logger(name: str, **bound: Any) -> structlog.stdlib.BoundLogger:
    # Stay lazy: binding here would freeze structlog's default configuration (stdout, no
    # redaction) into module-level loggers created before configure_logging runs.
    return structlog.get_logger(name, **bound)
