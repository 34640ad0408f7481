"""Memories extracted after a turn (contract section 15): what lasting facts about the user an exchange adds,
changes or contradicts.

With a persona's ``memory.extract`` on, after an answer is saved complete, :class:`Extractor` runs in the
background (it never delays or fails the chat). It claims the answer's message in ``memory_extractions``
first, so a retry or a second instance never applies one exchange twice; then asks ``MEMORY_PROVIDER`` /
``MEMORY_MODEL`` (else the persona's provider and model) for a JSON answer::

    {"add": ["fact"], "rewrite": [{"id": "memory id", "content": "fact"}], "remove": ["memory id"]}

and applies what it validates, in one transaction: new memories (``source: extracted``), rewritten and
removed ones among the user's memories for this persona, and past ``max_items`` the oldest extracted ones go.
With vectors on, the memories it added or rewrote are embedded in the background after that transaction.
An answer that is not that shape changes nothing. The offline ``echo`` provider gets no call: "remember that …"
sentences of the user's message are added and "forget that …" removes what matches, deterministically.
Memory text is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from typing import Annotated
from uuid import UUID, uuid4

import asyncpg
import msgspec
from msgspec import Meta

from core.signals import notify
from providers import ChatMessage, ProviderRequest, ProviderSet, text_of
from runtime.memory.recall import MEMORY_SIGNAL, RecallCache
from runtime.memory.vectors import Vectors

__all__ = ["Changes", "Extractor", "echo_changes", "parse_changes"]

log = logging.getLogger("persona_runtime.memory")

Content = Annotated[str, Meta(min_length=1, max_length=1000)]


class Rewrite(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: UUID
    content: Content


class Changes(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What one exchange changes in the user's memories, as the extracting model answers it."""

    add: Annotated[list[Content], Meta(max_length=20)] = msgspec.field(default_factory=list)
    rewrite: Annotated[list[Rewrite], Meta(max_length=20)] = msgspec.field(default_factory=list)
    remove: Annotated[list[UUID], Meta(max_length=20)] = msgspec.field(default_factory=list)


_INSTRUCTIONS = (
    "You keep a short list of lasting facts about a user (their name, preferences, circumstances, plans), "
    "learnt from their conversations with an assistant. Given the facts known so far (each with its id) and "
    "one new exchange, answer with JSON only, no prose: "
    '{"add": [new facts], "rewrite": [{"id": id, "content": corrected fact}], "remove": [ids of facts the '
    "user contradicted or asked to forget]}. Write each fact as one short sentence about the user in the third "
    "person. Leave out small talk and anything said only for this conversation. Use empty lists when nothing "
    "changes."
)
_CLAIM = """
INSERT INTO memory_extractions (message_id, user_id, outcome) VALUES ($1, $2, 'running')
ON CONFLICT (message_id) DO NOTHING RETURNING message_id"""
_OUTCOME = "UPDATE memory_extractions SET outcome = $2 WHERE message_id = $1"
_KNOWN = """
SELECT id, content FROM memories WHERE user_id = $1 AND persona_id = $2 ORDER BY created_at, id LIMIT $3"""
_ADD = """
INSERT INTO memories (id, user_id, persona_id, content, source, source_message_id)
SELECT $1, $2, $3, $4, 'extracted', $5
WHERE NOT EXISTS (SELECT 1 FROM memories WHERE user_id = $2 AND persona_id = $3 AND content = $4)
RETURNING id"""
_REWRITE = """
UPDATE memories SET content = $4, updated_at = now() WHERE id = $1 AND user_id = $2 AND persona_id = $3"""
_REMOVE = "DELETE FROM memories WHERE id = $1 AND user_id = $2 AND persona_id = $3"
# Past max_items ($3), the oldest extracted memories of the pair go.
_TRIM = """
DELETE FROM memories WHERE id IN (
    SELECT id FROM memories WHERE user_id = $1 AND persona_id = $2 AND source = 'extracted'
    ORDER BY created_at DESC, id DESC OFFSET greatest($3 - (
        SELECT count(*) FROM memories WHERE user_id = $1 AND persona_id = $2 AND source = 'user'), 0)
)"""
_REMEMBER = re.compile(r"\bremember that\s+(.+?)(?:[.!?](?:\s|$)|$)", re.IGNORECASE | re.DOTALL)
_FORGET = re.compile(r"\bforget that\s+(.+?)(?:[.!?](?:\s|$)|$)", re.IGNORECASE | re.DOTALL)
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")
_DECODER = msgspec.json.Decoder(Changes)


def _said(known: list[tuple[UUID, str]], question: str, answer: str) -> str:
    facts = "\n".join(f"- {memory_id}: {content}" for memory_id, content in known) or "(none yet)"
    return f"Known facts:\n{facts}\n\nNew exchange:\nUser: {question}\nAssistant: {answer}"


