"""Chat stream events: a closed tagged union whose tag is both the SSE event name and the JSON ``type``."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec

__all__ = ["ChatEvent", "Content", "Done", "ErrorEvent", "PersonaRef", "Start", "UsageReport"]


class PersonaRef(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    name: str
    version: int


class Start(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="start"):
    conversation_id: UUID | None
    message_id: UUID | None
    persona: PersonaRef
    persona_source: str
    provider: str
    model: str


class Content(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="content"):
    content: str


class UsageReport(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="usage"):
    input_tokens: int
    output_tokens: int


class Done(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="done", omit_defaults=True):
    finish_reason: str
    message_id: UUID | None
    # Present only when the model asked for tools: the runtime does not run them itself.
    tool_calls: list[dict[str, Any]] = msgspec.field(default_factory=list)


class ErrorEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="error"):
    code: str
    message: str


ChatEvent = Start | Content | UsageReport | Done | ErrorEvent
