"""Invalidation that cannot get stuck: a write is announced inside its transaction, and every instance drops
what it changed, with Redis stalled, with no Redis at all, and after the listening connection is lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import httpx
import msgspec
import pytest
from litestar import Litestar

from api.app import create_app
from core.signals import CHANNEL, Signals, notify
from runtime.server.resources import Resources
from runtime.server.settings import Settings
from tests.conftest import make_settings, persona_body, running

BASE = "/api/v1/chat/personas"

Check = Callable[[], Awaitable[bool]]


async def within(seconds: float, check: Check) -> None:
    """Ask ``check`` until it holds; fail if it still does not after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"not so within {seconds} s"
        await asyncio.sleep(0.02)


def refused(api: httpx.AsyncClient, url: str, headers: dict[str, str], status: int = 404) -> Check:
    """Whether ``api`` answers ``url`` with ``status`` (404: not visible to that caller)."""

    async def check() -> bool:
        return (await api.get(url, headers=headers)).status_code == status

    return check


def resources_of(app: Litestar) -> Resources:
    resources: Resources = app.state.resources
    return resources


async def public_persona(api: httpx.AsyncClient, headers: dict[str, str]) -> str:
    r = await api.post(BASE, json=persona_body(visibility="public"), headers=headers)
    assert r.status_code == 201, r.text
    return f"{BASE}/{r.json()['persona']['id']}"


async def test_a_signal_is_heard_when_its_transaction_commits_and_never_when_it_rolls_back(database_url, resources):
    signals = Signals(database_url)
    heard: asyncio.Queue[bytes] = asyncio.Queue()

    async def got(payload: bytes) -> None:
        await heard.put(payload)

    signals.subscribe("test", got)
    await signals.start()
    try:
        with contextlib.suppress(RuntimeError):
            async with resources.pool.acquire() as conn, conn.transaction():
                await notify(conn, "test", {"n": 1})
                raise RuntimeError("the write fails after announcing itself")
        await resources.pool.execute("SELECT pg_notify($1, $2)", CHANNEL, "not a signal")
        await notify(resources.pool, "a kind nobody here knows", {"n": 2})
        async with resources.pool.acquire() as conn, conn.transaction():
            await notify(conn, "test", {"n": 3})
        # Notifications arrive in commit order: anything else would have come first.
        assert msgspec.json.decode(await asyncio.wait_for(heard.get(), 1)) == {"n": 3}
        assert heard.empty() and signals.listening
    finally:
        await signals.aclose()
    with pytest.raises(ValueError, match="too long"):
        await notify(resources.pool, "test", "x" * 8000)


async def test_a_persona_made_private_while_redis_stalls_is_refused_elsewhere_once_redis_answers(
    database_url, redis_process, make_user
):
    # Kept 30 s in each instance's memory: only the announcement can explain a refusal within a second.
    settings = make_settings(database_url, redis_process.url, persona_local_cache_seconds=30)
    one, two = create_app(settings), create_app(settings)
    async with running(one) as first, running(two) as second:
        alice, bob = await make_user("alice"), await make_user("bob")
        url = await public_persona(first, alice.headers)
        assert (await second.get(url, headers=bob.headers)).status_code == 200  # now in its memory and Redis

        redis_process.pause()
        try:
            r = await first.put(url, json={"visibility": "private"}, headers=alice.headers)
            assert r.status_code == 200
            assert not resources_of(one).cache.available  # the writer's own delete did not reach Redis
        finally:
            redis_process.resume()
        await within(1, refused(second, url, bob.headers))
        assert (await second.get(url, headers=alice.headers)).json()["persona"]["visibility"] == "private"


async def test_without_redis_instances_sharing_a_database_drop_what_another_wrote(database_url, make_user):
    settings = make_settings(database_url, None, persona_local_cache_seconds=30)
    one, two = create_app(settings), create_app(settings)
    async with running(one) as first, running(two) as second:
        alice, bob = await make_user("alice"), await make_user("bob")
        url = await public_persona(first, alice.headers)
        persona_id = url.rsplit("/", 1)[1]
        assert (await second.get(url, headers=bob.headers)).status_code == 200
        assert (await second.get(f"{BASE}/current", headers=bob.headers)).json()["source"] == "default"

        await first.post(f"{BASE}/set", json={"persona_id": persona_id}, headers=bob.headers)

        async def preferred() -> bool:
            current = (await second.get(f"{BASE}/current", headers=bob.headers)).json()
            return bool(current["source"] == "preference" and current["persona"]["id"] == persona_id)

        await within(1, preferred)

        assert (await first.put(url, json={"visibility": "private"}, headers=alice.headers)).status_code == 200
        await within(1, refused(second, url, bob.headers))

        assert (await second.get(url, headers=alice.headers)).status_code == 200
        assert (await first.delete(url, headers=alice.headers)).status_code == 200
        await within(1, refused(second, url, alice.headers))


