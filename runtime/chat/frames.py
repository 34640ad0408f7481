"""Our SSE: the one encoder of a turn's events as frames, and the write loop every stream codec shares.

A frame is ``event:`` (the event's ``type``), ``id:`` (``<message_id>:<n>`` for a kept turn, else ``n``)
and the event's JSON ``data:``. The bytes a client is sent are the bytes a recording keeps, so a replay
is the same stream byte for byte, and a recording that ended without its own final event gets one made
here from the stored message (:func:`final_event`). Recordings read frames back with :func:`decode`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar, assert_never
from uuid import UUID

import msgspec

from core.errors import Interrupted
from core.events import Done, ErrorEvent, Start, TextDelta, ToolCallDelta, TurnEvent, Usage

__all__ = [
    "DONE",
    "HEARTBEAT",
    "ChatFrames",
    "Last",
    "MessageState",
    "Recorder",
    "candidate_body",
    "chat_body",
    "decode",
    "encode_events",
    "encoded_stream",
    "final_event",
    "record",
    "with_heartbeat",
]

T = TypeVar("T")

DONE = b"data: [DONE]\n\n"
HEARTBEAT = b": keep-alive\n\n"
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(TurnEvent).decode


class Last(bytes):
    """The final piece of a stream's body: it goes out together with the end of the response."""


# The frames ------------------------------------------------------------------------------------------


def encode_events(
    events: Sequence[TurnEvent], count: int, prefix: bytes = b"", candidate: int | None = None
) -> tuple[list[bytes], int, bool]:
    """Our SSE for a batch of events, one frame each, numbered on from ``count`` behind ``prefix``; the new
    count; and whether the batch ends the turn. With ``candidate`` each ``data`` says which answer of
    several it belongs to. Tool call pieces have no frame: ``done`` carries the whole calls."""
    parts = []
    last = False
    heads: dict[bytes, bytes] = {}  # each tag's ``event:`` and ``id:`` prefix, made once a batch
    for event in events:
        match event:
            case TextDelta():
                tag = b"content"
            case Start():
                tag = b"start"
            case Usage():
                tag = b"usage"
            case Done():
                tag, last = b"done", True
            case ErrorEvent():
                tag, last = b"error", True
            case ToolCallDelta():
                continue
            case _:
                assert_never(event)
        count += 1
        data = _encode(event)
        if candidate is not None:
            data = b'%s,"candidate":%d}' % (data[:-1], candidate)
        head = heads.get(tag)
        if head is None:
            head = heads[tag] = b"event: %s\nid: %s" % (tag, prefix)
        parts.append(b"%s%d\ndata: %s\n\n" % (head, count, data))
    return parts, count, last


def decode(frame: bytes) -> TurnEvent | None:
    """The event of one of our frames (None for a heartbeat or ``[DONE]``)."""
    head, sep, data = frame.partition(b"\ndata: ")
    if not sep or not head.startswith(b"event: "):
        return None
    return _decode(data)


class MessageState(Protocol):
    """What a reader needs to know of the stored message when its stream ends without a final event."""

    @property
    def status(self) -> str: ...
    @property
    def finish_reason(self) -> str | None: ...
    @property
    def error(self) -> dict[str, Any] | None: ...
    @property
    def streamed(self) -> bool | None: ...
    @property
    def ended_ago(self) -> float | None: ...


class Recorder(Protocol):
    """Where a kept turn's frames go as they are sent: the stream recorder (``runtime/chat/recordings.py``),
    given each recording it opened back with the frames."""

    def add(self, recording: Any, frames: list[bytes]) -> None: ...
    def close(self, recording: Any, *, terminal: bool) -> None: ...


def final_event(message_id: UUID, state: MessageState | None) -> Done | ErrorEvent:
    """The event a stream that ended without one should have ended with, from what is stored."""
    if state is not None and state.status == "complete":
        return Done(finish_reason=state.finish_reason or "stop", message_id=message_id, turn_id=message_id)
    error = (state.error if state is not None else None) or {}
    return ErrorEvent(
        code=str(error.get("code") or Interrupted.code), message=str(error.get("message") or Interrupted.default)
    )


# Writing a stream ------------------------------------------------------------------------------------

# Items a stream may run ahead of a slow client before it stops reading its provider.
_AHEAD = 16


