"""Persona reads through the shared cache: versioned keys, and a cached entry that does not decode is a miss."""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Any
from uuid import UUID

import msgspec
import pytest
import redis.asyncio as aioredis

from personas.cache import RedisCache
from personas.entries import (
    CACHE_VERSION,
    DEFAULT_KEY,
    id_decoder,
    persona_decoder,
    persona_key,
    preference_key,
)
from personas.models import Persona
from personas.store import GET_DEFAULT, PersonaStore
from tests.conftest import persona_body

BASE = "/api/v1/chat/personas"
PREFIX = "persona-runtime:"  # RedisCache's own default: each test here has a Redis of its own


async def edit(store: PersonaStore, persona_id: UUID, **changes: Any) -> Persona:
    """Save a change through ``store``."""
    current = await store.get(persona_id)
    assert current is not None
    return await store.update(persona_id, msgspec.structs.replace(current, **changes), actor=None, change_note=None)


async def created(client, account, **fields: Any) -> Persona:
    r = await client.post(BASE, json=persona_body(**fields), headers=account.headers)
    assert r.status_code == 201, r.text
    return msgspec.convert(r.json()["persona"], Persona)


@pytest.mark.parametrize("garbage", [b"\xff\x00 not json", b'{"id": 5, "name": []}', b"[1, 2, 3]"])
async def test_a_cached_entry_that_does_not_decode_is_reloaded_and_replaced(
    client, alice, resources, redis_process, garbage, caplog
):
    caplog.set_level(logging.WARNING, logger="persona_runtime.cache")
    name = f"Garbled {uuid.uuid4().hex[:8]}"
    persona = await created(client, alice, name=name)
    await client.post(f"{BASE}/set", json={"persona_id": str(persona.id)}, headers=alice.headers)
    default_id = (await resources.pool.fetchrow(GET_DEFAULT))["id"]
    keys = [persona_key(persona.id), preference_key(alice.user.id), DEFAULT_KEY]
    raw = aioredis.from_url(redis_process.url)
    for key in keys:
        await raw.set(PREFIX + key, garbage)

    store = PersonaStore(resources.pool, RedisCache.from_url(redis_process.url))
    assert (await store.get(persona.id)).name == name
    assert await store.get_preference(alice.user.id) == persona.id
    assert (await store.get_default()).id == default_id
    assert "does not decode" in caplog.text

    # Each entry was overwritten with one that decodes.
    assert persona_decoder.decode(await raw.get(PREFIX + persona_key(persona.id))).name == name
    assert id_decoder.decode(await raw.get(PREFIX + preference_key(alice.user.id))) == persona.id
    assert id_decoder.decode(await raw.get(PREFIX + DEFAULT_KEY)) == default_id
    await raw.aclose()


async def test_a_garbled_entry_in_redis_never_fails_a_request(client, alice, resources, redis_url):
    persona = await created(client, alice)
    raw = aioredis.from_url(redis_url)
    await raw.set(resources.settings.redis_prefix + persona_key(persona.id), b"{not json")
    r = await client.get(f"{BASE}/{persona.id}", headers=alice.headers)
    assert r.status_code == 200 and r.json()["persona"]["id"] == str(persona.id)
    await raw.aclose()


async def test_a_write_also_clears_the_previous_release_entries(client, alice, resources, redis_process):
    # During a rolling deploy, instances of the release before read unversioned keys: they must see the write.
    persona = await created(client, alice)
    raw = aioredis.from_url(redis_process.url)
    await raw.set(f"{PREFIX}persona:{persona.id}", b"what the previous release cached")
    await raw.set(f"{PREFIX}default", str(persona.id).encode())
    store = PersonaStore(resources.pool, RedisCache.from_url(redis_process.url))
    await edit(store, persona.id, description="new")
    assert await raw.exists(f"{PREFIX}persona:{persona.id}", f"{PREFIX}default") == 0
    await raw.aclose()


# The shape of a cached persona, per cache version. Persona (or what it nests) changed shape if this fails:
# bump CACHE_VERSION in personas/entries.py, so a deploy never reads old entries, and record the new shape.
SHAPES = {"v2": "055e585a0bff5082"}


def test_the_cache_version_changes_with_the_shape_of_a_cached_persona():
    shape = hashlib.sha256(msgspec.json.encode(msgspec.json.schema(Persona))).hexdigest()[:16]
    assert SHAPES.get(CACHE_VERSION) == shape, (
        f"Persona's encoded shape is now {shape}: bump CACHE_VERSION in personas/entries.py and record it here"
    )


def test_keys_carry_the_cache_version():
    some = uuid.uuid4()
    for key in (persona_key(some), preference_key(some), DEFAULT_KEY):
        assert key.startswith(CACHE_VERSION + ":")
    assert isinstance(UUID(persona_key(some).rsplit(":", 1)[1]), UUID)
