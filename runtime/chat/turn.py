"""An answer on its way: the provider stream opened with fallbacks, its one collector, and its stored outcome."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

import msgspec

from core.errors import (
    Cancelled,
    ClientDisconnected,
    Pending,
    PersonaRuntimeError,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    ServiceUnavailable,
)
from core.events import Done, Finish, ProviderEvent, Start, TurnEvent, Usage, error_event
from core.logs import REQUEST_ID
from core.metrics import Metrics
from personas.releases import Variant
from providers import ProviderRequest, ProviderSet, batches_of
from runtime.access.limits import Admission
from runtime.chat.collector import Collector, TurnResult
from runtime.chat.context import Built
from runtime.chat.conversations import ConversationStore, MessageStatus
from runtime.chat.leases import Leases
from runtime.chat.prompt import Route
from runtime.chat.tokens import MESSAGE_OVERHEAD, calibrated
from runtime.turns import TurnLog

if TYPE_CHECKING:
    from core.traces import TurnSpan

__all__ = ["AnswerStream", "Collector", "Outcome", "Turn", "TurnResult", "open_answer"]

log = logging.getLogger("persona_runtime.chat")

# Seconds between attempts to save an answer the database refused (about half a minute in all).
SAVE_RETRY_DELAYS = (0.5, 1, 2, 4, 8, 15)

# Errors worth another provider: the upstream is down or slow, not refusing this request.
_FALLBACK_ERRORS = (ProviderUnavailable, ProviderTimeout)

Spawn = Callable[[Coroutine[Any, Any, None]], None]


@dataclass
class AnswerStream:
    """A provider stream that has produced its first events: from here on, failures are in-band."""

    route: Route
    first: list[ProviderEvent]
    rest: AsyncGenerator[list[ProviderEvent], None]
    attempts: list[tuple[Route, ProviderError]] = field(default_factory=list)

    async def batches(self) -> AsyncGenerator[list[ProviderEvent], None]:
        yield self.first
        async for batch in self.rest:
            yield batch

    async def aclose(self) -> None:
        await self.rest.aclose()


async def open_answer(
    providers: ProviderSet, routes: Sequence[Route], request: ProviderRequest, *, metrics: Metrics | None = None
) -> AnswerStream:
    """Start the first route that answers, trying the next one when a provider fails before its first event.

    Raises the first route's error when none answers (with the others logged), so the status a client
    sees is about the provider it asked for.
    """
    failures: list[tuple[Route, ProviderError]] = []
    for route in routes:
        provider = providers.get(route.provider)
        asked = request if request.model == route.model else msgspec.structs.replace(request, model=route.model)
        stream: AsyncGenerator[list[ProviderEvent], None] = batches_of(provider, asked)  # type: ignore[assignment]
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            first = [Finish(finish_reason="stop")]
        except _FALLBACK_ERRORS as exc:
            await stream.aclose()
            failures.append((route, exc))
            if metrics is not None:
                metrics.provider_errors.labels(provider=metrics.provider(route.provider), kind=exc.code).inc()
            log.warning(
                "provider %s failed before answering (%s); %s",
                route.provider,
                exc.code,
                "trying the next fallback" if route is not routes[-1] else "no fallback left",
            )
            continue
        except BaseException as exc:
            await stream.aclose()
            if metrics is not None and isinstance(exc, ProviderError):
                metrics.provider_errors.labels(provider=metrics.provider(route.provider), kind=exc.code).inc()
            raise
        return AnswerStream(route=route, first=first, rest=stream, attempts=failures)
    raise failures[0][1]


class Outcome:
    """Where a kept turn's answer is stored, and the saving of how it ended."""

    def __init__(
        self,
        conversations: ConversationStore,
        message_id: UUID,
        began: float,
        spawn: Spawn,
        leases: Leases | None = None,
        context: Built | None = None,
        then: Callable[[str], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.conversations = conversations
        self.message_id = message_id
        self.began = began
        self.spawn = spawn
        # What the answer was given (kept with it), and what runs once it is saved complete (a summary).
        self.context = context
        self.then = then
        # Held while the answer is pending: this instance renews it, so no other one marks it abandoned.
        self.leases = leases
        if leases is not None:
            leases.hold(message_id)

    def _settled(self) -> None:
        if self.leases is not None:
            self.leases.release(self.message_id)

    def failed_to_open(self, route: Route, failure: PersonaRuntimeError | None) -> Coroutine[Any, Any, None]:
        """Save the answer as an error: the provider could not be reached (None: the request was cancelled)."""
        failure = failure or Cancelled("The request was cancelled.")
        self._settled()
        return self.conversations.finish_answer(
            self.message_id,
            content="",
            status="error",
            provider=route.provider,
            model=route.model,
            usage=None,
            latency_ms=self._latency(),
            finish_reason=None,
            tool_calls=None,
            error={"code": failure.code, "message": failure.message},
        )

    async def record(self, route: Route, status: MessageStatus, said: Collector, error: dict[str, Any] | None) -> bool:
        """Save the answer; False when the database refused (a background retry then keeps trying)."""
        calls = [msgspec.to_builtins(c) for c in said.tool_calls()] or None
        usage = said.usage
        outcome: dict[str, Any] = self._kept(said, usage)
        outcome |= {
            "content": said.text,
            "status": status,
            "provider": route.provider,
            "model": route.model,
            "usage": msgspec.structs.asdict(usage) if usage else None,
            "latency_ms": self._latency(),
            "finish_reason": said.finish if status == "complete" else None,
            "tool_calls": calls,
            "error": error,
        }
        try:
            await self.conversations.finish_answer(self.message_id, **outcome)
        except Exception as exc:
            log.warning(
                "could not save the answer %s (%s); retrying in the background", self.message_id, type(exc).__name__
            )
            self.spawn(self._save_later(outcome))
            return False
        self._settled()
        if status == "complete" and self.then is not None:
            self.spawn(self.then(said.text))
        return True

    def _kept(self, said: Collector, usage: Usage | None) -> dict[str, Any]:
        """What is stored for later contexts: the answer's tokens, the account, the conversation's correction."""
        built = self.context
        if built is None:
            return {}
        tokenizer = built.tokenizer
        if tokenizer.exact and usage is not None and usage.output_tokens and not said.tool_calls():
            tokens = usage.output_tokens + MESSAGE_OVERHEAD
        else:
            tokens = tokenizer.count(said.text) + MESSAGE_OVERHEAD
        kept: dict[str, Any] = {"tokens": tokens, "context": msgspec.to_builtins(built.account)}
        if not tokenizer.exact and usage is not None and usage.input_tokens and built.estimated_input:
            kept["token_ratio"] = calibrated(usage.input_tokens / built.estimated_input)
        return kept

    async def _save_later(self, outcome: dict[str, Any]) -> None:
        """Keep trying for a while (the database may be restarting); the client was told it is not saved."""
        try:
            for delay in SAVE_RETRY_DELAYS:
                await asyncio.sleep(delay)
                try:
                    await self.conversations.finish_answer(self.message_id, **outcome)
                except Exception:
                    continue
                log.info("answer %s saved after a retry", self.message_id)
                return
            log.error("gave up saving the answer %s: the database stayed unavailable", self.message_id)
        finally:
            self._settled()

    def _latency(self) -> int:
        return int((time.monotonic() - self.began) * 1000)


class Turn:
    """One answer on its way: ``start`` is known; ``batches()`` streams it once and records how it ended.

    The batches are lists of events, one list per read of the provider's connection, so a codec can write
    each to its client at once: ``start`` leads the first, ``done`` or ``error`` closes the last.
    """

    def __init__(
        self,
        *,
        start: Start,
        answer: AnswerStream,
        outcome: Outcome | None,
        spawn: Spawn,
        user_id: UUID | None = None,
        began: float | None = None,
        metrics: Metrics | None = None,
        route: str = "chat",
        admission: Admission | None = None,
        span: TurnSpan | None = None,
        variant: Variant = "production",
        records: TurnLog | None = None,
        key_id: UUID | None = None,
    ) -> None:
        self.spawn = spawn
        self.span = span
        # How the persona's version was chosen (section 16), where the turn's record goes at its end (None: not
        # recorded), and the key it came with.
        self.records = records
        self.key_id = key_id
        self.variant = variant
        self.admission = admission
        self.metrics = metrics
        self.route = route
        self.start = start
        self.answer = answer
        self.outcome = outcome
        self.said = Collector()
        self.failure: ProviderError | None = None
        self.user_id = user_id
        self.began = time.monotonic() if began is None else began
        self.first_at: float | None = None
        # cancel(): why the answer is to stop, and the task reading it (interrupted when it waits on the provider).
        self._stop: ProviderError | None = None
        self._reader: asyncio.Task[Any] | None = None
        self._reading = False

    def cancel(self, reason: ProviderError | None = None) -> None:
        """Stop the answer: the provider call is closed, the stream ends with ``error`` (``cancelled``) and what
        was said is stored ``incomplete``. Safe to call at any time, from any task."""
        if self._stop is not None:
            return
        self._stop = reason or Cancelled(provider=self.start.provider)
        reader = self._reader
        if self._reading and reader is not None:
            reader.cancel()  # interrupts the read in _next, which raises the stop in its place

    async def _next(self, source: AsyncIterator[list[ProviderEvent]]) -> list[ProviderEvent] | None:
        """The provider's next batch (None at its end): the one await a cancel interrupts, raising the stop.

        Only this await is interrupted: between reads the task is the client's (writing what was read), and
        a cancel then is seen at the next read, before it starts.
        """
        if self._stop is not None:
            raise self._stop
        self._reading = True
        try:
            return await anext(source, None)
        except asyncio.CancelledError:
            reader = self._reader
            # Ours when it is the only cancel the task had; another (the client left) goes on up.
            if self._stop is None or reader is None or reader.uncancel() > 0:
                raise
            raise self._stop from None
        finally:
            self._reading = False

    async def batches(self) -> AsyncGenerator[list[TurnEvent], None]:
        said, route = self.said, self.answer.route
        settled = False
        source = self.answer.batches()
        if self.metrics is not None:
            self.metrics.streams_in_flight.inc()  # decremented when the turn ends, in _ended
        try:
            lead: list[TurnEvent] = [self.start]
            final: list[TurnEvent] = []
            failure: ProviderError | None = None
            self._reader = asyncio.current_task()
            try:
                while (batch := await self._next(source)) is not None:
                    passed: list[Any] = said.add(batch)
                    if passed and self.first_at is None:
                        self.first_at = time.monotonic()
                    out: list[TurnEvent] = [*lead, *passed] if lead else passed
                    lead = []
                    if said.finish is not None:
                        final = out
                        break
                    if out:
                        yield out
            except ProviderError as exc:
                failure = exc
            settled = True
            if failure is not None:
                yield await self._failed(failure, lead)
                return
            status: MessageStatus = "complete" if said.finish else "incomplete"
            self._ended(status)
            final = [*lead, *final] if lead else final
            calls = [msgspec.to_builtins(c) for c in said.tool_calls()]
            done = said.end = Done(
                finish_reason=said.finish or "incomplete",
                message_id=self.start.message_id,
                turn_id=self.start.turn_id,
                tool_calls=calls,
            )
            if self.outcome is None:
                final.append(done)  # nothing to store: the end goes out with the last piece
                yield final
                return
            # The answer's last piece goes out before it is saved; `done` only once it is.
            if final:
                yield final
            if not await self.outcome.record(route, status, said, None):
                said.end = error_event(Pending())
                yield [said.end]
                return
            yield [done]
        finally:
            if not settled:
                # The client went away (or the task was cancelled): keep what was said, in a task of its own,
                # because any await here would be cancelled with us.
                self.spawn(self._abandoned())
            else:
                # Closed here rather than left to the garbage collector, whose asyncio hook wakes the loop
                # and starts a task for every generator it finds unclosed.
                await source.aclose()
                await self.answer.aclose()

    async def _failed(self, exc: ProviderError, lead: list[TurnEvent]) -> list[TurnEvent]:
        self.failure = exc
        cancelled = isinstance(exc, Cancelled)
        self._ended("incomplete" if cancelled else "error")
        if self.metrics is not None and not cancelled:
            metrics = self.metrics
            metrics.provider_errors.labels(provider=metrics.provider(self.answer.route.provider), kind=exc.code).inc()
        if self.outcome is not None:
            error = {"code": exc.code, "message": exc.message}
            await self.outcome.record(self.answer.route, "incomplete", self.said, error)
        self.said.end = error_event(exc)
        return [*lead, self.said.end]

    async def _abandoned(self) -> None:
        self._ended("incomplete")
        await self.answer.aclose()
        if self.outcome is not None:
            gone = ClientDisconnected()
            error = {"code": gone.code, "message": gone.message}
            await self.outcome.record(self.answer.route, "incomplete", self.said, error)

    def _ended(self, outcome: str) -> None:
        """The turn's end, once: its metrics, its record, and its one ``chat turn`` line (who, which persona and
        why, where, how it ended, how long)."""
        now = time.monotonic()
        start, usage = self.start, self.said.usage
        records = self.records
        if records is not None and self.user_id is not None:
            took = now - self.began
            records.add(
                (
                    start.turn_id,
                    time.time() - took,
                    self.user_id,
                    self.key_id,
                    start.persona.id,
                    start.persona.version,
                    self.variant,
                    self.route,
                    start.provider,
                    start.model,
                    outcome,
                    (self.first_at - self.began) * 1000 if self.first_at is not None else None,
                    took * 1000,
                    usage.input_tokens if usage else None,
                    usage.output_tokens if usage else None,
                    usage.cached_input_tokens if usage else None,
                )
            )
        if self.admission is not None:  # settles the turn's reservation, whatever the end
            self.admission.spend(start.persona.id, usage.input_tokens + usage.output_tokens if usage else 0)
        metrics = self.metrics
        if metrics is not None:
            metrics.streams_in_flight.dec()
            provider = metrics.provider(start.provider)
            labels = (self.route, provider, metrics.model(start.model), start.persona_source, outcome)
            metrics.chat_turns.labels(*labels).inc()
            metrics.turn_seconds.labels(provider).observe(now - self.began)
            if self.first_at is not None:
                metrics.ttft.labels(provider).observe(self.first_at - self.began)
            if usage is not None:
                metrics.tokens.labels(provider, "input").inc(usage.input_tokens)
                metrics.tokens.labels(provider, "output").inc(usage.output_tokens)
                metrics.tokens.labels(provider, "cached").inc(usage.cached_input_tokens)
        if self.span is not None:
            failure = self.failure
            self.span.end(
                outcome,
                input_tokens=usage.input_tokens if usage else None,
                output_tokens=usage.output_tokens if usage else None,
                cached_tokens=usage.cached_input_tokens if usage else 0,
                finish_reason=self.said.finish,
                error=failure.code if failure is not None and outcome == "error" else None,
                conversation_id=str(start.conversation_id) if start.conversation_id else None,
            )
        if not log.isEnabledFor(logging.INFO):
            return
        log.info(
            "chat turn",
            extra={
                "request_id": REQUEST_ID.get(),
                "user_id": str(self.user_id) if self.user_id else None,
                "persona_id": str(start.persona.id),
                "persona_version": start.persona.version,
                "persona_source": start.persona_source,
                "provider": start.provider,
                "model": start.model,
                "outcome": outcome,
                "ttft_ms": round((self.first_at - self.began) * 1000, 1) if self.first_at else None,
                "duration_ms": round((now - self.began) * 1000, 1),
                "input_tokens": usage.input_tokens if usage else None,
                "output_tokens": usage.output_tokens if usage else None,
            },
        )

    async def result(self) -> TurnResult:
        """Read the whole answer; how it ended is the result's ``done`` or ``error`` (the partial answer is kept
        as incomplete)."""
        async with contextlib.aclosing(self.batches()) as batches:
            async for _ in batches:
                pass
        return self.said.result(self.start)

    async def collect(self) -> TurnResult:
        """Read the whole answer; a failure midway is raised (the partial answer is kept as incomplete)."""
        result = await self.result()
        if result.error is not None:
            raise self.failure or ServiceUnavailable(result.error.message)
        if result.done is None:
            raise ProviderUnavailable("The provider stream ended without an answer.", provider=self.start.provider)
        return result

    async def aclose(self) -> None:
        await self.answer.aclose()
