"""The one collector of an answer: what a turn said, from its events as they stream or as a recording kept them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import assert_never

from core.events import Done, ErrorEvent, Finish, ProviderEvent, Start, TextDelta, ToolCallDelta, TurnEvent, Usage
from providers import ToolCall, assemble_tool_calls

__all__ = ["Collector", "Passed", "TurnResult"]

# What of a provider's batch goes on to a client: everything but ``Finish``.
Passed = TextDelta | ToolCallDelta | Usage


@dataclass
class TurnResult:
    """A whole answer, for codecs that do not stream: its text, usage and tool calls, and how it ended
    (``done``, or ``error`` with what was said before it)."""

    start: Start
    text: str
    usage: Usage | None
    tool_calls: tuple[ToolCall, ...]
    done: Done | None = None
    error: ErrorEvent | None = None

    @property
    def finish_reason(self) -> str:
        return self.done.finish_reason if self.done is not None else "incomplete"


class Collector:
    """What a turn said so far: the text pieces, tool call pieces, usage, finish reason and end event."""

    __slots__ = ("deltas", "end", "finish", "pieces", "usage")

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.deltas: list[ToolCallDelta] = []
        self.usage: Usage | None = None
        self.finish: str | None = None
        self.end: Done | ErrorEvent | None = None

    def add(self, batch: Sequence[ProviderEvent | TurnEvent]) -> list[Passed]:
        """Take in one batch (a provider's, or a recording's events); what of it goes on to the client."""
        passed: list[Passed] = []
        for event in batch:
            match event:
                case TextDelta(content=content):
                    self.pieces.append(content)
                    passed.append(event)
                case Usage():
                    self.usage = event
                    passed.append(event)
                case ToolCallDelta():
                    self.deltas.append(event)
                    passed.append(event)
                case Finish(finish_reason=reason):
                    self.finish = reason
                case Done() | ErrorEvent():
                    self.end = event
                case Start():
                    pass
                case _:
                    assert_never(event)
        return passed

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def tool_calls(self) -> tuple[ToolCall, ...]:
        return assemble_tool_calls(self.deltas) if self.deltas else ()

    def result(self, start: Start) -> TurnResult:
        end = self.end
        return TurnResult(
            start=start,
            text=self.text,
            usage=self.usage,
            tool_calls=self.tool_calls(),
            done=end if isinstance(end, Done) else None,
            error=end if isinstance(end, ErrorEvent) else None,
        )
