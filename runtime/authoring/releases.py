"""PersonaReleases: a persona's labels (production pinned or following the latest save) and its rollout."""

from __future__ import annotations

from uuid import UUID

import msgspec

from core.errors import BadRequest, NotFound
from personas.models import Caller, Persona
from personas.releases import LABEL_PATTERN, PRODUCTION, Release, Rollout, is_label
from personas.service import PersonaService

__all__ = ["LabelView", "PersonaReleases"]


class LabelView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One label as ``GET .../labels`` shows it: ``pinned`` only on production."""

    version: int
    pinned: bool | None = None


class PersonaReleases:
    """Whoever may use a persona may read its labels; only its owner and admins change them or its rollout
    (404 when the persona is invisible, 403 when it is visible but not theirs)."""

    def __init__(self, personas: PersonaService) -> None:
        self.personas = personas

    async def labels(self, caller: Caller, persona_id: UUID) -> dict[str, LabelView]:
        persona = await self.personas.get_visible(caller, persona_id, fresh=True)
        return _labels(persona, await self._release_of(persona))

    async def set_label(self, caller: Caller, persona_id: UUID, label: str, version: int) -> dict[str, LabelView]:
        _check_label(label)
        persona = await self.personas.get_editable(caller, persona_id, fresh=True)
        await self.personas.store.set_label(persona, label, version, actor=caller.user_id)
        return await self.labels(caller, persona_id)

    async def delete_label(self, caller: Caller, persona_id: UUID, label: str) -> dict[str, LabelView]:
        """Remove a label; removing ``production`` (pinned or not) makes it follow the latest save."""
        _check_label(label)
        persona = await self.personas.get_editable(caller, persona_id, fresh=True)
        if not await self.personas.store.delete_label(persona, label) and label != PRODUCTION:
            raise NotFound(f"Persona {persona.name!r} has no label {label!r}.", field="label")
        return await self.labels(caller, persona_id)

    async def rollout(self, caller: Caller, persona_id: UUID) -> Rollout | None:
        persona = await self.personas.get_editable(caller, persona_id, fresh=True)
        return (await self._release_of(persona)).rollout

    async def set_rollout(self, caller: Caller, persona_id: UUID, version: int, percent: int) -> Rollout:
        persona = await self.personas.get_editable(caller, persona_id, fresh=True)
        await self.personas.store.set_rollout(persona, version, percent, actor=caller.user_id)
        return Rollout(version=version, percent=percent)

    async def end_rollout(self, caller: Caller, persona_id: UUID) -> None:
        persona = await self.personas.get_editable(caller, persona_id, fresh=True)
        if not await self.personas.store.delete_rollout(persona):
            raise NotFound(f"Persona {persona.name!r} has no rollout to end.", field="rollout")

    async def _release_of(self, persona: Persona) -> Release:
        return await self.personas.store.release(persona.id)


def _labels(persona: Persona, release: Release) -> dict[str, LabelView]:
    pinned = release.labels.get(PRODUCTION)
    shown = {PRODUCTION: LabelView(version=persona.version if pinned is None else pinned, pinned=pinned is not None)}
    for label, version in sorted(release.labels.items()):
        if label != PRODUCTION:
            shown[label] = LabelView(version=version)
    return shown


def _check_label(label: str) -> None:
    if not is_label(label):
        raise BadRequest(
            f"`label` {label!r} is not a label: use 1 to 32 of lowercase letters, digits, `_` and `-` "
            f"({LABEL_PATTERN}).",
            field="label",
        )
