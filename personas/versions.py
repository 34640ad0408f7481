"""A persona's saved versions: what one records, and a persona read back as it was at one."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from personas.models import ExampleMessage, Limits, Lorebook, ModelSettings, Persona, Tool

__all__ = ["PersonaVersion", "VersionSummary", "as_of", "version_decoder"]


class PersonaVersion(msgspec.Struct, frozen=True, kw_only=True):
    """One saved state of a persona."""

    persona_id: UUID
    version: int
    name: str
    description: str
    system_prompt: str
    personality_traits: dict[str, Any]
    capabilities: dict[str, Any]
    model_settings: dict[str, Any]
    tools: list[dict[str, Any]]
    visibility: str
    created_by: UUID | None
    change_note: str | None
    created_at: datetime
    extensions: dict[str, Any] = msgspec.field(default_factory=dict)
    limits: dict[str, Any] = msgspec.field(default_factory=dict)
    lorebook: dict[str, Any] | None = None
    greetings: list[str] = msgspec.field(default_factory=list)
    example_messages: list[dict[str, Any]] = msgspec.field(default_factory=list)
    scenario: str | None = None


class VersionSummary(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    created_at: datetime
    created_by: UUID | None
    change_note: str | None


version_decoder: msgspec.json.Decoder[PersonaVersion | None] = msgspec.json.Decoder(PersonaVersion | None)


def as_of(current: Persona, saved: PersonaVersion) -> Persona:
    """``current`` with the content it had at ``saved.version``.

    Identity, owner and flags (``is_active``, ``is_default``) are the persona's own, not part of a version;
    ``updated_at`` is when that version was saved.
    """
    return msgspec.structs.replace(
        current,
        name=saved.name,
        description=saved.description,
        system_prompt=saved.system_prompt,
        personality_traits=saved.personality_traits,
        capabilities=saved.capabilities,
        model_settings=msgspec.convert(saved.model_settings, ModelSettings),
        tools=msgspec.convert(saved.tools, list[Tool]),
        visibility=saved.visibility,
        extensions=saved.extensions,
        limits=msgspec.convert(saved.limits, Limits),
        lorebook=None if saved.lorebook is None else msgspec.convert(saved.lorebook, Lorebook),
        greetings=saved.greetings,
        example_messages=msgspec.convert(saved.example_messages, list[ExampleMessage]),
        scenario=saved.scenario,
        version=saved.version,
        updated_at=saved.created_at,
    )
