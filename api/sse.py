"""The streaming response of every SSE route: sent as it comes, proxies told not to buffer it.

Our events' frames, heartbeats and the write loop the codecs share are in :mod:`runtime.chat.frames`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from litestar.enums import MediaType
from litestar.response import Stream
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Send

from runtime.chat.frames import Last

__all__ = ["SSEStream", "sse_response"]

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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
