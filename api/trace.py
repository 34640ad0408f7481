"""Which persona answered, as response headers on every /v1 answer that ran a turn."""

from __future__ import annotations

from core.events import Start

__all__ = ["persona_headers"]


def persona_headers(start: Start) -> dict[str, str]:
    """``x-persona-id``, ``x-persona-version`` and ``x-persona-source``: known from ``start``, before the first byte."""
    return {
        "x-persona-id": str(start.persona.id),
        "x-persona-version": str(start.persona.version),
        "x-persona-source": start.persona_source,
    }
