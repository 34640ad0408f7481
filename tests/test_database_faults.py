"""A database that goes away: requests get a clear 503 (never a 500, never a key let through) and the
runtime recovers by itself when the database is back."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from api.app import create_app
from tests.conftest import make_settings, persona_body, running
from tests.waiting import eventually

PERSONAS = "/api/v1/chat/personas"


async def test_requests_get_503_while_the_database_is_away_and_work_again_after(proxied, redis_url, make_user):
    proxy, dsn = proxied
    alice = await make_user("alice")
    app = create_app(make_settings(dsn, redis_url, key_cache_seconds=0.0))
    async with running(app) as api:
        created = await api.post(PERSONAS, json=persona_body(), headers=alice.headers)
        assert created.status_code == 201

        await proxy.cut()
        # A key that cannot be checked is refused: 503, not 401 and certainly not a pass.
        r = await api.get(PERSONAS, headers=alice.headers)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "database_unavailable"
        assert "database" in r.json()["message"]
        ready = await api.get("/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] == "unavailable"
        assert (await api.get("/health")).status_code == 200

        await proxy.start()
        r = await api.get(PERSONAS, headers=alice.headers)
        assert r.status_code == 200
        assert created.json()["persona"]["id"] in {p["id"] for p in r.json()["personas"]}


async def test_a_write_that_meets_a_dead_database_is_a_503_and_nothing_half_written(
    proxied, redis_url, make_user, resources
):
    proxy, dsn = proxied
    alice = await make_user("alice")
    # Keys stay trusted for a while here, so the request reaches the persona write itself.
    app = create_app(make_settings(dsn, redis_url, key_cache_seconds=60.0))
    async with running(app) as api:
        assert (await api.get(PERSONAS, headers=alice.headers)).status_code == 200
        await proxy.cut()
        body = persona_body()
        r = await api.post(PERSONAS, json=body, headers=alice.headers)
        assert r.status_code == 503
        await proxy.start()
        count = await resources.pool.fetchval("SELECT count(*) FROM personas WHERE name = $1", body["name"])
        assert count == 0


async def test_an_answer_that_cannot_be_saved_is_not_reported_as_done(
    proxied, redis_url, make_user, fake_llm, resources
):
    from tests.conftest import llm_env, serving
    from tests.sse import parse_sse

    proxy, dsn = proxied
    alice = await make_user("alice")
    app = create_app(make_settings(dsn, redis_url, env=llm_env(fake_llm), key_cache_seconds=60.0))
    async with serving(app) as url:
        import httpx

        fake_llm.script(chunks=("one ", "two ", "three"), chunk_delay=0.3)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            asked = len(fake_llm.chat_requests())
            request = http.post("/api/v1/chat", json={"message": "count", "stream": True}, headers=alice.headers)
            answer = asyncio.ensure_future(request)
            # The provider is asked once the question is stored; the answer streams on for 0.6 s from then.
            assert await eventually(lambda: len(fake_llm.chat_requests()) > asked)
            await proxy.cut()
            r = await answer
        events, _ = parse_sse(r.text)
        names = [e.event for e in events]
        assert names[0] == "start" and "done" not in names
        assert events[-2].event == "error" and events[-2].json["code"] == "pending"
        assert "".join(e.json["content"] for e in events if e.event == "content") == "one two three"

        conversation_id = events[0].json["conversation_id"]
        query = "SELECT role, status, content FROM messages WHERE conversation_id = $1::uuid ORDER BY seq"
        # The question was saved before the provider was called; the answer never claimed to be, and the
        # conversation says it is pending, as the stream did.
        stored = await resources.pool.fetch(query, conversation_id)
        assert [(m["role"], m["status"]) for m in stored] == [("user", "complete"), ("assistant", "pending")]

        # When the database is back, the answer is kept after all.
        await proxy.start()

        async def settled() -> bool:
            nonlocal stored
            stored = await resources.pool.fetch(query, conversation_id)
            return bool(stored[1]["status"] != "pending")

        assert await eventually(settled, within=10, interval=0.1)
        assert (stored[1]["status"], stored[1]["content"]) == ("complete", "one two three")


async def test_connections_the_database_dropped_are_not_handed_to_later_requests(database_url):
    from core.db import connect_pool, is_database_unavailable

    pool = await connect_pool(database_url, min_size=2, max_size=2)
    try:
        pids = {await pool.fetchval("SELECT pg_backend_pid()") for _ in range(4)}
        # The pool's connections, killed as a restart kills them.
        killer = await asyncpg.connect(database_url)
        await killer.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", list(pids))
        await killer.close()
        outcomes = []
        for _ in range(4):
            try:
                outcomes.append(await pool.fetchval("SELECT 1"))
            except Exception as exc:
                assert is_database_unavailable(exc), repr(exc)
                outcomes.append("unavailable")
        # At most one failure per dropped connection, then fresh ones answer.
        assert outcomes[-2:] == [1, 1] and outcomes.count("unavailable") <= len(pids)
    finally:
        await pool.close()


async def test_a_connection_whose_protocol_broke_closes_itself(database_url):
    from core.db import connect_pool

    pool = await connect_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            raw = conn._con  # the pooled connection behind asyncpg's proxy

            async def broken() -> None:
                raise asyncpg.exceptions.InternalClientError("cannot switch to state 15; protocol is failed")

            with pytest.raises(asyncpg.exceptions.InternalClientError):
                await raw._closing_if_broken(broken())
            assert raw.is_closed()
        assert await pool.fetchval("SELECT 1") == 1  # the pool made a new one
    finally:
        await pool.close()
