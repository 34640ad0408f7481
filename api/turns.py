"""Turns over HTTP (contract section 16): feedback on one's own turns, a persona's stats and a caller's usage."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from litestar import Controller, delete, get, post
from litestar.params import FromPath, JSONBody, QueryParameter
from msgspec import UNSET, Meta, Struct, UnsetType

from api.deps import CallerDep, ResourcesDep
from core.errors import Forbidden
from runtime.turns.feedback import Feedback
from runtime.turns.stats import StatsRow, time_range

__all__ = ["FeedbackController", "StatsController", "UsageController"]

Comment = Annotated[str, Meta(max_length=2000, description="at most 2,000 characters")]
From = Annotated[str | None, QueryParameter(name="from", max_length=64, description="RFC 3339 time or day (UTC)")]
To = Annotated[str | None, QueryParameter(name="to", max_length=64, description="RFC 3339 time or day; now")]
By = Annotated[str | None, QueryParameter(name="by", max_length=32)]


class FeedbackRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    rating: Literal[1, -1]
    comment: Comment | None = None


class FeedbackOut(Struct, frozen=True, kw_only=True):
    turn_id: UUID
    rating: int
    comment: str | None
    created_at: datetime
    updated_at: datetime


class FeedbackResponse(Struct, frozen=True, kw_only=True):
    success: bool = True
    message: str
    feedback: FeedbackOut | UnsetType = UNSET


class StatsResponse(Struct, frozen=True, kw_only=True):
    success: bool = True
    rows: list[StatsRow]


def _out(feedback: Feedback) -> FeedbackOut:
    return FeedbackOut(
        turn_id=feedback.turn_id,
        rating=feedback.rating,
        comment=feedback.comment,
        created_at=feedback.created_at,
        updated_at=feedback.updated_at,
    )


class FeedbackController(Controller):
    path = "/api/v1/turns"
    tags = ["turns"]

    @post("/{turn_id:str}/feedback", status_code=200)
    async def give(
        self, turn_id: FromPath[UUID], data: JSONBody[FeedbackRequest], caller: CallerDep, resources: ResourcesDep
    ) -> FeedbackResponse:
        """A thumbs up (1) or down (-1) on one of the caller's turns, with an optional comment; the last one stands."""
        given = await resources.feedback.give(caller.user_id, turn_id, data.rating, data.comment)
        return FeedbackResponse(message="Feedback saved", feedback=_out(given))

    @delete("/{turn_id:str}/feedback", status_code=200)
    async def remove(self, turn_id: FromPath[UUID], caller: CallerDep, resources: ResourcesDep) -> FeedbackResponse:
        removed = await resources.feedback.remove(caller.user_id, turn_id)
        return FeedbackResponse(message="Feedback removed" if removed else "The turn had no feedback")


class StatsController(Controller):
    path = "/api/v1/chat/personas"
    tags = ["turns"]

    @get("/{persona_id:str}/stats")
    async def stats(
        self,
        persona_id: FromPath[UUID],
        caller: CallerDep,
        resources: ResourcesDep,
        since: From = None,
        until: To = None,
        by: By = None,
    ) -> StatsResponse:
        """The persona's turns from `from` to `to`, per version (default), variant, day or model: owner or admin."""
        window = time_range(since, until)
        persona = await resources.personas.get_editable(caller, persona_id)
        return StatsResponse(rows=await resources.stats.persona(persona.id, window, by))


class UsageController(Controller):
    path = "/api/v1/usage"
    tags = ["turns"]

    @get("/")
    async def usage(
        self,
        caller: CallerDep,
        resources: ResourcesDep,
        since: From = None,
        until: To = None,
        by: By = None,
        user_id: Annotated[UUID | None, QueryParameter(name="user_id")] = None,
    ) -> StatsResponse:
        """The caller's turns from `from` to `to` per day (default), persona, key or model; admins see everyone's,
        or one user's with `user_id`."""
        window = time_range(since, until)
        if caller.is_admin:
            whose = user_id
        elif user_id is None or user_id == caller.user_id:
            whose = caller.user_id
        else:
            raise Forbidden("`user_id` names another user: only admins read others' usage.", field="user_id")
        return StatsResponse(rows=await resources.stats.usage(whose, window, by))
