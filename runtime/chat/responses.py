"""ResponseStore: the stored responses of ``/v1/responses``, which later requests continue by id.

A stored response keeps the conversation through its own output, so continuing it is one read: the turns
it holds, then the new request's input. Its output items can also be named one by one (an input's
``item_reference``, which clients that keep their own history send back). Each is the caller's own and lives
``retention_days``; an expired one reads as absent and is deleted when its owner next stores one.
"""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from core.db import is_database_unavailable
from core.errors import DatabaseUnavailable
from providers import ChatMessage

__all__ = ["ResponseStore", "StoredResponse"]

# Saving a response also clears its owner's expired ones: the index on (user_id, expires_at) finds them.
SAVE = """
WITH expired AS (DELETE FROM responses WHERE user_id = $2 AND expires_at <= now())
INSERT INTO responses (id, user_id, messages, system, body, expires_at)
VALUES ($1, $2, $3, $4, $5, now() + $6 * interval '1 day')"""
GET = "SELECT messages, system, body FROM responses WHERE id = $1 AND user_id = $2 AND expires_at > now()"
# Among the caller's live responses with these ids, their output items with these ids.
ITEMS = """
SELECT item FROM responses AS r, jsonb_array_elements(r.body->'output') AS item
WHERE r.id = ANY($2::text[]) AND r.user_id = $1 AND r.expires_at > now() AND item->>'id' = ANY($3::text[])"""
# An output item's id: its kind, then its response's random part and its number in that response.
_ITEM_ID = re.compile(r"[a-z]+_([0-9a-f]{32})[0-9a-f]{4}")

DELETE = "DELETE FROM responses WHERE id = $1 AND user_id = $2 AND expires_at > now() RETURNING id"


class StoredResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A stored response: the conversation it ends, the system texts its input carried, and its body."""

    messages: tuple[ChatMessage, ...]
    system: tuple[str, ...]
    body: dict[str, Any]


class ResponseStore:
    def __init__(self, pool: asyncpg.Pool, retention_days: float) -> None:
        self._pool = pool
        self._retention_days = retention_days

    async def save(
        self,
        response_id: str,
        user_id: UUID,
        messages: tuple[ChatMessage, ...],
        system: tuple[str, ...],
        body: dict[str, Any],
    ) -> None:
        turns = msgspec.to_builtins(messages)
        try:
            await self._pool.execute(SAVE, response_id, user_id, turns, list(system), body, self._retention_days)
        except Exception as exc:
            if is_database_unavailable(exc):
                raise DatabaseUnavailable("The response could not be stored: the database is unavailable.") from None
            raise

    async def get(self, response_id: str, user_id: UUID) -> StoredResponse | None:
        row = await self._pool.fetchrow(GET, response_id, user_id)
        if row is None:
            return None
        messages = msgspec.convert(row["messages"], tuple[ChatMessage, ...])
        return StoredResponse(messages=messages, system=tuple(row["system"]), body=row["body"])

    async def items(self, item_ids: list[str], user_id: UUID) -> dict[str, dict[str, Any]]:
        """The output items of the caller's stored responses with these ids, by id; one not found is absent. An
        item's id names its response, so each is found by the response's key."""
        ours = [(i, match[1]) for i in item_ids if (match := _ITEM_ID.fullmatch(i))]
        if not ours:
            return {}
        responses = list({f"resp_{token}" for _, token in ours})
        rows = await self._pool.fetch(ITEMS, user_id, responses, [i for i, _ in ours])
        return {row["item"]["id"]: row["item"] for row in rows}

    async def delete(self, response_id: str, user_id: UUID) -> bool:
        return await self._pool.fetchval(DELETE, response_id, user_id) is not None
