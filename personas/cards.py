"""Character Cards V1/V2/V3 to personas and back (our own document format is ``personas.documents``).

A character card (V2 ``chara_card_v2``, V3 ``chara_card_v3``, or a V1 card with its fields at the root)
becomes a persona like this:

- ``name`` → ``name`` (trimmed; a card without one is refused).
- ``description`` → ``description``, cut at a word boundary to the 4000-character limit; the full text
  also goes into the system prompt under "About {{persona_name}}".
- ``personality`` → ``personality_traits["personality"]``, ``tags`` → ``personality_traits["tags"]``;
  the prompt places them with ``{{traits}}`` under "Personality".
- ``first_mes`` then ``alternate_greetings`` → ``greetings``; ``mes_example`` → ``example_messages``
  (:func:`parse_examples`); ``scenario`` → ``scenario`` (a template, as the prompt is: the turn renders it
  after the system prompt). Greetings and examples keep ``{{char}}`` and ``{{user}}`` for the turn to fill.
- ``character_book`` → ``lorebook`` (``personas.card_book``, where the mapping is told in full).
- The system prompt is laid out for providers' prompt caches, which reuse only what comes before the first
  per-user value: ``system_prompt`` (``{{original}}`` in it stands for, and empty means, our default head
  "You are {{persona_name}}."), the description and personality, ``post_history_instructions`` (our runtime
  has one system prompt and no slot after the history: the end of it is the nearest place) and, with our
  default, last the one sentence that names the user (:data:`DEFAULT_TAIL`). In the description and
  personality ``{{user}}`` reads "the user"; a card ``system_prompt`` that names the user moves after them.
- Macros in prompt text: ``{{char}}`` and ``<BOT>`` become ``{{persona_name}}``, ``{{user}}`` and
  ``<USER>`` become ``{{user_name}}``, ``{{newline}}`` a line break; our own variables stay; every other
  ``{{...}}`` (``{{random:...}}``, ``{{roll:...}}``, ``{{// comments}}``...) is dropped, because our
  templates cannot evaluate them and would refuse the prompt. In the description and traits, which are
  not templates, ``{{char}}`` becomes the card's name and ``{{user}}`` "the user".
- ``creator_notes``, ``creator``, ``character_version``, the V3 fields (``nickname``,
  ``group_only_greetings``, ``assets``, ...), ``extensions`` and any field we do not know never reach a
  prompt: the whole card is kept, as it came, in the persona's ``extensions["card"]``, which is never
  rendered.
- ``{{personality}}`` in prompt text becomes ``{{traits}}``.
- ``data.extensions.persona_runtime`` (written by our own card export) restores ``capabilities``,
  ``model_settings`` and ``tools``, and ``personality_traits`` while the card's ``personality`` is still
  the text we exported for them.

Exporting a card starts from the kept card, so its extensions and unknown fields come back as they were.
The fields the persona still holds as imported come back as the card had them (lorebook entries one by
one); fields edited since are written from the persona (the whole system prompt into ``system_prompt``,
with our variables turned back into ``{{char}}``, ``{{user}}`` and ``{{personality}}``; greetings into
``first_mes`` and ``alternate_greetings``; examples into ``mes_example`` as one ``<START>`` block).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from core.errors import BadRequest
from personas.card_book import book_to_lorebook, lorebook_to_book
from personas.models import ExampleMessage, ModelSettings, Persona, PersonaDraft
from personas.template import PER_TURN_VARIABLES, VARIABLES, Placeholder, format_section, placeholders, substitute

__all__ = [
    "CARD_V2",
    "CARD_V3",
    "DEFAULT_HEAD",
    "DEFAULT_TAIL",
    "EXTENSION_KEY",
    "card_to_draft",
    "format_examples",
    "parse_examples",
    "persona_to_card",
    "validated",
]

CARD_V2 = "chara_card_v2"
CARD_V3 = "chara_card_v3"
# Our namespace inside a card's ``data.extensions``, as the V2 specification asks of applications.
EXTENSION_KEY = "persona_runtime"
# Our default prompt opens with what is the same for every user and ends with what is not (the user's name),
# so that providers' prompt caches keep all of the card's text (section 12).
DEFAULT_HEAD = "You are {{persona_name}}."
DEFAULT_TAIL = (
    "Stay in character as {{persona_name}} throughout this conversation with the user, {{user_name}}, and never "
    "speak or act for {{user_name}}."
)
_DESCRIPTION_LIMIT = 4000
_PROMPT_LIMIT = 100_000
_V1_FIELDS = ("name", "description", "personality", "scenario", "first_mes", "mes_example")
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `([^`]+)`")
_LEGACY_MACRO = re.compile(r"<(BOT|CHAR|USER)>", re.IGNORECASE)
_START = re.compile(r"<START>", re.IGNORECASE)
# The names greetings and example messages may use; the turn fills them (section 14).
_SPOKEN = {"char": "char", "user": "user", "persona_name": "char", "user_name": "user"}


class _CardData(msgspec.Struct, frozen=True, kw_only=True):
    """The card fields the mapping reads; everything else is kept untyped in the stored card."""

    name: str | None = None
    description: str | None = None
    personality: str | None = None
    scenario: str | None = None
    first_mes: str | None = None
    mes_example: str | None = None
    system_prompt: str | None = None
    post_history_instructions: str | None = None
    alternate_greetings: list[str] | None = None
    character_book: Any = None
    tags: list[str] | None = None
    extensions: dict[str, Any] | None = None


def validated(value: Any, type_: type[Any], what: str) -> Any:
    """``value`` as ``type_``, or a 400 naming the field (``persona.is_default``) and what is wrong with it."""
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `$")
        field = path.rstrip("`").lstrip(".") or None
        unknown = _UNKNOWN_FIELD.match(message)
        if unknown:
            field = f"{field}.{unknown.group(1)}" if field else unknown.group(1)
            message = "unknown field; remove it"
        where = f"`{field}` in the {what}" if field else f"the {what}"
        raise BadRequest(f"Invalid {where}: {message}.", field=field) from None


# Card → persona ---------------------------------------------------------------------------------------


def card_to_draft(card: dict[str, Any]) -> PersonaDraft:
    """A private persona draft from a V1, V2 or V3 card; the card itself is kept in its extensions."""
    is_v1 = "spec" not in card
    data = card if is_v1 else card.get("data")
    if not isinstance(data, dict):
        raise BadRequest("The character card has no `data` object.", field="data")
    prefix = "" if is_v1 else "data."
    fields: _CardData = validated(data, _CardData, "character card")
    name = (fields.name or "").strip()
    if not name:
        raise BadRequest(f"The character card has no name: `{prefix}name` is empty.", field=f"{prefix}name")
    if len(name) > 100:
        raise BadRequest(
            f"The card's name is {len(name)} characters long; persona names are at most 100. "
            f"Shorten `{prefix}name` and import again.",
            field=f"{prefix}name",
        )
    extensions = dict(fields.extensions or {})
    ours = extensions.pop(EXTENSION_KEY, None)
    ours = ours if isinstance(ours, dict) else {}
    kept_data = {**data, "extensions": extensions} if fields.extensions is not None else dict(data)
    kept = {"data": kept_data} if is_v1 else {**card, "data": kept_data}

    traits: dict[str, Any] = {}
    if (fields.personality or "").strip():
        traits["personality"] = _literal(fields.personality or "", name)
    if fields.tags:
        traits["tags"] = fields.tags
    # Traits our export had to flatten into `personality` come back whole while that text is unchanged.
    exported_traits = ours.get("personality_traits")
    if isinstance(exported_traits, dict) and _personality_text(exported_traits) == (fields.personality or ""):
        traits = exported_traits
    description = _literal(fields.description or "", name).strip()
    prompt = _card_prompt(fields, has_traits=bool(traits), whole=bool(ours.get("whole_prompt")))
    greetings = [_spoken(g) for g in [fields.first_mes or "", *(fields.alternate_greetings or [])]]
    scenario = _template(fields.scenario or "").strip()
    capabilities = ours.get("capabilities")
    if isinstance(capabilities, dict) and capabilities:
        # Our export writes capabilities out in the prompt; the variable takes their place again.
        prompt = prompt.replace(format_section(capabilities), "{{capabilities}}")
    if len(prompt) > _PROMPT_LIMIT:
        raise BadRequest(
            f"The card's text (description, personality, instructions) makes a system prompt of {len(prompt)} "
            f"characters; a persona's is at most {_PROMPT_LIMIT}. Shorten the card and import it again.",
            field="system_prompt",
        )
    draft = {
        "name": name,
        "description": _truncate(description, _DESCRIPTION_LIMIT) or f"{name}, imported from a character card.",
        "system_prompt": prompt,
        "personality_traits": traits,
        "capabilities": ours.get("capabilities", {}),
        "model_settings": ours.get("model_settings", {}),
        "tools": ours.get("tools", []),
        "extensions": {"card": kept},
        "greetings": [g for g in greetings if g.strip()],
        "example_messages": parse_examples(fields.mes_example or "", name),
        "scenario": scenario or None,
    }
    if fields.character_book is not None:
        draft["lorebook"] = book_to_lorebook(fields.character_book, field=f"{prefix}character_book")
    return validated(draft, PersonaDraft, "persona made from the card")


def _card_prompt(card: _CardData, *, has_traits: bool, whole: bool = False) -> str:
    """The persona's prompt from a card. ``whole``: the card's system prompt is a persona's entire prompt
    (our own export), so it is taken as it is.

    What is the same for every user comes first and per-user values last, for providers' prompt caches: the
    description and personality say "the user" for ``{{user}}``, and a card system prompt that names the user
    moves after them; our default ends with the one sentence that names the user."""
    instructions = _template(card.post_history_instructions or "").strip()
    instructions = f"## Instructions\n{instructions}" if instructions else ""
    if whole:
        return "\n\n".join(filter(None, [_template(card.system_prompt or "").strip() or DEFAULT_HEAD, instructions]))
    written = card.system_prompt or ""
    default = not written.strip() or any(p.name.lower() == "original" for p in placeholders(written))
    head = _template(written, original=DEFAULT_HEAD).strip() or DEFAULT_HEAD
    sections = []
    for title, text in (
        ("About {{persona_name}}", card.description),
        ("Personality", "{{traits}}" if has_traits and "{{traits}}" not in head else ""),
    ):
        body = _template(text or "", user="the user").strip()
        if body:
            sections.append(f"## {title}\n{body}")
    per_user = any(p.name in PER_TURN_VARIABLES for p in placeholders(head))
    sections.insert(len(sections) if per_user else 0, head)
    if instructions:
        sections.append(instructions)
    if default:
        sections.append(DEFAULT_TAIL)
    return "\n\n".join(sections)


def _template(text: str, *, original: str = "", user: str = "{{user_name}}") -> str:
    """Card macros as our template variables; the ones we cannot evaluate are dropped.

    ``{{original}}`` stands for the prompt the card's ``system_prompt`` replaces: ``original``; ``{{user}}``
    becomes ``user``."""
    text = _LEGACY_MACRO.sub(lambda m: "{{user}}" if m.group(1).lower() == "user" else "{{persona_name}}", text)

    def replace(macro: Placeholder) -> str:
        name = macro.name
        lowered = name.lower()
        if lowered == "char":
            return "{{persona_name}}"
        if lowered in ("user", "user_name"):
            return user
        if lowered == "newline":
            return "\n"
        if lowered == "personality":
            return "{{traits}}"
        if lowered == "original":
            return original
        if name in VARIABLES:
            return "{{" + name + "}}"
        return ""

    return substitute(text, replace)


def _spoken(text: str) -> str:
    """Card macros in a greeting or example message: ``{{char}}`` and ``{{user}}`` stay, for the turn to fill
    (``<BOT>`` and ``<USER>`` become them), ``{{newline}}`` is a line break, and the rest is dropped."""
    text = _LEGACY_MACRO.sub(lambda m: "{{user}}" if m.group(1).lower() == "user" else "{{char}}", text)

    def replace(macro: Placeholder) -> str:
        lowered = macro.name.lower()
        if lowered == "newline":
            return "\n"
        return "{{" + _SPOKEN[lowered] + "}}" if lowered in _SPOKEN else ""

    return substitute(text, replace)


def parse_examples(text: str, name: str) -> list[dict[str, str]]:
    """A card's ``mes_example`` as example messages.

    SillyTavern's format: blocks that ``<START>`` opens, each a dialogue of lines starting ``{{char}}:`` (or
    ``<BOT>:`` or the card's name and a colon: the persona's) and ``{{user}}:`` (or ``<USER>:``: the user's);
    a line without a speaker continues the message before it. Text before a block's first speaker is a
    ``system`` message (narration)."""
    speaker = re.compile(r"^(\{\{char\}\}|\{\{user\}\}|" + re.escape(name) + r"):[ \t]?")
    messages: list[dict[str, str]] = []
    for block in _START.split(_spoken(text.replace("\r\n", "\n"))):
        role, lines = "system", []
        for line in [*block.split("\n"), None]:
            said = speaker.match(line) if line is not None else None
            if line is not None and said is None:
                lines.append(line)
                continue
            content = "\n".join(lines).strip()
            if content:
                messages.append({"role": role, "content": content})
            if said is not None and line is not None:
                role, lines = "user" if said.group(1) == "{{user}}" else "assistant", [line[said.end() :]]
    return messages


def format_examples(messages: list[ExampleMessage]) -> str:
    """Example messages as a card's ``mes_example``: one ``<START>`` block, a speaker on each message."""
    if not messages:
        return ""
    prefix = {"user": "{{user}}: ", "assistant": "{{char}}: ", "system": ""}
    return "\n".join(["<START>", *(prefix[m.role] + _card_text(m.content) for m in messages)])


def _literal(text: str, name: str) -> str:
    """Card macros in plain text (description, traits), which are shown as written, not rendered."""
    text = _LEGACY_MACRO.sub(lambda m: "the user" if m.group(1).lower() == "user" else name, text)
    spoken = {"char": name, "persona_name": name, "user": "the user", "user_name": "the user", "newline": "\n"}
    return substitute(text, lambda m: spoken.get(m.name.lower(), ""))


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit * 0.8:  # end on a word when one ends near the limit
        cut = cut[:space]
    return cut.rstrip() + "…"


# Persona → card ----------------------------------------------------------------------------


def persona_to_card(persona: Persona) -> dict[str, Any]:
    """A Character Card V2 of the persona, merged into the card it was imported from (if any)."""
    kept = persona.extensions.get("card")
    kept = kept if isinstance(kept, dict) and isinstance(kept.get("data"), dict) else None
    imported = _reimport(kept)
    root = {k: v for k, v in (kept or {}).items() if k not in ("spec", "spec_version", "data")}
    data: dict[str, Any] = {
        "description": "",
        "personality": "",
        "scenario": "",
        "first_mes": "",
        "mes_example": "",
        "creator_notes": "",
        "system_prompt": "",
        "post_history_instructions": "",
        "alternate_greetings": [],
        "tags": [],
        "creator": "",
        "character_version": "",
        **(kept["data"] if kept else {}),
        "name": persona.name,
    }
    whole_prompt = imported is None or imported.system_prompt != persona.system_prompt
    if whole_prompt:
        data.update(
            description=persona.description,
            system_prompt=_card_macros(persona),
            post_history_instructions="",
        )
    if imported is None or imported.greetings != persona.greetings:
        greetings = [_card_text(g) for g in persona.greetings]
        data.update(first_mes=greetings[0] if greetings else "", alternate_greetings=greetings[1:])
    if imported is None or imported.example_messages != persona.example_messages:
        data["mes_example"] = format_examples(persona.example_messages)
    if imported is None or imported.scenario != persona.scenario:
        data["scenario"] = _card_text(persona.scenario or "")
    book = data.get("character_book")
    if persona.lorebook is None:
        data.pop("character_book", None)
    elif imported is None or imported.lorebook != persona.lorebook:
        kept_book = book if isinstance(book, dict) and imported is not None else None
        data["character_book"] = lorebook_to_book(
            persona.lorebook, kept_book, imported.lorebook if kept_book is not None and imported else None
        )
    if imported is None or imported.personality_traits != persona.personality_traits:
        traits = persona.personality_traits
        data["personality"] = _personality_text(traits)
        if isinstance(traits.get("tags"), list):
            data["tags"] = traits["tags"]
    extensions = dict(data.get("extensions") or {})
    ours = {
        "capabilities": persona.capabilities,
        "model_settings": {}
        if persona.model_settings == ModelSettings()
        else msgspec.to_builtins(persona.model_settings),
        "tools": msgspec.to_builtins(persona.tools),
        # Only when `personality` (text) cannot say them: keys besides the personality text and tags.
        "personality_traits": persona.personality_traits
        if set(persona.personality_traits) - {"personality", "tags"}
        else {},
        # The card's system_prompt is our whole prompt: an import here takes it as it is.
        "whole_prompt": whole_prompt,
    }
    if any(ours.values()):
        extensions[EXTENSION_KEY] = {k: v for k, v in ours.items() if v}
    data["extensions"] = extensions
    for key in _V1_FIELDS:  # keep the V1 mirror fields a card carried at its root in step with `data`
        if key in root:
            root[key] = data[key]
    return {**root, "spec": CARD_V2, "spec_version": "2.0", "data": data}


def _reimport(kept: dict[str, Any] | None) -> PersonaDraft | None:
    """The persona the kept card maps to now, to tell fields edited since the import from the rest."""
    if kept is None:
        return None
    card = kept if "spec" in kept else kept["data"]
    try:
        return card_to_draft(card)
    except BadRequest:
        return None


def _card_macros(persona: Persona) -> str:
    """Our system prompt in card macros; capabilities, which cards have no macro for, are written out."""
    prompt = persona.system_prompt or ""
    capabilities = format_section(persona.capabilities)
    if capabilities and "capabilities" not in {p.name for p in placeholders(prompt)}:
        prompt = f"{prompt.rstrip()}\n\n## Capabilities\n{{{{capabilities}}}}"
    names = {
        "persona_name": "{{char}}",
        "user_name": "{{user}}",
        "traits": "{{personality}}",
        "capabilities": capabilities,
    }
    return substitute(prompt, lambda m: names.get(m.name, prompt[m.start : m.end]))


def _card_text(text: str) -> str:
    """A greeting, example message or scenario in card macros: our names as ``{{char}}`` and ``{{user}}``."""
    names = {"persona_name": "{{char}}", "user_name": "{{user}}", "traits": "{{personality}}"}
    return substitute(text, lambda m: names.get(m.name, text[m.start : m.end]))


def _personality_text(traits: dict[str, Any]) -> str:
    personality = traits.get("personality")
    rest = {
        k: v
        for k, v in traits.items()
        if not (k == "personality" and isinstance(v, str)) and not (k == "tags" and isinstance(v, list))
    }
    parts = [personality] if isinstance(personality, str) else []
    if rest:
        parts.append(format_section(rest))
    return "\n".join(parts)
