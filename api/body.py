"""The request class of the app: every JSON body is checked (depth, NUL, surrogates, UTF-8) before it is decoded,
and decoded straight into its handler's body type under msgspec's strict rules."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import SerializationException, ValidationException
from litestar.types import Empty

from core.errors import BadRequest
from core.json_guard import check_json, surrogate_error
from personas.models import Caller
from runtime.server.resources import Resources

__all__ = ["GuardedRequest"]


class GuardedRequest(Request[Any, Any, Any]):
    """Litestar's request, whose ``json()`` (what every ``JSONBody`` parameter is decoded from) checks the bytes first.

    The checks are a few passes over bytes already in memory; a decoding failure is turned into a 400 that
    says what is wrong with the body and where, rather than the decoder's bare message.
    """

    @property
    def caller(self) -> Caller:
        """The authenticated caller, as ``ApiKeyMiddleware`` found it."""
        user: Caller = self.scope["user"]
        return user

    @property
    def resources(self) -> Resources:
        """The app's services. A turn's routes read these two here rather than as dependencies, whose resolution
        (a signature model each, in turn) cost a streamed answer about a twentieth of its CPU."""
        resources: Resources = self.scope["litestar_app"].state.resources
        return resources

    async def json(self) -> Any:
        if self._json is not Empty or self._connection_state.json is not Empty:
            return await super().json()
        body = await self.body()
        check_json(body)
        decoder = self._body_decoder()
        try:
            if decoder is None:
                return await super().json()
            value = _strictly(decoder, body or b"null")
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
        self._json = self._connection_state.json = value
        return value

    def _body_decoder(self) -> msgspec.json.Decoder[Any] | None:
        """The strict decoder of the handler's body type, made once per type (``None`` for a handler without one)."""
        handler = self.scope.get("route_handler")
        signature = getattr(handler, "parsed_fn_signature", None)
        data = signature.parameters.get("data") if signature is not None else None
        if data is None:
            return None
        annotation = data.annotation
        decoder = _DECODERS.get(annotation)
        if decoder is None:
            decoder = _DECODERS[annotation] = msgspec.json.Decoder(annotation, strict=True)
        return decoder


# Litestar decodes a body to builtins and converts them to the handler's type with msgspec's lax rules, where
# ``0`` is ``false`` and ``"5"`` is 5; the document promises JSON's own types. So a body with a type is decoded
# straight into it under the strict rules, once: the handler's signature then takes the value as it is.
_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}


def _strictly(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        # Checked before malformed JSON: a ValidationError is a DecodeError too.
        raise ValidationException(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise SerializationException(str(exc)) from exc
