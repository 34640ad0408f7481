"""The caller's W3C trace context (``traceparent``, ``tracestate``) handed to the turns a request runs, when traces
are on; the app does not install this otherwise, so a request without traces does no work for them."""

from __future__ import annotations

from typing import Any

from core.traces import CALLER

__all__ = ["TraceContextMiddleware"]

# Longer than any valid header (55 characters for a traceparent, 512 for a tracestate): the SDK checks the rest.
_MAX_PARENT = 128
_MAX_STATE = 1024


class TraceContextMiddleware:
    """Pure ASGI: puts the request's ``traceparent`` (and ``tracestate``) where the chat pipeline starts spans."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        parent = state = None
        for name, value in scope["headers"]:
            if name == b"traceparent" and len(value) <= _MAX_PARENT:
                parent = value.decode("latin-1")
            elif name == b"tracestate" and len(value) <= _MAX_STATE:
                state = value.decode("latin-1")
        if parent is None:
            await self.app(scope, receive, send)
            return
        token = CALLER.set((parent, state))
        try:
            await self.app(scope, receive, send)
        finally:
            CALLER.reset(token)
