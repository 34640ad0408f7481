"""Server-Sent Events: our chat stream's codec, heartbeats through long silences, and the streaming response."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar
from uuid import UUID

import msgspec
from litestar.enums import MediaType
from litestar.response import Stream
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Send

from core.events import Done, ErrorEvent, Start, TextDelta, TurnEvent, Usage
from runtime.chat.recordings import Recording, StreamRecorder

__all__ = [
    "DONE",
    "HEARTBEAT",
    "ChatFrames",
    "Last",
    "SSEStream",
    "candidate_body",
    "chat_body",
    "encoded_stream",
    "record",
    "sse_response",
    "with_heartbeat",
]

T = TypeVar("T")

DONE = b"data: [DONE]\n\n"
HEARTBEAT = b": keep-alive\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_encode = msgspec.json.Encoder().encode
_TAGS: dict[type, bytes] = {
    cls: str(cls.__struct_config__.tag).encode() for cls in (Start, TextDelta, Usage, Done, ErrorEvent)
}


class Last(bytes):
    """The final piece of a stream's body: it goes out together with the end of the response."""


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

    async def items(self) -> AsyncIterator[T | None]:
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


def with_heartbeat(source: AsyncIterator[T], interval: float) -> AsyncIterator[T | None]:
    """Items of ``source``, with ``None`` whenever ``interval`` seconds pass without one.

    Closing or cancelling the result cancels the reading task, which ends the source (and so the
    upstream request).
    """
    return _Heartbeat(source, interval).items()


def encode_events(events: list[TurnEvent], count: int, prefix: bytes = b"") -> tuple[list[bytes], int, bool]:
    """Our SSE for a batch of events, one frame each: ``event:`` (the ``type``), ``id:`` (``prefix`` and the
    event's number) and the JSON ``data:``; and whether the batch ends the turn."""
    parts = []
    for event in events:
        tag = _TAGS.get(type(event))
        if tag is None:
            continue
        count += 1
        parts.append(b"event: %s\nid: %s%d\ndata: %s\n\n" % (tag, prefix, count, _encode(event)))
    last = events[-1] if events else None
    return parts, count, type(last) is Done or type(last) is ErrorEvent


async def encoded_stream(
    batches: AsyncIterator[list[TurnEvent]],
    heartbeat: float,
    encode: Callable[[list[TurnEvent]], bytes],
    silence: bytes = HEARTBEAT,
) -> AsyncIterator[bytes]:
    """Every codec's write loop: each batch of events encoded into one write, ``silence`` through long
    silences. ``encode`` returns ``Last`` for the batch that ends the turn."""
    async for batch in with_heartbeat(batches, heartbeat):
        if batch is None:
            yield silence
            continue
        data = encode(batch)
        if data:
            yield data


class ChatFrames:
    """A turn's batches as our SSE, numbered ``<message_id>:<n>`` for a kept turn, and recorded when a
    ``recording`` is given so the stream can be replayed (``GET /api/v1/chat/messages/{id}/events``)."""

    __slots__ = ("count", "prefix", "recorder", "recording")

    def __init__(
        self,
        message_id: UUID | None = None,
        recorder: StreamRecorder | None = None,
        recording: Recording | None = None,
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
        count += 1
        candidate, event = item
        data = msgspec.to_builtins(event)
        data["candidate"] = candidate
        yield b"event: %s\nid: %d\ndata: %s\n\n" % (_TAGS[type(event)], count, _encode(data))
    yield Last(DONE)


class _SSEBody(ASGIStreamingResponse):
    """Sends each piece of the body as it comes, the ``Last`` one with the end of the response.

    A hang-up is noticed by one task waiting on ``receive``: it cancels the sending task, which stops
    reading the body (and so the upstream request). Litestar's own streaming response does the same
    through an anyio task group, at several times the cost per stream.
    """

    async def send_body(self, send: Send, receive: Receive) -> None:
        sending = asyncio.current_task()
        assert sending is not None
        state = {"done": False, "gone": False}
        watcher = asyncio.get_running_loop().create_task(_watch(receive, sending, state))
        iterator: Any = self.iterator
        try:
            async for piece in iterator:
                last = type(piece) is Last
                await send({"type": "http.response.body", "body": piece, "more_body": not last})
                if last:
                    break
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not state["gone"]:
                raise
            sending.uncancel()  # the client left: nothing more to send, and no error to report
        finally:
            state["done"] = True
            watcher.cancel()
            closer = getattr(iterator, "aclose", None)
            if closer is not None:
                await closer()


async def _watch(receive: Receive, sending: asyncio.Task[Any], state: dict[str, bool]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    if not state["done"]:
        state["gone"] = True
        sending.cancel()


class SSEStream(Stream):
    """A ``text/event-stream`` response that proxies do not buffer, sent by :class:`_SSEBody`."""

    def __init__(self, body: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> None:
        super().__init__(body, media_type="text/event-stream", headers={**HEADERS, **(headers or {})})

    def to_asgi_response(self, app: Any, request: Any, **kwargs: Any) -> _SSEBody:
        headers = kwargs.get("headers")
        cookies = kwargs.get("cookies")
        return _SSEBody(
            background=self.background or kwargs.get("background"),
            content_length=0,
            cookies=[*self.cookies, *(cookies or ())],
            encoded_headers=kwargs.get("encoded_headers"),
            encoding=self.encoding,
            headers={**headers, **self.headers} if headers is not None else self.headers,
            is_head_response=kwargs.get("is_head_response", False),
            iterator=self.iterator,  # type: ignore[arg-type]
            media_type=MediaType.TEXT if self.media_type is None else self.media_type,
            status_code=self.status_code or kwargs.get("status_code"),
        )


def sse_response(body: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> SSEStream:
    """A ``text/event-stream`` response that proxies do not buffer."""
    return SSEStream(body, headers)
