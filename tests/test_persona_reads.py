"""Persona and key reads under load: one lookup per key however many ask at once, a hot read costs no
Redis round trip, writes here are seen at once and elsewhere within the local bound, and a cached entry
that does not decode is a miss."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections import Counter
from typing import Any
from uuid import UUID

import msgspec
import pytest
import redis.asyncio as aioredis

from core.db import connect_pool
from core.errors import ServiceUnavailable
from personas.cache import MemoryCache, RedisCache
from personas.entries import (
    CACHE_VERSION,
    DEFAULT_KEY,
    PersonaEntry,
    id_decoder,
    name_key,
    owned_name_key,
    persona_decoder,
    persona_key,
    preference_key,
)
from personas.models import Persona, PersonaPatch
from personas.service import PersonaService
from personas.store import FIND_OWNED_BY_NAME, FIND_PUBLIC_BY_NAME, GET_DEFAULT, GET_ENTRY, GET_PREFERENCE, PersonaStore
from runtime.access.accounts import AUTHENTICATE, Accounts
from runtime.access.auth import Authenticator
from tests.conftest import persona_body
from tests.waiting import eventually

BASE = "/api/v1/chat/personas"
PREFIX = "persona-runtime:"  # RedisCache's own default: each test here has a Redis of its own


class CountingPool:
    """The real asyncpg pool, counting each query it is asked to run."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.queries: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)

    async def fetchrow(self, query: str, *args: Any) -> Any:
        self.queries[query] += 1
        return await self.pool.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        self.queries[query] += 1
        return await self.pool.fetchval(query, *args)

    async def fetch(self, query: str, *args: Any) -> Any:
        self.queries[query] += 1
        return await self.pool.fetch(query, *args)

    async def execute(self, query: str, *args: Any) -> Any:
        self.queries[query] += 1
        return await self.pool.execute(query, *args)


async def redis_gets(url: str) -> int:
    """GET commands the Redis server has answered since its statistics were last reset."""
    client = aioredis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get("cmdstat_get", {}).get("calls", 0))


async def reset_redis_stats(url: str) -> None:
    client = aioredis.from_url(url)
    try:
        await client.config_resetstat()
    finally:
        await client.aclose()


async def edit(store: PersonaStore, persona_id: UUID, **changes: Any) -> Persona:
    """Save a change through ``store``, built on the persona as PostgreSQL has it."""
    current = await store.get_uncached(persona_id)
    assert current is not None
    return await store.update(persona_id, msgspec.structs.replace(current, **changes), actor=None, change_note=None)


async def created(client, account, **fields: Any) -> Persona:
    r = await client.post(BASE, json=persona_body(**fields), headers=account.headers)
    assert r.status_code == 201, r.text
    return msgspec.convert(r.json()["persona"], Persona)


async def test_a_hundred_first_requests_look_up_the_key_the_preference_and_the_persona_once(
    client, alice, resources, redis_process
):
    persona = await created(client, alice)
    await client.post(f"{BASE}/set", json={"persona_id": str(persona.id)}, headers=alice.headers)
    # A fresh instance: nothing in its memory, nothing in its Redis.
    pool = CountingPool(resources.pool)
    auth = Authenticator(Accounts(pool), cache_seconds=60)
    personas = PersonaService(PersonaStore(pool, RedisCache.from_url(redis_process.url), local_ttl=60))

    async def request() -> tuple[Persona, str]:
        return await personas.current(await auth.authenticate(alice.key))

    answers = await asyncio.gather(*(request() for _ in range(100)))
    assert {(p.id, source) for p, source in answers} == {(persona.id, "preference")}
    assert pool.queries == Counter({AUTHENTICATE: 1, GET_PREFERENCE: 1, GET_ENTRY: 1})
    assert await redis_gets(redis_process.url) == 2  # the preference and the persona, once each

    await reset_redis_stats(redis_process.url)
    await asyncio.gather(*(request() for _ in range(100)))
    assert pool.queries == Counter({AUTHENTICATE: 1, GET_PREFERENCE: 1, GET_ENTRY: 1})
    assert await redis_gets(redis_process.url) == 0  # hot: served from this process's memory


