"""System prompt templates: the ``{{variable}}`` syntax, its validation at save time and its rendering."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from core.errors import BadRequest

__all__ = [
    "ALIASES",
    "PER_TURN_VARIABLES",
    "VARIABLES",
    "Placeholder",
    "check_template",
    "fill_names",
    "format_section",
    "placeholders",
    "render_template",
    "stable_prefix",
    "substitute",
]

VARIABLES = ("user_name", "persona_name", "date", "traits", "capabilities", "char", "user")
# SillyTavern's names, as character cards write them: the same values as ours.
ALIASES = {"char": "persona_name", "user": "user_name"}
# Values that differ between users or days: a provider's prompt cache reuses only what comes before them.
PER_TURN_VARIABLES = ("user_name", "date", "user")


class Placeholder(NamedTuple):
    """One ``{{ name }}`` in a template: where it starts and ends, and the name without its spaces."""

    start: int
    end: int
    name: str


def _scan(template: str) -> tuple[list[Placeholder], tuple[int, str] | None]:
    """Every well-formed placeholder, and the first syntax problem (its position and what it is).

    Linear in the template's length. ``{{`` opens a placeholder that the next ``}}`` closes, with no ``{``
    or ``}`` in between; spaces around the name are allowed (``{{ user_name }}``). A run of three or more
    ``{`` is text braces followed by a placeholder (``{{{user_name}}}`` puts the name in braces). Outside
    placeholders single braces are text, and so is a ``}}`` that closes two of them (``{"a": {"b": 1}}``);
    any other ``}}`` is stray.
    """
    found: list[Placeholder] = []
    problem: tuple[int, str] | None = None
    depth = 0  # text braces open
    i, n = 0, len(template)
    while i < n:
        char = template[i]
        if char == "{":
            if template.startswith("{{", i) and not template.startswith("{{{", i):
                j = i + 2
                while j < n and template[j] not in "{}":
                    j += 1
                if template.startswith("}}", j):
                    found.append(Placeholder(i, j + 2, template[i + 2 : j].strip()))
                    i = j + 2
                    continue
                if problem is None:
                    problem = (i, "`{{` that no `}}` closes (a placeholder is `{{name}}`, with no braces inside)")
                depth += 2
                i = j
                continue
            depth += 1
        elif char == "}":
            if depth:
                depth -= 1
            elif template.startswith("}}", i):
                if problem is None:
                    problem = (i, "stray `}}` that closes no `{{`")
                i += 2
                continue
        i += 1
    return found, problem


def placeholders(template: str) -> list[Placeholder]:
    """The template's well-formed placeholders, in order; malformed braces are left as text."""
    return _scan(template)[0]


def substitute(template: str, replace: Callable[[Placeholder], str]) -> str:
    """The template with each placeholder replaced by ``replace(placeholder)``."""
    parts: list[str] = []
    at = 0
    for placeholder in placeholders(template):
        parts.append(template[at : placeholder.start])
        parts.append(replace(placeholder))
        at = placeholder.end
    parts.append(template[at:])
    return "".join(parts)


def check_template(template: str, *, field: str = "system_prompt") -> None:
    """Refuse a template with malformed braces, or that uses a variable the runtime cannot fill."""
    found, problem = _scan(template)
    if problem is not None:
        position, what = problem
        raise BadRequest(
            f"`{field}` has a {what} at position {position} (0-based). Write variables as {{{{user_name}}}}.",
            field=field,
            details={"position": position},
        )
    unknown = sorted({p.name for p in found} - set(VARIABLES))
    if unknown:
        names = ", ".join("{{" + name + "}}" for name in unknown)
        allowed = ", ".join("{{" + name + "}}" for name in VARIABLES)
        raise BadRequest(
            f"`{field}` uses unknown template variable {names}; the variables you can use are {allowed}.",
            field=field,
            details={"unknown_variables": unknown},
        )


def fill_names(text: str, *, persona_name: str, user_name: str) -> str:
    """Text that is not a template (a greeting, an example message) with the names filled in: ``{{char}}`` and
    ``{{persona_name}}``, ``{{user}}`` and ``{{user_name}}``; any other ``{{...}}`` stays as written."""
    if "{{" not in text:
        return text
    names = {"persona_name": persona_name, "user_name": user_name}
    names.update({alias: names[name] for alias, name in ALIASES.items()})
    return substitute(text, lambda p: names.get(p.name, text[p.start : p.end]))


def format_section(values: Mapping[str, Any]) -> str:
    """Turn a traits or capabilities object into short lines a model reads easily."""
    lines = []
    for key, value in values.items():
        label = str(key).replace("_", " ")
        if isinstance(value, bool):
            text = "yes" if value else "no"
        elif isinstance(value, list | tuple):
            text = ", ".join(str(v) for v in value)
        elif isinstance(value, dict):
            text = "; ".join(f"{k}: {v}" for k, v in value.items())
        else:
            text = str(value)
        lines.append(f"- {label}: {text}")
    return "\n".join(lines)


def render_template(
    template: str,
    *,
    user_name: str,
    persona_name: str,
    date: str,
    traits: Mapping[str, Any],
    capabilities: Mapping[str, Any],
    sections: bool = True,
) -> str:
    """Fill a template; traits and capabilities the template does not place are appended as sections
    (unless ``sections`` is off).

    ``{{char}}`` and ``{{user}}`` (SillyTavern's) are ``{{persona_name}}`` and ``{{user_name}}``."""
    formatted = {"traits": format_section(traits), "capabilities": format_section(capabilities)}
    values = {"user_name": user_name, "persona_name": persona_name, "date": date, **formatted}
    values.update({alias: values[name] for alias, name in ALIASES.items()})
    text = substitute(template, lambda p: values.get(p.name, template[p.start : p.end]))
    if not sections:
        return text
    used = {p.name for p in placeholders(template)}
    for name, title in (("traits", "Personality traits"), ("capabilities", "Capabilities")):
        if name not in used and formatted[name]:
            text = f"{text.rstrip()}\n\n## {title}\n{formatted[name]}"
    return text


def stable_prefix(
    template: str, *, persona_name: str, traits: Mapping[str, Any], capabilities: Mapping[str, Any]
) -> tuple[int, str | None]:
    """How many characters of the rendered template come before its first per-user or per-day value, and
    which variable that is (``None`` when it has none: the whole rendering is the same for everyone)."""
    marker = "\x00"
    probe = render_template(
        template, user_name=marker, persona_name=persona_name, date=marker, traits=traits, capabilities=capabilities
    )
    at = probe.find(marker)
    if at < 0:
        return len(probe), None
    first = next(p.name for p in placeholders(template) if p.name in PER_TURN_VARIABLES)
    return at, first
