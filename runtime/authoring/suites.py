"""Persona test suites: messages with expectations about the answer, stored per persona, and how they are judged."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import asyncpg
import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from core import patterns
from core.errors import BadRequest, NotFound
from personas.lore import LoreDecision
from personas.text import check_json, check_text
from runtime.authoring.structured import check_schema, json_failure, schema_failure

__all__ = ["Expectation", "Judge", "PersonaTest", "PersonaTestDraft", "PersonaTestStore", "check_answer", "check_test"]

# Bounds that keep a suite cheap to store and to judge.
MAX_PHRASES = 20
MAX_TESTS_PER_PERSONA = 100
Phrase = Annotated[str, Meta(min_length=1, max_length=500)]
# A test's regex is the user's own pattern: core.patterns bounds, compiles and matches it off the loop.
Pattern = Annotated[str, Meta(min_length=1, max_length=patterns.MAX_PATTERN_CHARS)]


class Judge(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A rubric a grader model scores the answer against, from 0 to 1; the answer passes at ``threshold``."""

    rubric: Annotated[str, Meta(min_length=1, max_length=4000)]
    threshold: Annotated[float, Meta(ge=0, le=1)] = 0.7


class Expectation(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the answer must satisfy. ``contains``/``not_contains`` ignore case; ``regex`` is searched as written
    (add ``(?i)`` to ignore case); ``max_chars`` bounds the answer's length. ``lore_activated`` and
    ``lore_not_activated`` name lorebook entries (by id or name) that the turn must, or must not, have been given.
    ``judge`` has a grader score the answer against a rubric (:mod:`runtime.authoring.grading`); ``is_json`` and
    ``json_schema`` want a JSON answer (:mod:`runtime.authoring.structured`); ``max_latency_ms`` bounds how long
    the whole answer took."""

    contains: Annotated[list[Phrase], Meta(max_length=MAX_PHRASES)] = msgspec.field(default_factory=list)
    not_contains: Annotated[list[Phrase], Meta(max_length=MAX_PHRASES)] = msgspec.field(default_factory=list)
    regex: Pattern | None = None
    max_chars: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None
    # Shown only when given, so a test written without them reads as it was written.
    lore_activated: Annotated[list[Phrase], Meta(max_length=MAX_PHRASES)] | UnsetType = UNSET
    lore_not_activated: Annotated[list[Phrase], Meta(max_length=MAX_PHRASES)] | UnsetType = UNSET
    judge: Judge | UnsetType = UNSET
    is_json: bool | UnsetType = UNSET
    json_schema: dict[str, Any] | UnsetType = UNSET
    max_latency_ms: Annotated[int, Meta(ge=1, le=3_600_000)] | UnsetType = UNSET


class PersonaTestDraft(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body that adds a test to a persona."""

    name: Annotated[str, Meta(min_length=1, max_length=200)]
    message: str
    expect: Expectation


class PersonaTest(Struct, frozen=True, kw_only=True):
    id: UUID
    persona_id: UUID
    name: str
    message: str
    expect: Expectation
    created_by: UUID | None
    created_at: datetime


def check_test(draft: PersonaTestDraft) -> None:
    """Rules beyond field types: a test must expect something. Its regex is checked as it is stored."""
    check_text(draft.name, "name")
    check_text(draft.message, "message")
    for key in ("contains", "not_contains", "lore_activated", "lore_not_activated"):
        for index, phrase in enumerate(getattr(draft.expect, key) or ()):
            check_text(phrase, f"expect.{key}[{index}]")
    if draft.expect.regex is not None:
        check_text(draft.expect.regex, "expect.regex")
    if isinstance(draft.expect.judge, Judge):
        check_text(draft.expect.judge.rubric, "expect.judge.rubric")
        if not draft.expect.judge.rubric.strip():
            raise BadRequest("`expect.judge.rubric` must not be blank.", field="expect.judge.rubric")
    if not isinstance(draft.expect.json_schema, UnsetType):
        check_json(draft.expect.json_schema, "expect.json_schema")
    if not draft.name.strip():
        raise BadRequest("`name` must not be blank.", field="name")
    expect = draft.expect
    if not (
        expect.contains
        or expect.not_contains
        or expect.regex is not None
        or expect.max_chars is not None
        or expect.lore_activated
        or expect.lore_not_activated
        or isinstance(expect.judge, Judge)
        or expect.is_json is True
        or expect.json_schema is not UNSET
        or expect.max_latency_ms
    ):
        raise BadRequest(
            "`expect` expects nothing: give at least one of `contains`, `not_contains`, `regex`, `max_chars`, "
            "`lore_activated`, `lore_not_activated`, `judge`, `is_json`, `json_schema` or `max_latency_ms`.",
            field="expect",
        )


async def check_answer(
    expect: Expectation, answer: str, lore: Sequence[LoreDecision] = (), *, latency_ms: int = 0
) -> list[str]:
    """What the answer got wrong, one sentence per unmet expectation (but ``judge``, which takes a grader); empty
    when it passes. ``lore`` is what the turn's lorebook decided, ``latency_ms`` how long the answer took."""
    failures = _lore_failures(expect, lore)
    folded = answer.casefold()
    failures.extend(
        f"expected the answer to contain {phrase!r}" for phrase in expect.contains if phrase.casefold() not in folded
    )
    failures.extend(
        f"expected the answer not to contain {phrase!r}"
        for phrase in expect.not_contains
        if phrase.casefold() in folded
    )
    if expect.regex is not None:
        failure = await _regex_failure(expect.regex, answer)
        if failure is not None:
            failures.append(failure)
    if expect.max_chars is not None and len(answer) > expect.max_chars:
        failures.append(f"answer is {len(answer)} characters, more than max_chars {expect.max_chars}")
    if expect.is_json is True and expect.json_schema is UNSET:
        failure = json_failure(answer)
        if failure is not None:
            failures.append(failure)
    if expect.json_schema is not UNSET:
        failure = await schema_failure(expect.json_schema, answer)
        if failure is not None:
            failures.append(failure)
    if expect.max_latency_ms and latency_ms > expect.max_latency_ms:
        failures.append(f"the answer took {latency_ms} ms, more than max_latency_ms {expect.max_latency_ms}")
    return failures


def _lore_failures(expect: Expectation, lore: Sequence[LoreDecision]) -> list[str]:
    failures: list[str] = []
    if not (expect.lore_activated or expect.lore_not_activated):
        return failures
    by_name = {}
    for decision in lore:
        by_name[decision.id] = decision
        if decision.name:
            by_name.setdefault(decision.name, decision)
    for wanted in expect.lore_activated or ():
        found = by_name.get(wanted)
        if found is None:
            failures.append(f"expected lore entry {wanted!r} to be activated; no key of it occurred")
        elif not found.activated:
            failures.append(f"expected lore entry {wanted!r} to be activated; it was not ({found.reason})")
    for unwanted in expect.lore_not_activated or ():
        found = by_name.get(unwanted)
        if found is not None and found.activated:
            failures.append(f"expected lore entry {unwanted!r} not to be activated; it was ({found.reason})")
    return failures


async def _regex_failure(pattern: str, answer: str) -> str | None:
    try:
        # A test saved before today's bounds may break them: it fails, with the reason, rather than the run.
        found = await patterns.matches(pattern, answer, field="expect.regex")
    except BadRequest as exc:
        return f"the regex {pattern!r} cannot be used: {exc.message}"
    except TimeoutError:
        return (
            f"the regex {pattern!r} took too long (more than {patterns.MATCH_SECONDS} s) to match the answer: "
            "simplify it (nested repetition such as (a+)+ or (a|aa)+ backtracks without end)"
        )
    except MemoryError:
        return f"the regex {pattern!r} ran out of memory matching the answer: simplify it"
    return None if found else f"expected the answer to match the regex {pattern!r}"


_COLUMNS = "id, persona_id, name, message, expect, created_by, created_at"
INSERT_TEST = f"""
INSERT INTO persona_tests (persona_id, name, message, expect, created_by)
SELECT $1, $2, $3, $4, $5
WHERE (SELECT count(*) FROM persona_tests WHERE persona_id = $1) < $6
RETURNING {_COLUMNS}"""
LIST_TESTS = f"SELECT {_COLUMNS} FROM persona_tests WHERE persona_id = $1 ORDER BY created_at, id"
DELETE_TEST = "DELETE FROM persona_tests WHERE id = $1 AND persona_id = $2"
DELETE_SUITE = "DELETE FROM persona_tests WHERE persona_id = $1"
ADD_TO_SUITE = "INSERT INTO persona_tests (persona_id, name, message, expect, created_by) VALUES ($1, $2, $3, $4, $5)"


def _test(record: asyncpg.Record) -> PersonaTest:
    return msgspec.convert(dict(record), PersonaTest, strict=False)


class PersonaTestStore:
    """Tests live and die with their persona (``ON DELETE CASCADE``); callers check who may touch them."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def add(self, persona_id: UUID, draft: PersonaTestDraft, *, created_by: UUID) -> PersonaTest:
        """Store the test; its regex must first compile within the bounds (a 400 naming ``expect.regex``)."""
        if draft.expect.regex is not None:
            await patterns.compile_pattern(draft.expect.regex, field="expect.regex")
        if draft.expect.json_schema is not UNSET:
            await check_schema(draft.expect.json_schema)
        record = await self._pool.fetchrow(
            INSERT_TEST,
            persona_id,
            draft.name,
            draft.message,
            msgspec.to_builtins(draft.expect),
            created_by,
            MAX_TESTS_PER_PERSONA,
        )
        if record is None:
            raise BadRequest(
                f"This persona already has {MAX_TESTS_PER_PERSONA} tests, the most it may have: delete some first."
            )
        return _test(record)

    async def replace(self, persona_id: UUID, drafts: Sequence[PersonaTestDraft], *, created_by: UUID | None) -> None:
        """Make ``drafts`` (checked by the caller, at most :data:`MAX_TESTS_PER_PERSONA`) the persona's whole suite,
        in their order, in one transaction."""
        if len(drafts) > MAX_TESTS_PER_PERSONA:
            raise BadRequest(f"A persona may have at most {MAX_TESTS_PER_PERSONA} tests.")
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(DELETE_SUITE, persona_id)
            for draft in drafts:
                expect = msgspec.to_builtins(draft.expect)
                await connection.execute(ADD_TO_SUITE, persona_id, draft.name, draft.message, expect, created_by)

    async def list(self, persona_id: UUID) -> list[PersonaTest]:
        """Oldest first: the order a suite runs and reports in."""
        return [_test(r) for r in await self._pool.fetch(LIST_TESTS, persona_id)]

    async def delete(self, persona_id: UUID, test_id: UUID) -> None:
        result = await self._pool.execute(DELETE_TEST, test_id, persona_id)
        if not result.endswith(" 1"):
            raise NotFound(f"Test {test_id} not found on this persona: check `test_id`.", field="test_id")
