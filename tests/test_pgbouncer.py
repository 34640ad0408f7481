"""The runtime through PgBouncer in transaction mode (DATABASE_POOL_MODE=transaction): migrations, personas, chat."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import asyncpg
import pytest

from api.app import create_app
from core.db import connect_pool
from runtime.server.migrate import apply_migrations, load_migrations
from runtime.server.settings import Settings, SettingsError
from tests.conftest import llm_env, make_settings, persona_body, running

BASE = "/api/v1/chat/personas"
KEY = "prk_pgbouncer_test_admin_key_0123456789"


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime", *args], env=env, capture_output=True, text=True, timeout=120
    )


async def test_migrate_and_the_command_line_work_through_the_pooler(create_database, pgbouncer):
    dsn = pgbouncer.dsn(await create_database())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "OPENAI_", "ANTHROPIC_"))}
    env |= {"DATABASE_URL": dsn, "DATABASE_POOL_MODE": "transaction"}
    # Two at once, as two instances starting together: the lock is taken per transaction, so it holds
    # although each statement may run on another server connection.
    first, second = await asyncio.gather(
        asyncio.to_thread(run_cli, "migrate", env=env), asyncio.to_thread(run_cli, "migrate", env=env)
    )
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert await apply_migrations(dsn) == []
    created = run_cli("users", "create", "pooled", env=env)
    assert created.returncode == 0, created.stderr
    conn = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(load_migrations())
        assert await conn.fetchval("SELECT count(*) FROM users WHERE name = 'pooled'") == 1
        # No session-level advisory lock was left behind on any server connection (of this database: the
        # server may be shared with other test sessions, migrating theirs).
        held = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        assert held == 0
    finally:
        await conn.close()


async def test_personas_and_chat_turns_work_through_the_pooler_under_concurrency(
    create_database, pgbouncer, redis_url, fake_llm
):
    direct = await create_database()
    dsn = pgbouncer.dsn(direct)
    settings = make_settings(
        dsn,
        redis_url,
        env=llm_env(fake_llm),
        database_pool_mode="transaction",
        # LISTEN is session state: it bypasses the pooler, as docs/scaling.md says to set it up.
        database_listen_url=direct,
        bootstrap_admin=True,
        bootstrap_admin_key=KEY,
        # More client connections than the pooler has server connections, so they take turns on them.
        db_pool_max=pgbouncer.server_connections * 3,
    )
    headers = {"X-API-Key": KEY}
    async with running(create_app(settings)) as api:
        created = await api.post(BASE, json=persona_body(visibility="public"), headers=headers)
        assert created.status_code == 201, created.text
        url = f"{BASE}/{created.json()['persona']['id']}"

        async def edit(n: int) -> int:
            r = await api.put(url, json={"description": f"edit {n}", "change_note": f"n{n}"}, headers=headers)
            return r.status_code

        async def read() -> int:
            return (await api.get(url, headers=headers)).status_code

        async def create() -> int:
            return (await api.post(BASE, json=persona_body(), headers=headers)).status_code

        async def conversations() -> int:  # not cached: a query each time
            return (await api.get("/api/v1/chat/conversations", headers=headers)).status_code

        for _ in range(3):
            codes = await asyncio.gather(
                *(edit(n) for n in range(3)),
                *(create() for _ in range(6)),
                *(conversations() for _ in range(12)),
                *(read() for _ in range(6)),
            )
            assert sorted(set(codes)) == [200, 201]
        persona = (await api.get(url, headers=headers)).json()["persona"]
        assert persona["version"] == 10
        versions = (await api.get(f"{url}/versions", headers=headers)).json()
        assert versions["total"] == 10 and {v["change_note"] for v in versions["versions"]} >= {"n0", "n2"}

        fake_llm.script(chunks=("Pooled", " answer."))
        turn = await api.post("/api/v1/chat", json={"message": "hi", "persona_id": persona["id"]}, headers=headers)
        assert turn.status_code == 200, turn.text
        assert turn.json()["response"] == "Pooled answer."
        stored = await api.get(f"/api/v1/chat/conversations/{turn.json()['conversation_id']}", headers=headers)
        messages = stored.json()["messages"]
        assert [(m["role"], m["content"], m["status"]) for m in messages] == [
            ("user", "hi", "complete"),
            ("assistant", "Pooled answer.", "complete"),
        ]
        assert messages[1]["persona_version"] == 10
        ready = await api.get("/ready")
        assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"


async def test_a_direct_connection_keeps_its_prepared_statements_and_transaction_mode_makes_none(database_url):
    """The setting changes nothing unless it is on: direct connections still parse each query once."""
    await apply_migrations(database_url)
    query = "SELECT count(*) FROM personas WHERE is_active = $1"
    for mode, kept in (("session", True), ("transaction", False)):
        pool = await connect_pool(database_url, min_size=1, max_size=1, pool_mode=mode)
        try:
            async with pool.acquire() as conn:
                await conn.fetchval(query, True)
                names = await conn.fetch("SELECT name FROM pg_prepared_statements WHERE statement = $1", query)
            assert bool(names) is kept, mode
        finally:
            await pool.close()


def test_the_pool_mode_setting_is_read_and_checked():
    assert Settings.from_env({}).database_pool_mode == "session"
    assert Settings.from_env({"DATABASE_POOL_MODE": "Transaction"}).database_pool_mode == "transaction"
    with pytest.raises(SettingsError, match="statement is not supported"):
        Settings.from_env({"DATABASE_POOL_MODE": "statement"})
    with pytest.raises(SettingsError, match="`session` or `transaction`"):
        Settings.from_env({"DATABASE_POOL_MODE": "sessions"})
