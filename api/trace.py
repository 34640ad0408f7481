"""Which persona answered and which turn it was, as response headers on every answer that ran a turn."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar.params import HeaderParameter

from core.errors import BadRequest
from core.events import Start
from runtime.chat.pipeline import TurnInput

__all__ = ["MemoryHeader", "persona_headers", "turn_headers", "with_memory"]

# `x-persona-memory: off` keeps a /v1 turn from using the user's memories (contract section 15).
MemoryHeader = Annotated[str | None, HeaderParameter(name="x-persona-memory", required=False)]


def with_memory(turn: TurnInput, header: str | None) -> TurnInput:
    """``turn`` as the ``x-persona-memory`` header asks: ``off`` opts out of memory, ``on`` (or none) does not."""
    if header is None:
        return turn
    value = header.strip().lower()
    if value == "on":
        return turn
    if value == "off":
        return msgspec.structs.replace(turn, memory=False)
    raise BadRequest(
        f"`x-persona-memory` is {header[:40]!r}: send `off` to leave memories out of this turn, or `on`.",
        field="x-persona-memory",
    )


def persona_headers(start: Start) -> dict[str, str]:
    """``x-persona-id``, ``x-persona-version`` and ``x-persona-source``: known from ``start``, before the first byte."""
    return {
        "x-persona-id": str(start.persona.id),
        "x-persona-version": str(start.persona.version),
        "x-persona-source": start.persona_source,
        **turn_headers(start),
    }


def turn_headers(start: Start) -> dict[str, str]:
    """``x-persona-turn-id``: the id of the turn's record, for feedback on it (contract section 16)."""
    return {"x-persona-turn-id": str(start.turn_id)} if start.turn_id is not None else {}
