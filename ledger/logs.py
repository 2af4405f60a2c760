"""Log lines: JSON (one object per line) or text, each carrying the id of the request it serves.

The request id lives in a context variable set by the HTTP middleware; a filter copies it
onto every record, so code anywhere below a request (worker threads included: anyio copies
the context into them) logs it without passing it along. Structured fields travel as
``extra={...}`` and become keys of the JSON object.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any, Literal, TextIO

__all__ = ["JSONFormatter", "RequestIdFilter", "TextFormatter", "configure_logging", "default_format", "request_id"]

LogFormat = Literal["json", "text"]

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else on a record came in through `extra`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "request_id", "taskName"}


class RequestIdFilter(logging.Filter):
    """Puts the current request id (or None) on each record; attached to the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    attributes = record.__dict__
    return {k: attributes[k] for k in attributes.keys() - _STANDARD}


# Built once: json.dumps with options builds a new encoder on every call.
_ENCODE = json.JSONEncoder(ensure_ascii=False, default=str).encode


class JSONFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "request_id", ...fields}``, one encode per record."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def _time(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # one strftime per second, not per line
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid is not None:
            line["request_id"] = rid
        line.update(_fields(record))
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return _ENCODE(line)


class TextFormatter(logging.Formatter):
    """The classic line with the request id appended (the message itself already names the fields)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = getattr(record, "request_id", None)
        if rid is None:
            return text
        head, sep, tail = text.partition("\n")  # a traceback stays below the line it belongs to
        return f"{head} request_id={rid}{sep}{tail}"


def default_format(stream: TextIO) -> LogFormat:
    """Text for a person at a terminal, JSON for everything collected by a machine."""
    return "text" if stream.isatty() else "json"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time (tests and tools replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure_logging(level: str, fmt: str | None = None, stream: TextIO | None = None) -> logging.Handler:
    """Send the root logger's records as `fmt` lines to `stream` (default: stderr).

    Replaces a handler installed by an earlier call, and leaves any other handler alone.
    """
    handler: logging.Handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    chosen = fmt or default_format(stream if stream is not None else sys.stderr)
    handler.setFormatter(JSONFormatter() if chosen == "json" else TextFormatter())
    handler._payledger = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in root.handlers[:]:
        if getattr(old, "_payledger", False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
