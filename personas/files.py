"""Personas as files: a directory of persona documents written from, and read into, the database.

Export writes ``<slug>.json`` per active persona (only files whose content changed are rewritten).
Import reads every ``*.json`` and ``*.png`` of a directory, checks them all before writing anything, then
creates or updates personas by name (case-insensitive); a persona equal to its file is left alone, so a
second import of the same directory changes nothing and bumps no version. Imports act as the system
(``created_by`` NULL) unless an owner is given; an existing persona keeps its owner and ``is_default``.
A PNG card's picture (without its card text) becomes its persona's avatar, as it does over HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple
from uuid import UUID

import msgspec

from core.errors import BadRequest
from personas.avatars import MAX_AVATAR_BYTES, AvatarStore
from personas.documents import encode_document, load_document, persona_document, slug
from personas.models import CONTENT_FIELDS, Persona, PersonaDraft
from personas.png import image_only
from personas.service import check_draft, draft_persona, normalized
from personas.store import PersonaStore

__all__ = [
    "SUITE_SUFFIX",
    "FileResult",
    "FilesError",
    "import_drafts",
    "read_directory",
    "read_pictures",
    "write_directory",
]

Outcome = Literal["written", "created", "updated", "unchanged", "removed"]
# The file beside ``<slug>.json`` that holds the persona's test suite; not a persona document.
SUITE_SUFFIX = ".tests.json"

# The fields a file sets; an import that would change none of them leaves the persona as it is.
_CONTENT = CONTENT_FIELDS


class FileResult(NamedTuple):
    """What happened to one persona and its file (``persona_id``: the persona exported)."""

    file: str
    name: str
    outcome: Outcome
    persona_id: UUID | None = None


class FilesError(BadRequest):
    """Files of the directory cannot be imported; ``problems`` names each file and what is wrong."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("nothing was imported:\n  " + "\n  ".join(problems), details={"problems": problems})
        self.problems = problems


def write_directory(directory: Path, personas: list[Persona]) -> list[FileResult]:
    """One document per persona, named by its slug (``-2``, ``-3`` when two names share one)."""
    directory.mkdir(parents=True, exist_ok=True)
    results, taken = [], set()
    for persona in sorted(personas, key=lambda p: (p.name.lower(), str(p.id))):
        stem, n = slug(persona.name), 2
        while stem in taken:
            stem, n = f"{slug(persona.name)}-{n}", n + 1
        taken.add(stem)
        path = directory / f"{stem}.json"
        content = encode_document(persona_document(persona))
        if path.exists() and path.read_bytes() == content:
            results.append(FileResult(path.name, persona.name, "unchanged", persona.id))
            continue
        # Written aside and renamed, so a reader of the directory never sees half a file.
        partial = path.with_suffix(".json.partial")
        partial.write_bytes(content)
        partial.replace(path)
        results.append(FileResult(path.name, persona.name, "written", persona.id))
    return results


def read_directory(directory: Path, *, limit: int) -> list[tuple[str, PersonaDraft]]:
    """Every persona file of ``directory``, validated; any problem in any file refuses them all."""
    if not directory.is_dir():
        raise FilesError([f"{directory}: not a directory"])
    # A persona's test suite sits beside it as `<slug>.tests.json` (runtime.authoring.suite_files reads those).
    paths = sorted(
        p
        for p in directory.iterdir()
        if p.suffix.lower() in (".json", ".png") and not p.name.lower().endswith(SUITE_SUFFIX) and p.is_file()
    )
    drafts: list[tuple[str, PersonaDraft]] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for path in paths:
        try:
            if path.stat().st_size > limit:
                raise BadRequest(f"larger than {limit} bytes (IMPORT_MAX_BYTES)")
            draft = normalized(load_document(path.read_bytes(), limit=limit).draft)
            check_draft(draft)
        except BadRequest as exc:
            problems.append(f"{path.name}: {exc.message}")
            continue
        key = draft.name.casefold()
        if key in seen:
            problems.append(f"{path.name}: persona {draft.name!r} is also defined by {seen[key]}")
            continue
        seen[key] = path.name
        drafts.append((path.name, draft))
    if problems:
        raise FilesError(problems)
    return drafts


def read_pictures(directory: Path, drafts: list[tuple[str, PersonaDraft]]) -> dict[str, bytes]:
    """The picture of each PNG card of ``drafts`` (files :func:`read_directory` checked), without its card text;
    one larger than an avatar may be is left out, as an import over HTTP leaves it."""
    pictures = {}
    for file, _ in drafts:
        if file.lower().endswith(".png"):
            picture = image_only((directory / file).read_bytes())
            if len(picture) <= MAX_AVATAR_BYTES:
                pictures[file] = picture
    return pictures


async def import_drafts(
    store: PersonaStore,
    drafts: list[tuple[str, PersonaDraft]],
    *,
    owner: UUID | None,
    avatars: AvatarStore | None = None,
    pictures: Mapping[str, bytes] | None = None,
) -> list[FileResult]:
    """Create or update each persona by name; one equal to its file (and its picture, if any) is not touched."""
    results = []
    for file, draft in drafts:
        note = f"imported from {file}"
        current = await store.find_owned(draft.name, owner)
        if current is None:
            persona = msgspec.structs.replace(draft_persona(draft, None), version=1, created_by=owner)
            created = await store.create(persona, actor=owner, change_note=note)
            await _picture(avatars, created.id, (pictures or {}).get(file))
            results.append(FileResult(file, draft.name, "created"))
            continue
        pictured = await _picture(avatars, current.id, (pictures or {}).get(file))
        changed = msgspec.structs.replace(current, **{field: getattr(draft, field) for field in _CONTENT})
        if _content(changed) == _content(current):
            results.append(FileResult(file, draft.name, "updated" if pictured else "unchanged"))
            continue
        await store.update(current.id, changed, actor=owner, change_note=note)
        results.append(FileResult(file, draft.name, "updated"))
    return results


async def _picture(avatars: AvatarStore | None, persona_id: UUID, picture: bytes | None) -> bool:
    """Make ``picture`` the persona's avatar unless it already is; whether it changed anything."""
    if avatars is None or picture is None:
        return False
    current = await avatars.get(persona_id)
    if current is not None and current.image == picture:
        return False
    await avatars.put(persona_id, "image/png", picture)
    return True


def _content(persona: Persona) -> list[Any]:
    return [msgspec.to_builtins(getattr(persona, field)) for field in _CONTENT]
