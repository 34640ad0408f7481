"""Structured answers in tests: ``is_json`` (the answer parses as JSON) and ``json_schema`` (it validates).

An answer may sit in one Markdown code fence (```json ... ```), as models often write it; anything else
around the JSON fails. Schemas are checked with the ``jsonschema`` library, under the draft their
``$schema`` names (2020-12 when none). Nothing is fetched: a ``$ref`` to another document fails the
expectation. The schema's ``pattern`` and ``patternProperties`` are user regular expressions like a test's
``regex`` (:mod:`core.patterns`): bounded when the test is saved, and matched with a time budget, in a
thread of their own, so a schema that backtracks without end holds up no request.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Mapping
from typing import Any

import jsonschema
import msgspec
import regex
from jsonschema import exceptions, validators
from referencing.exceptions import Unresolvable

from core import patterns
from core.errors import BadRequest

__all__ = ["check_schema", "json_failure", "parse_answer", "schema_failure"]

# How deep a schema may nest (objects and arrays): enough for any real answer's shape, and far from the stack's end.
MAX_SCHEMA_DEPTH = 64
# How long one answer's whole validation may take.
VALIDATE_SECONDS = 2.0
_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?\s*```$", re.DOTALL)


def parse_answer(answer: str) -> Any:
    """The answer's JSON value; ``ValueError`` with msgspec's reason when it is not JSON."""
    text = answer.strip()
    fenced = _FENCE.fullmatch(text)
    if fenced is not None:
        text = fenced.group(1)
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from None


def json_failure(answer: str) -> str | None:
    try:
        parse_answer(answer)
    except ValueError as exc:
        return f"expected the answer to be JSON: {exc}"
    return None


def _patterns(schema: Any, field: str) -> list[str]:
    """Every regular expression in the schema (``pattern`` values, ``patternProperties`` keys), at any depth;
    a 400 naming ``field`` when it nests deeper than :data:`MAX_SCHEMA_DEPTH`."""
    found: list[str] = []
    pending: list[tuple[Any, int]] = [(schema, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise BadRequest(f"`{field}` nests deeper than {MAX_SCHEMA_DEPTH} levels: flatten it.", field=field)
        if isinstance(item, Mapping):
            for key, value in item.items():
                if key == "pattern" and isinstance(value, str):
                    found.append(value)
                elif key == "patternProperties" and isinstance(value, Mapping):
                    found.extend(k for k in value if isinstance(k, str))
                pending.append((value, depth + 1))
        elif isinstance(item, list):
            pending.extend((child, depth + 1) for child in item)
    return found


async def _compiled(schema: Any, field: str) -> dict[str, regex.Pattern[str]]:
    return {p: await patterns.compile_pattern(p, field=field) for p in dict.fromkeys(_patterns(schema, field))}


async def check_schema(schema: dict[str, Any], *, field: str = "expect.json_schema") -> None:
    """A 400 naming ``field`` unless ``schema`` is a valid JSON Schema whose patterns are within the bounds."""
    # The patterns and the depth first: the library's own check recurses, and compiles patterns unbounded.
    for pattern in dict.fromkeys(_patterns(schema, field)):
        await patterns.compile_pattern(pattern, field=field)
    if not isinstance(schema.get("$schema", ""), str):
        raise BadRequest(f"`{field}.$schema` must be a string: the URI of a JSON Schema draft.", field=field)
    cls = validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except exceptions.SchemaError as exc:
        where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in exc.absolute_path)
        raise BadRequest(
            f"`{field}` is not a valid JSON Schema: {exc.message} (at `{field}{where}`).", field=field
        ) from None
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
        raise BadRequest(f"`{field}` is not a usable JSON Schema: {type(exc).__name__}.", field=field) from None


def _bounded(cls: Any, compiled: dict[str, regex.Pattern[str]]) -> Any:
    """``cls`` with ``pattern`` and ``patternProperties`` matched by the bounded, timed engine."""

    def search(pattern: str, text: str) -> bool:
        return compiled[pattern].search(text, timeout=patterns.MATCH_SECONDS, concurrent=True) is not None

    def pattern(validator: Any, wanted: str, instance: Any, schema: Any) -> Iterator[exceptions.ValidationError]:
        if validator.is_type(instance, "string") and not search(wanted, instance):
            yield exceptions.ValidationError(f"{instance!r} does not match {wanted!r}")

    def pattern_properties(
        validator: Any, properties: dict[str, Any], instance: Any, schema: Any
    ) -> Iterator[exceptions.ValidationError]:
        if not validator.is_type(instance, "object"):
            return
        for wanted, subschema in properties.items():
            for key, value in instance.items():
                if search(wanted, key):
                    yield from validator.descend(value, subschema, path=key, schema_path=wanted)

    return validators.extend(cls, {"pattern": pattern, "patternProperties": pattern_properties})


def _first_error(validator: Any, value: Any) -> str | None:
    try:
        error = exceptions.best_match(validator.iter_errors(value))
    except Unresolvable as exc:
        return f"the schema refers to a document that is not fetched ({exc}); put its definitions in `$defs`"
    except TimeoutError:
        return f"a pattern of the schema took too long (more than {patterns.MATCH_SECONDS} s): simplify it"
    except (MemoryError, RecursionError):
        return "the schema is too deep or too costly to check this answer with: simplify it"
    if error is None:
        return None
    where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"the answer does not match `json_schema`: {error.message} (at `${where}`)"


async def schema_failure(schema: dict[str, Any], answer: str) -> str | None:
    """Why the answer does not validate against ``schema``, or None when it does."""
    try:
        value = parse_answer(answer)
    except ValueError as exc:
        return f"expected the answer to be JSON for `json_schema`: {exc}"
    try:
        compiled = await _compiled(schema, "expect.json_schema")
    except BadRequest as exc:
        return f"the schema cannot be used: {exc.message}"
    if not isinstance(schema.get("$schema", ""), str):
        return "the schema's `$schema` is not a string"
    cls = validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator = _bounded(cls, compiled)(schema)
    try:
        return await asyncio.wait_for(asyncio.to_thread(_first_error, validator, value), VALIDATE_SECONDS)
    except TimeoutError:
        return f"checking the answer against `json_schema` took more than {VALIDATE_SECONDS:g} s: simplify the schema"
