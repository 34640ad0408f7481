"""PersonaPorter: a persona exported as our document or a card, and an upload imported as a new persona."""

from __future__ import annotations

import asyncio
from typing import Literal
from uuid import UUID

import msgspec

from core.errors import Conflict
from personas.cards import persona_to_card
from personas.documents import encode_document, load_document, persona_document, slug
from personas.models import Caller, Persona
from personas.service import PersonaService

__all__ = ["ExportFormat", "Exported", "PersonaPorter"]

ExportFormat = Literal["json", "card"]


class Exported(msgspec.Struct, frozen=True, kw_only=True):
    """An export ready to send: the JSON bytes and the file name to save them under."""

    content: bytes
    filename: str


class PersonaPorter:
    """Import and export for the API, on top of :class:`PersonaService` and its rules."""

    def __init__(self, personas: PersonaService, *, max_bytes: int) -> None:
        self.personas = personas
        # Bounds what one PNG text chunk may decompress to; the upload itself is bounded by the API.
        self.max_bytes = max_bytes

    async def export(self, caller: Caller, persona_id: UUID, format: ExportFormat) -> Exported:
        """Our document (or a Character Card V2) of a persona the caller may change."""
        persona = await self.personas.get_editable(caller, persona_id)
        if format == "card":
            card = msgspec.json.format(msgspec.json.encode(persona_to_card(persona)), indent=2) + b"\n"
            return Exported(content=card, filename=f"{slug(persona.name)}.card.json")
        return Exported(content=encode_document(persona_document(persona)), filename=f"{slug(persona.name)}.json")

    async def import_(self, caller: Caller, payload: bytes) -> tuple[Persona, str]:
        """Create a persona owned by the caller from an upload; returns it and the format it came in."""
        # Inflating, base64- and JSON-decoding megabytes is CPU work: off the event loop, so other requests go on.
        imported = await asyncio.to_thread(load_document, payload, limit=self.max_bytes)
        try:
            persona = await self.personas.create(caller, imported.draft)
        except Conflict:
            name = imported.draft.name
            raise Conflict(
                f"A persona named {name!r} already exists (names are unique regardless of case), so nothing was "
                "imported. Rename the persona in the file, or rename or delete the existing one, and import again.",
                field="name",
            ) from None
        return persona, imported.source
