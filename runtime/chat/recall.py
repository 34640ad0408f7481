"""A turn's memories: the user's memories made into a context tier (contract section 15).

The pipeline makes a :class:`TurnMemory` when the persona remembers (``model_settings.memory.enabled``) and the
turn did not opt out; the context builder calls it with the turn's latest message and what the window has
left, and it reads the user's switch and memories in one round trip (:class:`runtime.memory.Recall`). What it
chose and why stays on it for render's ``memories``.
"""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

from runtime.chat.context import Extra
from runtime.chat.tokens import MESSAGE_OVERHEAD
from runtime.memory.recall import Recall, Recalled

__all__ = ["TurnMemory"]


class TurnMemory:
    """One turn's memory tier: built by :meth:`make`, explained by :attr:`result`."""

    depth = 0  # only the latest message is ranked against

    def __init__(
        self,
        recall: Recall,
        *,
        user_id: UUID,
        persona_id: UUID,
        user_name: str,
        budget: int,
        limit: int,
        explain: bool = False,
    ) -> None:
        self.explain = explain
        self.recall = recall
        self.user_id = user_id
        self.persona_id = persona_id
        self.user_name = user_name
        self.budget = budget
        self.limit = limit
        self.result: Recalled | None = None

    async def make(
        self, texts: list[str], left: int, count: Callable[[str], int], ratio: float, tokenizer: str
    ) -> Extra | None:
        result = self.result = await self.recall.for_turn(
            self.user_id,
            self.persona_id,
            texts[0] if texts else "",
            user_name=self.user_name,
            budget=min(self.budget, left),
            limit=self.limit,
            count=count,
            tokenizer=tokenizer,
            ratio=ratio,
            overhead=MESSAGE_OVERHEAD,
            explain=self.explain,
        )
        if not result.ids:
            return None
        return Extra(
            kind="memory", tokens=result.tokens, system=result.text, items=len(result.ids), ids=tuple(result.ids)
        )
