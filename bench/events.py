"""Server-sent events told apart by scanning bytes: a content piece, the end, a failure, or nothing to count."""

from __future__ import annotations

from collections.abc import Callable

__all__ = [
    "CONTENT",
    "END",
    "FAILED",
    "NOTHING",
    "EventScanner",
    "completion_event",
    "openai_event",
    "runtime_event",
]

# What one server-sent event tells the client: nothing, a content piece, the end, or a failure.
NOTHING, CONTENT, END, FAILED = 0, 1, 2, 3

_DATA = b"data:"
_DONE = b"[DONE]"
_CONTENT_KEY = b'"content":'
_ERROR_KEY = b'"error":'
_BLANKS = b" \t\r\n"


def _has_text_content(event: bytes) -> bool:
    """A JSON key ``"content"`` whose value is a non-empty string, anywhere in the event.

    A quote inside a JSON string is escaped (``\\"``), so ``"content":`` with bare quotes is a key, never text;
    ``"reasoning_content":`` does not match (the byte before ``content`` is ``_``, not a quote).
    """
    at = event.find(_CONTENT_KEY)
    while at >= 0:
        i = at + len(_CONTENT_KEY)
        while i < len(event) and event[i] in _BLANKS:
            i += 1
        # ``"x"`` (anything but the empty string ``""``); ``null`` and ``""`` are no content.
        if event[i : i + 1] == b'"' and event[i + 1 : i + 2] not in (b'"', b""):
            return True
        at = event.find(_CONTENT_KEY, i)
    return False


def openai_event(event: bytes) -> int:
    """An event of an OpenAI ``chat.completion.chunk`` stream (the provider's, the runtime's /v1, LiteLLM's)."""
    if not event.startswith(_DATA):
        return NOTHING
    data = event[5:].strip()
    if data == _DONE:
        return END
    if _ERROR_KEY in data:
        return FAILED
    return CONTENT if _has_text_content(data) else NOTHING


def completion_event(body: bytes) -> int:
    """A whole ``chat.completion`` JSON body (``"stream": false``): CONTENT when it holds text, FAILED on an
    ``"error"`` key, else NOTHING."""
    if _ERROR_KEY in body:
        return FAILED
    return CONTENT if _has_text_content(body) else NOTHING


def runtime_event(event: bytes) -> int:
    """An event of the runtime's own SSE (``event: content`` ... ``data: [DONE]``)."""
    if event.startswith(b"event: content\n"):
        return CONTENT
    if event.startswith(_DATA) and event[5:].strip() == _DONE:
        return END
    if event.startswith(b"event: error\n"):
        return FAILED
    return NOTHING


class EventScanner:
    """Cuts a response body into events (blank-line separated) as it arrives and classifies each.

    ``feed`` returns the strongest thing the new bytes held, in stream order: the first of FAILED or END
    wins, else CONTENT if any piece arrived, else NOTHING. Bytes after the end are not looked at.
    """

    __slots__ = ("_buffer", "_classify", "failure", "pieces")

    def __init__(self, classify: Callable[[bytes], int]) -> None:
        self._classify = classify
        self._buffer = b""
        self.pieces = 0
        # The event that said FAILED, for the report.
        self.failure = b""

    def reset(self, classify: Callable[[bytes], int] | None = None) -> None:
        """Ready for the next response, read with ``classify`` if given."""
        if classify is not None:
            self._classify = classify
        self._buffer = b""
        self.pieces = 0
        self.failure = b""

    def feed(self, data: bytes) -> int:
        buffer = self._buffer + data if self._buffer else data
        if b"\r" in buffer:
            # SSE allows CRLF line ends; none of the servers measured here send them, so this path is rare.
            buffer = buffer.replace(b"\r\n", b"\n")
        *events, self._buffer = buffer.split(b"\n\n")
        seen = NOTHING
        classify = self._classify
        for event in events:
            event = event.lstrip(b"\n")
            kind = classify(event)
            if kind == CONTENT:
                self.pieces += 1
                seen = CONTENT
            elif kind != NOTHING:
                self._buffer = b""
                if kind == FAILED:
                    self.failure = event
                return kind
        return seen
