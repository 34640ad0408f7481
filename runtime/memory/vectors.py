"""Vectors for memory retrieval (contract section 15, ``EMBEDDINGS_PROVIDER`` and ``EMBEDDINGS_MODEL``).

With ``EMBEDDINGS_PROVIDER`` naming an OpenAI-compatible provider and a database with pgvector (migration 0014
adds ``memories.embedding`` only there), every memory written (by the API or by extraction) is embedded in the
background after the write has answered, through that provider's ``/embeddings`` endpoint with the official
``openai`` SDK; the vector is stored with the model that made it. A rewrite clears the old vector in the database
(a trigger) until the new one arrives. When a turn's memories do not all fit its budget, the latest message is
embedded (one call on that turn) and memories are ranked by cosine similarity to it (:mod:`runtime.memory.recall`).
A failed embedding is logged without any text, and the memory keeps no vector: it is ranked by full text then.
At start, memories without a vector of the current model (written before, or failed) are embedded in the
background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Iterable
from typing import Any
from uuid import UUID

import asyncpg

from core.errors import BadRequest
from providers import ProviderConfig

__all__ = ["DEFAULT_EMBEDDINGS_MODEL", "Embedder", "Vectors", "embeddings_config", "has_vectors"]

log = logging.getLogger("persona_runtime.memory")

DEFAULT_EMBEDDINGS_MODEL = "text-embedding-3-small"
_OPENAI_URL = "https://api.openai.com/v1"
# How long a turn waits for its latest message's vector before it ranks by full text instead.
QUERY_SECONDS = 2.0
# Memories embedded in one call when several are written at once (an extraction's adds and rewrites).
_BATCH = 64

_COLUMNS = """
SELECT count(*) = 2 FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = 'memories' AND column_name IN ('embedding', 'embedding_model')
"""
# The vector is stored only while the memory still says what was embedded: a rewrite meanwhile keeps its own.
_STORE = """
UPDATE memories SET embedding = $4::text::vector, embedding_model = $5
WHERE id = $1 AND user_id = $2 AND content = $3"""
# Memories without a vector of this model ($1): written before vectors were on, while the provider failed, or
# with another model. Keyset pages by id, after $2.
_MISSING = """
SELECT id, user_id, content FROM memories
WHERE embedding_model IS DISTINCT FROM $1 AND id > $2
ORDER BY id LIMIT $3"""


def embeddings_config(configs: Iterable[ProviderConfig], name: str) -> ProviderConfig:
    """The configured provider ``EMBEDDINGS_PROVIDER`` names; refused (a :class:`BadRequest` naming the variable)
    when none is configured by that name or it does not speak OpenAI's API."""
    configs = list(configs)
    for config in configs:
        if config.name == name:
            if config.kind != "openai":
                raise BadRequest(
                    f"EMBEDDINGS_PROVIDER is {name!r}, a provider of kind {config.kind!r}, which has no embeddings "
                    "endpoint; name an OpenAI-compatible provider (openai, or one set by PROVIDER_<NAME>_BASE_URL).",
                    field="EMBEDDINGS_PROVIDER",
                )
            return config
    names = ", ".join(c.name for c in configs)
    raise BadRequest(
        f"EMBEDDINGS_PROVIDER is {name!r}, which is not configured. Configured providers: {names}. Configure it with "
        "its environment variables (OPENAI_API_KEY, or PROVIDER_<NAME>_BASE_URL), or unset EMBEDDINGS_PROVIDER to "
        "rank memories by full text.",
        field="EMBEDDINGS_PROVIDER",
    )


async def has_vectors(pool: asyncpg.Pool) -> bool:
    """Whether this database stores memory vectors (pgvector was there when migration 0014 ran)."""
    return bool(await pool.fetchval(_COLUMNS))


class Embedder:
    """One provider's ``/embeddings`` endpoint, through the official ``openai`` SDK."""

    def __init__(self, config: ProviderConfig, model: str, *, timeout: float = 30.0) -> None:
        import openai

        self.provider = config.name
        self.model = model
        self._client = openai.AsyncOpenAI(
            api_key=config.api_key or "unused",
            base_url=config.base_url or _OPENAI_URL,
            timeout=timeout,
            max_retries=0,  # retries are the runtime's: none for a vector (full text stands in)
        )

    async def embed(self, texts: list[str]) -> list[list[float]]:
        answer = await self._client.embeddings.create(model=self.model, input=texts, encoding_format="float")
        vectors = [item.embedding for item in sorted(answer.data, key=lambda item: item.index)]
        if len(vectors) != len(texts) or not all(vectors):
            raise ValueError(f"{len(vectors)} vectors for {len(texts)} texts")
        return vectors

    async def aclose(self) -> None:
        await self._client.close()


