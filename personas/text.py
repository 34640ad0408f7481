"""Text hygiene: what PostgreSQL cannot store (NUL, lone surrogates) and how persona names are normalised."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from core.errors import BadRequest

__all__ = ["check_json", "check_name", "check_text", "normalize_name"]

# NUL: PostgreSQL's text and jsonb refuse it. Lone surrogates (U+D800 to U+DFFF): not encodable as UTF-8.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _problem(value: str) -> tuple[str, int] | None:
    """What unstorable character ``value`` holds first, and where."""
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    char = found.group()
    what = "a NUL character (U+0000)" if char == "\x00" else f"a lone surrogate (U+{ord(char):04X})"
    return f"{what} at position {found.start()} (0-based)", found.start()


def check_text(value: str, field: str) -> None:
    """Refuse a string PostgreSQL cannot store, naming ``field`` and where the bad character is."""
    problem = _problem(value)
    if problem is not None:
        raise BadRequest(
            f"`{field}` contains {problem[0]}, which cannot be stored; remove it.",
            field=field,
            details={"position": problem[1]},
        )


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if _IDENTIFIER.match(key) else f"{path}[{key!r}]"


def check_json(value: Any, field: str) -> None:
    """:func:`check_text` for every key and string inside a JSON value, naming its path
    (``personality_traits.tone``, ``tools[0].parameters.properties``)."""
    # Iterative, so a deeply nested document cannot exhaust the stack.
    pending: list[tuple[Any, str]] = [(value, field)]
    while pending:
        item, path = pending.pop()
        if isinstance(item, str):
            check_text(item, path)
        elif isinstance(item, dict):
            for key, child in item.items():
                key_problem = _problem(key) if isinstance(key, str) else None
                if key_problem is not None:
                    raise BadRequest(
                        f"A key of `{path}` contains {key_problem[0]}, which cannot be stored; rename it.",
                        field=path,
                    )
                pending.append((child, _child(path, str(key))))
        elif isinstance(item, list | tuple):
            pending.extend((child, f"{path}[{index}]") for index, child in enumerate(item))


def normalize_name(name: str) -> str:
    """A persona name as it is stored and compared: Unicode NFKC (so full-width letters are plain ones), without
    invisible format characters (zero-width spaces and joiners, U+2060, U+FEFF, bidirectional controls),
    trimmed. Control characters (line breaks, tabs) are left in for :func:`check_name` to refuse."""
    text = unicodedata.normalize("NFKC", name)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    return text.strip()


def check_name(name: str, field: str = "name") -> None:
    """A normalised name must be one line of visible text."""
    check_text(name, field)
    if not name:
        raise BadRequest(f"`{field}` must not be blank.", field=field)
    for index, char in enumerate(name):
        if unicodedata.category(char) == "Cc":
            raise BadRequest(
                f"`{field}` contains the control character U+{ord(char):04X} at position {index} (0-based); "
                "a name is one line of text.",
                field=field,
                details={"position": index},
            )
