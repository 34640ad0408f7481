"""The streaming response of every SSE route: sent as it comes, proxies told not to buffer it.

Our events' frames, heartbeats and the write loop the codecs share are in :mod:`runtime.chat.frames`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

from litestar.background_tasks import BackgroundTask, BackgroundTasks
from litestar.datastructures import Cookie
from litestar.response import Stream
from litestar.types import Receive, Scope, Send

from runtime.chat.frames import Last

__all__ = ["SSEStream", "sse_response"]

HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_CONTENT_TYPE = (b"content-type", b"text/event-stream; charset=utf-8")
_FIXED = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in HEADERS.items()]


class _SSEBody:
    """The ASGI side of an :class:`SSEStream`: the head together with the first piece of the body, then each
    piece as it comes, the ``Last`` one with the end of the response.

    The head waits for the first piece (a stream's first piece is ready when the response is made: the first
    answer, a replay, or a heartbeat at the latest), so the server can send both in one write. A hang-up is
    noticed by one task waiting on ``receive``: it cancels the sending task, which stops reading the body
    (and so the upstream request). Litestar's own streaming response does the same through an anyio task
    group, at several times the cost per stream; its header handling (a mutable header map, built per
    response) is done here once, since the headers of a stream are few and known.
    """

    __slots__ = ("background", "headers", "iterator", "status")

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        iterator: AsyncIterator[bytes],
        background: BackgroundTask | BackgroundTasks | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.iterator = iterator
        self.background = background

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sending = asyncio.current_task()
        assert sending is not None
        state = {"done": False, "gone": False}
        started = False
        watcher = asyncio.get_running_loop().create_task(_watch(receive, sending, state))
        iterator: Any = self.iterator
        try:
            async for piece in iterator:
                if not started:
                    started = True
                    await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
                last = type(piece) is Last
                await send({"type": "http.response.body", "body": piece, "more_body": not last})
                if last:
                    break
            else:
                if not started:
                    await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
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
        if self.background is not None:
            await self.background()


async def _watch(receive: Receive, sending: asyncio.Task[Any], state: dict[str, bool]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    if not state["done"]:
        state["gone"] = True
        sending.cancel()


class SSEStream(Stream):
    """A ``text/event-stream`` response that proxies do not buffer, sent by :class:`_SSEBody`.

    A ``Response`` to Litestar (so a route may answer JSON or a stream), without its general set-up: a
    stream's headers are encoded once, when it is handed to the server.
    """

    def __init__(self, body: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> None:
        # Response's own __init__ is skipped: it builds a cookie list, a header map and encoder tables a
        # stream never uses. The fields Litestar may read are set here.
        self.content = b""  # type: ignore[assignment]
        self.iterator = body
        self.background = None
        self.cookies: list[Cookie] = []
        self.encoding = "utf-8"
        self.headers = {key.lower(): value for key, value in headers.items()} if headers else {}
        self.media_type = "text/event-stream"
        self.status_code = None
        self.response_type_encoders = {}

    def to_asgi_response(self, app: Any, request: Any, **kwargs: Any) -> _SSEBody:  # type: ignore[override]
        route_headers: dict[str, str] | None = kwargs.get("headers")
        cookies: Iterable[Cookie] = kwargs.get("cookies") or ()
        encoded = list(_FIXED)
        if route_headers or self.headers:
            merged = {**HEADERS, **{k.lower(): v for k, v in (route_headers or {}).items()}, **self.headers}
            encoded = [(name.encode("latin-1"), str(value).encode("latin-1")) for name, value in merged.items()]
        encoded.append(_CONTENT_TYPE)
        encoded.extend(c.to_encoded_header() for c in cookies if not c.documentation_only)
        status = kwargs.get("status_code") or 200
        return _SSEBody(status, encoded, self.iterator, kwargs.get("background"))  # type: ignore[arg-type]


def sse_response(body: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> SSEStream:
    """A ``text/event-stream`` response that proxies do not buffer."""
    return SSEStream(body, headers)