def vector_literal(vector: list[float]) -> str:
    """pgvector's text form of ``vector``, refused when it is not finite numbers."""
    if not all(math.isfinite(x) for x in vector):
        raise ValueError("the vector has a value that is not a finite number")
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


class Vectors:
    """Memories' vectors, computed in the background after each write, and a turn's query vector."""

    def __init__(self, pool: asyncpg.Pool, embedder: Any, *, query_seconds: float = QUERY_SECONDS) -> None:
        self._pool = pool
        self._embedder = embedder
        self.model: str = embedder.model
        self.query_seconds = query_seconds
        self._tasks: set[asyncio.Task[None]] = set()
        self._backfill: asyncio.Task[int] | None = None

    def embed_later(self, user_id: UUID, memories: list[tuple[UUID, str]]) -> None:
        """Embed ``(id, content)`` of memories just written, in the background: the write has answered already."""
        for start in range(0, len(memories), _BATCH):
            batch = [(memory_id, user_id, content) for memory_id, content in memories[start : start + _BATCH]]
            task = asyncio.get_running_loop().create_task(self._store(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def backfill(self) -> asyncio.Task[int]:
        """Embed, in the background, the memories that have no vector of this model yet (at start: those written
        before vectors were on, or whose embedding failed), a batch at a time; the task's result is how many."""
        if self._backfill is None or self._backfill.done():
            self._backfill = asyncio.get_running_loop().create_task(self._fill())
        return self._backfill

    async def _fill(self) -> int:
        after, done = UUID(int=0), 0
        try:
            while rows := await self._pool.fetch(_MISSING, self.model, after, _BATCH):
                after = rows[-1]["id"]
                await self._embed([(r["id"], r["user_id"], r["content"]) for r in rows])
                done += len(rows)
        except Exception as exc:
            log.warning(
                "could not embed the memories that have no vector yet with %s (%s%s); they are ranked by full text",
                self._embedder.provider,
                type(exc).__name__,
                _status(exc),
            )
        if done:
            log.info("embedded %d memories that had no vector of %s", done, self.model)
        return done

    async def _embed(self, memories: list[tuple[UUID, UUID, str]]) -> None:
        """Embed and store ``(id, user_id, content)`` of memories, each only if it still says that."""
        vectors = await self._embedder.embed([content for _, _, content in memories])
        rows = [
            (memory_id, user_id, content, vector_literal(vector), self.model)
            for (memory_id, user_id, content), vector in zip(memories, vectors, strict=True)
        ]
        await self._pool.executemany(_STORE, rows)

    async def _store(self, memories: list[tuple[UUID, UUID, str]]) -> None:
        try:
            await self._embed(memories)
        except Exception as exc:
            log.warning(
                "could not embed %d memories with %s (%s%s); they are ranked by full text",
                len(memories),
                self._embedder.provider,
                type(exc).__name__,
                _status(exc),
            )

    async def query(self, text: str) -> str | None:
        """The vector of a turn's latest message in pgvector's text form, or None (logged) when it cannot be had
        within :attr:`query_seconds`: the turn ranks by full text then."""
        try:
            [vector] = await asyncio.wait_for(self._embedder.embed([text]), self.query_seconds)
            return vector_literal(vector)
        except Exception as exc:
            log.warning(
                "could not embed the latest message with %s (%s%s); this turn ranks memories by full text",
                self._embedder.provider,
                type(exc).__name__,
                _status(exc),
            )
            return None

    async def settle(self) -> None:
        """Wait for the vectors under way (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """At shutdown: stop the backfill, let the vectors of writes under way finish (bounded), close the client."""
        if self._backfill is not None:
            self._backfill.cancel()
            await asyncio.gather(self._backfill, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.settle(), timeout=5)
        for task in list(self._tasks):
            task.cancel()
        await self._embedder.aclose()


def _status(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    return f", HTTP {status}" if isinstance(status, int) else ""