async def test_a_hundred_lookups_by_name_in_any_case_run_one_query(client, alice, resources, redis_process):
    name = f"Model Id {uuid.uuid4().hex[:8]}"
    persona = await created(client, alice, name=name)
    pool = CountingPool(resources.pool)
    store = PersonaStore(pool, RedisCache.from_url(redis_process.url), local_ttl=60)
    spellings = [name, name.upper(), name.lower()] * 34
    found = await asyncio.gather(*(store.find_by_name(s, alice.user.id) for s in spellings))
    assert {p.id for p in found if p is not None} == {persona.id} and None not in found
    # The name's query brings the whole row, which is cached for the read by id that follows.
    assert pool.queries == Counter({FIND_OWNED_BY_NAME: 1})

    # Another instance sharing the Redis asks PostgreSQL nothing at all.
    other = CountingPool(resources.pool)
    elsewhere = PersonaStore(other, RedisCache.from_url(redis_process.url))
    assert (await elsewhere.find_by_name(name.lower(), alice.user.id)).id == persona.id
    assert other.queries == Counter()


async def test_a_name_no_persona_has_is_looked_up_once_per_process(client, resources, redis_process):
    pool = CountingPool(resources.pool)
    store = PersonaStore(pool, RedisCache.from_url(redis_process.url), local_ttl=60)
    missing = f"Nobody {uuid.uuid4().hex}"
    assert await asyncio.gather(*(store.find_by_name(missing) for _ in range(50))) == [None] * 50
    assert await store.find_by_name(missing) is None
    assert pool.queries == Counter({FIND_PUBLIC_BY_NAME: 1})


async def test_hot_reads_skip_redis_and_another_instances_write_shows_after_the_local_bound(
    client, alice, resources, redis_process
):
    persona = await created(client, alice)
    here = PersonaStore(resources.pool, RedisCache.from_url(redis_process.url), local_ttl=1.0)
    elsewhere = PersonaStore(resources.pool, RedisCache.from_url(redis_process.url))
    assert (await here.get(persona.id)).version == 1
    await reset_redis_stats(redis_process.url)
    for _ in range(20):
        assert (await here.get(persona.id)).version == 1
    assert await redis_gets(redis_process.url) == 0

    await edit(elsewhere, persona.id, description="new")
    seen = await here.get(persona.id)

    async def shown() -> bool:  # once the local entry's second is up (a moment more for a busy machine)
        nonlocal seen
        seen = await here.get(persona.id)
        return seen.version == 2

    assert await eventually(shown, within=2)
    assert seen.description == "new"


async def test_writes_are_seen_at_once_by_the_process_that_made_them(create_database, redis_process):
    # A database of its own: this test moves the default persona.
    from runtime.server.migrate import apply_migrations

    dsn = await create_database()
    await apply_migrations(dsn)
    pool = await connect_pool(dsn)
    try:
        # Kept a minute, so that only the writes' own invalidation can explain a fresh read.
        store = PersonaStore(pool, RedisCache.from_url(redis_process.url), local_ttl=60)
        mu = await store.get_default()
        assert mu is not None and mu.name == "Mu"
        draft = msgspec.structs.replace(mu, name="Second", is_default=False)
        second = await store.create(draft, actor=None, change_note=None)

        assert (await store.get(second.id)).description == mu.description
        await edit(store, second.id, description="edited")
        assert (await store.get(second.id)).description == "edited"

        user = uuid.uuid4()
        await pool.execute("INSERT INTO users (id, name) VALUES ($1, $2)", user, f"u-{user.hex[:8]}")
        assert await store.get_preference(user) is None
        await store.set_preference(user, second.id)
        assert await store.get_preference(user) == second.id

        await edit(store, second.id, is_default=True)
        assert (await store.get_default()).id == second.id
        assert not (await store.get(mu.id)).is_default

        assert await store.soft_delete(second.id)
        assert not (await store.get(second.id)).is_active
        assert await store.get_default() is None  # the service restores Mu then
        restored, changed = await store.ensure_default()
        assert changed and (await store.get_default()).id == mu.id == restored.id
    finally:
        await pool.close()


