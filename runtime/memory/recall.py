"""What a turn remembers of its user (contract section 15): the memory tier of the context.

One query reads the user's switch and their memories for the persona and their persona-wide ones, newest
first, with each one's lexemes (PostgreSQL's ``to_tsvector('simple', content)``); they are kept in this process
(:class:`RecallCache`) until a write to that user's memories, here or heard of from another instance, so most
turns make no query at all. When they all fit the persona's ``memory.token_budget`` they all go, oldest first;
otherwise they are ranked by PostgreSQL's full-text rank against the latest message, and the most relevant go,
then the newest, while the budget holds. For a message of plain ASCII words that rank is worked out here from
the kept lexemes (:mod:`runtime.memory.textrank`, ``ts_rank``'s own arithmetic); for any other message one more
query asks PostgreSQL, and its answer is kept with the memories for that message. With vectors on
(:class:`runtime.memory.vectors.Vectors`, ``EMBEDDINGS_PROVIDER`` on a database with pgvector) the latest
message is embedded first (one call on that turn) and one query ranks the memories that have a vector of that
model by cosine similarity, ahead of those without one, which keep their full-text rank. They become one system
section after the persona's prompt (and after its lore), so the persona's cached prefix never changes with
them. What a turn makes of the memories (each one's tokens per tokenizer, the whole section when they
all fit) is made once per memory set. Memory text is never logged.
"""

from __future__ import annotations

import contextlib
import math
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate
from uuid import UUID

import asyncpg
import msgspec

from personas.changes import UNHEARD_SECONDS
from runtime.memory.textrank import LEXEMES, Postings, postings_of, query_words, ranked
from runtime.memory.vectors import Vectors

__all__ = ["KEEP_SECONDS", "MEMORY_HEADING", "MEMORY_SIGNAL", "MemoryDecision", "Recall", "RecallCache", "Recalled"]

# The signal that a user's memories or memory switch changed: its payload is the user's id.
MEMORY_SIGNAL = "memories"

MEMORY_HEADING = "What you remember about {user} from earlier conversations:"

# The user's switch and their memories for the persona and persona-wide ones, newest first, each with its lexemes.
_LOAD = f"""
WITH switch AS (SELECT coalesce((SELECT enabled FROM memory_settings WHERE user_id = $1), true) AS enabled)
SELECT switch.enabled, m.id, m.persona_id, m.content, m.lexemes, m.counts
FROM switch LEFT JOIN LATERAL (
    SELECT id, persona_id, content, created_at, {LEXEMES.format(content="content")} FROM memories
    WHERE user_id = $1 AND (persona_id = $2 OR persona_id IS NULL) AND switch.enabled
    ORDER BY created_at DESC, id LIMIT $3
) m ON true
ORDER BY m.created_at DESC, m.id"""
# When they do not all fit: the ids of those of the user's ``limit`` newest that share a word with the latest
# message, most relevant first by PostgreSQL's full-text rank and among equals the newest, in one array (one row
# to read, however many match). plainto_tsquery asks for all of its words; its terms joined by OR ask for any.
_RANK = """
WITH query AS (SELECT nullif(replace(plainto_tsquery('simple', $3)::text, ' & ', ' | '), '')::tsquery AS terms),
newest AS (SELECT id, content, created_at FROM memories WHERE user_id = $1 AND (persona_id = $2 OR persona_id IS NULL)
           ORDER BY created_at DESC, id LIMIT $4),
ranked AS (SELECT newest.id, newest.created_at, ts_rank(to_tsvector('simple', newest.content), query.terms) AS rank
           FROM newest, query
           WHERE query.terms IS NOT NULL AND to_tsvector('simple', newest.content) @@ query.terms)
SELECT coalesce(array_agg(id ORDER BY rank DESC, created_at DESC, id) FILTER (WHERE rank > 0), '{}') FROM ranked"""
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


# What is kept of one (user, persona) for each way of counting, and of rankings by message, at most: turns of one
# user come through one tokenizer or two, and a ranking is reused by a message sent again (a retry, a regenerate).
_WAYS = 8
_RANKINGS = 16


