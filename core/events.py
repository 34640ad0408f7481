"""The one event vocabulary of a chat turn, from the provider's stream to every wire format.

A closed tagged union whose tag is both the SSE event name and the JSON ``type`` of our own stream.
Providers yield the first four; the turn pipeline adds ``start`` before them and ends with ``done`` or
``error``. Each codec (our SSE, OpenAI's chunks, a JSON answer) is one translation loop over these.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec

from core.errors import PersonaRuntimeError

__all__ = [
    "Done",
    "ErrorEvent",
    "Finish",
    "PersonaRef",
    "ProviderEvent",
    "Start",
    "TextDelta",
    "ToolCallDelta",
    "TurnEvent",
    "Usage",
    "error_event",
]


class TextDelta(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="content"):
    """A piece of the assistant's answer text, in stream order."""

    content: str


class ToolCallDelta(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="tool_call"):
    """A piece of a tool call as streamed.

    Pieces with the same ``index`` belong to one call: the first usually carries ``id`` and
    ``name``; ``arguments`` fragments concatenate to the call's JSON arguments.
    """

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class Usage(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="usage"):
    """Token counts for the whole call, as the provider reported them.

    ``input_tokens`` counts every token read, ``cached_input_tokens`` those of them the provider took
    from its prompt cache.
    """

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0


class Finish(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="finish"):
    """The last event of a successful provider stream.

    ``finish_reason`` is normalised across providers to one of ``stop``, ``length``,
    ``tool_calls`` or ``content_filter``.
    """

    finish_reason: str


ProviderEvent = TextDelta | ToolCallDelta | Usage | Finish


class PersonaRef(msgspec.Struct, frozen=True, kw_only=True):
    """Which persona answered, at which saved version."""

    id: UUID
    name: str
    version: int


class Start(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="start"):
    """The first event of a turn: who answers, why, through which provider, and where it is kept."""

    conversation_id: UUID | None
    message_id: UUID | None
    persona: PersonaRef
    persona_source: str
    provider: str
    model: str
    # The turn's record (contract section 16): the assistant message's id on a kept turn, else a new one.
    turn_id: UUID | None = None


class Done(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="done", omit_defaults=True):
    """The answer is whole (and, when the turn is kept, stored)."""

    finish_reason: str
    message_id: UUID | None
    turn_id: UUID | None = None
    # Present only when the model asked for tools: the runtime does not run them itself.
    tool_calls: list[dict[str, Any]] = msgspec.field(default_factory=list)


class ErrorEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="error"):
    """The turn failed after it started; ``code`` is one of the error tree's codes."""

    code: str
    message: str


TurnEvent = Start | TextDelta | ToolCallDelta | Usage | Done | ErrorEvent


def error_event(error: PersonaRuntimeError) -> ErrorEvent:
    """The in-band ``error`` event of an error of the tree."""
    return ErrorEvent(code=error.code, message=error.message)
