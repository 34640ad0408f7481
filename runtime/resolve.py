"""Persona resolution for a chat turn: request, then conversation, then preference, then default."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from core.errors import NotFound
from personas.models import Caller, Persona
from personas.service import PersonaService, can_see
from runtime.conversations import Conversation

__all__ = ["PersonaSource", "resolve_persona", "resolve_persona_name"]

PersonaSource = Literal["request", "conversation", "preference", "default"]


async def resolve_persona(
    personas: PersonaService, caller: Caller, *, requested: UUID | None, conversation: Conversation | None
) -> tuple[Persona, PersonaSource]:
    """The first active persona the caller may see, and which rule chose it.

    A persona asked for by id must exist and be visible (else 404); the conversation's persona is
    skipped quietly when it was deleted or hidden since, as is a stale preference.
    """
    if requested is not None:
        return await personas.get_visible(caller, requested), "request"
    if conversation is not None and conversation.persona_id is not None:
        pinned = await personas.store.get(conversation.persona_id)
        if pinned is not None and can_see(pinned, caller):
            return pinned, "conversation"
    return await personas.current(caller)


async def resolve_persona_name(personas: PersonaService, caller: Caller, name: str) -> Persona:
    """The persona called ``name`` (any case) if the caller may use it."""
    persona = await personas.store.find_by_name(name)
    if persona is None or not can_see(persona, caller):
        raise NotFound(f"No persona named {name!r} that you may use.", field="model")
    return persona
