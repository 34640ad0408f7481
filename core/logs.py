"""Logging: the request id of every line, text or JSON lines (``LOG_FORMAT``), and secret-free access logs."""

from __future__ import annotations

import contextvars
import logging
import re
import time
from typing import Any

import msgspec

__all__ = ["REQUEST_ID", "JsonFormatter", "TextFormatter", "configure_logging"]

# The id of the request being served, for every log line written while serving it ("-" outside one).
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is a field of the line.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}
# A key in a query string (``?api_key=...``, ``&key=...``) never reaches a log.
_SECRET_QUERY = re.compile(r"([?&](?:api_key|key|token|access_token)=)[^&\s\"]*", re.IGNORECASE)
_encode = msgspec.json.Encoder().encode


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):  # a line logged in a task of the request's may name it itself
            record.request_id = REQUEST_ID.get()
        return True


class _ScrubQuery(logging.Filter):
    """uvicorn's access log puts the request's path with its query string in the record's arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_SECRET_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class TextFormatter(logging.Formatter):
    """The readable line, with a record's ``extra`` fields after the message as ``key=value``."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts``, ``level``, ``logger``, ``msg``, ``request_id`` and the ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", REQUEST_ID.get()),
        }
        for key, value in _fields(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return _encode(line).decode()


class _Handler(logging.StreamHandler):
    """Ours, so that configuring again replaces it and leaves other handlers alone."""


def configure_logging(level: str, fmt: str = "text") -> logging.Handler:
    """Set up the root logger: ``text`` (readable) or ``json`` (one object a line), to stderr."""
    handler = _Handler()
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _ScrubQuery) for f in access.filters):
        access.addFilter(_ScrubQuery())
    return handler
