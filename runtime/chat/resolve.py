"""Persona resolution for a chat turn: request, then conversation, then preference, then default."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from core.errors import Forbidden, NotFound
from personas.models import Caller, Persona
from personas.releases import PRODUCTION, Variant, in_rollout, is_label
from personas.service import PersonaService, can_edit, can_see
from runtime.chat.conversations import Conversation

__all__ = [
    "PERSONA_MODEL",
    "PersonaSource",
    "Selector",
    "find_model_id",
    "list_model_ids",
    "persona_name_of_model",
    "resolve_model_persona",
    "resolve_persona",
    "resolve_persona_name",
    "serve_version",
    "split_selector",
]

# What picks a version: a label (`production` included), a version number, or None for whatever the caller is
# served by default (production, or the rollout's version when the caller falls in its share).
Selector = str | int | None
_LAST_VERSION = 2**31 - 1

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


async def resolve_model_persona(personas: PersonaService, caller: Caller, name: str) -> tuple[Persona, Selector]:
    """The persona ``persona/<name>`` names, and the version it picks: ``Mu@beta`` is label ``beta`` of Mu,
    ``Mu@3`` its version 3. A persona whose own name has such an ending is found first."""
    base, selector = split_selector(name)
    if selector is not None:
        whole = await personas.store.find_by_name(name, caller.user_id)
        if whole is not None and can_see(whole, caller):
            return whole, None
    return await resolve_persona_name(personas, caller, base), selector


def split_selector(name: str) -> tuple[str, Selector]:
    """``name@label`` → (name, label); ``name@12`` → (name, 12); anything else → (name, None)."""
    base, at, after = name.rpartition("@")
    if not at or not base:
        return name, None
    if after.isascii() and after.isdigit():
        return base, int(after)
    return (base, after) if is_label(after) else (name, None)


async def serve_version(
    personas: PersonaService, caller: Caller, persona: Persona, selector: Selector, *, field: str
) -> tuple[Persona, Variant]:
    """The version of ``persona`` this turn is served, and why (section 16).

    With no ``selector``: production (the latest save unless pinned), or the rollout's version for the share of
    users a stable hash of (user, persona) puts in it. A label's version for whoever may use the persona; a
    version number only for its owner and admins (403 naming ``field``). A persona without labels or rollout
    costs one lookup in the entry it was read from.
    """
    release = await personas.store.release(persona.id)
    if selector is None:
        if release.empty:
            return persona, "production"
        version = release.production(persona.version)
        variant: Variant = "production"
        rollout = release.rollout
        if rollout is not None and in_rollout(caller.user_id, persona.id, rollout.percent):
            version, variant = rollout.version, "rollout"
    elif isinstance(selector, int):
        if not can_edit(persona, caller):
            raise Forbidden(
                f"Only the owner of persona {persona.name!r} or an admin may pick a version by number: "
                "use a label instead (`persona/<name>@<label>`).",
                field=field,
            )
        if not 1 <= selector <= _LAST_VERSION:  # beyond what the version column holds: never saved
            raise NotFound(f"Persona {persona.name!r} has no saved version {selector}.", field=field)
        version, variant = selector, "pinned"
    elif selector == PRODUCTION:
        version, variant = release.production(persona.version), "production"
    else:
        labelled, variant = release.labels.get(selector), "label"
        if labelled is None:
            raise NotFound(
                f"Persona {persona.name!r} has no label {selector!r}: GET /api/v1/chat/personas/{persona.id}/labels "
                "lists them.",
                field=field,
            )
        version = labelled
    served = await personas.store.as_of(persona, version)
    if served is None:
        raise NotFound(f"Persona {persona.name!r} has no saved version {version}.", field=field)
    return served, variant


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
    persona, selector = await resolve_model_persona(personas, caller, name)
    if selector is None:
        return _PREFIX + persona.name
    await serve_version(personas, caller, persona, selector, field="model")
    return f"{_PREFIX}{persona.name}@{selector}"
