"""Checks on a JSON document's bytes that decoding alone does not make: nesting depth, NUL characters, surrogates.

A document nested thousands deep exhausts the decoder's (and later the encoder's) recursion; a ``\\u0000``
decodes into a string PostgreSQL refuses to store; a lone UTF-16 surrogate escape makes the decoder give up
without saying where. Each is a 400 that names the limit or the field, found by a scan of the raw bytes that
costs a few C-level passes on a well-formed body and walks it only when there is something to report.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from core.errors import BadRequest

__all__ = ["MAX_JSON_DEPTH", "check_json", "surrogate_error"]

MAX_JSON_DEPTH = 64

_NOT_SHAPE = bytes(byte for byte in range(256) if byte not in b'"[]{}')
_STRING = re.compile(rb'"[^"]*"')
_EMPTY_PAIR = re.compile(rb"\[\]|\{\}")
_NUL_ESCAPE = b"\\u0000"
# A surrogate escape that is not half of a valid pair: a high one not followed by a low one, or a low one alone.
_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)
_decode = msgspec.json.Decoder().decode


def check_json(body: bytes, *, what: str = "The request body") -> None:
    """Refuse a JSON document nested deeper than :data:`MAX_JSON_DEPTH` or holding a ``\\u0000``.

    ``what`` names the document in messages ("The request body", "The card's JSON"). A body that is not
    JSON at all passes: the decoder reports that.
    """
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH:
        _check_depth(body, what)
    if _NUL_ESCAPE in body:
        field = _field_with_nul(body)
        if field is not None:
            raise BadRequest(
                f"{_named(field, what)} contains a NUL character (\\u0000), which cannot be stored: remove it.",
                field=field or None,
                details={"character": "\\u0000"},
            )


def surrogate_error(body: bytes, *, what: str = "The request body") -> BadRequest | None:
    """The 400 for a body the decoder refused over a lone surrogate escape, naming the field it is in."""
    found = _LONE_SURROGATE.search(body)
    if found is None:
        return None
    escape = found.group().decode()
    # Each lone escape becomes a NUL, which decodes; the first string holding one is the field to name.
    field = _field_with_nul(_LONE_SURROGATE.sub(lambda _: _NUL_ESCAPE, body.replace(_NUL_ESCAPE, b" ")))
    return BadRequest(
        f"{_named(field, what)} contains a lone UTF-16 surrogate ({escape}), which is no character: send a "
        "surrogate only as half of a high-low pair, or the character itself in UTF-8.",
        field=field or None,
        details={"character": escape},
    )


def _named(field: str | None, what: str) -> str:
    return f"`{field}`" if field else what


def _check_depth(body: bytes, what: str) -> None:
    # The body's bare shape: escapes out (so every quote left delimits a string), then only quotes and
    # brackets, then no strings. Each pass then takes away the innermost arrays and objects, one level.
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    shape = _STRING.sub(b"", body.translate(None, _NOT_SHAPE))
    levels = 0
    while shape and levels < MAX_JSON_DEPTH:
        inner = _EMPTY_PAIR.sub(b"", shape)
        if len(inner) == len(shape):  # unbalanced: measure what is left
            break
        shape, levels = inner, levels + 1
    depth = levels
    for byte in shape:
        depth += 1 if byte in b"[{" else -1
        if depth > MAX_JSON_DEPTH:
            raise BadRequest(
                f"{what} nests arrays and objects more than {MAX_JSON_DEPTH} deep, the most this server "
                "reads: flatten it.",
                details={"max_depth": MAX_JSON_DEPTH},
            )


def _field_with_nul(body: bytes) -> str | None:
    """The path (``persona.name``, ``messages[0].content``) of the first string holding a NUL; "" for the root.

    ``None`` when the body does not decode (the decoder will say why) or the NUL was text (``\\\\u0000``).
    """
    try:
        value = _decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None
    return _find_nul(value, "")


def _find_nul(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                return path  # the object whose key it is: the key itself cannot be shown as it is
            where = f"{path}.{key}" if path else key
            found = _find_nul(item, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _find_nul(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None
