"""PersonaHistory: a persona's saved versions, read back as personas and restored as new versions."""

from __future__ import annotations

from uuid import UUID

import msgspec

from core.errors import NotFound
from personas.models import CONTENT_FIELDS, Caller, ExampleMessage, Limits, Lorebook, ModelSettings, Persona, Tool
from personas.service import PersonaService, check_draft
from personas.store import PersonaVersion, VersionSummary

__all__ = ["PersonaHistory", "as_of"]


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


class PersonaHistory:
    """Versions are for a persona's owner and admins, like every authoring tool."""

    def __init__(self, personas: PersonaService) -> None:
        self.personas = personas

    async def list(
        self, caller: Caller, persona_id: UUID, *, limit: int, offset: int
    ) -> tuple[list[VersionSummary], int]:
        """Newest first."""
        await self.personas.get_editable(caller, persona_id)
        return await self.personas.store.list_versions(persona_id, limit=limit, offset=offset)

    async def get(self, caller: Caller, persona_id: UUID, version: int | None = None) -> Persona:
        """The persona as it is now (``version`` None) or as it was at ``version``; 404 naming ``version``."""
        current = await self.personas.get_editable(caller, persona_id)
        return current if version is None else await self._at(current, version)

    async def restore(self, caller: Caller, persona_id: UUID, version: int) -> Persona:
        """Save the content of ``version`` as the persona's next version; older versions stay as they were."""
        current = await self.personas.get_editable(caller, persona_id, fresh=True)
        old = await self._at(current, version)
        check_draft(old)
        restored = msgspec.structs.replace(current, **{field: getattr(old, field) for field in _CONTENT})
        return await self.personas.store.update(
            persona_id, restored, actor=caller.user_id, change_note=f"Restored version {version}"
        )

    async def _at(self, current: Persona, version: int) -> Persona:
        if version == current.version:
            return current
        saved = await self.personas.store.get_version(current.id, version)
        if saved is None:
            raise NotFound(
                f"Persona {current.name!r} has no version {version}; its versions are 1 to {current.version} "
                "(GET .../versions lists them).",
                field="version",
            )
        return as_of(current, saved)


# What a version records: the fields a restore brings back.
_CONTENT = CONTENT_FIELDS
