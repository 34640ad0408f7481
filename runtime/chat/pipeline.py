"""The chat turn pipeline: resolve → plan → open → consume, the one path of every route that calls a provider.

``/api/v1/chat``, ``/v1/chat/completions``, previews, comparisons and test runs differ only in what they
decode into a :class:`TurnInput` and how they encode the :class:`Turn`'s events; render stops after
:meth:`ChatPipeline.plan`. So a dry run shows exactly what a chat sends, and a new wire format is a new
codec over the same turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

import msgspec

from core.errors import BadRequest, PayloadTooLarge, PersonaRuntimeError, ProviderContextExceeded, RateLimited
from core.events import PersonaRef, Start
from core.metrics import Metrics
from personas.models import Caller, Persona
from personas.releases import Variant
from personas.service import PersonaService
from providers import NO_OPTIONS, ChatMessage, Options, ProviderRequest, ProviderSet, ToolSpec, refusal
from runtime.access.limits import Admission, Limiter
from runtime.chat.collector import TurnResult
from runtime.chat.context import Built, ContextBuilder
from runtime.chat.conversations import Conversation, ConversationStore, MessageState, StaleConversation
from runtime.chat.frames import ChatFrames, chat_body, record
from runtime.chat.leases import Leases
from runtime.chat.lore import TurnLore, lore_for
from runtime.chat.prompt import Route, SystemPrompts, build_request, plan_routes, tool_specs
from runtime.chat.recall import TurnMemory
from runtime.chat.resolve import PersonaSource, resolve_model_persona, resolve_persona, serve_version
from runtime.chat.summaries import Summarizer
from runtime.chat.tokens import ANSWER_RESERVE, estimate_size, image_tokens
from runtime.chat.turn import AnswerStream, Outcome, Turn, open_answer
from runtime.memory import Extractor, Recall
from runtime.turns import TurnLog

if TYPE_CHECKING:
    from core.traces import Traces, TurnSpan
    from runtime.chat.recordings import StatusOf, StreamRecorder

__all__ = ["UNCHECKED", "Answer", "ChatPipeline", "TurnInput", "TurnPlan"]

_log = logging.getLogger("persona_runtime.pipeline")

# How a turn's answer goes out: whole (for a JSON answer), or as the bytes of our SSE stream.
Answer = TurnResult | AsyncIterator[bytes]


class _Unchecked:
    """``open``'s default: the turn's limits are checked there (a batch checked them all beforehand)."""


UNCHECKED = _Unchecked()


class TurnInput(msgspec.Struct, frozen=True, kw_only=True):
    """What a route asks of one turn, whatever its wire format.

    ``messages`` are the turns the client sends now (one user message on ``/api/v1/chat``, the whole
    conversation on ``/v1``); a stored conversation's earlier turns come before them. ``system`` is the
    client's own system text, sent after the persona's. The persona is ``persona`` (a draft or a saved
    version an author picked), else ``persona_name`` (``persona/<name>``), else resolved: ``persona_id``,
    the conversation's, the user's preference, the default. ``store`` keeps the turn in the conversation.

    The ``*_fields`` name the wire field each piece of client text came in, so an error names what the
    client sent: one per message (None: not checked, such as an assistant turn of an Anthropic body), one
    per system text, one per tool (where its ``name`` and ``description`` are), and one per image, in the
    order of the messages (``messages[i].content[j]``). Left empty, they are ``messages[i].content``,
    ``system[i]``, ``tools[i]`` and ``messages[i].content``; ``option_fields`` maps an option's name to its
    wire field where they differ.
    """

    messages: tuple[ChatMessage, ...]
    system: tuple[str, ...] = ()
    tools: tuple[ToolSpec, ...] = ()
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    persona: Persona | None = None
    persona_name: str | None = None
    persona_id: UUID | None = None
    # Which version of the resolved persona (section 16): a label, a number (owner and admins), or None for
    # production or the caller's rollout variant. ``persona_name`` may carry its own (`Mu@beta`).
    persona_version: int | str | None = None
    conversation_id: UUID | None = None
    provider: str | None = None
    model: str | None = None
    store: bool = False
    # Whether the answer goes out as a stream: kept with a stored answer, so that a replay of one answered
    # whole says so rather than that its stream expired.
    stream: bool = False
    # False: the turn uses no memories and extracts none (`"memory": false`, `x-persona-memory: off`).
    memory: bool = True
    # Which route asked, for metrics and turn records: chat, chat_completions, messages, responses, preview,
    # compare, test_run.
    route: str = "chat"
    message_fields: tuple[str | None, ...] = ()
    system_fields: tuple[str, ...] = ()
    tool_fields: tuple[str, ...] = ()
    # The client's parameters beyond sampling, checked against the persona's provider at plan time; with the
    # wire field each came in where the route names it otherwise (`stop` is `stop_sequences` on /v1/messages).
    options: Options = NO_OPTIONS
    option_fields: dict[str, str] | None = None
    image_fields: tuple[str, ...] = ()

    def check(self, max_chars: int) -> None:
        """Every input check of a turn: each message's text, the client's system text and its tools."""
        fields = self.message_fields
        for index, message in enumerate(self.messages):
            field = fields[index] if index < len(fields) else f"messages[{index}].content"
            if field is not None and message.content is not None:
                if message.images and not message.content.strip():  # an image needs no words beside it
                    continue
                _check_text(message.content, field, max_chars, "send the text of your message")
        fields = self.system_fields
        for index, text in enumerate(self.system):
            field = fields[index] if index < len(fields) else f"system[{index}]"
            _check_text(text, field, max_chars, "send the system text, or leave it out")
        fields = self.tool_fields
        seen: set[str] = set()
        for index, tool in enumerate(self.tools):
            where = fields[index] if index < len(fields) else f"tools[{index}]"
            if tool.name in seen:
                raise BadRequest(
                    f"`{where}.name` {tool.name!r} names a tool given before it: give each tool a name of its own.",
                    field=f"{where}.name",
                )
            seen.add(tool.name)
            if len(tool.description) > max_chars:
                field = f"{where}.description"
                raise PayloadTooLarge(
                    f"`{field}` is {len(tool.description)} characters long; the limit is {max_chars}.", field=field
                )

    def check_images(self, persona: Persona) -> None:
        """A 400 naming the first image when the persona's model takes none (``model_settings.vision`` false)."""
        if persona.model_settings.vision:
            return
        seen = 0
        for index, message in enumerate(self.messages):
            if message.images:
                fields = self.image_fields
                field = fields[seen] if seen < len(fields) else f"messages[{index}].content"
                raise BadRequest(
                    f"`{field}` is an image, and the persona {persona.name!r}'s model takes no images "
                    "(its `model_settings.vision` is false): send text only, or use a persona whose model "
                    "sees images.",
                    field=field,
                )