async def test_a_rename_moves_the_name_at_once(client, alice, resources, redis_process):
    tag = uuid.uuid4().hex[:8]
    old, new = f"Before {tag}", f"After {tag}"
    persona = await created(client, alice, name=old)
    store = PersonaStore(resources.pool, RedisCache.from_url(redis_process.url), local_ttl=60)
    assert (await store.find_by_name(old.upper(), alice.user.id)).id == persona.id
    assert await store.find_by_name(new, alice.user.id) is None  # remembered as unknown

    current = await edit(store, persona.id, name=new)
    assert await store.find_by_name(old, alice.user.id) is None
    assert (await store.find_by_name(new.lower(), alice.user.id)).name == new

    # The old name is free again, and a persona created with it is found by it.
    draft = msgspec.structs.replace(current, name=old)
    successor = await store.create(draft, actor=None, change_note=None)
    assert (await store.find_by_name(old, alice.user.id)).id == successor.id

    assert await store.soft_delete(successor.id)
    assert await store.find_by_name(old, alice.user.id) is None


async def test_a_name_renamed_elsewhere_is_not_served_once_its_persona_is_read_again(
    client, alice, resources, redis_process
):
    tag = uuid.uuid4().hex[:8]
    old, new = f"Was {tag}", f"Now {tag}"
    persona = await created(client, alice, name=old)
    here = PersonaStore(resources.pool, RedisCache.from_url(redis_process.url), local_ttl=60)
    elsewhere = PersonaStore(resources.pool, RedisCache.from_url(redis_process.url))
    assert (await here.find_by_name(old, alice.user.id)).id == persona.id

    await edit(elsewhere, persona.id, name=new)
    # An edit here reloads the persona under its new name while this process still maps the old name to it.
    await edit(here, persona.id, description="x")
    assert await here.find_by_name(old, alice.user.id) is None
    assert (await here.find_by_name(new, alice.user.id)).id == persona.id


@pytest.mark.parametrize("garbage", [b"\xff\x00 not json", b'{"id": 5, "name": []}', b"[1, 2, 3]"])
async def test_a_cached_entry_that_does_not_decode_is_reloaded_and_replaced(
    client, alice, resources, redis_process, garbage, caplog
):
    caplog.set_level(logging.WARNING, logger="persona_runtime.cache")
    name = f"Garbled {uuid.uuid4().hex[:8]}"
    persona = await created(client, alice, name=name)
    await client.post(f"{BASE}/set", json={"persona_id": str(persona.id)}, headers=alice.headers)
    default_id = (await resources.pool.fetchrow(GET_DEFAULT))["id"]
    keys = [persona_key(persona.id), preference_key(alice.user.id), DEFAULT_KEY, owned_name_key(alice.user.id, name)]
    raw = aioredis.from_url(redis_process.url)
    for key in keys:
        await raw.set(PREFIX + key, garbage)

    store = PersonaStore(resources.pool, RedisCache.from_url(redis_process.url))
    assert (await store.get(persona.id)).name == name
    assert await store.get_preference(alice.user.id) == persona.id
    assert (await store.get_default()).id == default_id
    assert (await store.find_by_name(name, alice.user.id)).id == persona.id
    assert "does not decode" in caplog.text

    # Each entry was overwritten with one that decodes.
    assert persona_decoder.decode(await raw.get(PREFIX + persona_key(persona.id))).persona.name == name
    assert id_decoder.decode(await raw.get(PREFIX + preference_key(alice.user.id))) == persona.id
    assert id_decoder.decode(await raw.get(PREFIX + DEFAULT_KEY)) == default_id
    assert id_decoder.decode(await raw.get(PREFIX + owned_name_key(alice.user.id, name))) == persona.id
    await raw.aclose()


async def test_a_garbled_entry_in_redis_never_fails_a_request(client, alice, resources, redis_url):
    persona = await created(client, alice)
    raw = aioredis.from_url(redis_url)
    await raw.set(resources.settings.redis_prefix + persona_key(persona.id), b"{not json")
    r = await client.get(f"{BASE}/{persona.id}", headers=alice.headers)
    assert r.status_code == 200 and r.json()["persona"]["id"] == str(persona.id)
    await raw.aclose()


