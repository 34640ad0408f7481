"""MemoryStore: a user's memories in PostgreSQL. Every query is scoped by the owning user: no other caller, the
persona's owner or an admin included, reaches a memory. With vectors on, a memory added or rewritten is embedded
in the background once the write has answered. Memory text is never logged."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID, uuid4

import asyncpg

from core.signals import notify
from runtime.memory.recall import MEMORY_SIGNAL, RecallCache
from runtime.memory.vectors import Vectors

__all__ = ["Memory", "MemoryStore"]

Source = Literal["user", "extracted"]

_COLUMNS = "id, persona_id, content, source, source_message_id, created_at, updated_at"

_LIST = f"""
SELECT {_COLUMNS}, count(*) OVER () AS total FROM memories
WHERE user_id = $1 AND ($2::uuid IS NULL OR persona_id = $2)
ORDER BY created_at DESC, id
LIMIT $3 OFFSET $4"""
_COUNT = "SELECT count(*) FROM memories WHERE user_id = $1 AND ($2::uuid IS NULL OR persona_id = $2)"
_INSERT = f"""
INSERT INTO memories (id, user_id, persona_id, content, source, source_message_id)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING {_COLUMNS}"""
_UPDATE = f"""
UPDATE memories SET content = $3, updated_at = now()
WHERE id = $1 AND user_id = $2
RETURNING {_COLUMNS}"""
_DELETE_ONE = "DELETE FROM memories WHERE id = $1 AND user_id = $2"
_DELETE_ALL = "DELETE FROM memories WHERE user_id = $1"
_DELETE_PERSONA = "DELETE FROM memories WHERE user_id = $1 AND persona_id = $2"
_GET_SWITCH = "SELECT enabled FROM memory_settings WHERE user_id = $1"
_SET_SWITCH = """
INSERT INTO memory_settings (user_id, enabled) VALUES ($1, $2)
ON CONFLICT (user_id) DO UPDATE SET enabled = excluded.enabled, updated_at = now()"""


@dataclass(frozen=True, slots=True)
class Memory:
    id: UUID
    persona_id: UUID | None
    content: str
    source: Source
    source_message_id: UUID | None
    created_at: datetime
    updated_at: datetime


def _memory(row: asyncpg.Record) -> Memory:
    return Memory(
        id=row["id"],
        persona_id=row["persona_id"],
        content=row["content"],
        source=row["source"],
        source_message_id=row["source_message_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class MemoryStore:
    """The routes' side of memories. Every write drops what this process keeps of the user's memories for turns
    and tells the other instances to (``cache``; none: nothing is kept); with ``vectors``, what it adds or rewrites
    is embedded in the background."""

    def __init__(self, pool: asyncpg.Pool, cache: RecallCache | None = None, vectors: Vectors | None = None) -> None:
        self._pool = pool
        self._cache = cache
        self._vectors = vectors

    def _embed(self, user_id: UUID, memory: Memory) -> None:
        if self._vectors is not None:
            self._vectors.embed_later(user_id, [(memory.id, memory.content)])

    async def _changed(self, user_id: UUID) -> None:
        if self._cache is not None:
            self._cache.forget(user_id)
            await notify(self._pool, MEMORY_SIGNAL, str(user_id))

    async def page(
        self, user_id: UUID, *, persona_id: UUID | None, limit: int, offset: int
    ) -> tuple[list[Memory], int]:
        rows = await self._pool.fetch(_LIST, user_id, persona_id, limit, offset)
        if rows:
            return [_memory(r) for r in rows], rows[0]["total"]
        total: int = await self._pool.fetchval(_COUNT, user_id, persona_id) if offset else 0
        return [], total

    async def add(
        self,
        user_id: UUID,
        content: str,
        *,
        persona_id: UUID | None,
        source: Source = "user",
        source_message_id: UUID | None = None,
    ) -> Memory:
        row = await self._pool.fetchrow(_INSERT, uuid4(), user_id, persona_id, content, source, source_message_id)
        assert row is not None
        await self._changed(user_id)
        memory = _memory(row)
        self._embed(user_id, memory)
        return memory

    async def rewrite(self, user_id: UUID, memory_id: UUID, content: str) -> Memory | None:
        row = await self._pool.fetchrow(_UPDATE, memory_id, user_id, content)
        if row is None:
            return None
        await self._changed(user_id)
        memory = _memory(row)
        self._embed(user_id, memory)
        return memory

    async def delete(self, user_id: UUID, memory_id: UUID) -> bool:
        deleted = await self._pool.execute(_DELETE_ONE, memory_id, user_id) == "DELETE 1"
        if deleted:
            await self._changed(user_id)
        return deleted

    async def delete_all(self, user_id: UUID, *, persona_id: UUID | None) -> int:
        if persona_id is None:
            status = await self._pool.execute(_DELETE_ALL, user_id)
        else:
            status = await self._pool.execute(_DELETE_PERSONA, user_id, persona_id)
        await self._changed(user_id)
        return int(status.rsplit(" ", 1)[-1])

    async def enabled(self, user_id: UUID) -> bool:
        value = await self._pool.fetchval(_GET_SWITCH, user_id)
        return True if value is None else bool(value)

    async def set_enabled(self, user_id: UUID, enabled: bool) -> bool:
        await self._pool.execute(_SET_SWITCH, user_id, enabled)
        await self._changed(user_id)
        return enabled