class _Heartbeat(Generic[T]):
    """Reads ``source`` in a task of its own and hands its items over, with ``None`` for every silence.

    One timer per stream, re-armed only when it fires: it checks whether ``interval`` seconds passed since
    the last item. The reader stops when ``_AHEAD`` items wait, so a slow client slows the provider down.
    """

    def __init__(self, source: AsyncIterator[T], interval: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._items: deque[tuple[bool, Any]] = deque()
        self._interval = interval
        self._last = self._loop.time()
        self._waiter: asyncio.Future[None] | None = None
        self._space: asyncio.Future[None] | None = None
        self._timer = self._loop.call_at(self._last + interval, self._tick)
        self._reader = self._loop.create_task(self._read(source))

    async def _read(self, source: AsyncIterator[T]) -> None:
        try:
            async for item in source:
                self._put((False, item))
                while len(self._items) >= _AHEAD:
                    self._space = self._loop.create_future()
                    await self._space
        except BaseException as exc:
            self._put((True, exc))
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            self._put((True, None))

    def _put(self, item: tuple[bool, Any]) -> None:
        self._items.append(item)
        self._last = self._loop.time()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _tick(self) -> None:
        now = self._loop.time()
        if now - self._last >= self._interval and not self._items:
            self._items.append((False, None))
            self._last = now
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)
        self._timer = self._loop.call_at(self._last + self._interval, self._tick)

    async def items(self) -> AsyncGenerator[T | None, None]:
        try:
            while True:
                while not self._items:
                    self._waiter = self._loop.create_future()
                    await self._waiter
                finished, value = self._items.popleft()
                space = self._space
                if space is not None and not space.done():
                    space.set_result(None)
                if not finished:
                    yield value
                elif value is None:
                    return
                else:
                    raise value
        finally:
            self._timer.cancel()
            self._reader.cancel()


def with_heartbeat(source: AsyncIterator[T], interval: float) -> AsyncGenerator[T | None, None]:
    """Items of ``source``, with ``None`` whenever ``interval`` seconds pass without one.

    Closing or cancelling the result cancels the reading task, which ends the source (and so the
    upstream request).
    """
    return _Heartbeat(source, interval).items()


async def encoded_stream(
    batches: AsyncIterator[list[TurnEvent]],
    heartbeat: float,
    encode: Callable[[list[TurnEvent]], bytes],
    silence: bytes = HEARTBEAT,
) -> AsyncIterator[bytes]:
    """Every codec's write loop: each batch of events encoded into one write, ``silence`` through long
    silences. ``encode`` returns ``Last`` for the batch that ends the turn."""
    beats = with_heartbeat(batches, heartbeat)
    try:
        async for batch in beats:
            if batch is None:
                yield silence
                continue
            data = encode(batch)
            if data:
                yield data
    finally:
        await beats.aclose()  # at once, not by the garbage collector's hook (a loop wake-up and a task)


class ChatFrames:
    """A turn's batches as our SSE, numbered ``<message_id>:<n>`` for a kept turn, and recorded when a
    ``recording`` is given so the stream can be replayed (``GET /api/v1/chat/messages/{id}/events``)."""

    __slots__ = ("count", "prefix", "recorder", "recording")

    def __init__(
        self,
        message_id: UUID | None = None,
        recorder: Recorder | None = None,
        recording: Any | None = None,
    ) -> None:
        self.prefix = b"%s:" % str(message_id).encode() if message_id is not None else b""
        self.count = 0
        self.recorder = recorder
        self.recording = recording

    def encode(self, batch: list[TurnEvent]) -> bytes:
        parts, self.count, last = encode_events(batch, self.count, self.prefix)
        recording = self.recording
        if recording is not None and self.recorder is not None:
            if parts:
                self.recorder.add(recording, parts)
            if last:
                self.recorder.close(recording, terminal=True)
                self.recording = None
        if last:
            return Last(b"".join(parts) + DONE)
        return b"".join(parts)

    def close(self) -> None:
        """The stream ended without its final event (the client left, the task was cancelled)."""
        if self.recording is not None and self.recorder is not None:
            self.recorder.close(self.recording, terminal=False)
            self.recording = None


def chat_body(
    batches: AsyncIterator[list[TurnEvent]], heartbeat: float, frames: ChatFrames | None = None
) -> AsyncIterator[bytes]:
    """A turn as our SSE: each batch of events in one write, ``data: [DONE]`` with the last."""
    frames = frames or ChatFrames()
    body = encoded_stream(batches, heartbeat, frames.encode)
    return body if frames.recording is None else _closing(body, frames)


async def _closing(body: AsyncIterator[bytes], frames: ChatFrames) -> AsyncIterator[bytes]:
    try:
        async for piece in body:
            yield piece
    finally:
        frames.close()
        closer = getattr(body, "aclose", None)
        if closer is not None:
            await closer()


async def record(batches: AsyncIterator[list[TurnEvent]], frames: ChatFrames) -> None:
    """Read a whole turn into its recording with no client attached (a resumable stream's producer)."""
    try:
        async for batch in batches:
            frames.encode(batch)
    finally:
        frames.close()


async def candidate_body(events: AsyncIterator[tuple[int, TurnEvent]], heartbeat: float) -> AsyncIterator[bytes]:
    """Several answers in one stream: each event's ``data`` says which ``candidate`` it belongs to."""
    count = 0
    async for item in with_heartbeat(events, heartbeat):
        if item is None:
            yield HEARTBEAT
            continue
        candidate, event = item
        parts, count, _ = encode_events((event,), count, candidate=candidate)
        if parts:
            yield parts[0]
    yield Last(DONE)
