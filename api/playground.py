"""The playground: the authoring page at /playground, static files shipped inside the package."""

from __future__ import annotations

from pathlib import Path

from litestar import Response, Router
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router

__all__ = ["PLAYGROUND_DIR", "playground_router"]

PLAYGROUND_DIR = Path(__file__).parent / "static" / "playground"

# The page holds an API key: it runs only its own scripts, talks only to this server and cannot be framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


async def _secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def playground_router() -> Router:
    """``/playground`` answers ``index.html``; its scripts and styles sit beside it.

    The page calls the API with the key the author types in, so it is served without one (the auth
    middleware skips ``/playground``). ``no-cache`` makes browsers revalidate, so an upgrade is seen at once.
    """
    return create_static_files_router(
        path="/playground",
        directories=[PLAYGROUND_DIR],
        html_mode=True,
        name="playground",
        cache_control=CacheControlHeader(no_cache=True),
        include_in_schema=False,
        after_request=_secure,
    )
