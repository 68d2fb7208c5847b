"""Structured logs: every line of a stream carries its stream id and trace id.

The ids live in context variables, set when a stream starts; tasks created after that copy
them, so the stream's emitter and writer log with them too. ``ContextFilter`` puts them on
every record, ``JsonFormatter`` writes one JSON object per line, and ``RedactFilter``
masks credentials that might ride in a logged URL (``?token=...``). The service never logs
audio or request bodies; messages carry sizes and codes, not payloads.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from contextvars import ContextVar
from typing import Any, Final, TextIO

__all__ = [
    "ContextFilter",
    "JsonFormatter",
    "RedactFilter",
    "TextFormatter",
    "bind_stream",
    "configure_logging",
    "current_ids",
    "unbind_stream",
]

stream_id_var: ContextVar[str | None] = ContextVar("streamer_stream_id", default=None)
trace_id_var: ContextVar[str | None] = ContextVar("streamer_trace_id", default=None)

_SECRET: Final = re.compile(
    r"(?i)\b((?:access_|api[_-]?|auth_?|id_|refresh_)?(?:token|key|secret|password|passwd|"
    r"signature|sig|authorization|credentials?))=([^&\s\"']+)"
)
_BEARER: Final = re.compile(r"(?i)\b(bearer|basic|token)\s+[a-z0-9._~+/=-]{8,}")
_JWT: Final = re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")

# Attributes every LogRecord has; anything else was passed in ``extra`` and is kept.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "stream_id", "trace_id", "taskName", "ids", "color_message"}
)


def bind_stream(stream_id: str | None, trace_id: str | None) -> None:
    """Name the stream (and its trace) that the current task is working for."""
    stream_id_var.set(stream_id)
    trace_id_var.set(trace_id)


def unbind_stream() -> None:
    bind_stream(None, None)


def current_ids() -> tuple[str | None, str | None]:
    """The stream id and trace id bound to the current context."""
    return stream_id_var.get(), trace_id_var.get()


def redact(text: str) -> str:
    """Mask values of credential-like query parameters, bearer tokens and JWTs anywhere."""
    if "=" in text:
        text = _SECRET.sub(r"\1=[redacted]", text)
    if "eyJ" in text:
        text = _JWT.sub("[redacted]", text)
    return _BEARER.sub(r"\1 [redacted]", text)


class ContextFilter(logging.Filter):
    """Adds ``stream_id`` and ``trace_id`` (or ``None``) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "stream_id"):
            record.stream_id = stream_id_var.get()
        if not hasattr(record, "trace_id"):
            record.trace_id = trace_id_var.get()
        return True


class RedactFilter(logging.Filter):
    """Renders the message once and masks credentials in it (URLs with tokens, say)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, ids, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        stream_id = getattr(record, "stream_id", None)
        trace_id = getattr(record, "trace_id", None)
        if stream_id is not None:
            entry["stream_id"] = stream_id
        if trace_id is not None:
            entry["trace_id"] = trace_id
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable lines, with ``stream=`` and ``trace=`` when a stream is bound."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s%(ids)s")

    def format(self, record: logging.LogRecord) -> str:
        ids = ""
        stream_id = getattr(record, "stream_id", None)
        trace_id = getattr(record, "trace_id", None)
        if stream_id is not None:
            ids += f" stream={stream_id}"
        if trace_id is not None:
            ids += f" trace={trace_id}"
        record.ids = ids
        return super().format(record)


def _iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def configure_logging(
    level: str = "info", *, json_lines: bool = False, stream: TextIO | None = None
) -> logging.Handler:
    """Send every logger (uvicorn's included) to one handler on ``stream`` (stderr).

    Replaces the root logger's handlers; returns the new handler.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactFilter())
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    return handler
