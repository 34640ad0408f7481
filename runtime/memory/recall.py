"""What a turn remembers of its user (contract section 15): the memory tier of the context.

One query reads the user's switch and their memories for the persona and their persona-wide ones, newest
first; they are kept in this process (:class:`RecallCache`) until a write to that user's memories, here or
heard of from another instance, so most turns make no query at all. When they all fit the persona's
``memory.token_budget`` they all go, oldest first; otherwise one more query ranks them with PostgreSQL's
full-text rank against the latest message, and the most relevant go, then the newest, while the budget
holds. With vectors on (:class:`runtime.memory.vectors.Vectors`, ``EMBEDDINGS_PROVIDER`` on a database with
pgvector) the latest message is embedded first (one call on that turn) and the same query ranks the memories
that have a vector of that model by cosine similarity, ahead of those without one, which keep their full-text
rank. They become one system section after the persona's prompt (and after its lore), so the persona's
cached prefix never changes with them. Each memory's tokens are counted once per tokenizer. Memory text is
never logged.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg
import msgspec

from personas.changes import UNHEARD_SECONDS
from runtime.memory.vectors import Vectors

__all__ = ["KEEP_SECONDS", "MEMORY_HEADING", "MEMORY_SIGNAL", "MemoryDecision", "Recall", "RecallCache", "Recalled"]

# The signal that a user's memories or memory switch changed: its payload is the user's id.
MEMORY_SIGNAL = "memories"

MEMORY_HEADING = "What you remember about {user} from earlier conversations:"

# The user's switch and their memories for the persona and persona-wide ones, newest first.
_LOAD = """
WITH switch AS (SELECT coalesce((SELECT enabled FROM memory_settings WHERE user_id = $1), true) AS enabled)
SELECT switch.enabled, m.id, m.persona_id, m.content
FROM switch LEFT JOIN LATERAL (
    SELECT id, persona_id, content, created_at FROM memories
    WHERE user_id = $1 AND (persona_id = $2 OR persona_id IS NULL) AND switch.enabled
    ORDER BY created_at DESC, id LIMIT $3
) m ON true
ORDER BY m.created_at DESC, m.id"""
# When they do not all fit: PostgreSQL's full-text rank of those that share a word with the latest message
# (plainto_tsquery asks for all of its words; its terms joined by OR ask for any).
_RANK = """
WITH query AS (SELECT nullif(replace(plainto_tsquery('simple', $3)::text, ' & ', ' | '), '')::tsquery AS terms)
SELECT m.id, ts_rank(to_tsvector('simple', m.content), query.terms) AS rank
FROM memories m, query
WHERE m.user_id = $1 AND (m.persona_id = $2 OR m.persona_id IS NULL)
  AND m.id IN (SELECT id FROM memories WHERE user_id = $1 AND (persona_id = $2 OR persona_id IS NULL)
               ORDER BY created_at DESC, id LIMIT $4)
  AND query.terms IS NOT NULL AND to_tsvector('simple', m.content) @@ query.terms"""
# With vectors: each memory's cosine similarity to the latest message's vector ($5) when it has one of the same
# model ($6) and dimension, else null; and its full-text rank, for those without.
_RANK_VECTORS = """
WITH query AS (SELECT nullif(replace(plainto_tsquery('simple', $3)::text, ' & ', ' | '), '')::tsquery AS terms,
                      $5::text::vector AS vector)
SELECT m.id,
       CASE WHEN m.embedding_model = $6 AND vector_dims(m.embedding) = vector_dims(query.vector)
            THEN 1 - (m.embedding <=> query.vector) END AS similarity,
       CASE WHEN query.terms IS NOT NULL AND to_tsvector('simple', m.content) @@ query.terms
            THEN ts_rank(to_tsvector('simple', m.content), query.terms) ELSE 0 END AS rank
