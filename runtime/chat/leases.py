"""Leases on answers being generated: renewed by the instance that runs them, swept by every instance.

A stored answer is ``pending`` from the moment its question is kept until it is saved. If its instance
is killed in between, nothing would ever save it; so each pending answer carries a lease, set when the
question is stored, and this instance renews the leases of all its running answers in one statement
every third of the lease. Every instance also sweeps: an answer whose lease ran out is marked
``incomplete``. An answer shorter than a third of the lease costs no statement at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from uuid import UUID

from runtime.chat.conversations import ConversationStore

__all__ = ["Leases"]

log = logging.getLogger("persona_runtime.leases")


class Leases:
    """The answers this instance is generating, with how to stop each (for a cancel from any instance)."""

    def __init__(
        self,
        conversations: ConversationStore,
        said: Callable[[UUID], Awaitable[str | None]] | None = None,
    ) -> None:
        """``said(message_id)`` recovers what an abandoned answer had streamed (from its recording)."""
        self._conversations = conversations
        self.said = said
        self._held: dict[UUID, Callable[[], None] | None] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def period(self) -> float:
        return max(0.2, self._conversations.lease_seconds / 3)

    def hold(self, message_id: UUID) -> None:
        self._held.setdefault(message_id, None)

    def attach(self, message_id: UUID, cancel: Callable[[], None]) -> None:
        if message_id in self._held:
            self._held[message_id] = cancel

    def release(self, message_id: UUID) -> None:
        self._held.pop(message_id, None)

    def cancel(self, message_id: UUID) -> bool:
        """Stop the answer if this instance runs it; whether it does."""
        cancel = self._held.get(message_id)
        if cancel is None:
            return False
        cancel()
        return True

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="answer-leases")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.tick()
            except Exception as exc:  # the database is away: try again next period
                log.debug("could not renew or sweep answer leases (%s)", type(exc).__name__)

    async def mark_abandoned(self, message_id: UUID) -> bool:
        """Mark an answer whose lease ran out incomplete, with what its recording held; whether this did it."""
        said = await self.said(message_id) if self.said is not None else None
        return await self._conversations.mark_abandoned(message_id, said or None)

    async def tick(self) -> None:
        if self._held:
            await self._conversations.renew(list(self._held))
        swept = [m for m in await self._conversations.abandoned() if await self.mark_abandoned(m)]
        if swept:
            log.warning(
                "%d answer(s) left pending by a stopped instance marked incomplete: %s",
                len(swept),
                ", ".join(map(str, swept[:5])),
            )
