"""PersonaService: who may see and change which persona, and the rules a persona must satisfy."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID, uuid4

import msgspec

from core.errors import BadRequest, Forbidden, NotFound
from personas.lore import check_patterns
from personas.models import Caller, Limits, Lorebook, Persona, PersonaDraft, PersonaPatch, Tool
from personas.store import PersonaStore
from personas.template import check_template
from personas.text import check_json, check_name, check_text, normalize_name

__all__ = [
    "MAX_EXTENSIONS_BYTES",
    "PersonaService",
    "PreferenceSource",
    "check_draft",
    "draft_persona",
    "normalized",
    "with_lore_ids",
]

PreferenceSource = Literal["preference", "default"]

# Free-form JSON objects are stored as given; this bounds what one persona can make every request carry.
_MAX_OBJECT_BYTES = 32_768
# Extensions hold whole imported cards (lorebooks included) but never reach a prompt: a looser bound.
MAX_EXTENSIONS_BYTES = 2 * 1024 * 1024
_encoder = msgspec.json.Encoder()


def can_see(persona: Persona, caller: Caller) -> bool:
    return persona.is_active and (
        persona.visibility == "public" or caller.is_admin or persona.created_by == caller.user_id
    )


def can_edit(persona: Persona, caller: Caller) -> bool:
    return caller.is_admin or (persona.created_by is not None and persona.created_by == caller.user_id)


def present(persona: Persona, caller: Caller) -> Persona:
    """The persona as ``caller`` may see it: the system prompt and what else goes into the prompt unseen by the
    user (lorebook, example messages, scenario; the extensions, which may hold an imported card's prompt
    material) are for its owner and admins. Greetings are shown to whoever sees the persona: they open its
    conversations."""
    if can_edit(persona, caller):
        return persona
    return msgspec.structs.replace(
        persona, system_prompt=None, extensions={}, lorebook=None, example_messages=[], scenario=None
    )


def check_draft(
    draft: PersonaDraft | Persona, *, providers: Collection[str] | None = None, previous: Persona | None = None
) -> None:
    """The rules beyond field types, shared by saved personas and unsaved drafts.

    ``providers``: the configured provider names, which ``model_settings`` must pick from (None: not checked).
    ``previous``: the persona being changed; a system prompt or model settings it already had are not checked
    again, so a persona saved under older rules can still be edited.
    """
    check_name(draft.name)
    if draft.name != normalize_name(draft.name):
        raise BadRequest(
            "`name` must not start or end with spaces, nor hold invisible characters such as zero-width spaces.",
            field="name",
        )
    check_text(draft.description, "description")
    if draft.system_prompt is not None:
        check_text(draft.system_prompt, "system_prompt")
        if previous is None or draft.system_prompt != previous.system_prompt:
            check_template(draft.system_prompt)
    for field in ("personality_traits", "capabilities"):
        check_json(getattr(draft, field), field)
        if len(_encoder.encode(getattr(draft, field))) > _MAX_OBJECT_BYTES:
            raise BadRequest(f"`{field}` is larger than {_MAX_OBJECT_BYTES} bytes of JSON.", field=field)
    check_json(msgspec.to_builtins(draft.model_settings), "model_settings")
    check_json(msgspec.to_builtins(draft.tools), "tools")
    check_json(draft.extensions, "extensions")
    for field in ("lorebook", "greetings", "example_messages", "scenario"):
        check_json(msgspec.to_builtins(getattr(draft, field)), field)
    if isinstance(draft, PersonaDraft) and draft.change_note is not None:
        check_text(draft.change_note, "change_note")
    if len(_encoder.encode(draft.extensions)) > MAX_EXTENSIONS_BYTES:
        raise BadRequest(
            f"`extensions` is larger than {MAX_EXTENSIONS_BYTES} bytes of JSON; remove what you need not keep.",
            field="extensions",
        )
    _check_tools(draft.tools)
    if draft.lorebook is not None:
        _check_lore_ids(draft.lorebook)
    if providers is not None and (previous is None or draft.model_settings != previous.model_settings):
        _check_providers(draft, providers)


def _check_providers(draft: PersonaDraft | Persona, providers: Collection[str]) -> None:
    settings = draft.model_settings
    named = [("model_settings.provider", settings.provider)]
    named += [(f"model_settings.fallbacks[{i}].provider", f.provider) for i, f in enumerate(settings.fallbacks)]
    for field, provider in named:
        if provider is not None and provider not in providers:
            configured = ", ".join(sorted(providers))
            raise BadRequest(
                f"`{field}` names provider {provider!r}, which this server does not have; the configured "
                f"providers are {configured}. Choose one of them, or leave `provider` out for the default.",
                field=field,
                details={"providers": sorted(providers)},
            )


def _check_lore_ids(book: Lorebook) -> None:
    seen: set[str] = set()
    for index, entry in enumerate(book.entries):
        if entry.id is None:
            continue
        if entry.id in seen:
            raise BadRequest(
                f"`lorebook.entries[{index}].id`: {entry.id!r} is used by an earlier entry; ids are unique in a "
                "book (leave `id` out and one is made).",
                field=f"lorebook.entries[{index}].id",
            )
        seen.add(entry.id)


def with_lore_ids(book: Lorebook | None, *, stable: bool = False) -> Lorebook | None:
    """The book with an id on every entry: one it was written without gets a fresh one.

    A saved book's are random, so that an entry added later never takes the id of one deleted before it (and
    a conversation's timed effects of that one). ``stable``: an unsaved draft's, which is built again for each
    dry run, are ``draft-<position>``, so that each run names, and rolls the probability of, the same entry the
    same way."""
    if book is None or all(entry.id is not None for entry in book.entries):
        return book
    taken = {entry.id for entry in book.entries}
    entries = []
    for position, entry in enumerate(book.entries):
        if entry.id is None:
            fresh = f"draft-{position}" if stable else uuid4().hex[:12]
            while fresh in taken:
                fresh = f"{fresh}-" if stable else uuid4().hex[:12]
            taken.add(fresh)
            entry = msgspec.structs.replace(entry, id=fresh)
        entries.append(entry)
    return msgspec.structs.replace(book, entries=entries)


def _check_tools(tools: list[Tool]) -> None:
    seen: set[str] = set()
    for index, tool in enumerate(tools):
        if tool.name in seen:
            raise BadRequest(f"`tools[{index}].name`: {tool.name!r} is used twice.", field=f"tools[{index}].name")
        seen.add(tool.name)
        if tool.parameters.get("type") != "object":
            raise BadRequest(
                f'`tools[{index}].parameters` must be a JSON Schema object such as {{"type": "object", '
                '"properties": {...}}.',
                field=f"tools[{index}].parameters",
            )
        if len(_encoder.encode(tool.parameters)) > _MAX_OBJECT_BYTES:
            raise BadRequest(f"`tools[{index}].parameters` is too large.", field=f"tools[{index}].parameters")


def draft_persona(
    draft: PersonaDraft, caller: Caller | None, *, providers: Collection[str] | None = None, dry_run: bool = False
) -> Persona:
    """A validated, unsaved persona built from a draft body (its name normalised: see :func:`normalize_name`).
    ``dry_run``: one that is not being saved, whose new lorebook entries get stable ids (:func:`with_lore_ids`)."""
    draft = normalized(draft)
    check_draft(draft, providers=providers)
    now = datetime.now(UTC)
    return Persona(
        id=uuid4(),
        name=draft.name,
        description=draft.description,
        system_prompt=draft.system_prompt,
        personality_traits=draft.personality_traits,
        capabilities=draft.capabilities,
        model_settings=draft.model_settings,
        tools=draft.tools,
        visibility=draft.visibility,
        extensions=draft.extensions,
        limits=draft.limits,
        lorebook=with_lore_ids(draft.lorebook, stable=dry_run),
        greetings=draft.greetings,
        example_messages=draft.example_messages,
        scenario=draft.scenario,
        is_active=True,
        is_default=draft.is_default,
        version=0,
        created_by=caller.user_id if caller else None,
        created_at=now,
        updated_at=now,
    )


def normalized(draft: PersonaDraft) -> PersonaDraft:
    """The draft with its name as it is stored and compared: names that differ only in invisible characters,
    surrounding spaces or Unicode compatibility forms are one name, so they collide as duplicates."""
    name = normalize_name(draft.name)
    return draft if name == draft.name else msgspec.structs.replace(draft, name=name)


class PersonaService:
    """The persona API's rules on top of :class:`PersonaStore`.

    ``providers``: the configured provider names; a persona saved naming another is refused (None: any name).
    """

    def __init__(self, store: PersonaStore, providers: Collection[str] | None = None) -> None:
        self.store = store
        self.providers = None if providers is None else frozenset(providers)

    async def list(self, caller: Caller, *, limit: int, offset: int) -> tuple[list[Persona], int]:
        # Admins act on every persona, so they list every one; anyone else sees public ones and their own.
        if caller.is_admin:
            personas, total = await self.store.list_all(limit=limit, offset=offset)
        else:
            personas, total = await self.store.list_visible(caller.user_id, limit=limit, offset=offset)
        return [present(p, caller) for p in personas], total

    async def get_visible(self, caller: Caller, persona_id: UUID, *, fresh: bool = False) -> Persona:
        """The persona if ``caller`` may see it (unredacted), else 404.

        ``fresh`` reads PostgreSQL itself, for a write to build on: a cached copy may be a moment older
        than a change another instance made, and saving it whole would undo that change.
        """
        persona = await (self.store.get_uncached(persona_id) if fresh else self.store.get(persona_id))
        if persona is None or not can_see(persona, caller):
            raise NotFound(
                f"Persona {persona_id} not found, or you may not see it: check `persona_id`.", field="persona_id"
            )
        return persona

    async def get_editable(self, caller: Caller, persona_id: UUID, *, fresh: bool = False) -> Persona:
        """The persona if ``caller`` may change it; 404 when invisible, 403 when visible but not theirs."""
        persona = await self.get_visible(caller, persona_id, fresh=fresh)
        if not can_edit(persona, caller):
            raise Forbidden(
                f"Persona {persona.name!r} belongs to another user: only its owner or an admin may change it.",
            )
        return persona

    async def create(self, caller: Caller, draft: PersonaDraft) -> Persona:
        if draft.is_default and not caller.is_admin:
            raise Forbidden("Only admins may set `is_default`; leave it out.", field="is_default")
        persona = msgspec.structs.replace(draft_persona(draft, caller, providers=self.providers), version=1)
        await check_patterns(persona.lorebook)
        return await self.store.create(persona, actor=caller.user_id, change_note=draft.change_note)

    async def update(self, caller: Caller, persona_id: UUID, patch: PersonaPatch) -> Persona:
        current = await self.get_editable(caller, persona_id, fresh=True)
        changes: dict[str, Any] = {
            f: getattr(patch, f)
            for f in patch.__struct_fields__
            if f != "change_note" and getattr(patch, f) is not msgspec.UNSET
        }
        if "limits" in changes and changes["limits"] is None:
            changes["limits"] = Limits()
        if "is_default" in changes:
            if not caller.is_admin:
                raise Forbidden("Only admins may set `is_default`; leave it out.", field="is_default")
            if current.is_default and not changes["is_default"]:
                raise BadRequest(
                    "There must always be a default persona: to move it, set `is_default` to true on the "
                    "persona that should become the default.",
                    field="is_default",
                )
        if isinstance(changes.get("name"), str):
            changes["name"] = normalize_name(changes["name"])
        changed = msgspec.structs.replace(current, **changes)
        check_draft(changed, providers=self.providers, previous=current)
        if "lorebook" in changes:
            await check_patterns(changed.lorebook)
            changed = msgspec.structs.replace(changed, lorebook=with_lore_ids(changed.lorebook))
        note = patch.change_note if isinstance(patch.change_note, str) else None
        return await self.store.update(persona_id, changed, actor=caller.user_id, change_note=note)

    async def delete(self, caller: Caller, persona_id: UUID) -> Persona:
        persona = await self.get_editable(caller, persona_id)
        await self.store.soft_delete(persona_id)
        return persona

    async def set_preference(self, caller: Caller, persona_id: UUID) -> Persona:
        persona = await self.get_visible(caller, persona_id)
        await self.store.set_preference(caller.user_id, persona_id)
        return persona

    async def current(self, caller: Caller) -> tuple[Persona, PreferenceSource]:
        """The user's preferred persona while it stays active and visible, else the default."""
        preferred = await self.store.get_preference(caller.user_id)
        if preferred is not None:
            persona = await self.store.get(preferred)
            if persona is not None and can_see(persona, caller):
                return persona, "preference"
        return await self.default(), "default"

    async def default(self) -> Persona:
        persona = await self.store.get_default()
        if persona is None:
            persona, _ = await self.store.ensure_default()
        return persona

    async def initialize_default(self) -> tuple[Persona, bool]:
        return await self.store.ensure_default()
