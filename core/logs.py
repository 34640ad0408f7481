"""Logging: the request id of every line, text or JSON lines (``LOG_FORMAT``), and secret-free access logs.

uvicorn's own loggers (``uvicorn``, ``uvicorn.error``) write through the same handler, without the ANSI-coloured
copy of a message (``color_message``) uvicorn attaches to some of its records. The access log is ours
(:func:`log_access`, one line a request from the request id middleware); uvicorn's is off.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
from typing import Any
from urllib.parse import quote, unquote_plus

import msgspec

__all__ = ["ACCESS", "REQUEST_ID", "JsonFormatter", "TextFormatter", "configure_logging", "log_access", "scrub_query"]

# The id of the request being served, for every log line written while serving it ("-" outside one).
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# One INFO line a request: `http request` with method, path (secrets in its query masked), status, duration_ms.
ACCESS = logging.getLogger("persona_runtime.access")

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is a field of the line.
# uvicorn's ``color_message`` (the message again, with ANSI colour codes) is never part of a line.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id", "color_message"}
# A key in a query string never reaches a log: the value of a parameter whose name, percent-decoded, is one of
# these (``?api_key=``, ``?api%5Fkey=``, ``?%61pi_key=``), and any value that decodes to one of our keys.
_SECRET_NAMES = frozenset({"api_key", "apikey", "api-key", "x-api-key", "key", "token", "access_token"})
_KEY_MARK = "prk_"
_PARAMETER = re.compile(r"([?&;])([^=&;#\s\"]*)(=)([^&;#\s\"]*)")
_encode = msgspec.json.Encoder().encode
# What an access line keeps of a request's target as sent: printable ASCII but the space.
_SENT = "".join(map(chr, range(0x21, 0x7F)))


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):  # a line logged in a task of the request's may name it itself
            record.request_id = REQUEST_ID.get()
        return True


def _decoded(text: str) -> str:
    """``text`` percent-decoded until it stops changing (a few rounds at most), as anything reading it might."""
    for _ in range(3):
        decoded = unquote_plus(text)
        if decoded == text:
            break
        text = decoded
    return text


def _mask(match: re.Match[str]) -> str:
    name, value = _decoded(match.group(2)).strip().lower(), match.group(4)
    if name in _SECRET_NAMES or _KEY_MARK in _decoded(value):
        return f"{match.group(1)}{match.group(2)}=***"
    return match.group(0)


def scrub_query(target: str) -> str:
    """A request target (path and query) with every secret in its query string replaced by ``***``."""
    if "?" not in target:
        return target
    path, _, query = target.partition("?")
    return path + _PARAMETER.sub(_mask, "?" + query)


def log_access(scope: dict[str, Any], request_id: str, status: int, started: float) -> None:
    """The access line of the HTTP request of ASGI ``scope``, begun at ``started`` (``perf_counter``), as it ends.

    The path is the one the client sent, still percent-encoded, and anything but printable ASCII in it encoded
    too, so that the line stays one printable line (httpx's test transport puts the query in ``raw_path`` as
    well, which is cut off in favour of ``query_string``).
    """
    raw = scope.get("raw_path")
    path = quote(raw.partition(b"?")[0], safe=_SENT) if raw else quote(scope["path"])
    if query := scope.get("query_string"):
        path = scrub_query(f"{path}?{quote(query, safe=_SENT)}")
    duration = round((time.perf_counter() - started) * 1000, 1)
    fields = {"request_id": request_id, "method": scope["method"], "path": path, "status": status}
    ACCESS.info("http request", extra={**fields, "duration_ms": duration})


class _ScrubQuery(logging.Filter):
    """uvicorn's access log, should anything give it a handler again, puts the request's path with its query
    string in the record's arguments: masked there too."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(scrub_query(a) if isinstance(a, str) else a for a in record.args)
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
    # uvicorn's loggers write through ours alone: any handler (and formatter) configured for them before goes.
    # uvicorn writes access lines only while its access logger has somewhere to write them: ours replace them.
    for name, propagate in (("uvicorn", True), ("uvicorn.error", True), ("uvicorn.access", False)):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = propagate
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _ScrubQuery) for f in access.filters):
        access.addFilter(_ScrubQuery())
    return handler