@dataclass
class _Kept:
    """One user's memories for one persona, as read: the switch, (id, persona, content) newest first, their
    lexemes, and what turns make of them, once: each one's id as text and line of the section, its tokens by
    tokenizer, the section when they all fit, and the rankings PostgreSQL gave of the messages seen. All of it
    goes with the next write."""

    enabled: bool
    rows: list[tuple[UUID, UUID | None, str]]
    until: float
    tokens: dict[str, list[int]] = field(default_factory=dict)
    costs: dict[tuple[str, float], tuple[list[int], int, int]] = field(default_factory=dict)
    headings: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)
    whole: dict[tuple[str, float, str, int], Recalled] = field(default_factory=dict)
    postings: Postings = field(default_factory=Postings)
    rankings: dict[str, list[int]] = field(default_factory=dict)
    ids: list[str] = field(init=False)
    lines: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.ids = [str(memory_id) for memory_id, _, _ in self.rows]
        self.lines = [f"- {content}" for _, _, content in self.rows]

    def index(self) -> dict[UUID, int]:
        """Each memory's place in ``rows``, by id."""
        return {memory_id: n for n, (memory_id, _, _) in enumerate(self.rows)}

    def costs_of(self, tokenizer: str, ratio: float, count: Callable[[str], int]) -> tuple[list[int], int, int]:
        """Each memory's tokens (its line's, with "- " and a line break) counted by ``tokenizer`` and scaled by
        ``ratio``, their sum and the least of them."""
        found = self.costs.get((tokenizer, ratio))
        if found is None:
            raw = self.tokens.get(tokenizer)
            if raw is None:
                raw = self.tokens[tokenizer] = [count(content) + 2 for _, _, content in self.rows]
            costs = raw if ratio == 1.0 else [_scaled(c, ratio) for c in raw]
            if len(self.costs) >= _WAYS:
                self.costs.clear()
            found = self.costs[(tokenizer, ratio)] = (costs, sum(costs), min(costs, default=0))
        return found

    def heading_of(self, tokenizer: str, user_name: str, count: Callable[[str], int]) -> tuple[str, int]:
        """The section's heading for ``user_name`` and its tokens by ``tokenizer`` (unscaled)."""
        found = self.headings.get((tokenizer, user_name))
        if found is None:
            if len(self.headings) >= _WAYS:
                self.headings.clear()
            heading = MEMORY_HEADING.format(user=user_name)
            found = self.headings[(tokenizer, user_name)] = (heading, count(heading))
        return found


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
            postings=postings_of([(r[4], r[5]) for r in rows if r[1] is not None]),
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
            return _OFF
        found = kept.rows
        if not found:
            return _NONE
        heading, heading_tokens = kept.heading_of(tokenizer, user_name, count)
        fixed = _scaled(heading_tokens, ratio) + overhead
        costs, total, least = kept.costs_of(tokenizer, ratio, count)
        reasons: dict[int, str] = {}
        if fixed + total <= budget:
            if not explain:
                # The same memories make the same section on every turn until the next write.
                key = (tokenizer, ratio, user_name, overhead)
                whole = kept.whole.get(key)
                if whole is None:
                    if len(kept.whole) >= _WAYS:
                        kept.whole.clear()
                    whole = kept.whole[key] = Recalled(
                        enabled=True,
                        text=f"{heading}\n" + "\n".join(reversed(kept.lines)),
                        tokens=fixed + total,
                        ids=kept.ids[::-1],
                    )
                return whole
            reasons = dict.fromkeys(range(len(found)), "fits")
        else:
            ranked = await self._rank(kept, user_id, persona_id, latest, limit)
            spent = fixed
            # The most relevant first, then the rest newest first (rows are newest first), each while it fits. The
            # most relevant that fit one after another are found at once, from the running sums of their costs;
            # once not even the smallest memory fits, none will.
            sums = list(accumulate([costs[index] for index in ranked], initial=spent))
            fitting = max(bisect_right(sums, budget) - 1, 0)
            spent = sums[fitting]
            reasons = dict.fromkeys(ranked[:fitting], "relevant")
            for index in ranked[fitting + 1 :]:
                if spent + least > budget:
                    break
                cost = costs[index]
                if spent + cost <= budget:
                    spent += cost
                    reasons[index] = "relevant"
            if len(reasons) < len(found) and spent + least <= budget:
                for index, cost in enumerate(costs):
                    if spent + cost <= budget and index not in reasons:
                        spent += cost
                        reasons[index] = "newest"
                        if spent + least > budget:
                            break
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
        lines, ids = kept.lines, kept.ids
        return Recalled(
            enabled=True,
            text=f"{heading}\n" + "\n".join([lines[i] for i in chosen]),
            tokens=fixed + sum([costs[i] for i in chosen]),
            ids=[ids[i] for i in chosen],
            decisions=decisions,
        )

    async def _rank(self, kept: _Kept, user_id: UUID, persona_id: UUID, latest: str, limit: int) -> list[int]:
        """The indexes in ``kept`` of the relevant memories among the user's ``limit`` newest for the persona, most
        relevant first: those with a vector by similarity, then those that share a word with the latest message
        by full-text rank, among equals the newest. The others are left out (they come after, newest first).

        Without vectors a message's ranking is kept with the memories until they change: the same message sent
        again is not ranked again. With them it is not, since a memory's vector arrives after its write."""
        if not latest.strip():
            return []
        text = latest[:_QUERY_CHARS]
        vectors = self.vectors
        vector = await vectors.query(text) if vectors is not None else None
        if vectors is None or vector is None:
            words = query_words(text)
            if words is not None:  # PostgreSQL's rank, worked out here from its lexemes
                return ranked(kept.postings, words)
            found = kept.rankings.get(text) if vectors is None else None
            if found is None:
                ids = await self._pool.fetchval(_RANK, user_id, persona_id, text, limit)
                index = kept.index()
                found = [index[i] for i in ids if i in index]
                if vectors is None:
                    if len(kept.rankings) >= _RANKINGS:
                        kept.rankings.clear()
                    kept.rankings[text] = found
            return found
        rows = await self._pool.fetch(_RANK_VECTORS, user_id, persona_id, text, limit, vector, vectors.model)
        order: dict[int, tuple[int, float]] = {}
        index = kept.index()
        for memory_id, similarity, rank in rows:
            at = index.get(memory_id)
            if at is None:
                continue
            if similarity is not None and math.isfinite(similarity):
                order[at] = (0, -similarity)
            elif rank > 0:
                order[at] = (1, -rank)
        # Among equals the newest: the smaller index.
        return sorted(order, key=lambda at: (*order[at], at))


_OFF = Recalled(enabled=False)
_NONE = Recalled(enabled=True)


def _scaled(tokens: int, ratio: float) -> int:
    return tokens if ratio == 1.0 else int(tokens * ratio + 0.999)
