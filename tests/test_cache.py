"""The persona cache: shared between instances through Redis, and never a reason for a request to fail."""

from __future__ import annotations

import asyncio
import logging
import uuid

import redis.asyncio as aioredis

from api.app import create_app
from personas.cache import MemoryCache, RedisCache
from personas.entries import persona_key
from tests.conftest import make_settings, persona_body, running
from tests.waiting import eventually

BASE = "/api/v1/chat/personas"


async def seen_elsewhere(resources, check) -> None:
    """Until ``check`` holds on the other instance, which may serve what its in-memory layer read before a
    write for PERSONA_LOCAL_CACHE_SECONDS (a moment more is allowed for the requests themselves)."""
    within = resources.settings.persona_local_cache_seconds + 1
    assert await eventually(check, within=within), f"not seen on the other instance within {within:.0f} s"


async def test_a_write_on_one_instance_is_seen_on_another_within_a_second(
    client, second_client, alice, redis_url, resources
):
    persona = (await client.post(BASE, json=persona_body(visibility="public"), headers=alice.headers)).json()["persona"]
    url = f"{BASE}/{persona['id']}"
    # The second instance reads it, which caches it in the shared Redis.
    assert (await second_client.get(url, headers=alice.headers)).json()["persona"]["version"] == 1
    r = aioredis.from_url(redis_url)
    assert await r.exists(resources.settings.redis_prefix + persona_key(persona["id"])) == 1

    await client.put(url, json={"description": "changed on instance one"}, headers=alice.headers)
    seen: dict = {}

    async def changed() -> bool:
        seen.update((await second_client.get(url, headers=alice.headers)).json()["persona"])
        return seen["version"] == 2

    await seen_elsewhere(resources, changed)
    assert seen["description"] == "changed on instance one"

    await client.delete(url, headers=alice.headers)

    async def gone() -> bool:
        return (await second_client.get(url, headers=alice.headers)).status_code == 404

    await seen_elsewhere(resources, gone)
    await r.aclose()


async def test_preference_change_is_seen_by_another_instance(client, second_client, alice, resources):
    persona = (await client.post(BASE, json=persona_body(), headers=alice.headers)).json()["persona"]
    assert (await second_client.get(f"{BASE}/current", headers=alice.headers)).json()["source"] == "default"
    await client.post(f"{BASE}/set", json={"persona_id": persona["id"]}, headers=alice.headers)
    current: dict = {}

    async def chosen() -> bool:
        current.update((await second_client.get(f"{BASE}/current", headers=alice.headers)).json())
        return current["source"] == "preference"

    await seen_elsewhere(resources, chosen)
    assert current["persona"]["id"] == persona["id"]


