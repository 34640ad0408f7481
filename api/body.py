"""The request class of the app: every JSON body is checked (depth, NUL, surrogates, UTF-8) before it is decoded,
and against its handler's body type strictly after."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import SerializationException, ValidationException
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
            value = await super().json()
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
        self._check_strictly(value)
        return value

    def _check_strictly(self, value: Any) -> None:
        """Litestar converts a body to its handler's type with msgspec's lax rules, where ``0`` is ``false`` and
        ``"5"`` is 5; the document promises JSON's own types, so the body must convert under the strict ones too."""
        handler = self.scope.get("route_handler")
        signature = getattr(handler, "parsed_fn_signature", None)
        data = signature.parameters.get("data") if signature is not None else None
        if data is None or value is None:
            return
        try:
            msgspec.convert(value, data.annotation, strict=True, str_keys=True)
        except msgspec.ValidationError as exc:
            raise ValidationException(str(exc)) from exc
