"""Our persona document, ``{"format": "persona-runtime/v1", "persona": {...}, "extensions": {...}}``, and
reading any import (our document, a card's JSON or a PNG card) into a persona draft.

The document carries every writable field but ``is_default``, and the persona's ``extensions``; it
loses nothing: export → import → export gives the same document. Files are written with sorted object
keys and a two-space indent so that a persona kept in git changes only where it was edited.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, NamedTuple

import msgspec

from core.errors import BadRequest
from core.json_guard import check_json, surrogate_error
from personas.cards import CARD_V2, CARD_V3, card_to_draft, validated
from personas.models import (
    Description,
    ExampleMessages,
    Greetings,
    Limits,
    Lorebook,
    ModelSettings,
    Name,
    Persona,
    PersonaDraft,
    Scenario,
    SystemPrompt,
    Tool,
    Visibility,
)
from personas.png import SIGNATURE, read_card_text

__all__ = [
    "FORMAT",
    "DocumentPersona",
    "Imported",
    "PersonaDocument",
    "encode_document",
    "load_document",
    "persona_document",
    "read_document",
    "slug",
]

FORMAT = "persona-runtime/v1"
# Fields of a V1 card (no `spec`, fields at the root), besides `name`, that tell one apart from noise.
_V1_FIELDS = ("personality", "scenario", "first_mes", "mes_example")


class DocumentPersona(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The persona inside our document: the writable fields but ``is_default``."""

    name: Name
    description: Description
    system_prompt: SystemPrompt
    personality_traits: dict[str, Any] = msgspec.field(default_factory=dict)
    capabilities: dict[str, Any] = msgspec.field(default_factory=dict)
    model_settings: ModelSettings = msgspec.field(default_factory=ModelSettings)
    tools: list[Tool] = msgspec.field(default_factory=list)
    visibility: Visibility = "private"
    limits: Limits = msgspec.field(default_factory=Limits)
    lorebook: Lorebook | None = None
    greetings: Greetings = msgspec.field(default_factory=list)
    example_messages: ExampleMessages = msgspec.field(default_factory=list)
    scenario: Scenario | None = None


class PersonaDocument(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Our export format, one persona per document."""

    format: str
    persona: DocumentPersona
    extensions: dict[str, Any] = msgspec.field(default_factory=dict)


class Imported(NamedTuple):
    """What an import document holds: the persona to create, and which format it came in."""

    draft: PersonaDraft
    source: str


def load_document(payload: bytes, *, limit: int) -> Imported:
    """An import from raw bytes: a PNG card, or the JSON of our document or of a card."""
    if payload.startswith(SIGNATURE):
        return read_document(_card_json(read_card_text(payload, limit=limit)))
    if payload.lstrip()[:1] not in (b"{", b"["):
        raise BadRequest(
            "The upload is neither a PNG character card nor JSON: send our persona document, a character "
            "card's JSON, or a PNG card."
        )
    check_json(payload, what="The document")
    try:
        value = msgspec.json.decode(payload)
    except msgspec.DecodeError as exc:
        raise surrogate_error(payload, what="The document") or BadRequest(
            f"The document is not valid JSON: {exc}."
        ) from None
    return read_document(value)


def read_document(value: Any) -> Imported:
    """Our document or a character card, as a persona draft; anything else is refused by name."""
    if not isinstance(value, dict):
        raise BadRequest("The document must be a JSON object: our persona document or a character card.")
    if "format" in value:
        if value["format"] != FORMAT:
            raise BadRequest(
                f"Unknown document format {value['format']!r}: this server reads {FORMAT!r} documents and "
                "Character Cards V2 and V3.",
                field="format",
            )
        doc = validated(value, PersonaDocument, "document")
        fields = msgspec.structs.asdict(doc.persona)
        return Imported(PersonaDraft(**fields, extensions=doc.extensions), FORMAT)
    if "spec" in value:
        if value["spec"] not in (CARD_V2, CARD_V3):
            raise BadRequest(
                f"Unknown character card spec {value['spec']!r}: this server reads {CARD_V2!r} and {CARD_V3!r}.",
                field="spec",
            )
        return Imported(card_to_draft(value), value["spec"])
    if isinstance(value.get("name"), str) and any(k in value for k in _V1_FIELDS):
        return Imported(card_to_draft(value), "chara_card_v1")
    raise BadRequest(
        f'The document is neither a persona document (`"format": "{FORMAT}"`) nor a character card '
        '(`"spec": "chara_card_v2"` or `"chara_card_v3"`).'
    )


def _card_json(text: str) -> Any:
    text = "".join(text.split())
    if text.startswith("{"):  # a few tools store the JSON itself rather than its base64
        raw = text.encode()
    else:
        try:
            raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("The PNG card's text chunk is not valid base64.") from None
    check_json(raw, what="The PNG card's JSON")
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise surrogate_error(raw, what="The PNG card's JSON") or BadRequest(
            f"The PNG card's text chunk does not hold valid JSON: {exc}."
        ) from None


def persona_document(persona: Persona) -> PersonaDocument:
    """Our document of a persona (which must be unredacted: the system prompt is part of it)."""
    if persona.system_prompt is None:
        raise ValueError("persona_document needs the persona with its system prompt")
    return PersonaDocument(
        format=FORMAT,
        persona=DocumentPersona(
            name=persona.name,
            description=persona.description,
            system_prompt=persona.system_prompt,
            personality_traits=persona.personality_traits,
            capabilities=persona.capabilities,
            model_settings=persona.model_settings,
            tools=persona.tools,
            visibility=persona.visibility,
            limits=persona.limits,
            lorebook=persona.lorebook,
            greetings=persona.greetings,
            example_messages=persona.example_messages,
            scenario=persona.scenario,
        ),
        extensions=persona.extensions,
    )


def encode_document(document: PersonaDocument | dict[str, Any]) -> bytes:
    """Indented JSON with sorted object keys, so a file changes only where the persona did."""
    return msgspec.json.format(msgspec.json.encode(document, order="deterministic"), indent=2) + b"\n"


def slug(name: str) -> str:
    """A file name stem for a persona: lower case, ASCII letters and digits joined by hyphens."""
    text = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return text[:80].rstrip("-") or "persona"
