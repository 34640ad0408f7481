"""Typed events a provider stream yields: a closed tagged union whose tag is the SSE event name."""

from __future__ import annotations

import msgspec

__all__ = ["Finish", "ProviderEvent", "TextDelta", "ToolCallDelta", "Usage"]


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
    """Token counts for the whole call, as the provider reported them."""

    input_tokens: int
    output_tokens: int


class Finish(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="finish"):
    """The last event of a successful stream.

    ``finish_reason`` is normalised across providers to one of ``stop``, ``length``,
    ``tool_calls`` or ``content_filter``.
    """

    finish_reason: str


ProviderEvent = TextDelta | ToolCallDelta | Usage | Finish