def _check_choice(kind: str, name: str | None, tools: tuple[ToolSpec, ...], field: str) -> None:
    """A ``tool_choice`` that forces a call names a tool the turn offers (the persona's or the client's)."""
    if not tools:
        raise BadRequest(f"`{field}` asks for a tool call, but no tool is offered: send `tools`.", field=field)
    if kind == "tool" and name not in {t.name for t in tools}:
        offered = ", ".join(t.name for t in tools)
        raise BadRequest(f"`{field}` names the tool {name!r}, which is not offered; offered: {offered}.", field=field)


def _check_text(text: str, field: str, max_chars: int, fix: str) -> None:
    if not text.strip():
        raise BadRequest(f"`{field}` is empty: {fix}.", field=field)
    if len(text) > max_chars:
        raise PayloadTooLarge(f"`{field}` is {len(text)} characters long; the limit is {max_chars}.", field=field)


@dataclass(frozen=True)
class TurnPlan:
    """A turn decided but not yet sent: who answers and why, where, and the provider-neutral request."""

    caller: Caller
    input: TurnInput
    persona: Persona
    source: PersonaSource
    conversation: Conversation | None
    routes: list[Route]
    request: ProviderRequest
    # How the request's context was chosen within the model's budget, and the tokens cut from that budget
    # (a retry after the provider said the request was too long).
    context: Built
    cut: int = 0
    # How ``persona``'s version was chosen: what stored answers and turn records say (section 16).
    variant: Variant = "production"