FROM memories m, query
WHERE m.user_id = $1 AND (m.persona_id = $2 OR m.persona_id IS NULL)
  AND m.id IN (SELECT id FROM memories WHERE user_id = $1 AND (persona_id = $2 OR persona_id IS NULL)
               ORDER BY created_at DESC, id LIMIT $4)"""
# The latest message's text, as far as it is ranked against.
_QUERY_CHARS = 2000
# How long memories read for a (user, persona) are kept in this process while writes elsewhere are heard.
KEEP_SECONDS = 60.0


@dataclass
class _Kept:
    """One user's memories for one persona, as read: the switch, (id, persona, content) newest first, and each
    one's tokens by tokenizer."""

    enabled: bool
    rows: list[tuple[UUID, UUID | None, str]]
    until: float
    tokens: dict[str, list[int]] = field(default_factory=dict)


class RecallCache:
    """Memories read for turns, kept in this process until a write to that user's memories (here, or heard of
    from another instance) or ``seconds``; while writes elsewhere cannot be heard, only for a moment."""

    def __init__(self, *, seconds: float = KEEP_SECONDS) -> None:
        self._heard_seconds = seconds
        self.seconds = seconds
        self._kept: dict[UUID, dict[tuple[UUID, int], _Kept]] = {}

    def get(self, user_id: UUID, key: tuple[UUID, int]) -> _Kept | None:
        kept = self._kept.get(user_id, {}).get(key)
        if kept is None or kept.until < time.monotonic():
            return None
        return kept

    def put(self, user_id: UUID, key: tuple[UUID, int], kept: _Kept) -> None:
        if len(self._kept) >= _USERS:
            self._kept.clear()
        self._kept.setdefault(user_id, {})[key] = kept

    def forget(self, user_id: UUID) -> None:
        """Drop what is kept of ``user_id``: their memories or switch changed."""
        self._kept.pop(user_id, None)

    async def hear(self, payload: bytes) -> None:
        """Another instance (or this one) changed a user's memories."""
        with contextlib.suppress(ValueError, msgspec.DecodeError):
            self.forget(UUID(msgspec.json.decode(payload, type=str)))

    def set_hearing(self, heard: bool) -> None:
        """Whether writes elsewhere are heard from now on; either way what is kept goes (some may be missed)."""
        self.seconds = self._heard_seconds if heard else min(self._heard_seconds, UNHEARD_SECONDS)
        self._kept.clear()


_USERS = 10_000


class MemoryDecision(msgspec.Struct, frozen=True, kw_only=True):
    """Render's account of one memory: whether the turn was given it and why (``fits``: all fit the budget;
    ``relevant`` or ``newest`` when it was chosen by rank or age; ``budget`` when it did not fit)."""

    id: UUID
    persona_id: UUID | None
    used: bool
    reason: str
    tokens: int


class Recalled(msgspec.Struct, frozen=True, kw_only=True):
    """What a turn remembers: the section's text and tokens, the memories' ids, and every decision."""

    enabled: bool
    text: str = ""
    tokens: int = 0
    ids: list[str] = msgspec.field(default_factory=list)
    decisions: list[MemoryDecision] = msgspec.field(default_factory=list)


