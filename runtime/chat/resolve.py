"""Persona resolution for a chat turn: request, then conversation, then preference, then default."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from core.errors import NotFound
from personas.models import Caller, Persona
from personas.service import PersonaService, can_see
from runtime.chat.conversations import Conversation

__all__ = [
    "PERSONA_MODEL",
    "PersonaSource",
    "find_model_id",
    "list_model_ids",
    "persona_name_of_model",
    "resolve_persona",
    "resolve_persona_name",
]

PersonaSource = Literal["request", "conversation", "preference", "default"]

# Personas as model ids on the OpenAI-compatible API: `persona` is whoever the caller would get,
# `persona/<name>` one persona by name.
PERSONA_MODEL = "persona"
_PREFIX = "persona/"


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
    """The persona called ``name`` (any case) if the caller may use it: their own, else the public one."""
    persona = await personas.store.find_by_name(name, caller.user_id)
    if persona is None or not can_see(persona, caller):
        raise NotFound(f"No persona named {name!r} that you may use.", field="model")
    return persona


def persona_name_of_model(model: str) -> str | None:
    """The persona a model id names: ``None`` for ``persona`` (the caller's own), else the name after ``persona/``."""
    if model == PERSONA_MODEL:
        return None
    if model.startswith(_PREFIX) and len(model) > len(_PREFIX):
        return model[len(_PREFIX) :]
    raise NotFound(
        f"The model {model!r} does not exist here: use `persona` for your current persona or `persona/<name>` "
        "(GET /v1/models lists them).",
        field="model",
    )


async def list_model_ids(personas: PersonaService, caller: Caller) -> list[str]:
    """``persona`` (whatever persona the caller would get) and ``persona/<name>`` for each usable persona."""
    ids = [PERSONA_MODEL]
    offset = 0
    while True:
        page, total = await personas.list(caller, limit=200, offset=offset)
        ids.extend(_PREFIX + p.name for p in page)
        offset += len(page)
        if not page or offset >= total:
            return ids


async def find_model_id(personas: PersonaService, caller: Caller, model: str) -> str:
    """The id of the model ``model`` names, as ``GET /v1/models`` lists it, if the caller may use it (else 404).

    ``persona`` always exists (the caller gets some persona); ``persona/<name>`` is matched in any case and
    answered with the persona's own spelling.
    """
    name = persona_name_of_model(model)
    if name is None:
        return PERSONA_MODEL
    return _PREFIX + (await resolve_persona_name(personas, caller, name)).name
