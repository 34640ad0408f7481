"""Server-Sent Events: chat events on the wire, with comment heartbeats through long silences."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import msgspec
from litestar.response import Stream

from runtime.events import ChatEvent

__all__ = [
    "DONE",
    "HEARTBEAT",
    "candidate_body",
    "chat_body",
    "encode_event",
    "sse_response",
    "with_heartbeat",
]

T = TypeVar("T")

DONE = b"data: [DONE]\n\n"
HEARTBEAT = b": keep-alive\n\n"
_encoder = msgspec.json.Encoder()
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def encode_event(event_id: int, event: ChatEvent, name: str | None = None) -> bytes:
    """One event: ``event:`` (the event's ``type``), ``id:``, and its JSON as ``data:``."""
    tag = name or event.__struct_config__.tag
    return b"event: %s\nid: %d\ndata: %s\n\n" % (str(tag).encode(), event_id, _encoder.encode(event))


async def with_heartbeat(source: AsyncIterator[T], interval: float) -> AsyncIterator[T | None]:
    """Items of ``source``, with ``None`` whenever ``interval`` seconds pass without one.

    One task reads the source into a queue for the whole stream, so a timed-out wait never cancels
    the source and no task is made per item. Closing or cancelling this generator cancels that task,
    which ends the source (and so the upstream request).
    """
    queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for item in source:
                queue.put_nowait((False, item))
        except BaseException as exc:
            queue.put_nowait((True, exc))
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            queue.put_nowait((True, None))

    reader = asyncio.get_running_loop().create_task(pump())
    try:
        while True:
            try:
                async with asyncio.timeout(interval):
                    finished, value = await queue.get()
            except TimeoutError:
                yield None
                continue
            if not finished:
                yield value
            elif value is None:
                return
            else:
                raise value
    finally:
        reader.cancel()


async def chat_body(events: AsyncIterator[ChatEvent], heartbeat: float) -> AsyncIterator[bytes]:
    count = 0
    async for event in with_heartbeat(events, heartbeat):
        if event is None:
            yield HEARTBEAT
        else:
            count += 1
            yield encode_event(count, event)
    yield DONE


async def candidate_body(events: AsyncIterator[tuple[int, ChatEvent]], heartbeat: float) -> AsyncIterator[bytes]:
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
        tag = str(event.__struct_config__.tag)
        yield b"event: %s\nid: %d\ndata: %s\n\n" % (tag.encode(), count, _encoder.encode(data))
    yield DONE


def sse_response(body: AsyncIterator[bytes]) -> Stream:
    """A ``text/event-stream`` response that proxies do not buffer."""
    return Stream(body, media_type="text/event-stream", headers=HEADERS)
