"""What a turn remembers of its user (contract section 15): the memory tier of the context.

One query reads the user's switch and their memories for the persona and their persona-wide ones, newest
first, each ranked by PostgreSQL's full-text rank against the latest message. When they all fit the persona's
``memory.token_budget`` they all go, oldest first; otherwise the most relevant, then the newest, while the
budget holds. They become one system section after the persona's prompt (and after its lore), so the
persona's cached prefix never changes with them. Each memory's tokens are counted once per tokenizer and
kept in this process. Memory text is never logged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from uuid import UUID

import asyncpg
import msgspec

__all__ = ["MEMORY_HEADING", "MemoryDecision", "Recall", "Recalled"]

MEMORY_HEADING = "What you remember about {user} from earlier conversations:"

_RECALL = """
WITH switch AS (SELECT coalesce((SELECT enabled FROM memory_settings WHERE user_id = $1), true) AS enabled),
-- Any word of the latest message counts (plainto_tsquery asks for all of them): its terms joined by OR.
query AS (SELECT nullif(replace(plainto_tsquery('simple', $3)::text, ' & ', ' | '), '')::tsquery AS terms)
SELECT switch.enabled, m.id, m.persona_id, m.content, m.updated_at,
       CASE WHEN query.terms IS NULL THEN 0 ELSE ts_rank(to_tsvector('simple', m.content), query.terms) END AS rank
FROM switch CROSS JOIN query LEFT JOIN LATERAL (
    SELECT id, persona_id, content, created_at, updated_at FROM memories
    WHERE user_id = $1 AND (persona_id = $2 OR persona_id IS NULL) AND switch.enabled
    ORDER BY created_at DESC, id LIMIT $4
) m ON true
ORDER BY m.created_at DESC, m.id"""
# The latest message's text, as far as it is ranked against.
_QUERY_CHARS = 2000
_COUNTS = 20_000


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
    """Reads a turn's memories: one round trip, with their token counts kept in this process."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._counts: OrderedDict[tuple[UUID, datetime, str], int] = OrderedDict()

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
    ) -> Recalled:
        rows = await self._pool.fetch(_RECALL, user_id, persona_id, latest[:_QUERY_CHARS], limit)
        if not rows or not rows[0]["enabled"]:
            return Recalled(enabled=False)
        found = [r for r in rows if r["id"] is not None]
        if not found:
            return Recalled(enabled=True)
        heading = MEMORY_HEADING.format(user=user_name)
        spent = fixed = self._count(heading, count, ratio) + overhead
        costs = [self._tokens(r, count, tokenizer, ratio) for r in found]
        chosen: set[int]
        reasons: dict[int, str] = {}
        if spent + sum(costs) <= budget:
            chosen = set(range(len(found)))
            reasons = dict.fromkeys(chosen, "fits")
        else:
            chosen = set()
            # Most relevant first; among equals the newest (rows come newest first, and the sort is stable).
            for index in sorted(range(len(found)), key=lambda i: -found[i]["rank"]):
                if spent + costs[index] <= budget:
                    chosen.add(index)
                    spent += costs[index]
                    reasons[index] = "relevant" if found[index]["rank"] > 0 else "newest"
        decisions = [
            MemoryDecision(
                id=row["id"],
                persona_id=row["persona_id"],
                used=index in chosen,
                reason=reasons.get(index, "budget"),
                tokens=costs[index],
            )
            for index, row in enumerate(found)
        ]
        if not chosen:
            return Recalled(enabled=True, decisions=decisions)
        kept = sorted(chosen, reverse=True)  # oldest first: the section reads in the order it was learnt
        lines = "\n".join(f"- {found[i]['content']}" for i in kept)
        return Recalled(
            enabled=True,
            text=f"{heading}\n{lines}",
            tokens=fixed + sum(costs[i] for i in kept),
            ids=[str(found[i]["id"]) for i in kept],
            decisions=decisions,
        )

    def _count(self, text: str, count: Callable[[str], int], ratio: float) -> int:
        raw = count(text)
        return raw if ratio == 1.0 else int(raw * ratio + 0.999)

    def _tokens(self, row: asyncpg.Record, count: Callable[[str], int], tokenizer: str, ratio: float) -> int:
        key = (row["id"], row["updated_at"], tokenizer)
        raw = self._counts.get(key)
        if raw is None:
            raw = self._counts[key] = count(row["content"]) + 2  # "- " and the line break
            if len(self._counts) > _COUNTS:
                self._counts.popitem(last=False)
        return raw if ratio == 1.0 else int(raw * ratio + 0.999)
