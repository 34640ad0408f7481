"""HTTP/1.1 response parsers for the load client: httptools (uvicorn's C parser) when importable, else a small one."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["PARSER", "HandParser", "ParseError", "ResponseParser", "new_parser"]


class ParseError(Exception):
    """The server sent something that is not an HTTP/1.1 response."""


class ResponseParser(Protocol):
    """Takes bytes as they arrive and calls back its owner: ``on_head(status)``, ``on_body(data)`` once per fed
    block with the decoded body bytes (``Transfer-Encoding: chunked``, ``Content-Length`` or close-delimited),
    ``on_complete()`` at the end of each response. ``keep_alive`` says whether the connection may carry the
    next request."""

    keep_alive: bool

    def feed(self, data: bytes) -> None: ...

    def feed_eof(self) -> None: ...


OnHead = Callable[[int], None]
OnBody = Callable[[bytes], None]
OnComplete = Callable[[], None]

# Parser states.
_HEAD, _LENGTH, _SIZE, _DATA, _DATA_END, _TRAILER, _UNTIL_EOF = range(7)


class HandParser:
    """A pure-Python HTTP/1.1 response parser: status line, headers, chunked, length or close-delimited body."""

    __slots__ = ("_buffer", "_on_body", "_on_complete", "_on_head", "_remaining", "_state", "keep_alive")

    def __init__(self, on_head: OnHead, on_body: OnBody, on_complete: OnComplete) -> None:
        self._on_head = on_head
        self._on_body = on_body
        self._on_complete = on_complete
        self._buffer = b""
        self._state = _HEAD
        self._remaining = 0
        self.keep_alive = True

    def feed(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        pos = 0
        end = len(buffer)
        pieces: list[bytes] = []
        state = self._state
        while pos < end:
            if state == _DATA:
                take = min(self._remaining, end - pos)
                pieces.append(buffer[pos : pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    state = _DATA_END
            elif state == _SIZE:
                eol = buffer.find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > 1024:
                        raise ParseError("a chunk size line longer than 1 KiB")
                    break
                try:
                    size = int(buffer[pos:eol].split(b";", 1)[0], 16)
                except ValueError:
                    raise ParseError(f"bad chunk size {buffer[pos:eol][:40]!r}") from None
                pos = eol + 2
                if size:
                    self._remaining = size
                    state = _DATA
                else:
                    state = _TRAILER
            elif state == _DATA_END:
                if end - pos < 2:
                    break
                if buffer[pos : pos + 2] != b"\r\n":
                    raise ParseError("a chunk not followed by CRLF")
                pos += 2
                state = _SIZE
            elif state == _LENGTH:
                take = min(self._remaining, end - pos)
                pieces.append(buffer[pos : pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    state = self._complete(pieces)
            elif state == _HEAD:
                eoh = buffer.find(b"\r\n\r\n", pos)
                if eoh < 0:
                    if end - pos > 65536:
                        raise ParseError("response headers longer than 64 KiB")
                    break
                state = self._head(buffer[pos:eoh])
                pos = eoh + 4
                if state == _HEAD:  # a response without a body (204, 304, or an interim 1xx)
                    continue
                if state == _LENGTH and not self._remaining:
                    state = self._complete(pieces)
            elif state == _TRAILER:
                if buffer.startswith(b"\r\n", pos):
                    pos += 2
                elif (eot := buffer.find(b"\r\n\r\n", pos)) >= 0:
                    pos = eot + 4
                else:
                    break
                state = self._complete(pieces)
            else:  # _UNTIL_EOF
                pieces.append(buffer[pos:])
                pos = end
        self._state = state
        self._buffer = buffer[pos:] if pos < end else b""
        if pieces:
            self._on_body(b"".join(pieces))

    def feed_eof(self) -> None:
        if self._state == _UNTIL_EOF:
            self._state = _HEAD
            self._on_complete()
        elif self._state != _HEAD or self._buffer:
            raise ParseError("the connection closed in the middle of a response")

    def _complete(self, pieces: list[bytes]) -> int:
        if pieces:
            self._on_body(b"".join(pieces))
            pieces.clear()
        self._on_complete()
        return _HEAD

    def _head(self, block: bytes) -> int:
        status_line, _, header_block = block.partition(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ParseError(f"bad status line {status_line[:60]!r}")
        status = int(parts[1])
        if 100 <= status < 200:
            return _HEAD  # interim response: the real one follows
        chunked = False
        length = -1
        keep_alive = parts[0] == b"HTTP/1.1"
        for line in header_block.split(b"\r\n"):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise ParseError(f"bad content-length {value[:40]!r}") from None
            elif name == b"connection":
                token = value.strip().lower()
                if token == b"close":
                    keep_alive = False
                elif token == b"keep-alive":
                    keep_alive = True
        self.keep_alive = keep_alive
        self._on_head(status)
        if status in (204, 304):
            self._on_complete()
            return _HEAD
        if chunked:
            return _SIZE
        if length >= 0:
            self._remaining = length
            return _LENGTH
        self.keep_alive = False
        return _UNTIL_EOF


class _HttptoolsParser:
    """The same interface over ``httptools.HttpResponseParser``; body pieces are joined once per fed block."""

    __slots__ = (
        "_delimited",
        "_in_message",
        "_on_body",
        "_on_complete",
        "_on_head",
        "_parser",
        "_pieces",
        "keep_alive",
    )

    def __init__(self, on_head: OnHead, on_body: OnBody, on_complete: OnComplete) -> None:
        self._on_head = on_head
        self._on_body = on_body
        self._on_complete = on_complete
        self._pieces: list[bytes] = []
        self._parser: Any = _httptools.HttpResponseParser(self)
        self._in_message = False
        self._delimited = False
        self.keep_alive = True

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._in_message = True
        self._delimited = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self._delimited = True

    def on_headers_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        self._on_head(self._parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        self._pieces.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self.keep_alive = self._parser.should_keep_alive()
        if self._pieces:
            self._on_body(b"".join(self._pieces))
            self._pieces.clear()
        self._on_complete()

    def feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except _httptools.HttpParserError as exc:
            raise ParseError(str(exc)) from None
        if self._pieces:
            body = b"".join(self._pieces)
            self._pieces.clear()
            self._on_body(body)

    def feed_eof(self) -> None:
        # httptools has no EOF call: a close-delimited body ends here; anything else unfinished is an error.
        if not self._in_message:
            return
        if self._delimited:
            raise ParseError("the connection closed in the middle of a response")
        self._in_message = False
        self.keep_alive = False
        self._on_complete()


_httptools: Any
try:
    _httptools = importlib.import_module("httptools")
except ImportError:  # pragma: no cover - depends on the environment
    _httptools = None

# Which parser the client uses, for the report.
PARSER = "httptools" if _httptools is not None else "python"


def new_parser(on_head: OnHead, on_body: OnBody, on_complete: OnComplete, kind: str = PARSER) -> ResponseParser:
    """A parser of ``kind`` (``httptools`` or ``python``) for one connection."""
    if kind == "httptools":
        if _httptools is None:
            raise RuntimeError("httptools is not installed")
        return _HttptoolsParser(on_head, on_body, on_complete)
    return HandParser(on_head, on_body, on_complete)
