"""Test suites as files, beside the persona documents that ``personas export``/``import`` keep.

A persona's suite is ``<slug>.tests.json`` next to its ``<slug>.json``::

    {"format": "persona-runtime/tests-v1", "persona": "Greeter",
     "tests": [{"name": "...", "message": "...", "expect": {...}}]}

Export writes one for each exported persona that has tests (and removes one left from a persona that has none
now); import checks every suite file with the rules ``POST .../tests`` applies before anything is written,
then makes each file the whole suite of the persona it names (which must be defined in the same directory).
A suite equal to its file is left alone; one that differs is replaced, in the file's order, so its tests get
new ids. The file names its persona, so renaming the file changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import Meta, Struct, UnsetType

from core import patterns
from core.errors import BadRequest
from personas.documents import encode_document
from personas.files import SUITE_SUFFIX, FileResult, FilesError
from runtime.authoring.structured import check_schema
from runtime.authoring.suites import (
    MAX_TESTS_PER_PERSONA,
    PersonaTest,
    PersonaTestDraft,
    PersonaTestStore,
    check_test,
)

__all__ = ["SUITE_FORMAT", "SuiteFile", "check_suites", "import_suites", "read_suites", "write_suites"]

SUITE_FORMAT = "persona-runtime/tests-v1"


class SuiteFile(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A persona's test suite as a file."""

    format: Literal["persona-runtime/tests-v1"]
    persona: Annotated[str, Meta(min_length=1, max_length=100)]
    tests: Annotated[list[PersonaTestDraft], Meta(max_length=MAX_TESTS_PER_PERSONA)]


_DECODER = msgspec.json.Decoder(SuiteFile)


def _drafts(tests: Sequence[PersonaTest]) -> list[PersonaTestDraft]:
    return [PersonaTestDraft(name=t.name, message=t.message, expect=t.expect) for t in tests]


def _encoded(name: str, tests: Sequence[PersonaTestDraft]) -> bytes:
    return encode_document({"format": SUITE_FORMAT, "persona": name, "tests": msgspec.to_builtins(list(tests))})


def write_suites(
    directory: Path, exported: Sequence[FileResult], suites: Mapping[UUID, Sequence[PersonaTest]]
) -> list[FileResult]:
    """``<slug>.tests.json`` beside each exported persona file whose persona has tests (``suites``, by id)."""
    results = []
    for result in exported:
        if result.persona_id is None:
            continue
        path = directory / (result.file.removesuffix(".json") + SUITE_SUFFIX)
        tests = suites.get(result.persona_id, ())
        if not tests:
            if path.exists():
                path.unlink()
                results.append(FileResult(path.name, result.name, "removed", result.persona_id))
            continue
        content = _encoded(result.name, _drafts(tests))
        if path.exists() and path.read_bytes() == content:
            results.append(FileResult(path.name, result.name, "unchanged", result.persona_id))
            continue
        partial = path.with_suffix(".json.partial")
        partial.write_bytes(content)
        partial.replace(path)
        results.append(FileResult(path.name, result.name, "written", result.persona_id))
    return results


def read_suites(
    directory: Path, personas: Sequence[str], *, limit: int, max_message_chars: int
) -> list[tuple[str, SuiteFile]]:
    """Every suite file of ``directory``, checked as ``POST .../tests`` checks a test (but patterns, which
    :func:`check_suites` compiles); any problem refuses them all. ``personas``: the names the directory defines."""
    defined = {name.casefold() for name in personas}
    problems: list[str] = []
    suites: list[tuple[str, SuiteFile]] = []
    seen: dict[str, str] = {}
    for path in sorted(p for p in directory.iterdir() if p.name.lower().endswith(SUITE_SUFFIX) and p.is_file()):
        try:
            if path.stat().st_size > limit:
                raise BadRequest(f"larger than {limit} bytes (IMPORT_MAX_BYTES)")
            try:
                suite = _DECODER.decode(path.read_bytes())
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise BadRequest(f"not a test suite file ({SUITE_FORMAT}): {exc}") from None
            for index, test in enumerate(suite.tests):
                with _within(index):
                    check_test(test)
                    if len(test.message) > max_message_chars:
                        raise BadRequest(f"`message` is longer than {max_message_chars} characters (MAX_MESSAGE_CHARS)")
        except BadRequest as exc:
            problems.append(f"{path.name}: {exc.message}")
            continue
        key = suite.persona.casefold()
        if key not in defined:
            problems.append(f"{path.name}: persona {suite.persona!r} is not defined by a file of this directory")
        elif key in seen:
            problems.append(f"{path.name}: the tests of {suite.persona!r} are also in {seen[key]}")
        else:
            seen[key] = path.name
            suites.append((path.name, suite))
    if problems:
        raise FilesError(problems)
    return suites


async def check_suites(suites: Sequence[tuple[str, SuiteFile]]) -> None:
    """Compile every regex and JSON Schema of the suites within the bounds; any problem refuses them all."""
    problems: list[str] = []
    for file, suite in suites:
        for index, test in enumerate(suite.tests):
            try:
                with _within(index):
                    if test.expect.regex is not None:
                        await patterns.compile_pattern(test.expect.regex, field="expect.regex")
                    if not isinstance(test.expect.json_schema, UnsetType):
                        await check_schema(test.expect.json_schema)
            except BadRequest as exc:
                problems.append(f"{file}: {exc.message}")
    if problems:
        raise FilesError(problems)


@contextlib.contextmanager
def _within(index: int) -> Iterator[None]:
    """Name a test's field by its place in the file: ``tests[2].expect.regex``."""
    try:
        yield
    except BadRequest as exc:
        raise BadRequest(exc.message.replace("`", f"`tests[{index}].", 1)) from None


async def import_suites(
    store: PersonaTestStore, suites: Sequence[tuple[str, SuiteFile]], ids: dict[str, UUID], *, owner: UUID | None
) -> list[FileResult]:
    """Make each file the whole suite of its persona (``ids``: persona id by folded name); equal ones untouched."""
    results = []
    for file, suite in suites:
        persona_id = ids[suite.persona.casefold()]
        current = await store.list(persona_id)
        if _encoded(suite.persona, _drafts(current)) == _encoded(suite.persona, suite.tests):
            results.append(FileResult(file, suite.persona, "unchanged", persona_id))
            continue
        await store.replace(persona_id, suite.tests, created_by=owner)
        results.append(FileResult(file, suite.persona, "updated" if current else "created", persona_id))
    return results
