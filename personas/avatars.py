"""Persona avatars: one image per persona (PNG, JPEG or WebP), told by its magic bytes, in a table of its own.

The bytes stay out of the persona row and the persona cache: a persona is read on every turn, its picture
only when someone shows it. Who may do what follows the persona: whoever may see it may read its avatar,
its owner and admins may set or remove it.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from uuid import UUID

import asyncpg
import msgspec

from core.errors import BadRequest, NotFound, PayloadTooLarge, UnsupportedMediaType
from personas.models import Caller
from personas.png import SIGNATURE, image_only
from personas.service import PersonaService

__all__ = ["MAX_AVATAR_BYTES", "Avatar", "AvatarStore", "Avatars", "avatar_of"]

MAX_AVATAR_BYTES = 2 * 1024 * 1024

GET_AVATAR = "SELECT content_type, bytes AS image, sha256, updated_at FROM persona_avatars WHERE persona_id = $1"
PUT_AVATAR = """
INSERT INTO persona_avatars (persona_id, content_type, bytes, sha256) VALUES ($1, $2, $3, $4)
ON CONFLICT (persona_id) DO UPDATE
SET content_type = excluded.content_type, bytes = excluded.bytes, sha256 = excluded.sha256, updated_at = now()
RETURNING content_type, bytes AS image, sha256, updated_at"""
DELETE_AVATAR = "DELETE FROM persona_avatars WHERE persona_id = $1"


class Avatar(msgspec.Struct, frozen=True, kw_only=True):
    """A stored image: its type, its bytes, their SHA-256 (hex; the ETag) and when it was set."""

    content_type: str
    image: bytes
    sha256: str
    updated_at: datetime


def _image_type(data: bytes) -> str | None:
    if data.startswith(SIGNATURE):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def avatar_of(data: bytes) -> tuple[str, bytes]:
    """The image type and the bytes to store, or a 413 or 415 naming ``avatar``.

    The type comes from the bytes themselves, not from what the client says they are. A PNG is checked chunk
    by chunk, and card text chunks (``chara``, ``ccv3``) are taken out: whoever may see a persona may fetch
    its avatar, and a card's text holds the prompt only its owner reads.
    """
    if len(data) > MAX_AVATAR_BYTES:
        raise PayloadTooLarge(
            f"The avatar is larger than {MAX_AVATAR_BYTES} bytes (2 MB), the most an avatar may be: send a smaller "
            "image.",
            field="avatar",
        )
    content_type = _image_type(data)
    if content_type is None:
        raise UnsupportedMediaType(
            "The avatar is not a PNG, JPEG or WebP image (its first bytes say so, whatever its Content-Type): "
            "send the image file itself as the body.",
            field="avatar",
        )
    if content_type == "image/png":
        try:
            data = image_only(data)
        except BadRequest as exc:
            raise BadRequest(f"The avatar: {exc.message}", field="avatar") from None
    return content_type, data


class AvatarStore:
    """Avatar rows in PostgreSQL (no cache: a browser's ETag does that job)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, persona_id: UUID) -> Avatar | None:
        record = await self._pool.fetchrow(GET_AVATAR, persona_id)
        return None if record is None else msgspec.convert(dict(record), Avatar)

    async def put(self, persona_id: UUID, content_type: str, data: bytes) -> Avatar:
        digest = hashlib.sha256(data).hexdigest()
        record = await self._pool.fetchrow(PUT_AVATAR, persona_id, content_type, data, digest)
        return msgspec.convert(dict(record), Avatar)

    async def delete(self, persona_id: UUID) -> bool:
        return bool(await self._pool.execute(DELETE_AVATAR, persona_id) != "DELETE 0")


class Avatars:
    """The avatar routes' rules: the persona's own rules of who sees and who changes it."""

    def __init__(self, personas: PersonaService, store: AvatarStore) -> None:
        self.personas = personas
        self.store = store

    async def get(self, caller: Caller, persona_id: UUID) -> Avatar:
        persona = await self.personas.get_visible(caller, persona_id)
        avatar = await self.store.get(persona.id)
        if avatar is None:
            raise NotFound(f"Persona {persona.name!r} has no avatar; its owner may PUT one.", field="persona_id")
        return avatar

    async def put(self, caller: Caller, persona_id: UUID, data: bytes) -> Avatar:
        persona = await self.personas.get_editable(caller, persona_id)
        content_type, image = avatar_of(data)
        return await self.store.put(persona.id, content_type, image)

    async def delete(self, caller: Caller, persona_id: UUID) -> bool:
        """Remove the avatar; False when the persona had none."""
        persona = await self.personas.get_editable(caller, persona_id)
        return await self.store.delete(persona.id)