async def test_a_write_also_clears_the_previous_release_entries(client, alice, resources, redis_process):
    # During a rolling deploy, instances of the release before read its keys: they must see the write.
    from personas.entries import _PREVIOUS_PREFIX as previous

    assert previous != CACHE_VERSION + ":"
    persona = await created(client, alice)
    raw = aioredis.from_url(redis_process.url)
    await raw.set(f"{PREFIX}{previous}persona:{persona.id}", b"what the previous release cached")
    await raw.set(f"{PREFIX}{previous}default", str(persona.id).encode())
    store = PersonaStore(resources.pool, RedisCache.from_url(redis_process.url))
    await edit(store, persona.id, description="new")
    assert await raw.exists(f"{PREFIX}{previous}persona:{persona.id}", f"{PREFIX}{previous}default") == 0
    await raw.aclose()


async def test_a_lookup_that_meets_a_dead_database_fails_for_every_waiter_and_is_not_kept(
    proxied, client, alice, make_user
):
    proxy, dsn = proxied
    persona = await created(client, alice)
    pool = await connect_pool(dsn)
    try:
        counting = CountingPool(pool)
        auth = Authenticator(Accounts(counting))
        store = PersonaStore(counting, MemoryCache())
        await proxy.cut()

        refused = await asyncio.gather(*(auth.authenticate(alice.key) for _ in range(20)), return_exceptions=True)
        assert all(isinstance(r, ServiceUnavailable) for r in refused)  # never a pass, never a 401
        failed = await asyncio.gather(*(store.get(persona.id) for _ in range(20)), return_exceptions=True)
        assert all(isinstance(r, Exception) for r in failed)
        assert counting.queries == Counter({AUTHENTICATE: 1, GET_ENTRY: 1})  # one attempt each, shared

        await proxy.start()
        # Nothing was remembered of the failures: the very next reads succeed.
        assert (await auth.authenticate(alice.key)).user_id == alice.user.id
        assert (await store.get(persona.id)).id == persona.id
    finally:
        await pool.close()


async def test_an_edit_builds_on_the_latest_version_when_another_instance_made_it(
    client, alice, resources, redis_process
):
    persona = await created(client, alice)
    caller = await Authenticator(Accounts(resources.pool)).authenticate(alice.key)
    here = PersonaService(PersonaStore(resources.pool, RedisCache.from_url(redis_process.url), local_ttl=60))
    elsewhere = PersonaService(PersonaStore(resources.pool, RedisCache.from_url(redis_process.url)))
    assert (await here.get_visible(caller, persona.id)).description == persona.description  # held in memory

    await elsewhere.update(caller, persona.id, PersonaPatch(description="written elsewhere"))
    edited = await here.update(caller, persona.id, PersonaPatch(capabilities={"sketching": True}))
    assert edited.description == "written elsewhere" and edited.capabilities == {"sketching": True}
    assert edited.version == 3


# The shape of a cached persona, per cache version (to v6 a Persona, since v7 a PersonaEntry: the persona with its
# labels and rollout). It changed shape if this fails: bump CACHE_VERSION in personas/entries.py, so a deploy
# never reads old entries, and record the new shape.
SHAPES = {
    "v2": "055e585a0bff5082",
    "v3": "7e09ce10c5120bbb",
    "v4": "98fa1ef41b336813",
    "v5": "88d1942c6fe166cd",
    "v6": "d90961e483e4b8c0",
    "v7": "e1bb12963d3598e6",
    "v8": "5d68597ec88517da",
}


def test_the_cache_version_changes_with_the_shape_of_a_cached_persona():
    shape = hashlib.sha256(msgspec.json.encode(msgspec.json.schema(PersonaEntry))).hexdigest()[:16]
    assert SHAPES.get(CACHE_VERSION) == shape, (
        f"PersonaEntry's encoded shape is now {shape}: bump CACHE_VERSION in personas/entries.py and record it here"
    )


def test_keys_carry_the_cache_version():
    some = uuid.uuid4()
    for key in (persona_key(some), preference_key(some), DEFAULT_KEY, name_key("Mu")):
        assert key.startswith(CACHE_VERSION + ":")
    assert name_key("MiXeD Case") == name_key("mixed case")
    assert isinstance(UUID(persona_key(some).rsplit(":", 1)[1]), UUID)
