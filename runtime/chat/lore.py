"""A turn's lore: the persona's lorebook made into a context tier (contract section 14).

The pipeline makes a :class:`TurnLore` for a persona with enabled entries; the context builder calls it once
it has the turn's latest messages, and it asks :func:`personas.lore.activate` what they set off. What it
decided stays on it for render's ``lore`` and ``warnings``, and its timed effects for the conversation are
stored with the turn's question.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Literal

from personas.lore import LoreIndex, LoreResult, LoreState, activate, index_for
from personas.models import Persona
from personas.template import fill_names
from providers import ChatMessage
from runtime.chat.context import Extra
from runtime.chat.tokens import MESSAGE_OVERHEAD

__all__ = ["TurnLore", "lore_for"]

# A lore entry placed among the messages speaks as its role; providers take system text only at the top, so a
# ``system`` entry at a depth goes as a user message.
_ROLES: dict[str, Literal["user", "assistant"]] = {"system": "user", "user": "user", "assistant": "assistant"}


class TurnLore:
    """One turn's lorebook tier: built by :meth:`make`, explained by :attr:`result`."""

    def __init__(
        self, index: LoreIndex, *, turn: int, seed: str, state: LoreState | None, names: tuple[str, str]
    ) -> None:
        self.index = index
        self.depth = index.max_depth
        self.budget = index.book.token_budget
        self.turn = turn
        self.seed = seed
        self.state = state
        self.names = names
        self.result: LoreResult | None = None

    def _substitute(self, text: str) -> str:
        return fill_names(text, persona_name=self.names[0], user_name=self.names[1])

    async def make(
        self, texts: list[str], left: int, count: Callable[[str], int], ratio: float, tokenizer: str
    ) -> Extra | None:
        result = self.result = await activate(
            self.index,
            texts,
            turn=self.turn,
            seed=self.seed,
            budget=min(self.budget, left),
            count=count,
            ratio=ratio,
            tokenizer=tokenizer,
            state=self.state,
            substitute=self._substitute,
            message_overhead=MESSAGE_OVERHEAD,
        )
        if not result.ids:
            return None
        return Extra(
            kind="lore",
            tokens=result.tokens,
            system=result.system,
            messages=tuple(
                (depth, ChatMessage(role=_ROLES[role], content=content)) for depth, role, content in result.messages
            ),
            items=len(result.ids),
            ids=tuple(result.ids),
        )


def lore_for(
    persona: Persona,
    *,
    conversation_id: object | None,
    user_turns: int,
    state: LoreState | None,
    latest: str,
    names: tuple[str, str],
) -> TurnLore | None:
    """The turn's lore tier when the persona has enabled entries, else None.

    The turn is the conversation's next user turn; the probability rolls are seeded by the conversation and
    that turn (a replay or a render of the same turn decides the same), or by the latest message's text for a
    turn of no stored conversation.
    """
    book = persona.lorebook
    if book is None or not book.entries:
        return None
    index = index_for((persona.id, persona.version, persona.updated_at), book)
    if not index.enabled:
        return None
    turn = user_turns + 1
    if conversation_id is not None:
        seed = f"{conversation_id}:{turn}"
    else:
        seed = hashlib.blake2b(latest.encode(), digest_size=12).hexdigest()
    return TurnLore(index, turn=turn, seed=seed, state=state, names=names)
