"""System prompt templates: the ``{{variable}}`` syntax, its validation at save time and its rendering."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from core.errors import BadRequest

__all__ = ["PER_TURN_VARIABLES", "VARIABLES", "check_template", "format_section", "render_template", "stable_prefix"]

VARIABLES = ("user_name", "persona_name", "date", "traits", "capabilities")
# Values that differ between users or days: a provider's prompt cache reuses only what comes before them.
PER_TURN_VARIABLES = ("user_name", "date")

_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


def check_template(template: str, *, field: str = "system_prompt") -> None:
    """Refuse a template that uses a variable the runtime cannot fill."""
    unknown = sorted({m.group(1) for m in _PLACEHOLDER.finditer(template)} - set(VARIABLES))
    if unknown:
        names = ", ".join("{{" + name + "}}" for name in unknown)
        allowed = ", ".join("{{" + name + "}}" for name in VARIABLES)
        raise BadRequest(
            f"`{field}` uses unknown template variable {names}; the variables you can use are {allowed}.",
            field=field,
            details={"unknown_variables": unknown},
        )


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
) -> str:
    """Fill a template; traits and capabilities the template does not place are appended as sections."""
    sections = {"traits": format_section(traits), "capabilities": format_section(capabilities)}
    values = {"user_name": user_name, "persona_name": persona_name, "date": date, **sections}
    used = {m.group(1) for m in _PLACEHOLDER.finditer(template)}
    text = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)
    for name, title in (("traits", "Personality traits"), ("capabilities", "Capabilities")):
        if name not in used and sections[name]:
            text = f"{text.rstrip()}\n\n## {title}\n{sections[name]}"
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
    first = next(m.group(1) for m in _PLACEHOLDER.finditer(template) if m.group(1) in PER_TURN_VARIABLES)
    return at, first
