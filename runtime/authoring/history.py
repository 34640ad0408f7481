"""PersonaHistory: a persona's saved versions, read back as personas and restored as new versions."""

from __future__ import annotations

from uuid import UUID

import msgspec

from core.errors import NotFound
from personas.models import CONTENT_FIELDS, Caller, Persona
from personas.service import PersonaService, check_draft
from personas.store import VersionSummary
from personas.versions import as_of

__all__ = ["PersonaHistory", "as_of"]


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
