"""The pool's quick release (``core/db.py``'s ``_Pool``): a plain query's connection goes back without
asyncpg's shielded release; a connection left in a transaction, or whose query was cancelled, still goes
through asyncpg's, which rolls back or waits for the cancel."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from core import db
from core.db import connect_pool
from tests.waiting import eventually


@pytest.fixture
def asyncpg_releases(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The connections handed to asyncpg's own ``Pool.release``, in order."""
    released: list[Any] = []
    original = asyncpg.Pool.release

    async def counted(self: asyncpg.Pool, connection: Any, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        released.append(connection)
        await original(self, connection, timeout=timeout)

    monkeypatch.setattr(asyncpg.Pool, "release", counted)
    return released


def test_the_installed_asyncpg_has_what_the_quick_release_uses() -> None:
    # Fails when an asyncpg without one of its internals is installed: connect_pool then falls back to
    # asyncpg's own pool, which works, but every query costs its shielded release again.
    assert db._fits_this_asyncpg()
    assert db._POOL_CLASS is db._Pool


async def test_a_plain_query_goes_back_without_asyncpgs_release(database_url: str, asyncpg_releases: list[Any]) -> None:
    pool = await connect_pool(database_url, min_size=1, max_size=1)
    try:
        assert [await pool.fetchval("SELECT $1::int", n) for n in range(5)] == list(range(5))
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT 7") == 7
        assert asyncpg_releases == []
        assert pool.get_idle_size() == 1  # back in the pool, and the one connection it has
    finally:
        await pool.close()


async def test_a_connection_left_in_a_transaction_is_rolled_back_by_asyncpg(
    database_url: str, asyncpg_releases: list[Any]
) -> None:
    pool = await connect_pool(database_url, min_size=1, max_size=1)
    try:
        await pool.execute("CREATE TEMP TABLE IF NOT EXISTS kept (n int)")  # ignored: its own connection's
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("SET LOCAL application_name = 'left open'")
        assert len(asyncpg_releases) == 1
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SHOW application_name") != "left open"
    finally:
        await pool.close()


async def test_a_cancelled_query_leaves_the_pool_usable(database_url: str, asyncpg_releases: list[Any]) -> None:
    pool = await connect_pool(database_url, min_size=1, max_size=1)
    try:
        slow = asyncio.create_task(pool.fetchval("SELECT pg_sleep(10)"))
        watcher = await asyncpg.connect(database_url)
        try:

            async def sleeping() -> bool:  # the server is running it: the cancel must reach the server
                running = (
                    "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(10)' AND state = 'active'"
                )
                return bool(await watcher.fetchval(running))

            assert await eventually(sleeping)
        finally:
            await watcher.close()
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        # The one connection comes back once asyncpg has had the server cancel the sleep.
        assert await asyncio.wait_for(pool.fetchval("SELECT 1"), timeout=5) == 1
        assert len(asyncpg_releases) == 1
    finally:
        await pool.close()