def echo_changes(question: str, known: list[tuple[UUID, str]]) -> Changes:
    """The offline extraction: "remember that X" adds X; "forget that X" removes the memories that say X."""
    add = [" ".join(m.split())[:1000] for m in _REMEMBER.findall(question)]
    forgotten = [" ".join(m.split()).casefold() for m in _FORGET.findall(question)]
    remove = [i for i, content in known if any(f and f in content.casefold() for f in forgotten)]
    return Changes(add=[a for a in add if a], remove=remove)


def parse_changes(text: str) -> Changes | None:
    """The model's answer as :class:`Changes`, or None when it is not that JSON object."""
    try:
        return _DECODER.decode(_FENCE.sub("", text.strip()))
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class Extractor:
    """Extracts memories after completed turns, in the background."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        providers: ProviderSet,
        *,
        provider: str | None = None,
        model: str | None = None,
        timeout: float = 60.0,
        cache: RecallCache | None = None,
        vectors: Vectors | None = None,
    ) -> None:
        self._pool = pool
        self._cache = cache
        self._vectors = vectors
        self.providers = providers
        self.provider = provider if provider in providers else None
        self.model = model
        self.timeout = timeout

    async def extract(
        self,
        *,
        user_id: UUID,
        persona_id: UUID,
        message_id: UUID,
        question: str,
        answer: str,
        provider: str,
        model: str,
        max_items: int,
        used: Callable[[int], None] | None = None,
    ) -> str:
        """Apply what the exchange changes; the outcome (``applied``, ``unchanged``, ``malformed``, ``failed``,
        or ``done`` when this message was extracted before). ``used`` is told the UTF-8 bytes a model call sent and
        was answered, for the caller to count against its limits."""
        if await self._pool.fetchval(_CLAIM, message_id, user_id) is None:
            return "done"
        outcome = "failed"
        try:
            known = [(r["id"], r["content"]) for r in await self._pool.fetch(_KNOWN, user_id, persona_id, max_items)]
            name = self.provider or provider
            if self.providers.get(name).kind == "echo":
                changes: Changes | None = echo_changes(question, known)
            else:
                said = _said(known, question, answer)
                text = await asyncio.wait_for(
                    self._ask(name, (self.model if self.provider else None) or model, said), self.timeout
                )
                if used is not None:
                    used(len(_INSTRUCTIONS) + len(said.encode()) + len(text.encode()))
                changes = parse_changes(text)
            if changes is None:
                outcome = "malformed"
                log.warning(
                    "the memory extraction for message %s was not the JSON asked for; nothing changed", message_id
                )
            elif not (changes.add or changes.rewrite or changes.remove):
                outcome = "unchanged"
            else:
                await self._apply(user_id, persona_id, message_id, changes, max_items)
                outcome = "applied"
                log.info(
                    "memories of message %s: %d added, %d rewritten, %d removed",
                    message_id,
                    len(changes.add),
                    len(changes.rewrite),
                    len(changes.remove),
                )
        except Exception as exc:
            log.warning("could not extract memories from message %s (%s)", message_id, type(exc).__name__)
        with contextlib.suppress(Exception):
            await self._pool.execute(_OUTCOME, message_id, outcome)
        return outcome

    async def _apply(self, user_id: UUID, persona_id: UUID, message_id: UUID, changes: Changes, most: int) -> None:
        written: list[tuple[UUID, str]] = []  # (id, content) of the memories added or rewritten
        async with self._pool.acquire() as connection, connection.transaction():
            for memory_id in changes.remove:
                await connection.execute(_REMOVE, memory_id, user_id, persona_id)
            for rewrite in changes.rewrite:
                content = rewrite.content.strip()
                if await connection.execute(_REWRITE, rewrite.id, user_id, persona_id, content) == "UPDATE 1":
                    written.append((rewrite.id, content))
            for content in changes.add:
                if content.strip():
                    added = await connection.fetchval(_ADD, uuid4(), user_id, persona_id, content.strip(), message_id)
                    if added is not None:
                        written.append((added, content.strip()))
            await connection.execute(_TRIM, user_id, persona_id, most)
            if self._cache is not None:
                await notify(connection, MEMORY_SIGNAL, str(user_id))
        if self._cache is not None:
            self._cache.forget(user_id)
        if self._vectors is not None and written:
            # Those trimmed or removed meanwhile are not found when their vectors arrive, and nothing is stored.
            self._vectors.embed_later(user_id, written)

    async def _ask(self, name: str, model: str, said: str) -> str:
        request = ProviderRequest(
            model=model,
            system=_INSTRUCTIONS,
            messages=(ChatMessage(role="user", content=said),),
            max_tokens=512,
        )
        return await text_of(self.providers.get(name), request)