class ChatPipeline:
    """Runs chat turns: resolve the persona, plan the request, store the question, open and consume the answer."""

    def __init__(
        self,
        personas: PersonaService,
        conversations: ConversationStore,
        providers: ProviderSet,
        *,
        default_provider: str,
        history_messages: int,
        max_message_chars: int,
        metrics: Metrics | None = None,
        leases: Leases | None = None,
        limiter: Limiter | None = None,
        default_context_window: int = 32_768,
        summary_provider: str | None = None,
        summary_model: str | None = None,
        recall: Recall | None = None,
        extractor: Extractor | None = None,
        traces: Traces | None = None,
        records: TurnLog | None = None,
    ) -> None:
        self.personas = personas
        # Where each turn's span goes (OTEL_EXPORTER_OTLP_ENDPOINT); None: no traces, and no work for them.
        self.traces = traces
        # Where every turn's record goes when it ends (None: no records).
        self.records = records
        # Where turns read their users' memories, and what extracts new ones after them (None: no memory).
        self.recall = recall
        self.extractor = extractor
        self.leases = leases
        self.limiter = limiter
        self.conversations = conversations
        self.providers = providers
        self.default_provider = default_provider
        self.history_messages = history_messages
        self.max_message_chars = max_message_chars
        self.prompts = SystemPrompts()
        self.metrics = metrics
        # Where streams are recorded for replays (set once the recorder is made; None records nothing).
        self.streams: StreamRecorder | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.context = ContextBuilder(
            conversations, default_window=default_context_window, history_messages=history_messages
        )
        self.summaries = Summarizer(
            conversations, providers, self._spawn, provider=summary_provider, model=summary_model
        )

    # resolve → plan ---------------------------------------------------------------------------------

    async def resolve(
        self, caller: Caller, turn: TurnInput, *, copy: bool = False
    ) -> tuple[Persona, PersonaSource, Conversation | None, Variant]:
        """Which persona answers, in which version, and why; and the caller's conversation the turn belongs to
        (``copy``: this instance's copy of it may stand in for a read, for a turn that is stored)."""
        conversation = (
            await self.conversations.get(caller.user_id, turn.conversation_id, for_turn=True, copy=copy)
            if turn.conversation_id
            else None
        )
        if turn.persona is not None:
            # An author's pick: an unsaved draft (version 0), else a saved version.
            return turn.persona, "request", conversation, "draft" if turn.persona.version == 0 else "pinned"
        selector, field = turn.persona_version, "persona_version"
        if turn.persona_name is not None:
            persona, named = await resolve_model_persona(self.personas, caller, turn.persona_name)
            source: PersonaSource = "request"
            if named is not None:
                selector, field = named, "model"
        else:
            persona, source = await resolve_persona(
                self.personas, caller, requested=turn.persona_id, conversation=conversation
            )
        persona, variant = await serve_version(self.personas, caller, persona, selector, field=field)
        return persona, source, conversation, variant

    async def plan(self, caller: Caller, turn: TurnInput, *, exact: bool = False, again: bool = False) -> TurnPlan:
        """Everything about a turn short of calling the provider: the persona and why, the routes, the request.

        The turn's input is checked first (a 400 or 413 naming the client's field), before anything is read;
        then its context is built within the model's budget (a 400 ``context_overflow`` when what is never
        dropped does not fit). ``exact`` counts every part's tokens even where a bound shows it fits (render).
        A turn that is stored may start from this instance's copy of its conversation, unless ``again`` (the copy
        was found stale when the turn was stored: it is planned once more, from a read).
        """
        turn.check(self.max_message_chars)
        copy = turn.store and not exact and not again
        persona, source, conversation, variant = await self.resolve(caller, turn, copy=copy)
        turn.check_images(persona)
        routes = plan_routes(persona, self.providers, self.default_provider, provider=turn.provider, model=turn.model)
        if turn.options is not NO_OPTIONS:
            routes = self._taking(routes, turn)
        return await self._compose(caller, turn, persona, source, conversation, routes, exact=exact, variant=variant)

    def _taking(self, routes: list[Route], turn: TurnInput) -> list[Route]:
        """The routes whose providers take every option of the turn: a 400 naming the first option the persona's
        own provider cannot take (so none is dropped without a word); a fallback that cannot is left out."""
        kept: list[Route] = []
        for index, route in enumerate(routes):
            refused = refusal(self.providers.get(route.provider), turn.options)
            if refused is None:
                kept.append(route)
            elif index == 0:
                name, why = refused
                field = (turn.option_fields or {}).get(name, name)
                raise BadRequest(
                    f"`{field}` cannot be served: {why}. The persona answers through provider {route.provider!r}; "
                    f"leave `{field}` out, or use a persona on a provider that takes it.",
                    field=field,
                )
            else:
                _log.info("fallback provider %s skipped: it cannot take `%s`", route.provider, refused[0])
        return kept

    async def _compose(
        self,
        caller: Caller,
        turn: TurnInput,
        persona: Persona,
        source: PersonaSource,
        conversation: Conversation | None,
        routes: list[Route],
        *,
        exact: bool = False,
        cut: int = 0,
        until_seq: int | None = None,
        variant: Variant = "production",
    ) -> TurnPlan:
        own = self.prompts.render(persona, caller)
        lore = None
        if persona.lorebook is not None:
            if conversation is not None:
                user_turns, state = conversation.user_turns, conversation.lore_state
            else:
                user_turns, state = sum(1 for m in turn.messages if m.role == "user") - 1, None
            latest = turn.messages[-1].content or "" if turn.messages else ""
            lore = lore_for(
                persona,
                conversation_id=conversation.id if conversation is not None else None,
                user_turns=user_turns,
                state=state,
                latest=latest,
                names=(persona.name, caller.shown_name),
            )
        memory = None
        remembers = persona.model_settings.memory
        if remembers.enabled and turn.memory and self.recall is not None:
            memory = TurnMemory(
                self.recall,
                user_id=caller.user_id,
                persona_id=persona.id,
                user_name=caller.shown_name,
                budget=remembers.token_budget,
                limit=remembers.max_items,
                explain=exact,
            )
        tools = tool_specs(persona)
        if turn.tools:
            names = {t.name for t in turn.tools}
            tools = (*(t for t in tools if t.name not in names), *turn.tools)
        choice = turn.options.tool_choice
        if choice is not None and choice.type in ("required", "tool"):
            _check_choice(choice.type, choice.name, tools, (turn.option_fields or {}).get("tool_choice", "tool_choice"))
        built = await self.context.build(
            persona,
            routes[0].model,
            own_system=own,
            client_system=turn.system,
            tools=tools,
            messages=turn.messages,
            conversation=conversation,
            max_tokens=turn.max_tokens,
            message_field="message" if turn.route in ("chat", "preview", "compare", "test_run") else "messages",
            lore=lore,
            memory=memory,
            cut=cut,
            exact=exact,
            until_seq=until_seq,
            user_name=caller.shown_name,
        )
        request = build_request(
            persona,
            built.system,
            built.messages,
            routes[0],
            extra_tools=turn.tools,
            persona_chars=built.persona_chars,
            temperature=turn.temperature,
            top_p=turn.top_p,
            max_tokens=turn.max_tokens,
            options=turn.options,
        )
        return TurnPlan(
            caller=caller,
            input=turn,
            persona=persona,
            source=source,
            conversation=conversation,
            routes=routes,
            request=request,
            context=built,
            cut=cut,
            variant=variant,
        )

    async def _shorter(self, plan: TurnPlan, refused: ProviderContextExceeded) -> TurnPlan | None:
        """The plan again within what was sent less what the provider said the request was over (else less 20%),
        or None when nothing in it can be dropped."""
        built = plan.context
        if plan.cut or not built.droppable:
            return None
        # The provider's window is smaller than we took it to be: what was sent, less the overshoot.
        budget, used = built.account.budget, built.account.used
        cut = budget - used + (int(refused.overshoot * 1.01) + 1 if refused.overshoot else used // 5)
        cut = min(cut, budget - 1)
        log_args = (plan.routes[0].provider, cut)
        _log.info("provider %s refused the request for its length; retrying with %d tokens fewer", *log_args)
        return await self._compose(
            plan.caller,
            plan.input,
            plan.persona,
            plan.source,
            plan.conversation,
            plan.routes,
            cut=cut,
            until_seq=built.newest_read_seq or 0,
            variant=plan.variant,
        )

    def upstream_body(self, plan: TurnPlan) -> dict[str, Any]:
        """The exact JSON body the first route's provider would be sent for ``plan``."""
        return self.providers.get(plan.routes[0].provider).build_body(plan.request)

    # open → consume ---------------------------------------------------------------------------------

    async def run(self, caller: Caller, turn: TurnInput) -> Turn:
        """Plan the turn and open its answer. Errors up to here are HTTP statuses; later ones are in-band."""
        return await self.open(await self.plan(caller, turn))

    async def admit(self, plans: list[TurnPlan]) -> Admission | None:
        """Count the planned turns (all one caller's) against the key's and personas' limits, or refuse them all
        with a 429 before any provider is called. None when no limit applies."""
        if self.limiter is None or not plans:
            return None
        try:
            return await self.limiter.admit(
                plans[0].caller, [p.persona for p in plans], self._spawn, lambda: [_reserve(p.request) for p in plans]
            )
        except RateLimited:
            metrics = self.metrics
            if metrics is not None:
                for plan in plans:
                    route = plan.routes[0]
                    provider, model = metrics.provider(route.provider), metrics.model(route.model)
                    metrics.chat_turns.labels(plan.input.route, provider, model, plan.source, "rejected").inc()
            raise

    async def open(self, plan: TurnPlan, admission: Admission | _Unchecked | None = UNCHECKED) -> Turn:
        """Check the limits (unless ``admission`` says they were), store the question (when the turn is kept),
        then open the provider stream, trying fallbacks. With traces on, the turn is a span from here to its end."""
        span = None if self.traces is None else self._span(plan, self.traces)
        try:
            if isinstance(admission, _Unchecked):
                admission = await self.admit([plan])
            return await self._open(plan, admission, span)
        except BaseException as exc:
            if isinstance(admission, Admission):
                admission.release(plan.persona.id)  # the turn never ran: its reservation goes back
            if span is not None:
                outcome = "rejected" if isinstance(exc, RateLimited) else "error"
                kept = plan.conversation.id if plan.conversation is not None else None
                span.end(outcome, error=_code(exc), conversation_id=str(kept) if kept else None)
            raise

    def _span(self, plan: TurnPlan, traces: Traces) -> TurnSpan:
        route, request = plan.routes[0], plan.request
        return traces.turn(
            provider=route.provider,
            model=route.model,
            persona_id=str(plan.persona.id),
            persona_version=plan.persona.version,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=request.max_tokens,
        )

    async def _begin(self, plan: TurnPlan) -> tuple[TurnPlan, Conversation, UUID]:
        """Store the turn's question and its pending answer. A plan made from a copy of the conversation that
        turns out stale (a turn or change elsewhere since) is made again from a read, and that one is stored."""
        try:
            return plan, *await self._store_question(plan)
        except StaleConversation:
            _log.info("conversation %s changed since this instance's copy: planned again", plan.input.conversation_id)
        plan = await self.plan(plan.caller, plan.input, again=True)
        return plan, *await self._store_question(plan)

    async def _store_question(self, plan: TurnPlan) -> tuple[Conversation, UUID]:
        persona, route, lore = plan.persona, plan.routes[0], plan.context.lore
        return await self.conversations.begin_turn(
            tokens=plan.context.message_tokens,
            lore_state=lore.result.state if isinstance(lore, TurnLore) and lore.result is not None else None,
            user_id=plan.caller.user_id,
            conversation=plan.conversation,
            message=plan.input.messages[-1].content or "",
            persona_id=persona.id,
            persona_version=persona.version,
            persona_source=plan.source,
            variant=plan.variant,
            provider=route.provider,
            model=route.model,
            streamed=plan.input.stream,
        )

    async def _open(self, plan: TurnPlan, admission: Admission | None, span: TurnSpan | None) -> Turn:
        began = time.monotonic()
        conversation: Conversation | None = None
        outcome: Outcome | None = None
        if plan.input.store:
            plan, conversation, answer_id = await self._begin(plan)
            outcome = Outcome(
                self.conversations,
                answer_id,
                began,
                self._spawn,
                self.leases,
                context=plan.context,
                then=self._after(plan, conversation, answer_id),
            )
        persona, routes = plan.persona, plan.routes
        try:
            stream = await self._first_answer(plan, outcome, span)
        except BaseException as exc:
            self._record_unopened(plan, outcome.message_id if outcome is not None else None, began, exc)
            if outcome is not None:
                failure = exc if isinstance(exc, PersonaRuntimeError) else None
                saving = outcome.failed_to_open(routes[0], failure)
                if isinstance(exc, Exception):
                    # Recorded before the client hears of the failure, so a reload shows it.
                    with contextlib.suppress(Exception):
                        await saving
                else:
                    self._spawn(saving)  # cancelled: an await here would be cancelled too
            raise
        start = Start(
            conversation_id=conversation.id if conversation else None,
            message_id=outcome.message_id if outcome else None,
            persona=PersonaRef(id=persona.id, name=persona.name, version=persona.version),
            persona_source=plan.source,
            provider=stream.route.provider,
            model=stream.route.model,
            turn_id=outcome.message_id if outcome is not None else uuid.uuid4(),
        )
        turn = Turn(
            start=start,
            answer=stream,
            outcome=outcome,
            spawn=self._spawn,
            user_id=plan.caller.user_id,
            began=began,
            metrics=self.metrics,
            route=plan.input.route,
            admission=admission,
            records=self.records,
            key_id=plan.caller.key_id,
            span=span,
            variant=plan.variant,
        )
        if span is not None and stream.route is not routes[0]:
            span.answered(stream.route.provider, stream.route.model)
        if outcome is not None and self.leases is not None:
            self.leases.attach(outcome.message_id, turn.cancel)
        return turn

    def _record_unopened(self, plan: TurnPlan, turn_id: UUID | None, began: float, exc: BaseException) -> None:
        """The record of a turn whose provider never answered: an error (a cancel: incomplete), no tokens."""
        if self.records is None:
            return
        route, took = plan.routes[0], time.monotonic() - began
        persona = plan.persona
        outcome = "error" if isinstance(exc, Exception) else "incomplete"
        self.records.add(
            (
                turn_id or uuid.uuid4(),
                time.time() - took,
                plan.caller.user_id,
                plan.caller.key_id,
                persona.id,
                persona.version,
                plan.variant,
                plan.input.route,
                route.provider,
                route.model,
                outcome,
                None,
                took * 1000,
                None,
                None,
                None,
            )
        )

    async def _first_answer(self, plan: TurnPlan, outcome: Outcome | None, span: TurnSpan | None) -> AnswerStream:
        """Open the answer; once more within a smaller budget when the provider says the request is too long.
        A traced turn's requests carry its span's context upstream."""
        try:
            return await open_answer(self.providers, plan.routes, _traced(plan.request, span), metrics=self.metrics)
        except ProviderContextExceeded as refused:
            shorter = await self._shorter(plan, refused)
            if shorter is None:
                raise
        if outcome is not None:
            outcome.context = shorter.context
        return await open_answer(self.providers, shorter.routes, _traced(shorter.request, span), metrics=self.metrics)

    def _after(
        self, plan: TurnPlan, conversation: Conversation, answer_id: UUID
    ) -> Callable[[str], Coroutine[Any, Any, None]] | None:
        """What runs after the answer is saved complete: the conversation's summary, when one is due (the turns
        no summary covers fill most of the history's room, or no longer fit), and the extraction of memories,
        when the persona extracts them, the turn did not opt out and the user's own switch (read with the turn's
        memories) is on."""
        built, persona, route = plan.context, plan.persona, plan.routes[0]
        summarize = built.summary_due and persona.model_settings.summaries
        remembers = persona.model_settings.memory
        recalled = built.memory.result if isinstance(built.memory, TurnMemory) else None
        extract = remembers.extract and recalled is not None and recalled.enabled and self.extractor is not None
        if not (summarize or extract):
            return None
        before, question = built.summarize_before_seq, plan.input.messages[-1].content or ""

        async def after(answer: str) -> None:
            if summarize:
                self.summaries.ask(conversation.id, before, route.provider, route.model)
            if extract:
                await self._extract(plan, answer_id, question, answer)

        return after

    async def _extract(self, plan: TurnPlan, answer_id: UUID, question: str, answer: str) -> None:
        """Extract memories from one exchange: a call like any other, within the key's and the persona's limits
        (or not made), its tokens counted against them."""
        extractor, persona, route = self.extractor, plan.persona, plan.routes[0]
        assert extractor is not None
        admission = None
        if self.limiter is not None:
            try:
                admission = await self.limiter.admit(plan.caller, [persona], self._spawn, lambda: [ANSWER_RESERVE])
            except RateLimited:
                _log.info("memory extraction for message %s skipped: over the limits", answer_id)
                return
        spent = 0

        def used(size: int) -> None:
            nonlocal spent
            spent = estimate_size(size)

        try:
            await extractor.extract(
                user_id=plan.caller.user_id,
                persona_id=persona.id,
                message_id=answer_id,
                question=question,
                answer=answer,
                provider=route.provider,
                model=route.model,
                max_items=persona.model_settings.memory.max_items,
                used=used,
            )
        finally:
            if admission is not None:
                admission.spend(persona.id, spent)

    async def answer(self, turn: Turn, *, stream: bool, resumable: bool = False, heartbeat: float) -> Answer:
        """How ``turn``'s answer goes out: whole, or as our SSE stream (recorded for replays when it is kept and
        recordings are on). ``resumable`` answers are read to their end by a task of their own, whether or
        not the client stays: a stream's client is then one reader of its recording, and may come back."""
        if not stream:
            if not resumable:
                return await turn.collect()
            collecting = asyncio.ensure_future(turn.collect())
            self._spawn(_settle(collecting))
            return await asyncio.shield(collecting)
        message_id, streams = turn.start.message_id, self.streams
        if message_id is None or turn.user_id is None or streams is None or not streams.enabled:
            return chat_body(turn.batches(), heartbeat, ChatFrames(message_id))
        # A resumable answer's recording is written ahead: its client is one of its readers.
        recording = streams.open(message_id, turn.user_id, write_ahead=resumable)
        frames = ChatFrames(message_id, streams, recording)
        if not resumable:
            return chat_body(turn.batches(), heartbeat, frames)
        self._spawn(record(turn.batches(), frames))
        return recording.follow(0, heartbeat, self.status_of(turn.user_id, message_id))

    def status_of(self, user_id: UUID, message_id: UUID) -> StatusOf:
        """How a reader of a recording asks where the stored message stands."""

        async def state() -> MessageState | None:
            return await self.conversations.message_state(user_id, message_id)

        return state

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, kept until it ends; :meth:`aclose` waits for it (bounded)."""
        self._spawn(work)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settled(self) -> None:
        """Wait until the work this pipeline runs in the background has ended: answers being saved, summaries,
        memory extraction, recordings' writes, and whatever they start in turn."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def aclose(self) -> None:
        """Let answers that are still being saved, and what they start, finish (within 10 s), at shutdown."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self.settled()


def _traced(request: ProviderRequest, span: TurnSpan | None) -> ProviderRequest:
    return request if span is None else msgspec.structs.replace(request, trace_context=span.headers)


def _code(exc: BaseException) -> str:
    """What a span says failed: our error's code, else the exception's class (never its message)."""
    if isinstance(exc, PersonaRuntimeError):
        return exc.code
    return "cancelled" if isinstance(exc, asyncio.CancelledError) else type(exc).__name__


def _reserve(request: ProviderRequest) -> int:
    """The tokens a turn may use, held against a token budget at admission: its input, estimated from its length
    in characters (a byte each for ASCII, so non-ASCII text is under-held), and its ``max_tokens`` (else
    :data:`~runtime.chat.tokens.ANSWER_RESERVE`)."""
    size = len(request.system or "") + sum(len(m.content or "") for m in request.messages)
    size += sum(len(t.name) + len(t.description) for t in request.tools)
    pictures = sum(image_tokens(image, request.model) for m in request.messages for image in m.images)
    return estimate_size(size) + pictures + (request.max_tokens or ANSWER_RESERVE)


async def _settle(task: asyncio.Future[Any]) -> None:
    with contextlib.suppress(BaseException):
        await task
