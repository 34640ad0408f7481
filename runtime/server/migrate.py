"""Forward-only SQL migrations: numbered files, one transaction each, an advisory lock, checksums."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

__all__ = ["MIGRATIONS_DIR", "Migration", "MigrationError", "apply_migrations", "load_migrations"]

log = logging.getLogger("persona_runtime.migrate")

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

# Any fixed number shared by every instance: whoever holds it migrates, the others wait and find nothing to do.
_LOCK_ID = 0x70657273_6F6E61  # "persona"

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
_APPLIED = "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
_RECORD = "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)"


class MigrationError(RuntimeError):
    """The database and the migration files disagree; nothing was applied."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_snake_case.sql")
        migrations.append(Migration(int(match.group(1)), match.group(2), path.read_text(encoding="utf-8")))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a number in {directory}")
    return migrations


async def apply_migrations(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply what is pending and return it. Safe when several processes call it at once.

    Each migration is applied in a transaction of its own that first takes the advisory lock, a
    transaction-level one (``pg_advisory_xact_lock``), and checks what is applied again under it: a
    session-level lock would be held by whichever server connection a transaction-mode pooler (PgBouncer)
    lent for that statement, and its unlock sent down another one. So migrations run the same through such
    a pooler as on a direct connection.
    """
    migrations = load_migrations(directory)
    conn = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        applied: list[Migration] = []
        while True:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
                pending = await _pending(conn, migrations)
                if not pending:
                    return applied
                migration = pending[0]
                await conn.execute(migration.sql)
                await conn.execute(_RECORD, migration.version, migration.name, migration.checksum)
            log.info("applied migration %04d_%s", migration.version, migration.name)
            applied.append(migration)
    finally:
        await conn.close()


async def _pending(conn: asyncpg.Connection, migrations: list[Migration]) -> list[Migration]:
    """The migrations the database lacks, oldest first; refused when it and the files disagree."""
    await conn.execute(_CREATE_TABLE)
    applied = {row["version"]: row for row in await conn.fetch(_APPLIED)}
    known = {m.version for m in migrations}
    for version in applied.keys() - known:
        raise MigrationError(
            f"the database has migration {version} ({applied[version]['name']}) that this code "
            "does not know: run a newer release"
        )
    pending = []
    for migration in migrations:
        row = applied.get(migration.version)
        if row is None:
            pending.append(migration)
        elif row["checksum"] != migration.checksum:
            raise MigrationError(
                f"migration {migration.version:04d}_{migration.name}.sql was edited after it was "
                "applied; migrations are forward-only: restore the file and add a new one"
            )
    return pending
