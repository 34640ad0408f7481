"""PersonaPorter: a persona exported as our document, a card or a PNG card, and an upload imported as a new persona."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any, Literal
from uuid import UUID

import msgspec

from core.errors import Conflict
from personas.avatars import MAX_AVATAR_BYTES, AvatarStore
from personas.cards import CARD_V3, persona_to_card
from personas.documents import encode_document, load_document, persona_document, slug
from personas.models import Caller, Persona
from personas.png import SIGNATURE, image_only, plain_png, with_card
from personas.service import PersonaService

__all__ = ["ExportFormat", "Exported", "PersonaPorter", "card_v3"]

ExportFormat = Literal["json", "card", "png"]

# The picture of a PNG card whose persona has no PNG avatar: a card's usual 2:3 shape, in one colour.
_PLAIN_SIZE = (400, 600)


class Exported(msgspec.Struct, frozen=True, kw_only=True):
    """An export ready to send: the bytes, their media type and the file name to save them under."""

    content: bytes
    filename: str
    media_type: str = "application/json"


def card_v3(card: dict[str, Any]) -> dict[str, Any]:
    """The Character Card V3 of a V2 card: the same ``data``, with the fields V3 requires that V2 lacks."""
    data = {**card["data"], "group_only_greetings": card["data"].get("group_only_greetings", [])}
    book = data.get("character_book")
    if isinstance(book, dict) and isinstance(book.get("entries"), list):
        entries = [{"use_regex": False, **e} if isinstance(e, dict) else e for e in book["entries"]]
        data["character_book"] = {**book, "entries": entries}
    return {**card, "spec": CARD_V3, "spec_version": "3.0", "data": data}


def _base64_json(value: dict[str, Any]) -> str:
    return base64.b64encode(msgspec.json.encode(value)).decode("ascii")


def _plain_picture(persona: Persona) -> bytes:
    # A colour of the persona's own, so two exported cards are told apart at a glance.
    red, green, blue = hashlib.sha256(persona.id.bytes).digest()[:3]
    return plain_png(*_PLAIN_SIZE, (red // 2 + 64, green // 2 + 64, blue // 2 + 64))


class PersonaPorter:
    """Import and export for the API, on top of :class:`PersonaService` and its rules."""

    def __init__(self, personas: PersonaService, avatars: AvatarStore, *, max_bytes: int) -> None:
        self.personas = personas
        self.avatars = avatars
        # Bounds what one PNG text chunk may decompress to; the upload itself is bounded by the API.
        self.max_bytes = max_bytes

    async def export(self, caller: Caller, persona_id: UUID, format: ExportFormat) -> Exported:
        """Our document, a Character Card V2 (``card``) or a PNG card (``png``) of a persona the caller may change."""
        persona = await self.personas.get_editable(caller, persona_id)
        if format == "png":
            avatar = await self.avatars.get(persona.id)
            picture = avatar.image if avatar is not None and avatar.content_type == "image/png" else None
            v2 = persona_to_card(persona)
            chunks = [("chara", _base64_json(v2)), ("ccv3", _base64_json(card_v3(v2)))]
            content = with_card(picture or _plain_picture(persona), chunks)
            return Exported(content=content, filename=f"{slug(persona.name)}.png", media_type="image/png")
        if format == "card":
            card = msgspec.json.format(msgspec.json.encode(persona_to_card(persona)), indent=2) + b"\n"
            return Exported(content=card, filename=f"{slug(persona.name)}.card.json")
        return Exported(content=encode_document(persona_document(persona)), filename=f"{slug(persona.name)}.json")

    async def import_(self, caller: Caller, payload: bytes) -> tuple[Persona, str, bool]:
        """Create a persona owned by the caller from an upload; returns it, the format it came in, and whether
        the upload's picture (a PNG card's, without its card text) became the persona's avatar."""
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
        picture = image_only(payload) if payload.startswith(SIGNATURE) else None
        # A card's picture larger than an avatar may be is left out rather than refusing the card.
        if picture is None or len(picture) > MAX_AVATAR_BYTES:
            return persona, imported.source, False
        await self.avatars.put(persona.id, "image/png", picture)
        return persona, imported.source, True
