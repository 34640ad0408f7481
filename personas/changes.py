"""What a persona write tells every instance: the cached entries it changed, sent inside its transaction.

The store only needs something that sends a payload as part of a transaction (:class:`Notify`); the
channel that carries it, and who listens, belong to the runtime above.
"""

from __future__ import annotations

from typing import Any, Protocol
from uuid import UUID

import asyncpg
import msgspec

__all__ = ["PERSONA_SIGNAL", "UNHEARD_SECONDS", "Notify", "PersonaChange", "change_decoder"]

# The kind of signal persona writes send.
PERSONA_SIGNAL = "persona"

# While a process cannot hear of writes made elsewhere (its notification connection is down), nothing is
# kept in its memory longer than this: the bound every instance relied on before writes were announced.
UNHEARD_SECONDS = 1.0


class Notify(Protocol):
    """Sends ``payload`` (anything msgspec encodes) under ``kind`` to every instance, as part of ``conn``'s
    transaction: it is delivered when that commits, and never if it rolls back."""

    async def __call__(self, conn: asyncpg.Connection, kind: str, payload: Any, /) -> None: ...


class PersonaChange(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The entries a write made stale: a persona (the names it had and has, public and among its ``owner``'s,
    None being the system, and the default, which may be it), or a user's preference."""

    persona_id: UUID | None = None
    names: tuple[str, ...] = ()
    owner: UUID | None = None
    default: bool = False
    user_id: UUID | None = None


change_decoder = msgspec.json.Decoder(PersonaChange)
