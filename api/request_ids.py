"""Request ids: every response carries ``X-Request-ID``, and every log line of the request names it."""

from __future__ import annotations

import re
import secrets
from typing import Any

from runtime.logs import REQUEST_ID

__all__ = ["RequestIdMiddleware"]

# A client's own id is kept when it is 1 to 128 of these characters; anything else gets a new one.
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


class RequestIdMiddleware:
    """Pure ASGI, around the whole app (error answers and unknown routes included), a few microseconds each."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ident = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if _CLIENT_ID.fullmatch(value):
                    ident = value.decode("ascii")
                break
        if ident is None:
            ident = secrets.token_hex(8)
        header = (b"x-request-id", ident.encode("ascii"))

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = REQUEST_ID.set(ident)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
