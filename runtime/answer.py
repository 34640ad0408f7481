"""An answer on its way: opening a provider stream with fallbacks, and one turn's events and outcome."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from core.errors import ProviderError, ProviderTimeout, ProviderUnavailable, ServiceUnavailable
from providers import ProviderEvent, ProviderRequest, ProviderSet, assemble_tool_calls
from providers.events import Finish, TextDelta, ToolCallDelta, Usage
from runtime.conversations import MessageStatus
from runtime.events import ChatEvent, Content, Done, ErrorEvent, Start, UsageReport
from runtime.prompt import Route

__all__ = ["AnswerStream", "ChatResult", "ChatTurn", "Saver", "open_answer"]

log = logging.getLogger("persona_runtime.chat")

# Seconds between attempts to save an answer the database refused (about half a minute in all).
SAVE_RETRY_DELAYS = (0.5, 1, 2, 4, 8, 15)

# Errors worth another provider: the upstream is down or slow, not refusing this request.
_FALLBACK_ERRORS = (ProviderUnavailable, ProviderTimeout)


@dataclass
class AnswerStream:
    """A provider stream that has produced its first event: from here on, failures are in-band."""

    route: Route
    events: AsyncIterator[ProviderEvent]
    attempts: list[tuple[Route, ProviderError]] = field(default_factory=list)

    async def aclose(self) -> None:
        closer = getattr(self.events, "aclose", None)
        if closer is not None:
            await closer()


async def open_answer(providers: ProviderSet, routes: Sequence[Route], request: ProviderRequest) -> AnswerStream:
    """Start the first route that answers, trying the next one when a provider fails before its first event.

    Raises the first route's error when none answers (with the others logged), so the status a client
    sees is about the provider it asked for.
    """
    failures: list[tuple[Route, ProviderError]] = []
    for route in routes:
        provider = providers.get(route.provider)
        stream = provider.stream(msgspec.structs.replace(request, model=route.model))
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            first = Finish(finish_reason="stop")
        except _FALLBACK_ERRORS as exc:
            await stream.aclose()  # type: ignore[attr-defined]
            failures.append((route, exc))
            log.warning(
                "provider %s failed before answering (%s); %s",
                route.provider,
                exc.code,
                "trying the next fallback" if route is not routes[-1] else "no fallback left",
            )
            continue
        except BaseException:
            await stream.aclose()  # type: ignore[attr-defined]
            raise
        return AnswerStream(route=route, events=_prepend(first, stream), attempts=failures)
    raise failures[0][1]


async def _prepend(first: ProviderEvent, rest: AsyncIterator[ProviderEvent]) -> AsyncIterator[ProviderEvent]:
    try:
        yield first
        async for event in rest:
            yield event
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


Saver = Callable[..., Coroutine[Any, Any, None]]


@dataclass
class ChatResult:
    """A whole answer, for callers that do not stream."""

    start: Start
    text: str
    usage: UsageReport | None
    done: Done


@dataclass
class ChatTurn:
    """One answer on its way: ``start`` is known, ``events()`` streams it and records the outcome."""

    start: Start
    answer: AnswerStream
    began: float
    save: Saver | None
    spawn: Callable[[Coroutine[Any, Any, None]], None]
    failure: ProviderError | None = None

    async def collect(self) -> ChatResult:
        """Read the whole answer; a failure midway is raised (the partial answer is kept as incomplete)."""
        pieces: list[str] = []
        usage: UsageReport | None = None
        async for event in self.events():
            if isinstance(event, Content):
                pieces.append(event.content)
            elif isinstance(event, UsageReport):
                usage = event
            elif isinstance(event, ErrorEvent):
                raise self.failure or ServiceUnavailable(event.message)
            elif isinstance(event, Done):
                return ChatResult(start=self.start, text="".join(pieces), usage=usage, done=event)
        raise ProviderUnavailable("The provider stream ended without an answer.", provider=self.start.provider)

    async def events(self) -> AsyncGenerator[ChatEvent, None]:
        """``start``, the answer as ``content`` pieces, ``usage``, then ``done`` (or ``error``)."""
        pieces: list[str] = []
        deltas: list[ToolCallDelta] = []
        usage: dict[str, int] | None = None
        finish: str | None = None
        settled = False
        try:
            yield self.start
            try:
                async for event in self.answer.events:
                    if isinstance(event, TextDelta):
                        pieces.append(event.content)
                        yield Content(content=event.content)
                    elif isinstance(event, Usage):
                        usage = {"input_tokens": event.input_tokens, "output_tokens": event.output_tokens}
                        yield UsageReport(**usage)
                    elif isinstance(event, ToolCallDelta):
                        deltas.append(event)
                    elif isinstance(event, Finish):
                        finish = event.finish_reason
            except ProviderError as exc:
                settled = True
                self.failure = exc
                await self._record(
                    "incomplete", pieces, usage, None, deltas, {"code": exc.code, "message": exc.message}
                )
                yield ErrorEvent(code=exc.code, message=exc.message)
                return
            status: MessageStatus = "complete" if finish else "incomplete"
            settled = True
            calls = [msgspec.to_builtins(c) for c in assemble_tool_calls(deltas)]
            if not await self._record(status, pieces, usage, finish, deltas, None):
                yield ErrorEvent(
                    code="not_saved",
                    message="The answer was streamed but could not be saved: the database is unavailable. "
                    "It is being retried; reload the conversation later to see whether it was kept.",
                )
                return
            yield Done(finish_reason=finish or "incomplete", message_id=self.start.message_id, tool_calls=calls)
        finally:
            if not settled:
                # The client went away (or the task was cancelled): keep what was said, in a task of its own,
                # because any await here would be cancelled with us.
                self.spawn(self._finish_abandoned(pieces, usage, deltas))

    async def _finish_abandoned(
        self, pieces: list[str], usage: dict[str, int] | None, deltas: list[ToolCallDelta]
    ) -> None:
        await self.answer.aclose()
        await self._record(
            "incomplete",
            pieces,
            usage,
            None,
            deltas,
            {"code": "client_disconnected", "message": "The client went away."},
        )

    async def _record(
        self,
        status: MessageStatus,
        pieces: list[str],
        usage: dict[str, int] | None,
        finish: str | None,
        deltas: list[ToolCallDelta],
        error: dict[str, Any] | None,
    ) -> bool:
        if self.save is None:
            return True
        calls = [msgspec.to_builtins(c) for c in assemble_tool_calls(deltas)] or None
        outcome = {
            "content": "".join(pieces),
            "status": status,
            "provider": self.answer.route.provider,
            "model": self.answer.route.model,
            "usage": usage,
            "latency_ms": int((time.monotonic() - self.began) * 1000),
            "finish_reason": finish,
            "tool_calls": calls,
            "error": error,
        }
        try:
            await self.save(**outcome)
        except Exception as exc:
            log.warning(
                "could not save the answer %s (%s); retrying in the background",
                self.start.message_id,
                type(exc).__name__,
            )
            self.spawn(self._save_later(outcome))
            return False
        return True

    async def _save_later(self, outcome: dict[str, Any]) -> None:
        """Keep trying for a while (the database may be restarting); the client was told it is not saved."""
        assert self.save is not None
        for delay in SAVE_RETRY_DELAYS:
            await asyncio.sleep(delay)
            try:
                await self.save(**outcome)
            except Exception:
                continue
            log.info("answer %s saved after a retry", self.start.message_id)
            return
        log.error("gave up saving the answer %s: the database stayed unavailable", self.start.message_id)
