"""The release API under /api/v1/chat/personas/{id}: labels (production pinned or not) and the rollout."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from litestar import Controller, delete, get, put
from litestar.params import FromPath, JSONBody
from msgspec import Meta, Struct

from api.deps import AuthoringDep, CallerDep
from personas.releases import Rollout
from runtime.authoring.releases import LabelView

__all__ = ["ReleaseController"]

Version = Annotated[int, Meta(ge=1, le=2**31 - 1)]


class LabelRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    version: Version


class RolloutRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    version: Version
    percent: Annotated[int, Meta(ge=1, le=100)]


class LabelsResponse(Struct, frozen=True, kw_only=True):
    labels: dict[str, LabelView]
    success: bool = True


class RolloutResponse(Struct, frozen=True, kw_only=True):
    rollout: Rollout | None
    message: str
    success: bool = True


class ReleaseController(Controller):
    path = "/api/v1/chat/personas"
    tags = ["releases"]

    @get("/{persona_id:str}/labels")
    async def labels(self, persona_id: FromPath[UUID], caller: CallerDep, authoring: AuthoringDep) -> LabelsResponse:
        """The persona's labels: `production` (the version chats get, and whether it is pinned) and custom ones."""
        return LabelsResponse(labels=await authoring.releases.labels(caller, persona_id))

    @put("/{persona_id:str}/labels/{label:str}", status_code=200)
    async def set_label(
        self,
        persona_id: FromPath[UUID],
        label: FromPath[str],
        data: JSONBody[LabelRequest],
        caller: CallerDep,
        authoring: AuthoringDep,
    ) -> LabelsResponse:
        """Point a label at a saved version; `production` pins what chats get (and promotes a rollout's version)."""
        return LabelsResponse(labels=await authoring.releases.set_label(caller, persona_id, label, data.version))

    @delete("/{persona_id:str}/labels/{label:str}", status_code=200)
    async def delete_label(
        self, persona_id: FromPath[UUID], label: FromPath[str], caller: CallerDep, authoring: AuthoringDep
    ) -> LabelsResponse:
        """Remove a label; removing `production` makes it follow the latest save again."""
        return LabelsResponse(labels=await authoring.releases.delete_label(caller, persona_id, label))

    @get("/{persona_id:str}/rollout")
    async def rollout(self, persona_id: FromPath[UUID], caller: CallerDep, authoring: AuthoringDep) -> RolloutResponse:
        """The persona's rollout, or null."""
        rollout = await authoring.releases.rollout(caller, persona_id)
        return RolloutResponse(rollout=rollout, message="Rollout retrieved" if rollout else "No rollout")

    @put("/{persona_id:str}/rollout", status_code=200)
    async def set_rollout(
        self, persona_id: FromPath[UUID], data: JSONBody[RolloutRequest], caller: CallerDep, authoring: AuthoringDep
    ) -> RolloutResponse:
        """Send `percent` of users (the same ones on every turn) to `version` instead of production."""
        rollout = await authoring.releases.set_rollout(caller, persona_id, data.version, data.percent)
        message = f"{rollout.percent}% of users now get version {rollout.version}"
        return RolloutResponse(rollout=rollout, message=message)

    @delete("/{persona_id:str}/rollout", status_code=200)
    async def end_rollout(
        self, persona_id: FromPath[UUID], caller: CallerDep, authoring: AuthoringDep
    ) -> RolloutResponse:
        """End the rollout: every user gets production again."""
        await authoring.releases.end_rollout(caller, persona_id)
        return RolloutResponse(rollout=None, message="Rollout ended; every user gets production")
