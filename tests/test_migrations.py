"""Migrations under concurrency, checksums, and initialize-default racing with itself."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import asyncpg
import pytest

from api.app import create_app
from personas.models import MU_ID
from runtime.access.accounts import Accounts
from runtime.server.migrate import MIGRATIONS_DIR, MigrationError, apply_migrations, load_migrations
from tests.conftest import make_settings, running


async def test_two_migrators_at_once_both_succeed_and_migrate_once(create_database):
    dsn = await create_database()
    first, second = await asyncio.gather(apply_migrations(dsn), apply_migrations(dsn))
    files = load_migrations()
    assert sorted(m.version for m in first + second) == [m.version for m in files]
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(files)
        assert await conn.fetchval("SELECT count(*) FROM personas WHERE id = $1", MU_ID) == 1
        assert await conn.fetchval("SELECT count(*) FROM persona_versions WHERE persona_id = $1", MU_ID) == 1
    finally:
        await conn.close()
    assert await apply_migrations(dsn) == []


async def test_an_edited_applied_migration_is_refused(create_database, tmp_path: Path):
    dsn = await create_database()
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
    await apply_migrations(dsn, folder)
    first = sorted(folder.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="edited after it was applied"):
        await apply_migrations(dsn, folder)


async def test_a_failing_migration_leaves_nothing_half_applied(create_database, tmp_path: Path):
    dsn = await create_database()
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
    (folder / "0999_broken.sql").write_text("CREATE TABLE half_done (id int);\nSELECT no_such_function();\n")
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await apply_migrations(dsn, folder)
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations WHERE version = 999") == 0
    finally:
        await conn.close()


async def test_badly_named_migration_files_are_refused(tmp_path: Path):
    (tmp_path / "1_init.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_snake_case"):
        load_migrations(tmp_path)


async def test_ten_simultaneous_initialize_default_calls_make_one_mu(create_database, redis_url):
    dsn = await create_database()
    app = create_app(make_settings(dsn, redis_url))
    async with running(app) as api:
        accounts: Accounts = app.state.resources.accounts
        user = await accounts.create_user("racer")
        key, _ = await accounts.create_key(user.id, name="race")
        pool = app.state.resources.pool
        # Soft-delete Mu so that every call wants to restore it.
        await pool.execute("UPDATE personas SET is_active = false WHERE id = $1", MU_ID)

        calls = [api.post("/api/v1/chat/personas/initialize-default", headers={"X-API-Key": key}) for _ in range(10)]
        answers = await asyncio.gather(*calls)
        assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
        assert sum(r.json()["was_created"] for r in answers) == 1
        assert {r.json()["persona"]["id"] for r in answers} == {str(MU_ID)}
        assert await pool.fetchval("SELECT count(*) FROM personas WHERE lower(name) = 'mu'") == 1
        assert await pool.fetchval("SELECT count(*) FROM personas WHERE is_default AND is_active") == 1


async def test_every_saved_state_is_a_version(client, alice, resources):
    from tests.conftest import persona_body

    r = await client.post("/api/v1/chat/personas", json=persona_body(change_note="first"), headers=alice.headers)
    persona = r.json()["persona"]
    await client.put(
        f"/api/v1/chat/personas/{persona['id']}",
        json={"description": "second", "change_note": "tweak"},
        headers=alice.headers,
    )
    rows = await resources.pool.fetch(
        "SELECT version, description, created_by, change_note FROM persona_versions WHERE persona_id = $1::uuid "
        "ORDER BY version",
        persona["id"],
    )
    assert [(r["version"], r["description"], r["change_note"]) for r in rows] == [
        (1, persona["description"], "first"),
        (2, "second", "tweak"),
    ]
    assert all(str(r["created_by"]) == alice.id for r in rows)


@pytest.mark.parametrize("squatter", ["public", "system"])
async def test_a_persona_that_took_mus_name_while_it_was_deleted_gives_it_back(
    create_database, tmp_path: Path, squatter: str
):
    """Before names were per owner, a public or system persona could take "mu" while Mu was deleted; the
    migration that reserves the name moves it aside, so Mu can always be restored."""
    dsn = await create_database()
    folder = tmp_path / "migrations"
    folder.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if int(path.name[:4]) < 7:
            shutil.copy(path, folder / path.name)
    await apply_migrations(dsn, folder)
    conn = await asyncpg.connect(dsn)
    try:
        owner = await conn.fetchval("INSERT INTO users (name) VALUES ('squatter') RETURNING id")
        await conn.execute("UPDATE personas SET is_active = false, is_default = false WHERE id = $1", MU_ID)
        taken = await conn.fetchval(
            """INSERT INTO personas (name, description, system_prompt, visibility, created_by)
            VALUES ('MU', 'x', 'x', 'public', $1) RETURNING id""",
            owner if squatter == "public" else None,
        )
        await apply_migrations(dsn)
        await conn.execute("UPDATE personas SET is_active = true, is_default = true WHERE id = $1", MU_ID)
        row = await conn.fetchrow("SELECT name, visibility, is_active FROM personas WHERE id = $1", taken)
        assert row["is_active"]
        if squatter == "public":
            assert (row["name"], row["visibility"]) == ("MU", "private")  # still its owner's, no longer public
        else:
            assert row["name"] == "MU (renamed)"
        assert await conn.fetchval("SELECT name FROM personas WHERE is_default AND is_active") == "Mu"
    finally:
        await conn.close()
