"""Rolling summaries of the turns that fall out of a conversation's window (contract section 13).

After an answer is saved complete, when its context says a summary is due (the turns no summary covers fill
most of the history's room, or stopped fitting: :data:`~runtime.chat.context.SUMMARY_AT`), the
:class:`Summarizer` writes a new summary in the background: the previous one folded with the turns since,
through the message before the point the context chose. It never delays an answer. A failure is logged; the
next turn that finds a summary due asks again. One summary per conversation is written at a time, and a summary is
saved only over the one it folded, so a slow writer never replaces a newer summary.

The summary is written by ``SUMMARY_PROVIDER``/``SUMMARY_MODEL`` when set, else by the persona's own provider
and model. The offline ``echo`` provider gets no call: its summary is made here, deterministically.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any
from uuid import UUID

from providers import ChatMessage, ProviderRequest, ProviderSet, text_of
from runtime.chat.conversations import ConversationStore
from runtime.chat.tokens import tokenizer_for

__all__ = ["SUMMARY_TOKENS", "Summarizer", "echo_summary"]

log = logging.getLogger("persona_runtime.summaries")

# The longest summary asked for, in tokens, and the most stored text one summary folds in at a time (the
# rest is folded by the next).
SUMMARY_TOKENS = 1024
_FOLD_MESSAGES = 200
_FOLD_CHARS = 200_000

_INSTRUCTIONS = (
    "You keep the running summary of a conversation between a user and an assistant. Fold the previous "
    "summary and the new turns into one summary, in the third person, keeping names, facts the user gave, "
    "decisions, open questions and anything the assistant promised. Write at most 300 words and nothing else."
)

Spawn = Callable[[Coroutine[Any, Any, None]], None]


def echo_summary(previous: str | None, turns: list[tuple[str, str]]) -> str:
    """The offline summary: the previous one, then the start of each folded message; past 1,500 characters the
    lines after the first give way, oldest first, so it keeps how the conversation began and how it went on."""
    lines = previous.splitlines() if previous else []
    for role, content in turns:
        first = " ".join(content.split())[:100]
        lines.append(f"{'The user' if role == 'user' else 'The assistant'} said: {first}")
    while len(lines) > 2 and sum(len(line) + 1 for line in lines) > 1500:
        lines.pop(1)
    return "\n".join(lines)


def _transcript(previous: str | None, turns: list[tuple[str, str]]) -> str:
    said = "\n\n".join(f"{'User' if role == 'user' else 'Assistant'}: {content}" for role, content in turns)
    return f"Previous summary:\n{previous or '(none yet)'}\n\nNew turns:\n{said}"


class Summarizer:
    """Writes conversations' summaries in the background, one at a time per conversation."""

    def __init__(
        self,
        conversations: ConversationStore,
        providers: ProviderSet,
        spawn: Spawn,
        *,
        provider: str | None = None,
        model: str | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.conversations = conversations
        self.providers = providers
        self.spawn = spawn
        self.provider = provider if provider in providers else None
        self.model = model
        self.timeout = timeout
        self._running: set[UUID] = set()
        # Conversations asked again while their summary was being written: written once more after.
        self._asked: dict[UUID, int] = {}

    def ask(self, conversation_id: UUID, before_seq: int | None, provider: str, model: str) -> None:
        """Summarize ``conversation_id``'s stored turns before message ``before_seq`` (None: all of them)."""
        before = before_seq if before_seq is not None else 2**62
        if conversation_id in self._running:
            self._asked[conversation_id] = max(self._asked.get(conversation_id, 0), before)
            return
        self._running.add(conversation_id)
        self.spawn(self._run(conversation_id, before, provider, model))

    async def _run(self, conversation_id: UUID, before: int, provider: str, model: str) -> None:
        try:
            while True:
                try:
                    await self.write(conversation_id, before, provider, model)
                except Exception as exc:
                    log.warning("could not summarize conversation %s (%s); a later turn retries", conversation_id, exc)
                again = self._asked.pop(conversation_id, None)
                if again is None:
                    return
                before = again
        finally:
            self._running.discard(conversation_id)

    async def write(self, conversation_id: UUID, before: int, provider: str, model: str) -> bool:
        """Fold the previous summary with the stored messages after it and before ``before``; whether a summary
        was saved."""
        state = await self.conversations.summary_state(conversation_id, before_seq=before, limit=_FOLD_MESSAGES)
        if state is None:
            return False  # deleted meanwhile
        previous, covers, rows = state
        turns: list[tuple[str, str]] = []
        size = 0
        last = None
        for seq, role, content in rows:
            size += len(content)
            if turns and size > _FOLD_CHARS:
                break
            turns.append((role, content))
            last = seq
        if last is None:
            return False
        name = self.provider or provider
        writer = self.providers.get(name)
        asked_model = self.model if self.provider else model
        if writer.kind == "echo":
            summary = echo_summary(previous, turns)
        else:
            summary = await asyncio.wait_for(self._ask(name, asked_model or model, previous, turns), self.timeout)
        summary = summary.strip()
        if not summary:
            return False
        tokens = tokenizer_for(asked_model or model).count(summary)
        saved = await self.conversations.save_summary(
            conversation_id,
            summary=summary,
            tokens=tokens,
            covers_seq=last,
            folded_seq=covers,
        )
        if saved:
            log.info("conversation %s summarized through its message at seq %s", conversation_id, last)
        return saved

    async def _ask(self, name: str, model: str, previous: str | None, turns: list[tuple[str, str]]) -> str:
        request = ProviderRequest(
            model=model,
            system=_INSTRUCTIONS,
            messages=(ChatMessage(role="user", content=_transcript(previous, turns)),),
            max_tokens=SUMMARY_TOKENS,
        )
        return await text_of(self.providers.get(name), request)