async def test_requests_are_answered_while_redis_is_down_and_the_cache_recovers(
    database_url, redis_process, make_user, caplog
):
    caplog.set_level(logging.WARNING, logger="persona_runtime.cache")
    app = create_app(make_settings(database_url, redis_process.url))
    async with running(app) as api:
        alice = await make_user("alice")
        persona = (await api.post(BASE, json=persona_body(), headers=alice.headers)).json()["persona"]
        url = f"{BASE}/{persona['id']}"
        assert (await api.get(url, headers=alice.headers)).status_code == 200

        redis_process.stop()
        for _ in range(5):
            assert (await api.get(url, headers=alice.headers)).status_code == 200
        r = await api.put(url, json={"description": "written while Redis was down"}, headers=alice.headers)
        assert r.status_code == 200
        assert (await api.get(url, headers=alice.headers)).json()["persona"]["version"] == 2
        assert (await api.get(f"{BASE}/current", headers=alice.headers)).status_code == 200
        ready = await api.get("/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["redis"] == "unavailable"
        # One warning for the outage, not one per request.
        outage_logs = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
        assert len(outage_logs) == 1

        redis_process.start()

        async def ready_again() -> bool:  # Redis is tried again a second after it failed
            return (await api.get("/ready")).status_code == 200

        assert await eventually(ready_again, within=5, interval=0.1)
        client = aioredis.from_url(redis_process.url)
        key = app.state.resources.settings.redis_prefix + persona_key(persona["id"])

        async def cached_again() -> bool:  # once this process's in-memory second is up, reads fill Redis again
            assert (await api.get(url, headers=alice.headers)).json()["persona"]["version"] == 2
            return bool(await client.exists(key) == 1)

        assert await eventually(cached_again, within=5, interval=0.1)
        await client.aclose()


async def test_deletes_missed_during_an_outage_are_replayed_before_the_cache_is_read(redis_process):
    cache = RedisCache.from_url(redis_process.url)
    await cache.set("persona:x", b"old", 60)
    assert await cache.get("persona:x") == b"old"

    redis_process.pause()  # hung, not gone: the stale entry survives on the server
    try:
        await cache.delete("persona:x")
        assert not cache.available
        assert await cache.get("persona:x") is None  # degraded: a miss, served from PostgreSQL
    finally:
        redis_process.resume()

    async def back() -> bool:  # tried again a second after it failed: the missed delete goes first
        found = await cache.get("persona:x")
        assert found is None, "the stale entry was read before the missed delete was made"
        return cache.available

    assert await eventually(back, within=5, interval=0.1)
    await cache.set("persona:x", b"new", 60)
    assert await cache.get("persona:x") == b"new"
    await cache.aclose()


async def test_memory_cache_expires_and_bounds_entries():
    cache = MemoryCache(max_entries=2)
    await cache.set("a", b"1", 60)
    await cache.set("b", b"2", 60)
    await cache.set("c", b"3", 60)
    assert await cache.get("a") is None
    assert await cache.get("c") == b"3"
    await cache.set("short", b"x", 0)
    await asyncio.sleep(0.01)
    assert await cache.get("short") is None
    await cache.delete("c")
    assert await cache.get("c") is None


async def test_memory_cache_keeps_nothing_longer_than_its_cap():
    # Until it is told that writes made elsewhere are announced to it, entries must expire soon.
    cache = MemoryCache(max_ttl=0.05)
    await cache.set("persona:x", b"old", 300)
    assert await cache.get("persona:x") == b"old"
    await asyncio.sleep(0.1)
    assert await cache.get("persona:x") is None


async def test_persona_api_without_redis_uses_the_in_process_cache(database_url, make_user):
    app = create_app(make_settings(database_url, None))
    async with running(app) as api:
        alice = await make_user("alice")
        persona = (
            await api.post(BASE, json=persona_body(name=f"Solo {uuid.uuid4().hex[:6]}"), headers=alice.headers)
        ).json()["persona"]
        url = f"{BASE}/{persona['id']}"
        assert (await api.get(url, headers=alice.headers)).status_code == 200
        await api.put(url, json={"description": "fresh"}, headers=alice.headers)
        assert (await api.get(url, headers=alice.headers)).json()["persona"]["description"] == "fresh"
        assert (await api.get("/ready")).json()["checks"] == {"database": "ok"}


async def test_many_requests_meeting_redis_as_it_comes_back_all_succeed(redis_process, caplog):
    cache = RedisCache.from_url(redis_process.url, prefix="race:")
    await cache.set("k", b"v", 60)
    redis_process.stop()
    assert await cache.get("k") is None  # the outage is noticed
    await cache.delete("k")  # a delete that must be replayed
    redis_process.start()
    cache._next_try = 0  # the retry pause is over
    results = await asyncio.gather(*(cache.get("k") for _ in range(20)), return_exceptions=True)
    assert not [r for r in results if isinstance(r, BaseException)]
    assert await cache.get("k") is None  # the missed delete was made before anything was read
    assert caplog.text.count("Redis is reachable again") == 1
    await cache.aclose()


async def test_deletes_missed_while_redis_was_out_of_reach_are_made_with_no_further_request(redis_process):
    # Another instance, which could reach Redis all along, reads the stale entry until the delete is made:
    # it must not wait for this instance's next request.
    from tests.proxy import TcpProxy

    proxy = TcpProxy("127.0.0.1", int(redis_process.url.rsplit(":", 1)[1].split("/")[0]))
    await proxy.start()
    cache = RedisCache.from_url(f"redis://127.0.0.1:{proxy.port}/0", prefix="replay:")
    elsewhere = aioredis.from_url(redis_process.url)
    await cache.set("persona:x", b"old", 60)
    await proxy.cut()
    await cache.delete("persona:x")  # never reaches Redis
    assert not cache.available and await elsewhere.exists("replay:persona:x")
    await proxy.start()

    async def deleted() -> bool:  # no call on `cache` from here on
        return not await elsewhere.exists("replay:persona:x")

    assert await eventually(deleted, within=5, interval=0.1)
    await elsewhere.aclose()
    await cache.aclose()
    await proxy.cut()


async def test_memory_cache_keeps_entries_longer_only_while_it_hears_of_writes_elsewhere():
    cache = MemoryCache(max_ttl=0.05, heard_ttl=60)
    cache.set_hearing(True)
    await cache.set("persona:x", b"heard", 300)
    await asyncio.sleep(0.1)
    assert await cache.get("persona:x") == b"heard"  # announced writes delete it: it may stay
    cache.set_hearing(False)
    assert await cache.get("persona:x") is None  # writes may go unheard from now on: start afresh
    await cache.set("persona:x", b"unheard", 300)
    await asyncio.sleep(0.1)
    assert await cache.get("persona:x") is None
