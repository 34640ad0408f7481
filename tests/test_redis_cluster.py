"""The persona cache on a Redis Cluster: detected by itself, shared by instances, deletes made across slots."""

from __future__ import annotations

import asyncio

import httpx
from redis.asyncio import Redis, RedisCluster

from api.app import create_app
from core.redis_client import open_redis
from personas.cache import RedisCache
from personas.entries import persona_key
from tests.conftest import llm_env, make_settings, persona_body, running, serving
from tests.services import RedisClusterProcess
from tests.sse import parse_sse
from tests.waiting import eventually

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
            # Polled as an orchestrator polls it: on 2 busy cores a node's first connection can miss its 0.5 s.
            async def ready(instance: httpx.AsyncClient = instance) -> bool:
                answer = await instance.get("/ready")
                return answer.status_code == 200 and answer.json()["checks"]["redis"] == "ok"

            assert await eventually(ready), (await instance.get("/ready")).text
        persona = (await one.post(BASE, json=persona_body(visibility="public"), headers=alice.headers)).json()
        url = f"{BASE}/{persona['persona']['id']}"
        assert (await two.get(url, headers=alice.headers)).json()["persona"]["version"] == 1
        # The entry is in the cluster, under this deployment's prefix.
        assert await watcher.exists(settings.redis_prefix + persona_key(persona["persona"]["id"])) == 1

        # The other instance may serve what its in-memory layer holds for that long; a moment more for the
        # requests themselves.
        within = settings.persona_local_cache_seconds + 1
        await one.put(url, json={"description": "changed on instance one"}, headers=alice.headers)
        seen: dict = {}

        async def changed() -> bool:
            seen.update((await two.get(url, headers=alice.headers)).json()["persona"])
            return seen["version"] == 2

        assert await eventually(changed, within=within), seen
        assert seen["description"] == "changed on instance one"

        await one.delete(url, headers=alice.headers)

        async def gone() -> bool:
            return (await two.get(url, headers=alice.headers)).status_code == 404

        assert await eventually(gone, within=within)
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


async def test_a_stream_recorded_on_one_instance_is_resumed_on_another_through_the_cluster(
    database_url, redis_cluster, make_user, fake_llm
):

    alice = await make_user("alice")
    settings = make_settings(database_url, redis_cluster.url, env=llm_env(fake_llm))
    fake_llm.script(chunks=tuple(f"slot{n} " for n in range(8)), chunk_delay=0.1)
    body = {"message": "across the cluster", "stream": True, "resumable": True}
    async with serving(create_app(settings)) as one_url, serving(create_app(settings)) as two_url:
        async with (
            httpx.AsyncClient(base_url=one_url, headers=alice.headers, timeout=30) as one,
            one.stream("POST", "/api/v1/chat", json=body) as response,
        ):
            text = ""
            async for chunk in response.aiter_text():
                text += chunk
                if len(parse_sse(text)[0]) >= 3:
                    break
        seen = parse_sse(text)[0][:3]
        start = seen[0].json
        async with httpx.AsyncClient(base_url=two_url, headers=alice.headers, timeout=30) as two:
            resumed = await two.get(
                f"/api/v1/chat/messages/{start['message_id']}/events", headers={"Last-Event-ID": seen[-1].id}
            )
            rest, _ = parse_sse(resumed.text)
            stored = (await two.get(f"/api/v1/chat/conversations/{start['conversation_id']}")).json()["messages"][-1]
    said = "".join(e.json["content"] for e in [*seen, *rest] if e.event == "content")
    assert rest[-2].event == "done" and said == stored["content"] == "".join(f"slot{n} " for n in range(8))
    # The recording is one key on one node, named with the message's hash tag.
    cluster = RedisCluster.from_url(redis_cluster.url)
    try:
        assert await cluster.exists(f"{settings.redis_prefix}stream:{{{start['message_id']}}}") == 1
    finally:
        await cluster.aclose()


async def test_two_instances_on_a_cluster_share_one_rate_limit(
    database_url, redis_cluster, make_user, admin, fake_llm, minute
):
    alice = await make_user("alice")
    settings = make_settings(database_url, redis_cluster.url, env=llm_env(fake_llm))
    # Counters are per minute: both instances read one clock, stopped a second into a minute.
    async with running(create_app(settings, clock=minute)) as one, running(create_app(settings, clock=minute)) as two:
        made = await one.post(
            f"/api/v1/admin/users/{alice.id}/keys",
            json={"name": "two a minute", "limits": {"requests_per_minute": 2}},
            headers=admin.headers,
        )
        assert made.status_code == 201, made.text
        headers = {"X-API-Key": made.json()["key"]}
        statuses = []
        for instance in (one, two, one, two):
            fake_llm.script(chunks=("ok",))
            statuses.append((await instance.post("/api/v1/chat", json={"message": "hi"}, headers=headers)).status_code)
    # One count for both, kept on the cluster: counted per process, each would have let both of its own through.
    assert statuses == [200, 200, 429, 429], statuses