async def test_a_key_revoked_on_one_instance_is_refused_on_another_within_a_second(database_url, redis_url, make_user):
    one = create_app(make_settings(database_url, redis_url))
    two = create_app(make_settings(database_url, redis_url, key_cache_seconds=30))
    async with running(one) as first, running(two) as second:
        alice = await make_user("alice")
        other = (await first.post("/api/v1/keys", json={"name": "second"}, headers=alice.headers)).json()["key"]
        assert (await second.get(BASE, headers=alice.headers)).status_code == 200  # trusted for 30 s here
        assert (await second.get(BASE, headers={"X-API-Key": other})).status_code == 200

        r = await first.delete(f"/api/v1/keys/{alice.key_id}", headers={"X-API-Key": other})
        assert r.status_code == 200
        await within(1, refused(second, BASE, alice.headers, 401))
        assert (await second.get(BASE, headers={"X-API-Key": other})).status_code == 200


async def test_the_listener_reconnects_after_its_connection_is_ended_and_invalidation_works_again(
    database_url, redis_url, make_user, resources, caplog
):
    caplog.set_level(logging.WARNING, logger="persona_runtime.signals")
    one = create_app(make_settings(database_url, redis_url))
    two = create_app(make_settings(database_url, redis_url, persona_local_cache_seconds=30))
    async with running(one) as first, running(two) as second:
        alice, bob = await make_user("alice"), await make_user("bob")
        signals = resources_of(two).signals
        ended = signals.backend_pid
        assert signals.listening and ended is not None
        assert await resources.pool.fetchval("SELECT pg_terminate_backend($1)", ended)

        async def listening_again() -> bool:
            return signals.listening and signals.backend_pid not in (None, ended)

        await within(1, listening_again)
        url = await public_persona(first, alice.headers)
        assert (await second.get(url, headers=bob.headers)).status_code == 200
        assert (await first.put(url, json={"visibility": "private"}, headers=alice.headers)).status_code == 200
        await within(1, refused(second, url, bob.headers))

    said = [r.getMessage() for r in caplog.records if r.name == "persona_runtime.signals"]
    assert len([m for m in said if m.startswith("lost the connection")]) == 1
    assert len([m for m in said if m.startswith("listening for changes again")]) == 1


async def test_while_the_listener_cannot_reach_the_database_entries_are_kept_a_second_at_most(
    database_url, redis_url, proxied, make_user
):
    proxy, through_proxy = proxied
    one = create_app(make_settings(database_url, redis_url))
    # Only the listening connection goes through the proxy, as DATABASE_LISTEN_URL past a pooler would.
    two = create_app(
        make_settings(database_url, redis_url, database_listen_url=through_proxy, persona_local_cache_seconds=30)
    )
    async with running(one) as first, running(two) as second:
        alice, bob = await make_user("alice"), await make_user("bob")
        signals = resources_of(two).signals
        assert signals.listening
        await proxy.cut()

        async def deaf() -> bool:
            return not signals.listening

        await within(1, deaf)
        url = await public_persona(first, alice.headers)
        assert (await second.get(url, headers=bob.headers)).status_code == 200
        assert (await first.put(url, json={"visibility": "private"}, headers=alice.headers)).status_code == 200
        # Unheard, the write is seen once the entry's second is up, not after the 30 s configured.
        await within(2, refused(second, url, bob.headers))

        await proxy.start()

        async def listening() -> bool:
            return signals.listening

        await within(5, listening)  # the next retry, at most 2 s away
        url = await public_persona(first, alice.headers)
        assert (await second.get(url, headers=bob.headers)).status_code == 200
        assert (await first.put(url, json={"visibility": "private"}, headers=alice.headers)).status_code == 200
        await within(1, refused(second, url, bob.headers))


def test_the_listening_connection_may_bypass_a_pooler_and_its_password_is_never_shown():
    direct = "postgresql://runtime:s3cret@db:5432/personas"
    settings = Settings.from_env(
        {"DATABASE_URL": "postgresql://runtime:s3cret@pooler:6432/personas", "DATABASE_LISTEN_URL": direct}
    )
    assert settings.database_listen_url == direct
    assert "s3cret" not in repr(settings) and "runtime:***@db:5432" in repr(settings)
    assert Settings.from_env({"DATABASE_URL": direct}).database_listen_url is None  # DATABASE_URL is used then
