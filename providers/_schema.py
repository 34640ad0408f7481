"""A deterministic JSON document matching a JSON schema: what the echo provider answers a ``json_schema`` with."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["example_of"]

_MAX_DEPTH = 12
_MAX_VALUES = 2048  # values in one document
_MAX_SIZE = 64  # items of an array, characters of a string: a schema from a client bounds no allocation


def example_of(schema: dict[str, Any], text: str = "") -> Any:
    """The smallest plain document ``schema`` accepts, as far as this reads schemas: ``$ref`` into ``$defs``
    (or ``definitions``), ``const``, ``enum``, ``default``, ``anyOf`` / ``oneOf`` / ``allOf`` (the first),
    ``type`` (the first non-null), required properties, ``minItems``, ``minLength`` and number bounds, and
    string formats. Strings carry ``text`` where nothing constrains them."""
    return _Walk(schema, text).example(schema, 0)


class _Walk:
    """One document's making, bounded in depth and in the values it makes (a recursive schema stops there)."""

    def __init__(self, root: dict[str, Any], text: str) -> None:
        self.root = root
        self.text = text
        self.left = _MAX_VALUES

    def example(self, node: Any, depth: int) -> Any:
        self.left -= 1
        if self.left < 0:
            return None
        return _example(node, self, depth) if depth <= _MAX_DEPTH else None


def _example(node: Any, walk: _Walk, depth: int) -> Any:
    if not isinstance(node, dict):
        return None
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = walk.root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        return walk.example(target, depth + 1)
    if "const" in node:
        return node["const"]
    enum = node.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    if "default" in node:
        return node["default"]
    for key in ("anyOf", "oneOf", "allOf"):
        choices = node.get(key)
        if isinstance(choices, list) and choices:
            usable = [c for c in choices if not (isinstance(c, dict) and c.get("type") == "null")]
            return walk.example((usable or choices)[0], depth + 1)
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in node else "array" if "items" in node else "string"
    if kind == "object":
        properties = node.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = node.get("required")
        if required is None and node.get("additionalProperties") is False:
            required = list(properties)
        names = [name for name in required if isinstance(name, str)] if isinstance(required, list) else []
        return {name: walk.example(properties.get(name, {}), depth + 1) for name in names}
    if kind == "array":
        count = min(_number(node.get("minItems")) or 0, _MAX_SIZE)
        return [walk.example(node.get("items") or {}, depth + 1) for _ in range(int(max(count, 0)))]
    if kind in ("integer", "number"):
        low, above = _number(node.get("minimum")), _number(node.get("exclusiveMinimum"))
        value = low if low is not None else above + 1 if above is not None else 0
        high = _number(node.get("maximum"))
        if high is not None and value > high:
            value = high
        return int(value) if kind == "integer" else value
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return _string(node, walk.text)


def _number(value: Any) -> int | float | None:
    usable = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return value if usable else None


_FORMATS = {
    "date-time": "2000-01-01T00:00:00Z",
    "date": "2000-01-01",
    "time": "00:00:00",
    "email": "echo@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-0000-0000-000000000000",
}


def _string(node: dict[str, Any], text: str) -> str:
    form = node.get("format")
    known = _FORMATS.get(form) if isinstance(form, str) else None
    if known is not None:
        return known
    if node.get("pattern"):
        return ""
    value = text
    low, high = _number(node.get("minLength")), _number(node.get("maxLength"))
    if high is not None:
        value = value[: max(int(high), 0)]
    if low is not None and len(value) < low:
        value += "x" * min(int(low) - len(value), _MAX_SIZE)
    return value