class Recall:
    """Reads a turn's memories: from this process's cache, else in one round trip; ranked in one more only when
    they do not all fit."""

    def __init__(self, pool: asyncpg.Pool, cache: RecallCache | None = None, vectors: Vectors | None = None) -> None:
        self._pool = pool
        self.cache = cache or RecallCache()
        self.vectors = vectors

    async def _load(self, user_id: UUID, persona_id: UUID, limit: int) -> _Kept:
        kept = self.cache.get(user_id, (persona_id, limit))
        if kept is not None:
            return kept
        rows = await self._pool.fetch(_LOAD, user_id, persona_id, limit)
        kept = _Kept(
            enabled=bool(rows[0][0]) if rows else True,
            rows=[(r[1], r[2], r[3]) for r in rows if r[1] is not None],
            until=time.monotonic() + self.cache.seconds,
        )
        self.cache.put(user_id, (persona_id, limit), kept)
        return kept

    async def for_turn(
        self,
        user_id: UUID,
        persona_id: UUID,
        latest: str,
        *,
        user_name: str,
        budget: int,
        limit: int,
        count: Callable[[str], int],
        tokenizer: str,
        ratio: float = 1.0,
        overhead: int = 4,
        explain: bool = False,
    ) -> Recalled:
        kept = await self._load(user_id, persona_id, limit)
        if not kept.enabled:
            return Recalled(enabled=False)
        found = kept.rows
        if not found:
            return Recalled(enabled=True)
        heading = MEMORY_HEADING.format(user=user_name)
        fixed = _scaled(count(heading), ratio) + overhead
        raw = kept.tokens.get(tokenizer)
        if raw is None:
            raw = kept.tokens[tokenizer] = [count(content) + 2 for _, _, content in found]  # "- " and a line break
        costs = raw if ratio == 1.0 else [_scaled(c, ratio) for c in raw]
        reasons: dict[int, str] = {}
        if fixed + sum(costs) <= budget:
            reasons = dict.fromkeys(range(len(found)), "fits")
        else:
            order = await self._rank(user_id, persona_id, latest, limit)
            spent = fixed
            # Most relevant first; among equals the newest (rows are newest first, and the sort is stable).
            for index in sorted(range(len(found)), key=lambda i: order.get(found[i][0], _UNRANKED)):
                if spent + costs[index] <= budget:
                    spent += costs[index]
                    reasons[index] = "newest" if order.get(found[index][0], _UNRANKED) == _UNRANKED else "relevant"
        decisions = (
            [
                MemoryDecision(
                    id=memory_id,
                    persona_id=owner,
                    used=index in reasons,
                    reason=reasons.get(index, "budget"),
                    tokens=costs[index],
                )
                for index, (memory_id, owner, _) in enumerate(found)
            ]
            if explain
            else []
        )
        if not reasons:
            return Recalled(enabled=True, decisions=decisions)
        chosen = sorted(reasons, reverse=True)  # oldest first: the section reads in the order it was learnt
        lines = "\n".join(f"- {found[i][2]}" for i in chosen)
        return Recalled(
            enabled=True,
            text=f"{heading}\n{lines}",
            tokens=fixed + sum(costs[i] for i in chosen),
            ids=[str(found[i][0]) for i in chosen],
            decisions=decisions,
        )

    async def _rank(self, user_id: UUID, persona_id: UUID, latest: str, limit: int) -> dict[UUID, tuple[int, float]]:
        """Each relevant memory's place among the user's ``limit`` newest for the persona, smallest first:
        (0, -similarity) for those with a vector, (1, -rank) for those that share a word with the latest message;
        the others are left out (they come after, newest first)."""
        if not latest.strip():
            return {}
        text = latest[:_QUERY_CHARS]
        vectors = self.vectors
        vector = await vectors.query(text) if vectors is not None else None
        if vectors is None or vector is None:
            rows = await self._pool.fetch(_RANK, user_id, persona_id, text, limit)
            return {r[0]: (1, -r[1]) for r in rows if r[1] > 0}
        rows = await self._pool.fetch(_RANK_VECTORS, user_id, persona_id, text, limit, vector, vectors.model)
        order: dict[UUID, tuple[int, float]] = {}
        for memory_id, similarity, rank in rows:
            if similarity is not None and math.isfinite(similarity):
                order[memory_id] = (0, -similarity)
            elif rank > 0:
                order[memory_id] = (1, -rank)
        return order


# Where memories neither similar nor sharing a word with the latest message go: after the rest, newest first.
_UNRANKED = (2, 0.0)


def _scaled(tokens: int, ratio: float) -> int:
    return tokens if ratio == 1.0 else int(tokens * ratio + 0.999)
