"""The persona cache on a Redis Cluster: detected by itself, shared by instances, deletes made across slots."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis, RedisCluster

from api.app import create_app
from core.redis_client import open_redis
from personas.cache import RedisCache
from personas.entries import persona_key
from tests.conftest import make_settings, persona_body, running
from tests.services import RedisClusterProcess

BASE = "/api/v1/chat/personas"


async def test_a_cluster_gets_the_cluster_client_and_a_single_server_the_plain_one(redis_cluster, redis_url):
    cluster = await open_redis(redis_cluster.url)
    single = await open_redis(redis_url)
    named = await open_redis(redis_cluster.url.replace("redis://", "redis+cluster://"))
    try:
        assert isinstance(cluster, RedisCluster) and isinstance(named, RedisCluster)
        assert isinstance(single, Redis)
        assert await cluster.ping() and await named.ping()
    finally:
        for client in (cluster, single, named):
            await client.aclose()


async def test_a_write_on_one_instance_is_seen_on_another_through_the_cluster(database_url, redis_cluster, make_user):
    alice = await make_user("alice")
    settings = make_settings(database_url, redis_cluster.url)
    watcher = RedisCluster.from_url(redis_cluster.url)
    async with running(create_app(settings)) as one, running(create_app(settings)) as two:
        for instance in (one, two):
            ready = await instance.get("/ready")
            assert ready.status_code == 200 and ready.json()["checks"]["redis"] == "ok"
        persona = (await one.post(BASE, json=persona_body(visibility="public"), headers=alice.headers)).json()
        url = f"{BASE}/{persona['persona']['id']}"
        assert (await two.get(url, headers=alice.headers)).json()["persona"]["version"] == 1
        # The entry is in the cluster, under this deployment's prefix.
        assert await watcher.exists(settings.redis_prefix + persona_key(persona["persona"]["id"])) == 1

        await one.put(url, json={"description": "changed on instance one"}, headers=alice.headers)
        await asyncio.sleep(settings.persona_local_cache_seconds + 0.05)  # the other's in-memory layer
        seen = (await two.get(url, headers=alice.headers)).json()["persona"]
        assert seen["version"] == 2 and seen["description"] == "changed on instance one"

        await one.delete(url, headers=alice.headers)
        await asyncio.sleep(settings.persona_local_cache_seconds + 0.05)
        assert (await two.get(url, headers=alice.headers)).status_code == 404
    await watcher.aclose()


async def test_one_delete_of_keys_held_by_different_nodes_removes_them_all(redis_cluster):
    cache = await RedisCache.open(redis_cluster.url, prefix="prt-test:slots:")
    watcher = RedisCluster.from_url(redis_cluster.url)
    try:
        keys = [f"persona:{n}" for n in range(30)]
        for key in keys:
            await cache.set(key, b"cached", 60)
        await watcher.initialize()
        holders = {watcher.get_node_from_key("prt-test:slots:" + key).name for key in keys}
        assert len(holders) == 3  # the keys really are spread over every node

        await cache.delete(*keys)
        assert cache.available
        assert await watcher.exists(*("prt-test:slots:" + key for key in keys)) == 0
        assert [await cache.get(key) for key in keys] == [None] * len(keys)
    finally:
        await cache.aclose()
        await watcher.aclose()


async def test_ready_says_redis_is_unavailable_when_one_node_is_down_and_requests_still_succeed(
    database_url, make_user
):
    cluster = RedisClusterProcess()  # this test's own: it stops a node
    try:
        await asyncio.to_thread(cluster.start)
        alice = await make_user("alice")
        async with running(create_app(make_settings(database_url, cluster.url))) as api:
            assert (await api.get("/ready")).json()["checks"]["redis"] == "ok"
            persona = (await api.post(BASE, json=persona_body(), headers=alice.headers)).json()["persona"]
            # The node that is not the one REDIS_URL names: the cluster client's own PING would not notice it.
            cluster.stop_node(cluster.ports[-1])
            ready = await api.get("/ready")
            assert ready.status_code == 503 and ready.json()["checks"]["redis"] == "unavailable"
            for _ in range(3):
                r = await api.get(f"{BASE}/{persona['id']}", headers=alice.headers)
                assert r.status_code == 200
    finally:
        await asyncio.to_thread(cluster.close)
