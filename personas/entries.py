"""The persona store's entries in the shared cache: versioned keys, and values that decode or count as misses."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar
from uuid import UUID

import msgspec
from msgspec import UNSET, UnsetType

from personas.cache import Cache
from personas.models import Persona
from personas.releases import NO_RELEASE, Release

__all__ = [
    "CACHE_VERSION",
    "DEFAULT_KEY",
    "PersonaEntry",
    "SharedEntries",
    "id_decoder",
    "name_key",
    "owned_name_key",
    "persona_decoder",
    "persona_key",
    "preference_key",
    "version_key",
]

log = logging.getLogger("persona_runtime.cache")

T = TypeVar("T")

# Every key names the shape of the value it holds. Bump this whenever that shape changes (a field of
# Persona or of anything it nests, or how an id is written), so a release never reads another's entries.
CACHE_VERSION = "v8"
_PREFIX = CACHE_VERSION + ":"
# The release before wrote its keys under "v7:" (personas without `model_settings.vision`). Writes delete those
# too, so that instances still running it during a rolling deploy see the change. At the next bump: "v8:".
_PREVIOUS_PREFIX = "v7:"

DEFAULT_KEY = _PREFIX + "default"


class PersonaEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A persona as cached: the persona, and its labels and rollout, read and dropped together, so that serving
    a persona's production (or rollout) version needs no read of its own."""

    persona: Persona
    release: Release = NO_RELEASE


persona_decoder = msgspec.json.Decoder(PersonaEntry)
# A preference, the default's id, a name's persona: an id, or null for "none".
id_decoder: msgspec.json.Decoder[UUID | None] = msgspec.json.Decoder(UUID | None)
_encoder = msgspec.json.Encoder()


def persona_key(persona_id: UUID) -> str:
    return f"{_PREFIX}persona:{persona_id}"


def version_key(persona_id: UUID, version: int) -> str:
    """One saved version of a persona: never changes once written."""
    return f"{_PREFIX}persona-version:{persona_id}:{version}"


def preference_key(user_id: UUID) -> str:
    return f"{_PREFIX}preference:{user_id}"


def name_key(name: str) -> str:
    """The public persona of a name. Names are unique regardless of case, so they are looked up lowercased."""
    return f"{_PREFIX}name:{name.lower()}"


def owned_name_key(owner: UUID | None, name: str) -> str:
    """One owner's persona of a name (``system`` for personas nobody owns)."""
    return f"{_PREFIX}owned-name:{owner or 'system'}:{name.lower()}"


class SharedEntries:
    """The store's side of the shared cache. An entry that does not decode (garbage, or a shape this
    release does not know) is a miss: the caller reads PostgreSQL and overwrites it, never fails."""

    def __init__(self, cache: Cache, *, ttl: int, on_lookup: Callable[[str], None] | None = None) -> None:
        self._cache = cache
        self._ttl = ttl
        self._on_lookup = on_lookup  # told "hit" or "miss", for metrics

    async def read(self, key: str, decoder: msgspec.json.Decoder[T]) -> T | UnsetType:
        """The value under ``key``, or UNSET when there is none to use."""
        raw = await self._cache.get(key)
        if raw is None:
            if self._on_lookup is not None:
                self._on_lookup("miss")
            return UNSET
        try:
            value = decoder.decode(raw)
        except msgspec.DecodeError:  # msgspec.ValidationError included
            log.warning("cache entry %s does not decode; reading PostgreSQL and replacing it", key)
            if self._on_lookup is not None:
                self._on_lookup("miss")
            return UNSET
        if self._on_lookup is not None:
            self._on_lookup("hit")
        return value

    async def write(self, key: str, value: object) -> None:
        await self._cache.set(key, _encoder.encode(value), self._ttl)

    async def delete(self, *keys: str) -> None:
        retired = [_PREVIOUS_PREFIX + key.removeprefix(_PREFIX) for key in keys]
        await self._cache.delete(*dict.fromkeys([*keys, *retired]))
