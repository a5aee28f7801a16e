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


def redact(text: str) -> str:
    """Mask credentials embedded in URLs."""
    return _URL_CREDENTIALS.sub(r"\g<scheme>***:***@", text)


def _redact_event(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in list(event.items()):
        if _SECRET_KEYS.search(key) and value is not None:
            event[key] = "***"
        elif isinstance(value, str):
            event[key] = redact(value)
    return event


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


def get_logger(name: str, **bound: Any) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name).bind(**bound)
