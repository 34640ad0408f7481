"""TurnFeedback: a thumbs up or down, and a comment, by a turn's own user; the last one stands."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg
import msgspec

from core.errors import NotFound
from runtime.turns.log import TurnLog

__all__ = ["Feedback", "TurnFeedback"]

# One statement: the feedback is kept only when the turn is the caller's, with what the stats group the turn by.
SET = """
INSERT INTO turn_feedback (turn_id, user_id, key_id, persona_id, persona_version, variant, model, turn_created_at,
                           rating, comment)
SELECT id, user_id, key_id, persona_id, persona_version, variant, model, created_at, $3, $4
FROM turns WHERE id = $1 AND user_id = $2
ON CONFLICT (turn_id) DO UPDATE SET rating = EXCLUDED.rating, comment = EXCLUDED.comment, updated_at = now()
RETURNING turn_id, rating, comment, created_at, updated_at"""
REMOVE = """
WITH own AS (SELECT id FROM turns WHERE id = $1 AND user_id = $2),
gone AS (DELETE FROM turn_feedback f USING own WHERE f.turn_id = own.id RETURNING f.turn_id)
SELECT EXISTS (SELECT 1 FROM own) AS own, (SELECT count(*) FROM gone) AS removed"""


class Feedback(msgspec.Struct, frozen=True, kw_only=True):
    """A user's word on one of their turns."""

    turn_id: UUID
    rating: int
    comment: str | None
    created_at: datetime
    updated_at: datetime


class TurnFeedback:
    """Feedback on turns, each by the turn's own user (another's turn reads as unknown: 404).

    A turn's record is written up to a second after it ends; this process's records are written first, so
    feedback right after an answer finds it. A turn that ran on another instance is found once that
    instance has written it (within a second).
    """

    def __init__(self, pool: asyncpg.Pool, records: TurnLog) -> None:
        self._pool = pool
        self._records = records

    async def give(self, user_id: UUID, turn_id: UUID, rating: int, comment: str | None) -> Feedback:
        await self._records.flush()
        row = await self._pool.fetchrow(SET, turn_id, user_id, rating, comment)
        if row is None:
            raise _unknown(turn_id)
        return Feedback(**dict(row))

    async def remove(self, user_id: UUID, turn_id: UUID) -> bool:
        """Remove the caller's feedback on the turn; whether there was any."""
        await self._records.flush()
        row = await self._pool.fetchrow(REMOVE, turn_id, user_id)
        if row is None or not row["own"]:
            raise _unknown(turn_id)
        return bool(row["removed"])


def _unknown(turn_id: UUID) -> NotFound:
    return NotFound(
        f"Turn {turn_id} not found: send the id of one of your own turns (the `x-persona-turn-id` header or the "
        "`turn_id` of the `start` event).",
        field="turn_id",
    )
