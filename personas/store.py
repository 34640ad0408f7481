"""PersonaStore: persona rows in PostgreSQL (the truth) behind an in-process layer and a shared cache."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from msgspec import UNSET

from core.errors import Conflict, NotFound, ServiceUnavailable
from personas.cache import Cache
from personas.changes import PERSONA_SIGNAL, UNHEARD_SECONDS, Notify, PersonaChange, change_decoder
from personas.entries import (
    DEFAULT_KEY,
    PersonaEntry,
    SharedEntries,
    id_decoder,
    name_key,
    owned_name_key,
    persona_decoder,
    persona_key,
    preference_key,
    version_key,
)
from personas.local_cache import LocalCache
from personas.models import MU_ID, Limits, Persona
from personas.releases import NO_RELEASE, PRODUCTION, Release, Rollout
from personas.versions import PersonaVersion, VersionSummary, as_of, version_decoder

__all__ = ["PersonaStore", "PersonaVersion", "VersionSummary"]

log = logging.getLogger("persona_runtime.cache")

_COLUMNS = """id, name, description, system_prompt, personality_traits, capabilities, model_settings, tools,
    visibility, extensions, limits, lorebook, greetings, example_messages, scenario,
    is_active, is_default, version, created_by, created_at, updated_at"""

GET = f"SELECT {_COLUMNS} FROM personas WHERE id = $1"
# A persona with its labels and rollout, read together so that serving either costs no read of its own.
_RELEASE = """(SELECT jsonb_object_agg(l.label, l.version) FROM persona_labels l WHERE l.persona_id = personas.id)
        AS labels,
    (SELECT jsonb_build_object('version', r.version, 'percent', r.percent) FROM persona_rollouts r
     WHERE r.persona_id = personas.id) AS rollout"""
GET_ENTRY = f"SELECT {_COLUMNS}, {_RELEASE} FROM personas WHERE id = $1"
GET_FOR_UPDATE = f"SELECT {_COLUMNS} FROM personas WHERE id = $1 FOR UPDATE"
GET_DEFAULT = f"SELECT {_COLUMNS} FROM personas WHERE is_default AND is_active"
LIST_VISIBLE = f"""
SELECT {_COLUMNS}, count(*) OVER () AS total FROM personas
WHERE is_active AND (visibility = 'public' OR created_by = $1)
ORDER BY is_default DESC, lower(name), id
LIMIT $2 OFFSET $3"""
COUNT_VISIBLE = "SELECT count(*) FROM personas WHERE is_active AND (visibility = 'public' OR created_by = $1)"
# An admin's list: every active persona, other users' private ones too, in the same order.
LIST_ALL = f"""
SELECT {_COLUMNS}, count(*) OVER () AS total FROM personas
WHERE is_active
ORDER BY is_default DESC, lower(name), id
LIMIT $1 OFFSET $2"""
COUNT_ALL = "SELECT count(*) FROM personas WHERE is_active"
LIST_ACTIVE = f"SELECT {_COLUMNS} FROM personas WHERE is_active ORDER BY lower(name), id"
# Names are unique per owner and among public personas (the system's, created_by null, count as one owner).
FIND_PUBLIC_BY_NAME = f"""SELECT {_COLUMNS}, {_RELEASE} FROM personas
WHERE is_active AND visibility = 'public' AND lower(name) = lower($1)"""
FIND_OWNED_BY_NAME = f"""SELECT {_COLUMNS}, {_RELEASE} FROM personas
WHERE is_active AND created_by IS NOT DISTINCT FROM $2 AND lower(name) = lower($1)"""
INSERT = f"""
INSERT INTO personas (name, description, system_prompt, personality_traits, capabilities, model_settings,
                      tools, visibility, extensions, limits, lorebook, greetings, example_messages, scenario,
                      created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
RETURNING {_COLUMNS}"""
UPDATE = f"""
UPDATE personas SET name = $2, description = $3, system_prompt = $4, personality_traits = $5,
    capabilities = $6, model_settings = $7, tools = $8, visibility = $9, extensions = $10, limits = $11,
    lorebook = $12, greetings = $13, example_messages = $14, scenario = $15, version = version + 1
WHERE id = $1
RETURNING {_COLUMNS}"""
CLEAR_DEFAULT = "UPDATE personas SET is_default = false WHERE is_default AND id <> $1"
SET_DEFAULT = f"UPDATE personas SET is_default = true WHERE id = $1 RETURNING {_COLUMNS}"
SOFT_DELETE = "UPDATE personas SET is_active = false WHERE id = $1 AND is_active RETURNING name, created_by"
RESTORE_MU = f"UPDATE personas SET is_active = true, is_default = true WHERE id = $1 RETURNING {_COLUMNS}"
SET_ACTOR = """SELECT set_config('persona_runtime.actor', coalesce($1::text, ''), true),
    set_config('persona_runtime.change_note', coalesce($2::text, ''), true)"""
LOCK_DEFAULT = "SELECT pg_advisory_xact_lock(7069656)"
GET_PREFERENCE = "SELECT persona_id FROM user_persona_preferences WHERE user_id = $1"
SET_PREFERENCE = """
INSERT INTO user_persona_preferences (user_id, persona_id) VALUES ($1, $2)
ON CONFLICT (user_id) DO UPDATE SET persona_id = EXCLUDED.persona_id, updated_at = now()"""
LIST_VERSIONS = """
SELECT version, created_at, created_by, change_note, count(*) OVER () AS total FROM persona_versions
WHERE persona_id = $1 ORDER BY version DESC LIMIT $2 OFFSET $3"""
GET_VERSION = """
SELECT persona_id, version, name, description, system_prompt, personality_traits, capabilities,
       model_settings, tools, visibility, extensions, limits, lorebook, greetings, example_messages, scenario,
       created_by, change_note, created_at
FROM persona_versions WHERE persona_id = $1 AND version = $2"""
LOCK_ACTIVE = "SELECT version FROM personas WHERE id = $1 AND is_active FOR UPDATE"
SET_LABEL = """
INSERT INTO persona_labels (persona_id, label, version, set_by) VALUES ($1, $2, $3, $4)
ON CONFLICT (persona_id, label) DO UPDATE SET version = EXCLUDED.version, set_by = EXCLUDED.set_by,
    updated_at = now()"""
DELETE_LABEL = "DELETE FROM persona_labels WHERE persona_id = $1 AND label = $2"
# Promoting: once production serves the rollout's version, the rollout has nothing left to try.
END_PROMOTED_ROLLOUT = "DELETE FROM persona_rollouts WHERE persona_id = $1 AND version = $2"
SET_ROLLOUT = """
INSERT INTO persona_rollouts (persona_id, version, percent, set_by) VALUES ($1, $2, $3, $4)
ON CONFLICT (persona_id) DO UPDATE SET version = EXCLUDED.version, percent = EXCLUDED.percent,
    set_by = EXCLUDED.set_by, updated_at = now()"""
DELETE_ROLLOUT = "DELETE FROM persona_rollouts WHERE persona_id = $1"


# Names are at most 100 characters (a few letters lowercase to two), so a longer request matches no persona:
# it is looked up without being kept, and odd requests cannot fill the local layer with huge keys.
_LONGEST_KEPT_NAME = 400


# The owner slot of a public name's local entry (any real owner is a UUID or None, the system).
_PUBLIC = object()


def _named(persona: Persona, name: str, owner: UUID | None, *, owned: bool) -> bool:
    """Whether ``persona`` still is what the lookup of ``name`` (owned by ``owner``, or public) found."""
    if not persona.is_active or persona.name.lower() != name.lower():
        return False
    return persona.created_by == owner if owned else persona.visibility == "public"


def _persona(record: asyncpg.Record) -> Persona:
    return msgspec.convert(dict(record), Persona, strict=False)


def _entry(record: asyncpg.Record) -> PersonaEntry:
    """A persona read with :data:`_RELEASE`'s columns."""
    labels, rollout = record["labels"], record["rollout"]
    if labels is None and rollout is None:
        return PersonaEntry(persona=_persona(record))
    release = Release(labels=labels or {}, rollout=None if rollout is None else msgspec.convert(rollout, Rollout))
    return PersonaEntry(persona=_persona(record), release=release)


def _content(persona: Persona) -> tuple[Any, ...]:
    return (
        persona.name,
        persona.description,
        persona.system_prompt,
        persona.personality_traits,
        persona.capabilities,
        msgspec.to_builtins(persona.model_settings),
        msgspec.to_builtins(persona.tools),
        persona.visibility,
        persona.extensions,
        _limits_column(persona.limits),
        None if persona.lorebook is None else msgspec.to_builtins(persona.lorebook),
        persona.greetings,
        msgspec.to_builtins(persona.example_messages),
        persona.scenario,
    )


def _name_taken(name: str, error: asyncpg.UniqueViolationError) -> Conflict:
    """The 409 for a name the database refused, saying which rule it broke (never whose persona has it)."""
    constraint = getattr(error, "constraint_name", None)
    if constraint == "personas_public_name_key":
        message = (
            f"A public persona named {name!r} already exists; choose another `name`, or keep this persona private "
            "(names are compared regardless of case)."
        )
    elif constraint == "personas_reserved_name":
        message = (
            f"The name {name!r} is reserved for the default persona; choose another `name`, or keep this persona "
            "private."
        )
    else:
        message = (
            f"This persona's owner already has a persona named {name!r}; choose another `name` (names are "
            "compared regardless of case)."
        )
    return Conflict(message, field="name")


class PersonaStore:
    """Reads go to a local layer, then the shared cache, then PostgreSQL; writes commit in PostgreSQL, then
    delete the entries they change, in the shared cache and locally.

    Each write also announces what it changed through ``notify``, inside its transaction, so that every
    instance that hears it (:meth:`hear`) drops those entries too, whether or not the shared cache answers
    at that moment. ``local_ttl`` is the last resort: it bounds how long this process may serve an entry
    whose change it was not told of; while it cannot hear announcements (``set_hearing(False)``), at most
    a second. Writes made through this store are seen here at once. Concurrent misses for one key share
    one load.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        cache: Cache,
        *,
        ttl: int = 300,
        local_ttl: float = 1.0,
        on_lookup: Callable[[str, str], None] | None = None,
        notify: Notify | None = None,
    ) -> None:
        """``on_lookup(layer, result)`` hears of every cache look-up ("local" or "shared"), for metrics.
        Without ``notify`` writes are announced to no one: other instances see them after ``local_ttl``."""
        self._pool = pool
        self._notify = notify
        self._local_ttl = local_ttl
        local = shared = None
        if on_lookup is not None:
            local, shared = (lambda result: on_lookup("local", result)), (lambda result: on_lookup("shared", result))
        self._shared = SharedEntries(cache, ttl=ttl, on_lookup=shared)
        # Personas may carry megabytes of extensions: bound them harder than the ids.
        self._personas: LocalCache[UUID, PersonaEntry | None] = LocalCache(
            ttl=local_ttl, max_entries=1_000, on_lookup=local
        )
        # Saved versions never change: kept until evicted, for production pinned to one and for rollouts.
        self._versions: LocalCache[tuple[UUID, int], Persona | None] = LocalCache(
            ttl=3600.0, max_entries=1_000, on_lookup=local
        )
        self._defaults: LocalCache[str, Persona | None] = LocalCache(ttl=local_ttl, max_entries=1, on_lookup=local)
        # (owner, lowercased name) for one owner's names, (_PUBLIC, lowercased name) for public ones.
        self._names: LocalCache[tuple[object, str], UUID | None] = LocalCache(
            ttl=local_ttl, max_entries=10_000, on_lookup=local
        )
        self._preferences: LocalCache[UUID, UUID | None] = LocalCache(
            ttl=local_ttl, max_entries=10_000, on_lookup=local
        )

    def set_hearing(self, heard: bool) -> None:
        """Whether writes made elsewhere are announced to this process from now on. Either way the local
        layer starts afresh: while they were not, some may have been missed."""
        ttl = self._local_ttl if heard else min(self._local_ttl, UNHEARD_SECONDS)
        for layer in (self._personas, self._defaults, self._names, self._preferences):
            layer.retime(ttl)

    async def hear(self, payload: bytes) -> None:
        """A write somewhere (here too: harmless) changed these entries: drop them, in the shared cache
        too, since the writer may have failed to."""
        try:
            change = change_decoder.decode(payload)
        except msgspec.DecodeError:
            log.warning("ignoring a persona change announcement that does not decode")
            return
        if change.persona_id is not None:
            await self._forget(change.persona_id, default=change.default, names=change.names, owner=change.owner)
        if change.user_id is not None:
            await self._forget_preference(change.user_id)

    # Reads -----------------------------------------------------------------------------------------
    # Personas handed out here are shared by every request that reads them within ``local_ttl``: they are
    # frozen, and the dicts and lists they hold must not be changed either.

    async def get(self, persona_id: UUID) -> Persona | None:
        entry = await self._personas.get(persona_id, lambda: self._load(persona_id))
        return None if entry is None else entry.persona

    async def release(self, persona_id: UUID) -> Release:
        """The persona's labels and rollout, from the same entry as :meth:`get` (no read of its own when the
        persona was just read, and then no look-up counted twice either)."""
        entry = self._personas.peek(persona_id)
        if entry is None:
            entry = await self._personas.get(persona_id, lambda: self._load(persona_id))
        return NO_RELEASE if entry is None else entry.release

    async def as_of(self, current: Persona, version: int) -> Persona | None:
        """``current`` as it was at saved ``version`` (None: never saved), cached: a version never changes once
        saved, and only the persona's own flags, which are not part of a version, are taken from ``current``."""
        if version == current.version:
            return current
        key = (current.id, version)
        then = await self._versions.get(key, lambda: self._load_version(current, version))
        if then is None:  # not saved yet, maybe later: not remembered
            self._versions.forget(key)
            return None
        if (then.is_active, then.is_default, then.visibility) != (
            current.is_active,
            current.is_default,
            current.visibility,
        ):
            then = msgspec.structs.replace(
                then, is_active=current.is_active, is_default=current.is_default, visibility=current.visibility
            )
        return then

    async def get_uncached(self, persona_id: UUID) -> Persona | None:
        """The persona as PostgreSQL has it now: what a write should build on."""
        record = await self._pool.fetchrow(GET, persona_id)
        return _persona(record) if record else None

    async def get_default(self) -> Persona | None:
        return await self._defaults.get(DEFAULT_KEY, self._load_default)

    async def find_by_name(self, name: str, user_id: UUID | None = None) -> Persona | None:
        """What ``persona/<name>`` names for ``user_id``: their own active persona of that name (any case), else
        the public one."""
        if user_id is not None:
            own = await self.find_owned(name, user_id)
            if own is not None:
                return own
        return await self._find(name, None)

    async def find_owned(self, name: str, owner: UUID | None) -> Persona | None:
        """The active persona called ``name`` (any case) that ``owner`` owns (None: the system)."""
        return await self._find(name, owner, owned=True)

    async def _find(self, name: str, owner: UUID | None, *, owned: bool = False) -> Persona | None:
        if len(name) > _LONGEST_KEPT_NAME:
            return await self._select_by_name(name, owner, owned=owned)
        key = (owner if owned else _PUBLIC, name.lower())
        persona_id = await self._names.get(key, lambda: self._load_name(name, owner, owned=owned))
        if persona_id is None:
            return None
        persona = await self.get(persona_id)
        if persona is not None and _named(persona, name, owner, owned=owned):
            return persona
        # The name moved since it was looked up (a rename, delete or publish elsewhere): ask the truth, and let
        # the next lookup start afresh.
        await self._shared.delete(owned_name_key(owner, name) if owned else name_key(name))
        self._names.forget(key)
        return await self._select_by_name(name, owner, owned=owned)

    async def list_active(self) -> list[Persona]:
        """Every active persona, whoever owns it, by name: for operators exporting the whole set."""
        return [_persona(r) for r in await self._pool.fetch(LIST_ACTIVE)]

    async def list_visible(self, user_id: UUID, *, limit: int, offset: int) -> tuple[list[Persona], int]:
        records = await self._pool.fetch(LIST_VISIBLE, user_id, limit, offset)
        if records:
            total = records[0]["total"]
        else:
            total = await self._pool.fetchval(COUNT_VISIBLE, user_id)
        return [_persona(r) for r in records], int(total)

    async def list_all(self, *, limit: int, offset: int) -> tuple[list[Persona], int]:
        """Every active persona, whoever owns it and whatever its visibility: an admin's list."""
        records = await self._pool.fetch(LIST_ALL, limit, offset)
        total = records[0]["total"] if records else await self._pool.fetchval(COUNT_ALL)
        return [_persona(r) for r in records], int(total)

    async def get_preference(self, user_id: UUID) -> UUID | None:
        return await self._preferences.get(user_id, lambda: self._load_preference(user_id))

    async def list_versions(
        self, persona_id: UUID, *, limit: int = 100, offset: int = 0
    ) -> tuple[list[VersionSummary], int]:
        records = await self._pool.fetch(LIST_VERSIONS, persona_id, limit, offset)
        total = records[0]["total"] if records else 0
        return [msgspec.convert(dict(r), VersionSummary, strict=False) for r in records], int(total)

    async def get_version(self, persona_id: UUID, version: int) -> PersonaVersion | None:
        record = await self._pool.fetchrow(GET_VERSION, persona_id, version)
        return msgspec.convert(dict(record), PersonaVersion, strict=False) if record else None

    # Loads: one per key at a time, from the shared cache, else PostgreSQL ---------------------------

    async def _load(self, persona_id: UUID) -> PersonaEntry | None:
        key = persona_key(persona_id)
        cached = await self._shared.read(key, persona_decoder)
        if cached is not UNSET:
            return cached
        record = await self._pool.fetchrow(GET_ENTRY, persona_id)
        if record is None:
            return None
        entry = _entry(record)
        await self._shared.write(key, entry)
        return entry

    async def _load_version(self, current: Persona, version: int) -> Persona | None:
        key = version_key(current.id, version)
        saved = await self._shared.read(key, version_decoder)
        if saved is UNSET or saved is None:
            saved = await self.get_version(current.id, version)
            if saved is None:  # a version not saved yet may be saved later: only what exists is shared
                return None
            await self._shared.write(key, saved)
        return as_of(current, saved)

    async def _load_default(self) -> Persona | None:
        cached = await self._shared.read(DEFAULT_KEY, id_decoder)
        if isinstance(cached, UUID):
            persona = await self.get(cached)
            if persona is not None and persona.is_active and persona.is_default:
                return persona
        record = await self._pool.fetchrow(GET_DEFAULT)
        if record is None:
            return None
        persona = _persona(record)
        await self._shared.write(DEFAULT_KEY, persona.id)
        return persona

    async def _load_name(self, name: str, owner: UUID | None, *, owned: bool) -> UUID | None:
        key = owned_name_key(owner, name) if owned else name_key(name)
        cached = await self._shared.read(key, id_decoder)
        if isinstance(cached, UUID):
            return cached
        entry = await self._select_entry_by_name(name, owner, owned=owned)
        if entry is None:
            # Kept locally only: an unknown name costs one query per process per ``local_ttl``, and no
            # shared entry can outlive a create whose delete it missed.
            return None
        persona_id = entry.persona.id
        await self._shared.write(key, persona_id)
        await self._shared.write(persona_key(persona_id), entry)
        return persona_id

    async def _select_by_name(self, name: str, owner: UUID | None, *, owned: bool) -> Persona | None:
        entry = await self._select_entry_by_name(name, owner, owned=owned)
        return None if entry is None else entry.persona

    async def _select_entry_by_name(self, name: str, owner: UUID | None, *, owned: bool) -> PersonaEntry | None:
        if owned:
            record = await self._pool.fetchrow(FIND_OWNED_BY_NAME, name, owner)
        else:
            record = await self._pool.fetchrow(FIND_PUBLIC_BY_NAME, name)
        return _entry(record) if record else None

    async def _load_preference(self, user_id: UUID) -> UUID | None:
        key = preference_key(user_id)
        cached = await self._shared.read(key, id_decoder)
        if cached is not UNSET:
            return cached
        persona_id: UUID | None = await self._pool.fetchval(GET_PREFERENCE, user_id)
        await self._shared.write(key, persona_id)
        return persona_id

    # Writes ----------------------------------------------------------------------------------------

    async def create(self, persona: Persona, *, actor: UUID | None, change_note: str | None) -> Persona:
        """Insert ``persona`` (its id, version and times are assigned here) as version 1."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(SET_ACTOR, _text(actor), change_note)
            try:
                record = await conn.fetchrow(INSERT, *_content(persona), persona.created_by)
            except asyncpg.UniqueViolationError as exc:
                raise _name_taken(persona.name, exc) from None
            created = _persona(record)
            if persona.is_default:
                created = await self._move_default(conn, created.id)
            names, owner = (created.name,), created.created_by
            await self._announce(conn, created.id, default=persona.is_default, names=names, owner=owner)
        # The name may have been looked up, and remembered as unknown, before it was taken.
        await self._forget(created.id, default=persona.is_default, names=names, owner=owner)
        return created

    async def update(
        self, persona_id: UUID, changed: Persona, *, actor: UUID | None, change_note: str | None
    ) -> Persona:
        """Save ``changed`` as the next version of the persona; a new default moves atomically."""
        async with self._pool.acquire() as conn, conn.transaction():
            current = await conn.fetchrow(GET_FOR_UPDATE, persona_id)
            if current is None or not current["is_active"]:
                raise NotFound(f"Persona {persona_id} not found.", field="id")
            await conn.execute(SET_ACTOR, _text(actor), change_note)
            try:
                record = await conn.fetchrow(UPDATE, persona_id, *_content(changed))
            except asyncpg.UniqueViolationError as exc:
                raise _name_taken(changed.name, exc) from None
            updated = _persona(record)
            if changed.is_default and not current["is_default"]:
                updated = await self._move_default(conn, persona_id)
            names, owner = (current["name"], updated.name), updated.created_by
            await self._announce(conn, persona_id, default=True, names=names, owner=owner)
        await self._forget(persona_id, default=True, names=names, owner=owner)
        return updated

    async def soft_delete(self, persona_id: UUID) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            deleted = await conn.fetchrow(SOFT_DELETE, persona_id)
            names: tuple[str, ...] = (deleted["name"],) if deleted is not None else ()
            owner: UUID | None = deleted["created_by"] if deleted is not None else None
            if deleted is not None:
                await self._announce(conn, persona_id, default=True, names=names, owner=owner)
        await self._forget(persona_id, default=True, names=names, owner=owner)
        return deleted is not None

    async def set_label(self, persona: Persona, label: str, version: int, *, actor: UUID | None) -> None:
        """Point ``label`` at saved ``version`` (``production``: pin it). Pinning production to the rollout's
        version promotes it, which ends the rollout."""
        await self._release_write(
            persona, SET_LABEL, label, version, actor, version=version, promotes=label == PRODUCTION
        )

    async def delete_label(self, persona: Persona, label: str) -> bool:
        """Remove ``label`` (``production``: unpin it, so it follows the latest save); False when it was not set."""
        return await self._release_write(persona, DELETE_LABEL, label)

    async def set_rollout(self, persona: Persona, version: int, percent: int, *, actor: UUID | None) -> None:
        await self._release_write(persona, SET_ROLLOUT, version, percent, actor, version=version)

    async def delete_rollout(self, persona: Persona) -> bool:
        """End the rollout: everyone gets production again. False when there was none."""
        return await self._release_write(persona, DELETE_ROLLOUT)

    async def _release_write(
        self, persona: Persona, query: str, *args: object, version: int | None = None, promotes: bool = False
    ) -> bool:
        """Run one write of the persona's labels or rollout under its row's lock, announced and forgotten like a
        save when it changed something; False when it changed nothing. A write naming ``version`` is a 404 when
        that version was never saved; one that ``promotes`` it ends a rollout of that version."""
        async with self._pool.acquire() as conn, conn.transaction():
            await self._lock_active(conn, persona.id)
            try:
                done = await conn.execute(query, persona.id, *args)
            except asyncpg.ForeignKeyViolationError:
                if version is None:
                    raise
                raise _no_version(persona, version) from None
            changed = done != "DELETE 0"
            if changed and promotes:
                await conn.execute(END_PROMOTED_ROLLOUT, persona.id, version)
            if changed:
                await self._announce(conn, persona.id, default=False, names=(), owner=persona.created_by)
        if changed:
            await self._forget(persona.id, default=False, names=(), owner=persona.created_by)
        return changed

    async def _lock_active(self, conn: asyncpg.Connection, persona_id: UUID) -> None:
        """Hold the persona's row (a save waits, so a label never points past what was saved), or 404."""
        if await conn.fetchval(LOCK_ACTIVE, persona_id) is None:
            raise NotFound(f"Persona {persona_id} not found.", field="id")

    async def set_preference(self, user_id: UUID, persona_id: UUID) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(SET_PREFERENCE, user_id, persona_id)
            if self._notify is not None:
                await self._notify(conn, PERSONA_SIGNAL, PersonaChange(user_id=user_id))
        await self._forget_preference(user_id)

    async def ensure_default(self) -> tuple[Persona, bool]:
        """Make sure an active default persona exists, restoring Mu if it is gone. Idempotent."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_DEFAULT)
            record = await conn.fetchrow(GET_DEFAULT)
            if record is not None:
                return _persona(record), False
            if await conn.fetchrow(GET, MU_ID) is None:
                raise ServiceUnavailable(
                    "The default persona Mu is missing from the database; run `persona-runtime migrate` "
                    "on a fresh database or restore it from a backup."
                )
            await conn.execute(CLEAR_DEFAULT, MU_ID)
            try:
                record = await conn.fetchrow(RESTORE_MU, MU_ID)
            except asyncpg.UniqueViolationError:
                raise Conflict(
                    "The default persona Mu cannot be restored: another active persona is named Mu. "
                    "Rename or delete that persona, then try again.",
                    field="name",
                ) from None
            restored = _persona(record)
            await self._announce(conn, MU_ID, default=True, names=(restored.name,), owner=None)
        await self._forget(MU_ID, default=True, names=(restored.name,), owner=None)
        return restored, True

    async def _move_default(self, conn: asyncpg.Connection, persona_id: UUID) -> Persona:
        await conn.execute(LOCK_DEFAULT)
        await conn.execute(CLEAR_DEFAULT, persona_id)
        return _persona(await conn.fetchrow(SET_DEFAULT, persona_id))

    async def _announce(
        self, conn: asyncpg.Connection, persona_id: UUID, *, default: bool, names: tuple[str, ...], owner: UUID | None
    ) -> None:
        if self._notify is not None:
            change = PersonaChange(persona_id=persona_id, names=names, default=default, owner=owner)
            await self._notify(conn, PERSONA_SIGNAL, change)

    async def _forget(
        self, persona_id: UUID, *, default: bool, names: tuple[str, ...], owner: UUID | None = None
    ) -> None:
        keys = [persona_key(persona_id), *(name_key(name) for name in names)]
        keys += [owned_name_key(owner, name) for name in names]
        if default:
            keys.append(DEFAULT_KEY)
        # Local entries before and after the shared ones: before, so that a shared cache slow to answer
        # does not keep them served meanwhile; after, so that what a local miss in between reloaded from
        # the shared cache (the entry the write replaced) is not kept.
        self._forget_locally(persona_id, default=default, names=names, owner=owner)
        await self._shared.delete(*keys)
        self._forget_locally(persona_id, default=default, names=names, owner=owner)

    def _forget_locally(self, persona_id: UUID, *, default: bool, names: tuple[str, ...], owner: UUID | None) -> None:
        self._personas.forget(persona_id)
        self._names.forget(*((slot, name.lower()) for name in names for slot in (_PUBLIC, owner)))
        if default:
            self._defaults.forget(DEFAULT_KEY)

    async def _forget_preference(self, user_id: UUID) -> None:
        self._preferences.forget(user_id)
        await self._shared.delete(preference_key(user_id))
        self._preferences.forget(user_id)


def _no_version(persona: Persona, version: int) -> NotFound:
    return NotFound(
        f"Persona {persona.name!r} has no saved version {version}: GET .../versions lists its versions.",
        field="version",
    )


def _limits_column(limits: Limits) -> dict[str, int]:
    """Only the limits that are set: ``{}`` for none, as the column's default is."""
    return {name: value for name, value in msgspec.structs.asdict(limits).items() if value is not None}


def _text(value: UUID | None) -> str | None:
    return str(value) if value is not None else None
