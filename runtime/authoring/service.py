"""Authoring: dry runs, previews, side-by-side comparisons and test suites for persona authors.

Everything here goes through the chat pipeline a real turn takes (:class:`runtime.chat.pipeline.ChatPipeline`), so
what an author sees rendered or previewed is what a chat would send. Nothing here writes a conversation or
a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from core.errors import BadRequest, PersonaRuntimeError
from core.events import PersonaRef, TurnEvent, Usage, error_event
from personas.lore import LoreDecision
from personas.models import Caller, Persona, PersonaDraft
from personas.service import draft_persona
from providers import ChatMessage
from runtime.access.limits import Admission
from runtime.authoring.grading import Graded, Grader
from runtime.authoring.history import PersonaHistory
from runtime.authoring.releases import PersonaReleases
from runtime.authoring.suites import Judge, PersonaTest, PersonaTestDraft, PersonaTestStore, check_answer, check_test
from runtime.chat.context import ContextAccount
from runtime.chat.lore import TurnLore
from runtime.chat.pipeline import ChatPipeline, TurnInput, TurnPlan
from runtime.chat.prompt import cache_report
from runtime.chat.recall import TurnMemory
from runtime.chat.tokens import estimate_size
from runtime.chat.turn import Turn
from runtime.memory.recall import MemoryDecision

__all__ = [
    "TEST_CONCURRENCY",
    "AuthoringService",
    "Batch",
    "CandidateResult",
    "Failure",
    "PersonaChoice",
    "Rendered",
    "SuiteRun",
    "TestResult",
]

log = logging.getLogger("persona_runtime.authoring")

# How many tests of one suite talk to the provider at once: enough to be quick, few enough to stay polite.
TEST_CONCURRENCY = 4

# A persona's version is a PostgreSQL integer.
Version = Annotated[int, Meta(ge=1, le=2**31 - 1)]


class PersonaChoice(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which persona answers: a saved one (``persona_id``, optionally at ``version``) or an unsaved ``persona``."""

    persona_id: UUID | None = None
    version: Version | None = None
    persona: PersonaDraft | None = None


class Rendered(Struct, frozen=True, kw_only=True):
    """A dry run: where the turn would go and the exact body the provider would be sent."""

    provider: str
    model: str
    system_prompt: str
    request: dict[str, Any]
    cacheable_prefix_chars: int
    warnings: list[str]
    # How the context was chosen within the model's budget (contract section 13).
    context: ContextAccount
    # Each lorebook entry that was constant, keyed or carried over, and what became of it (section 14).
    lore: list[LoreDecision] = msgspec.field(default_factory=list)
    # The caller's memories the turn would consider, whether each was used and why (section 15).
    memories: list[MemoryDecision] = msgspec.field(default_factory=list)


class Failure(Struct, frozen=True, kw_only=True):
    code: str
    message: str


class CandidateResult(Struct, frozen=True, kw_only=True):
    """One candidate's answer in a comparison; ``error`` is set (and ``response`` partial) when it failed.
    ``tool_calls`` only when the model asked for tools, as in a chat answer."""

    candidate: int
    persona: PersonaRef
    response: str
    usage: Usage | None
    latency_ms: int
    error: Failure | None
    tool_calls: list[dict[str, Any]] | UnsetType = UNSET


class TestResult(Struct, frozen=True, kw_only=True):
    """One test's outcome. ``latency_ms`` is how long the whole answer took; a judged test also carries the
    grader's ``score`` (0 to 1; null when there is no grade, and ``reason`` says why) and ``reason``."""

    test_id: UUID
    name: str
    passed: bool
    response: str
    failures: list[str]
    latency_ms: int | UnsetType = UNSET
    score: float | UnsetType | None = UNSET
    reason: str | UnsetType = UNSET


class SuiteRun(Struct, frozen=True, kw_only=True):
    persona: PersonaRef
    passed: int
    failed: int
    results: list[TestResult]


@dataclass
class Batch:
    """Turns asked together (a comparison's candidates, a suite's tests), admitted under the limits at once:
    each is a plan, or the error that kept it from being planned."""

    plans: list[TurnPlan | PersonaRuntimeError]
    admission: Admission | None


