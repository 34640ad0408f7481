"""The request class of the app: every JSON body is checked (depth, NUL, surrogates, UTF-8) before it is decoded."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import SerializationException
from litestar.types import Empty

from core.errors import BadRequest
from core.json_guard import check_json, surrogate_error

__all__ = ["GuardedRequest"]


class GuardedRequest(Request[Any, Any, Any]):
    """Litestar's request, whose ``json()`` (what every ``JSONBody`` parameter is decoded from) checks the bytes first.

    The checks are a few passes over bytes already in memory; a decoding failure is turned into a 400 that
    says what is wrong with the body and where, rather than the decoder's bare message.
    """

    async def json(self) -> Any:
        if self._json is not Empty or self._connection_state.json is not Empty:
            return await super().json()
        body = await self.body()
        check_json(body)
        try:
            return await super().json()
        except SerializationException as exc:
            reason = str(exc)
            if "UTF-8" in reason:
                raise BadRequest(
                    f"The request body is not valid UTF-8 ({reason}): send JSON encoded as UTF-8."
                ) from None
            # The decoder stops at a lone surrogate escape with one of several messages, none naming the field.
            error = surrogate_error(body)
            if error is not None:
                raise error from None
            raise
