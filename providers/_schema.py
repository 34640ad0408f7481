"""A deterministic JSON document matching a JSON schema: what the echo provider answers a ``json_schema`` with."""

from __future__ import annotations

from typing import Any

__all__ = ["example_of"]

_MAX_DEPTH = 12


def example_of(schema: dict[str, Any], text: str = "") -> Any:
    """The smallest plain document ``schema`` accepts, as far as this reads schemas: ``$ref`` into ``$defs``
    (or ``definitions``), ``const``, ``enum``, ``default``, ``anyOf`` / ``oneOf`` / ``allOf`` (the first),
    ``type`` (the first non-null), required properties, ``minItems``, ``minLength`` and number bounds, and
    string formats. Strings carry ``text`` where nothing constrains them."""
    return _example(schema, schema, text, 0)


def _example(node: Any, root: dict[str, Any], text: str, depth: int) -> Any:
    if not isinstance(node, dict) or depth > _MAX_DEPTH:
        return None
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        return _example(target, root, text, depth + 1)
    if "const" in node:
        return node["const"]
    if node.get("enum"):
        return node["enum"][0]
    if "default" in node:
        return node["default"]
    for key in ("anyOf", "oneOf", "allOf"):
        choices = node.get(key)
        if isinstance(choices, list) and choices:
            usable = [c for c in choices if not (isinstance(c, dict) and c.get("type") == "null")]
            return _example((usable or choices)[0], root, text, depth + 1)
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in node else "array" if "items" in node else "string"
    if kind == "object":
        properties = node.get("properties") or {}
        required = node.get("required")
        names = list(properties) if required is None and node.get("additionalProperties") is False else required or []
        return {name: _example(properties.get(name, {}), root, text, depth + 1) for name in names}
    if kind == "array":
        count = max(int(node.get("minItems") or 0), 0)
        return [_example(node.get("items") or {}, root, text, depth + 1) for _ in range(count)]
    if kind in ("integer", "number"):
        low = node.get("minimum", node.get("exclusiveMinimum"))
        value = 0 if low is None else low + (1 if "minimum" not in node else 0)
        high = node.get("maximum")
        if high is not None and value > high:
            value = high
        return int(value) if kind == "integer" else value
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return _string(node, text)


_FORMATS = {
    "date-time": "2000-01-01T00:00:00Z",
    "date": "2000-01-01",
    "time": "00:00:00",
    "email": "echo@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-0000-0000-000000000000",
}


def _string(node: dict[str, Any], text: str) -> str:
    known = _FORMATS.get(node.get("format") or "")
    if known is not None:
        return known
    if node.get("pattern"):
        return ""
    value = text
    low, high = node.get("minLength"), node.get("maxLength")
    if isinstance(high, int):
        value = value[:high]
    if isinstance(low, int) and len(value) < low:
        value += "x" * (low - len(value))
    return value
