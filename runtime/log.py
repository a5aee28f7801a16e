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

from schemas.redaction import redact

LogFormat = Literal["json", "console", "auto"]

# Values of these keys are never written, whatever a caller passes in; other strings go through
# schemas.redaction.redact (URL passwords, secret query parameters, secret key=value text).
_SECRET_KEYS = re.compile(r"pass(word)?|secret|token|sasl_plain_password|authorization", re.I)


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
