"""Chat orchestration: one turn from the user's message to the stored answer."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from core.errors import (
    BadRequest,
    PayloadTooLarge,
    PersonaRuntimeError,
)
from personas.models import Caller, Persona
from personas.service import PersonaService
from providers import ChatMessage, ProviderRequest, ProviderSet
from runtime.answer import ChatTurn, open_answer
from runtime.conversations import Conversation, ConversationStore
from runtime.events import PersonaRef, Start
from runtime.prompt import Route, build_request, plan_routes, render_system_prompt
from runtime.resolve import PersonaSource, resolve_persona

__all__ = ["ChatService", "TurnPlan"]


@dataclass(frozen=True)
class TurnPlan:
    """A turn decided but not yet sent: who answers and why, where, and the provider-neutral request."""

    persona: Persona
    source: PersonaSource
    conversation: Conversation | None
    routes: list[Route]
    request: ProviderRequest


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
