"""Request ids: every response carries ``X-Request-ID``, and every log line of the request names it, the
access line written as the request ends (``persona_runtime.access``, INFO) among them.

The same wrapper sends the rate limit headers of a request that was admitted under limits (``x-ratelimit-*``),
on its answer whatever it is: JSON, a stream (before its first byte) or a 429.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from typing import Any

from core.logs import ACCESS, REQUEST_ID, log_access
from runtime.access.limits import LIMIT_HEADERS, rate_limit_headers

__all__ = ["RequestIdMiddleware"]

# A client's own id is kept when it is 1 to 128 of these characters; anything else gets a new one.
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def _new_id() -> str:
    """64 random bits as 16 hex digits. An id names a request in logs and error bodies and guards nothing, so
    it comes from ``random`` (seeded from the OS, reseeded in a forked child), not from ``secrets``, whose
    every call is a system call: ~0.8 µs against ~2.8 µs."""
    return f"{random.getrandbits(64):016x}"


class RequestIdMiddleware:
    """Pure ASGI, around the whole app (error answers and unknown routes included), a few microseconds each.

    ``count(route, method, status)``, when given, hears of every answer, for metrics: ``route`` is the
    route's path template (``/api/v1/chat/personas/{persona_id:str}``), never the path a client sent.
    """

    def __init__(self, app: Any, count: Callable[[str, str, int], None] | None = None) -> None:
        self.app = app
        self.count = count

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
            ident = _new_id()
        header = (b"x-request-id", ident.encode("ascii"))
        # Not even the clock is read for an access log that is off (LOG_LEVEL above INFO).
        started = time.perf_counter() if ACCESS.isEnabledFor(logging.INFO) else None
        status = 500
        limits: list[dict[str, str]] = []

        async def send_with_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), header]
                if limits:
                    headers += [(k.encode(), v.encode()) for k, v in rate_limit_headers(limits).items()]
                message["headers"] = headers
                status = message["status"]
            await send(message)

        token = REQUEST_ID.set(ident)
        limits_token = LIMIT_HEADERS.set(limits)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            LIMIT_HEADERS.reset(limits_token)
            REQUEST_ID.reset(token)
            if self.count is not None:
                self.count(scope.get("path_template") or "unmatched", scope["method"], status)
            if started is not None:
                log_access(scope, ident, status, started)
