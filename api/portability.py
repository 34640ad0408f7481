"""Persona import and export: /api/v1/chat/personas/import and /api/v1/chat/personas/{id}/export."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.params import FromPath, FromQuery
from litestar.types import ReceiveMessage

from api.deps import CallerDep, PorterDep
from api.openapi import ImportBody, PngExport, answers
from api.schemas import PersonaResponse
from core.errors import BadRequest, PayloadTooLarge
from personas.porter import ExportFormat

__all__ = ["PortabilityController", "read_upload"]

_SOURCES = {
    "persona-runtime/v1": "a persona document",
    "chara_card_v1": "a Character Card V1",
    "chara_card_v2": "a Character Card V2",
    "chara_card_v3": "a Character Card V3",
}


async def read_upload(request: Request[Any, Any, Any], limit: int) -> bytes:
    """The body (or, for ``multipart/form-data``, its one file), refused once it grows past ``limit``."""
    too_large = PayloadTooLarge(
        f"The upload is larger than {limit} bytes, the most this server imports (IMPORT_MAX_BYTES)."
    )
    announced = request.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    if request.content_type[0] != "multipart/form-data":
        return bytes(body)

    # The stream is spent: parse the form from the bytes already read, through Litestar's own parser.
    replayed = False

    async def receive() -> ReceiveMessage:
        nonlocal replayed
        if replayed:
            return {"type": "http.disconnect"}
        replayed = True
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    form = await Request[Any, Any, Any](request.scope, receive=receive).form()
    files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
    try:
        if len(files) != 1:
            raise BadRequest(
                "Send exactly one file in the form (a PNG card or a JSON document, as field `file`); "
                f"got {len(files)}.",
                field="file",
            )
        return await files[0].read()
    finally:
        for upload in files:
            await upload.close()


class PortabilityController(Controller):
    path = "/api/v1/chat/personas"
    tags = ["personas"]

    @get(
        "/{persona_id:str}/export",
        responses=answers(dict[str, Any], "Our persona document, a Character Card V2, or a PNG card (`format=png`)"),
        operation_class=PngExport,
    )
    async def export(
        self, persona_id: FromPath[UUID], caller: CallerDep, porter: PorterDep, format: FromQuery[ExportFormat] = "json"
    ) -> Response[bytes]:
        """Our persona document (``format=json``), a Character Card V2 (``format=card``) or a PNG card carrying
        V2 and V3 cards (``format=png``); owner or admin."""
        exported = await porter.export(caller, persona_id, format)
        disposition = f'attachment; filename="{exported.filename}"'
        return Response(exported.content, media_type=exported.media_type, headers={"Content-Disposition": disposition})

    # The body is bounded by IMPORT_MAX_BYTES in read_upload rather than by a fixed per-route limit.
    @post("/import", request_max_body_size=None, operation_class=ImportBody)
    async def import_persona(
        self, request: Request[Any, Any, Any], caller: CallerDep, porter: PorterDep
    ) -> PersonaResponse:
        """A new private persona from our document, a card's JSON, or a PNG card (JSON body or multipart file)."""
        persona, source, pictured = await porter.import_(caller, await read_upload(request, porter.max_bytes))
        avatar = "; its picture is the persona's avatar" if pictured else ""
        return PersonaResponse(
            persona=persona, message=f"Persona {persona.name} imported from {_SOURCES[source]}{avatar}"
        )
