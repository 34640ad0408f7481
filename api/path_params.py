"""Path parameters holding NUL or another control character are a 400 naming the parameter, on every route.

Bodies are checked as they are read (``api/body.py``) and query strings where they are parsed; a path
parameter reached a handler as it came, so ``/v1/models/persona/%00`` took its NUL to PostgreSQL (a 500).
No identifier, name or version this API takes has a control character in it.
"""

from __future__ import annotations

import re

from litestar.types import ASGIApp, Receive, Scope, Send

from core.errors import BadRequest

__all__ = ["path_params_guard"]

# C0 controls (NUL included), DEL, the C1 controls, and lone surrogates (no character at all).
_UNWANTED = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def path_params_guard(app: ASGIApp) -> ASGIApp:
    """Middleware: runs once the route is found, when ``scope["path_params"]`` holds the decoded parameters."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        for name, value in scope.get("path_params", {}).items():
            if isinstance(value, str) and (found := _UNWANTED.search(value)) is not None:
                code = f"U+{ord(found.group()):04X}"
                what = "a lone surrogate" if "\ud800" <= found.group() <= "\udfff" else "a control character"
                raise BadRequest(
                    f"`{name}` contains {what} ({code} at position {found.start()}, 0-based), "
                    "which no identifier or name of this API has: remove it.",
                    field=name,
                    details={"character": code, "position": found.start()},
                )
        await app(scope, receive, send)

    return guarded
