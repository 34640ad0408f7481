"""The statement counter in front of the local PostgreSQL (skipped when there is none)."""

from __future__ import annotations

import os

import asyncpg
import pytest

from bench.query_counter import classify, query_counter

SERVER = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def test_classify() -> None:
    assert classify("SELECT k.id FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.key_hash = $1") == (
        "api_key_lookups"
    )
    assert classify("SELECT id, name FROM personas WHERE is_active AND lower(name) = lower($1)") == "persona_selects"
    assert classify("select persona_id from user_persona_preferences where user_id = $1") == "preference_selects"
    assert classify("SELECT version FROM persona_versions WHERE persona_id = $1") == "other"
    assert classify("UPDATE api_keys SET last_used_at = $2 WHERE id = $1") == "other"
    assert classify("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;") == "pool_resets"
    assert classify("BEGIN") == "other"


async def test_prepared_and_simple_statements_are_counted() -> None:
    try:
        probe = await asyncpg.connect(SERVER, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        pytest.skip("no local PostgreSQL")
    await probe.close()
    async with query_counter(SERVER) as (counter, url):
        conn = await asyncpg.connect(url)
        try:
            for n in range(3):
                assert await conn.fetchval("SELECT $1::int + 1", n) == n + 1
            await conn.execute("SELECT 1")
        finally:
            await conn.close()
        assert counter.statements["SELECT $1::int + 1"] == 3
        assert counter.statements["SELECT 1"] == 1
        assert counter.connections == 1
        counter.reset()
        assert not counter.statements
