"""Chat orchestration: one turn from the user's message to the stored answer, streamed as events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import msgspec

from personas.models import Caller, Persona
from personas.service import PersonaService
from providers import ChatMessage, ProviderEvent, ProviderRequest, ProviderSet, assemble_tool_calls
from providers.events import Finish, TextDelta, ToolCallDelta, Usage
from runtime.conversations import Conversation, ConversationStore, MessageStatus
from runtime.errors import (
    BadRequest,
    PayloadTooLarge,
    PersonaRuntimeError,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    ServiceUnavailable,
)
from runtime.events import ChatEvent, Content, Done, ErrorEvent, PersonaRef, Start, UsageReport
from runtime.prompt import Route, build_request, plan_routes, render_system_prompt
from runtime.resolve import PersonaSource, resolve_persona

__all__ = ["AnswerStream", "ChatResult", "ChatService", "ChatTurn", "TurnPlan", "open_answer"]

log = logging.getLogger("persona_runtime.chat")

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


@dataclass(frozen=True)
class TurnPlan:
    """A turn decided but not yet sent: who answers and why, where, and the provider-neutral request."""

    persona: Persona
    source: PersonaSource
    conversation: Conversation | None
    routes: list[Route]
    request: ProviderRequest


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
                yield ErrorEvent(code="not_saved", message="The answer was streamed but could not be saved.")
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
        try:
            await self.save(
                content="".join(pieces),
                status=status,
                provider=self.answer.route.provider,
                model=self.answer.route.model,
                usage=usage,
                latency_ms=int((time.monotonic() - self.began) * 1000),
                finish_reason=finish,
                tool_calls=calls,
                error=error,
            )
        except Exception:
            log.exception("could not save the answer %s", self.start.message_id)
            return False
        return True


class ChatService:
    """Runs chat turns: resolve the persona, store the question, stream the answer, store the answer."""

    def __init__(
        self,
        personas: PersonaService,
        conversations: ConversationStore,
        providers: ProviderSet,
        *,
        default_provider: str,
        history_messages: int,
        max_message_chars: int,
    ) -> None:
        self.personas = personas
        self.conversations = conversations
        self.providers = providers
        self.default_provider = default_provider
        self.history_messages = history_messages
        self.max_message_chars = max_message_chars
        self._background: set[asyncio.Task[None]] = set()

    def check_message(self, message: str, field: str = "message") -> str:
        if not message.strip():
            raise BadRequest(f"`{field}` is empty: send the text of your message.", field=field)
        if len(message) > self.max_message_chars:
            raise PayloadTooLarge(
                f"`{field}` is {len(message)} characters long; the limit is {self.max_message_chars}.", field=field
            )
        return message

    async def plan(
        self,
        caller: Caller,
        *,
        message: str,
        conversation_id: UUID | None = None,
        persona_id: UUID | None = None,
        persona: Persona | None = None,
        provider: str | None = None,
        model: str | None = None,
    ) -> TurnPlan:
        """Decide everything about a turn short of calling the provider: the persona and why, the routes,
        and the exact request. ``persona`` (a saved version or a draft) overrides resolution.

        Chat, previews and dry runs all go through here, so a dry run shows what a chat would send.
        """
        self.check_message(message)
        conversation = await self.conversations.get(caller.user_id, conversation_id) if conversation_id else None
        source: PersonaSource = "request"
        if persona is None:
            persona, source = await resolve_persona(
                self.personas, caller, requested=persona_id, conversation=conversation
            )
        routes = plan_routes(persona, self.providers, self.default_provider, provider=provider, model=model)
        history = await self._history(conversation)
        request = build_request(
            persona,
            render_system_prompt(persona, caller),
            [*history, ChatMessage(role="user", content=message)],
            routes[0],
        )
        return TurnPlan(persona=persona, source=source, conversation=conversation, routes=routes, request=request)

    def upstream_body(self, plan: TurnPlan) -> dict[str, Any]:
        """The exact JSON body the first route's provider would be sent for ``plan``."""
        return self.providers.get(plan.routes[0].provider).build_body(plan.request)

    async def begin(
        self,
        caller: Caller,
        *,
        message: str,
        conversation_id: UUID | None = None,
        persona_id: UUID | None = None,
        provider: str | None = None,
        model: str | None = None,
    ) -> ChatTurn:
        """Validate, resolve, store the question and open the answer. Errors here are HTTP statuses."""
        plan = await self.plan(
            caller,
            message=message,
            conversation_id=conversation_id,
            persona_id=persona_id,
            provider=provider,
            model=model,
        )
        persona, routes = plan.persona, plan.routes
        began = time.monotonic()
        conversation, _, answer = await self.conversations.begin_turn(
            user_id=caller.user_id,
            conversation=plan.conversation,
            message=message,
            persona_id=persona.id,
            persona_version=persona.version,
            persona_source=plan.source,
            provider=routes[0].provider,
            model=routes[0].model,
        )

        async def save(**outcome: Any) -> None:
            await self.conversations.finish_answer(answer.id, **outcome)

        try:
            stream = await open_answer(self.providers, routes, plan.request)
        except BaseException as exc:
            failure = exc if isinstance(exc, PersonaRuntimeError) else None
            outcome = save(
                content="",
                status="error",
                provider=routes[0].provider,
                model=routes[0].model,
                usage=None,
                latency_ms=int((time.monotonic() - began) * 1000),
                finish_reason=None,
                tool_calls=None,
                error={
                    "code": failure.code if failure else "cancelled",
                    "message": failure.message if failure else "The request was cancelled.",
                },
            )
            if isinstance(exc, Exception):
                # Recorded before the client hears of the failure, so a reload shows it.
                with contextlib.suppress(Exception):
                    await outcome
            else:
                self._spawn(outcome)  # cancelled: an await here would be cancelled too
            raise
        return ChatTurn(
            start=self._start(persona, plan.source, stream.route, conversation, answer.id),
            answer=stream,
            began=began,
            save=save,
            spawn=self._spawn,
        )

    async def preview(
        self, caller: Caller, persona: Persona, *, message: str, provider: str | None = None, model: str | None = None
    ) -> ChatTurn:
        """A real provider call for a persona (saved or draft) that stores nothing."""
        plan = await self.plan(caller, message=message, persona=persona, provider=provider, model=model)
        began = time.monotonic()
        stream = await open_answer(self.providers, plan.routes, plan.request)
        return ChatTurn(
            start=self._start(persona, plan.source, stream.route, None, None),
            answer=stream,
            began=began,
            save=None,
            spawn=self._spawn,
        )

    async def _history(self, conversation: Conversation | None) -> list[ChatMessage]:
        if conversation is None or self.history_messages <= 0:
            return []
        rows = await self.conversations.history(conversation.id, limit=self.history_messages)
        return [
            ChatMessage(role="assistant" if role == "assistant" else "user", content=content) for role, content in rows
        ]

    @staticmethod
    def _start(
        persona: Persona,
        source: PersonaSource,
        route: Route,
        conversation: Conversation | None,
        message_id: UUID | None,
    ) -> Start:
        return Start(
            conversation_id=conversation.id if conversation else None,
            message_id=message_id,
            persona=PersonaRef(id=persona.id, name=persona.name, version=persona.version),
            persona_source=source,
            provider=route.provider,
            model=route.model,
        )

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        """Let answers that are still being saved finish (bounded), at shutdown."""
        if self._background:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*self._background, return_exceptions=True), timeout=10)
