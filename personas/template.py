"""System prompt templates: the ``{{variable}}`` syntax, its validation at save time and its rendering."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from core.errors import BadRequest

__all__ = ["VARIABLES", "check_template", "format_section", "render_template"]

VARIABLES = ("user_name", "persona_name", "date", "traits", "capabilities")

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