@dataclass
class _Outcome:
    text: str
    usage: Usage | None
    latency_ms: int
    error: Failure | None
    tool_calls: list[dict[str, Any]]


@contextlib.contextmanager
def _within(prefix: str) -> Iterator[None]:
    """Name fields by their path in the whole body: ``persona.name``, ``candidates[1].persona_id``."""
    try:
        yield
    except PersonaRuntimeError as exc:
        if prefix and exc.field:
            field, exc.field = exc.field, prefix + exc.field
            exc.message = exc.message.replace(f"`{field}`", f"`{exc.field}`", 1)
        raise


def _asked(message: str, persona: Persona | None = None, **more: Any) -> TurnInput:
    """A turn asking ``persona`` the body's ``message``."""
    return TurnInput(
        messages=(ChatMessage(role="user", content=message),), message_fields=("message",), persona=persona, **more
    )


def _ref(persona: Persona) -> PersonaRef:
    return PersonaRef(id=persona.id, name=persona.name, version=persona.version)


def _since(began: float) -> int:
    return int((time.monotonic() - began) * 1000)


class AuthoringService:
    """The authoring tools. A saved persona's tools are for its owner and admins (404 if invisible, 403 if
    visible but not theirs); a draft may be tried by anyone with a key."""

    def __init__(self, chat: ChatPipeline, tests: PersonaTestStore, grader: Grader | None = None) -> None:
        self.chat = chat
        self.history = PersonaHistory(chat.personas)
        self.releases = PersonaReleases(chat.personas)
        self.tests = tests
        self.grader = grader or Grader(chat.providers)

    # Choosing the persona ---------------------------------------------------------------------------

    async def choose(self, caller: Caller, choice: PersonaChoice, *, where: str = "") -> Persona:
        """The persona a preview or comparison runs: a saved version the caller may edit, or a valid draft."""
        with _within(where):
            if (choice.persona is None) == (choice.persona_id is None):
                raise BadRequest(
                    "Give either `persona_id` (a saved persona, with `version` to pick an older one) or `persona` "
                    "(an unsaved draft), not both and not neither.",
                    field="persona_id",
                )
            if choice.persona_id is not None:
                return await self.history.get(caller, choice.persona_id, choice.version)
            if choice.version is not None:
                raise BadRequest("`version` goes with `persona_id`; a draft has no versions.", field="version")
            assert choice.persona is not None
            return self.draft(caller, choice.persona)

    def draft(self, caller: Caller, draft: PersonaDraft, *, where: str = "persona.") -> Persona:
        """A draft checked by the rules a saved persona obeys, its errors naming ``persona.<field>``."""
        with _within(where):
            return draft_persona(draft, caller, dry_run=True)

    # Dry runs and previews --------------------------------------------------------------------------

    async def render(
        self, caller: Caller, persona: Persona, *, message: str, conversation_id: UUID | None = None
    ) -> Rendered:
        """What a chat with ``persona`` would send, in ``conversation_id`` (the caller's) if given. No provider call."""
        plan = await self.chat.plan(caller, _asked(message, persona, conversation_id=conversation_id), exact=True)
        system_prompt = plan.request.system or ""
        # The persona's own prompt: what lore and the summary add after it never moves its cached prefix.
        cacheable, warnings = cache_report(persona, system_prompt[: plan.context.persona_chars])
        lore, memory = plan.context.lore, plan.context.memory
        decided = lore.result if isinstance(lore, TurnLore) else None
        recalled = memory.result if isinstance(memory, TurnMemory) else None
        if decided is not None:
            warnings = [*warnings, *decided.warnings]
        narration = [i for i, m in enumerate(persona.example_messages) if m.role == "system"]
        if narration:
            named = ", ".join(f"`example_messages[{i}]`" for i in narration)
            warnings.append(
                f"{named}: an example with the role `system` is not sent, as providers take system text only in "
                "the system prompt. Put narration in the `system_prompt` or `scenario`, or give the example the "
                "role `user` or `assistant`."
            )
        return Rendered(
            provider=plan.routes[0].provider,
            model=plan.routes[0].model,
            system_prompt=system_prompt,
            request=self.chat.upstream_body(plan),
            cacheable_prefix_chars=cacheable,
            warnings=warnings,
            context=plan.context.account,
            lore=decided.decisions if decided is not None else [],
            memories=recalled.decisions if recalled is not None else [],
        )

    async def preview(
        self,
        caller: Caller,
        persona: Persona,
        *,
        message: str,
        provider: str | None = None,
        model: str | None = None,
        route: str = "preview",
    ) -> Turn:
        """A real provider call for a persona (saved or draft) that stores nothing."""
        return await self.chat.run(caller, _asked(message, persona, provider=provider, model=model, route=route))

    # Comparisons ------------------------------------------------------------------------------------

    async def candidates(self, caller: Caller, choices: Sequence[PersonaChoice]) -> list[Persona]:
        """Every candidate's persona, or the first input error (before any provider is called)."""
        return [await self.choose(caller, c, where=f"candidates[{i}].") for i, c in enumerate(choices)]

    async def batch(
        self, caller: Caller, asked: Sequence[tuple[Persona, str]], route: str, *, shared: bool = False
    ) -> Batch:
        """Plan every ``(persona, message)`` and admit them together: each counts as a request, and when the
        limits do not allow all of them, none is asked (a 429 before any provider call). A plan's error is
        that turn's; but with a ``shared`` message (a comparison's), a bad message is the request's (a 4xx)."""
        plans: list[TurnPlan | PersonaRuntimeError] = []
        for persona, message in asked:
            try:
                plans.append(await self.chat.plan(caller, _asked(message, persona, route=route)))
            except BadRequest as exc:
                if shared and exc.field == "message":
                    raise
                plans.append(exc)
            except PersonaRuntimeError as exc:
                plans.append(exc)
        admission = await self.chat.admit([p for p in plans if isinstance(p, TurnPlan)])
        return Batch(plans, admission)

    async def comparison(self, caller: Caller, message: str, personas: Sequence[Persona]) -> Batch:
        """The candidates of a comparison, admitted under the limits (each one a request)."""
        return await self.batch(caller, [(p, message) for p in personas], "compare", shared=True)

    async def compare(self, caller: Caller, message: str, personas: Sequence[Persona]) -> list[CandidateResult]:
        """Ask every candidate at once; a candidate that fails says why in its ``error``."""
        batch = await self.comparison(caller, message, personas)
        return await self.compare_batch(batch, personas)

    async def compare_batch(self, batch: Batch, personas: Sequence[Persona]) -> list[CandidateResult]:
        outcomes = await asyncio.gather(*(self._ask(plan, batch.admission) for plan in batch.plans))
        return [
            CandidateResult(
                candidate=index,
                persona=_ref(persona),
                response=outcome.text,
                usage=outcome.usage,
                latency_ms=outcome.latency_ms,
                error=outcome.error,
                tool_calls=outcome.tool_calls or UNSET,
            )
            for index, (persona, outcome) in enumerate(zip(personas, outcomes, strict=True))
        ]

    async def compare_events(self, batch: Batch) -> AsyncIterator[tuple[int, TurnEvent]]:
        """Every candidate's chat events, tagged with its index, interleaved as they arrive.

        A candidate that fails before answering contributes one ``error`` event. Tool call pieces go along
        like the rest (the stream's ``done`` carries the whole calls). When the consumer stops early, every
        candidate's upstream call is cancelled.
        """
        queue: asyncio.Queue[tuple[int, TurnEvent] | None] = asyncio.Queue()

        async def run(index: int, plan: TurnPlan | PersonaRuntimeError) -> None:
            try:
                try:
                    if isinstance(plan, PersonaRuntimeError):
                        raise plan
                    turn = await self.chat.open(plan, batch.admission)
                except PersonaRuntimeError as exc:
                    await queue.put((index, error_event(exc)))
                    return
                async with contextlib.aclosing(turn.batches()) as pieces:
                    async for piece in pieces:
                        for event in piece:
                            await queue.put((index, event))
            except Exception:
                log.exception("comparison candidate %d failed", index)
                await queue.put((index, error_event(PersonaRuntimeError())))
            finally:
                await queue.put(None)

        tasks = [asyncio.create_task(run(i, p)) for i, p in enumerate(batch.plans)]
        try:
            running = len(tasks)
            while running:
                item = await queue.get()
                if item is None:
                    running -= 1
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _ask(self, plan: TurnPlan | PersonaRuntimeError, admission: Admission | None) -> _Outcome:
        """One whole answer, nothing stored; a failure (before or during the answer) becomes ``error``."""
        began = time.monotonic()
        try:
            if isinstance(plan, PersonaRuntimeError):
                raise plan
            result = await (await self.chat.open(plan, admission)).result()
        except PersonaRuntimeError as exc:
            return _Outcome("", None, _since(began), Failure(code=exc.code, message=exc.message), [])
        end = result.error
        error = Failure(code=end.code, message=end.message) if end is not None else None
        calls = result.done.tool_calls if result.done is not None else []
        return _Outcome(result.text, result.usage, _since(began), error, calls)

    # Test suites ------------------------------------------------------------------------------------

    async def add_test(self, caller: Caller, persona_id: UUID, draft: PersonaTestDraft) -> PersonaTest:
        await self.chat.personas.get_editable(caller, persona_id)
        check_test(draft)
        _asked(draft.message).check(self.chat.max_message_chars)  # the test's turn will be checked the same
        return await self.tests.add(persona_id, draft, created_by=caller.user_id)

    async def list_tests(self, caller: Caller, persona_id: UUID) -> list[PersonaTest]:
        await self.chat.personas.get_editable(caller, persona_id)
        return await self.tests.list(persona_id)

    async def delete_test(self, caller: Caller, persona_id: UUID, test_id: UUID) -> None:
        await self.chat.personas.get_editable(caller, persona_id)
        await self.tests.delete(persona_id, test_id)

    async def run_tests(self, caller: Caller, persona_id: UUID, version: int | None = None) -> SuiteRun:
        """Every test of the persona against its current (or given) version, a few at a time; nothing stored."""
        persona = await self.history.get(caller, persona_id, version)
        tests = await self.tests.list(persona_id)
        # Each test is a request: the suite runs when the limits allow all of them, else none (a 429).
        batch = await self.batch(caller, [(persona, t.message) for t in tests], "test_run")
        gate = asyncio.Semaphore(TEST_CONCURRENCY)

        async def run(test: PersonaTest, plan: TurnPlan | PersonaRuntimeError) -> TestResult:
            graded: Graded | None = None
            async with gate:
                outcome = await self._ask(plan, batch.admission)
                judge = test.expect.judge
                if isinstance(judge, Judge) and isinstance(plan, TurnPlan) and outcome.error is None:
                    route = plan.routes[0]
                    graded = await self.grader.grade(
                        rubric=judge.rubric,
                        threshold=judge.threshold,
                        message=test.message,
                        answer=outcome.text,
                        provider=route.provider,
                        model=route.model,
                    )
                    if graded.size and batch.admission is not None:
                        # The grader's tokens count against the key and persona, as the test's own turn does.
                        batch.admission.spend(plan.persona.id, estimate_size(graded.size))
            if outcome.error is not None:
                failures = [f"the provider failed ({outcome.error.code}): {outcome.error.message}"]
                if isinstance(test.expect.judge, Judge):
                    graded = Graded(score=None, reason="not graded: the answer failed", failure=None)
            else:
                lore = plan.context.lore if isinstance(plan, TurnPlan) else None
                decided = lore.result.decisions if isinstance(lore, TurnLore) and lore.result is not None else []
                failures = await check_answer(test.expect, outcome.text, decided, latency_ms=outcome.latency_ms)
                if graded is not None and graded.failure is not None:
                    failures.append(graded.failure)
            return TestResult(
                test_id=test.id,
                name=test.name,
                passed=not failures,
                response=outcome.text,
                failures=failures,
                latency_ms=outcome.latency_ms,
                score=graded.score if graded is not None else UNSET,
                reason=graded.reason if graded is not None else UNSET,
            )

        results = await asyncio.gather(*(run(t, p) for t, p in zip(tests, batch.plans, strict=True)))
        passed = sum(r.passed for r in results)
        return SuiteRun(persona=_ref(persona), passed=passed, failed=len(results) - passed, results=list(results))
