"""Users and API keys: keys are random, shown once, stored only as a SHA-256 hash beside a short prefix."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from core.errors import BadRequest, Conflict, NotFound
from core.signals import notify
from personas.models import Limits

__all__ = [
    "KEY_PREFIX",
    "KEY_SIGNAL",
    "Accounts",
    "ApiKey",
    "KeyChange",
    "KeyOwner",
    "User",
    "generate_key",
    "hash_key",
    "limits_column",
    "shown_prefix",
]

# The signal a revocation sends, so that every instance drops what it remembers of the key at once.
KEY_SIGNAL = "api_key"

# Recognisable in a leaked-secret scan and in a config file; the random part carries 256 bits.
KEY_PREFIX = "prk_"
# What ``prefix`` shows of a key: enough to tell keys apart, never enough to matter. At most 8 characters of
# the secret after the fixed marker, and at most a quarter of it, so a short key chosen by an operator
# (``BOOTSTRAP_ADMIN_KEY``) is not mostly shown.
_SHOWN_SECRET_CHARS = 8


def shown_prefix(key: str) -> str:
    """The part of ``key`` that lists and logs may show: the ``prk_`` marker and a few characters after it."""
    marker = KEY_PREFIX if key.startswith(KEY_PREFIX) else ""
    secret = len(key) - len(marker)
    return key[: len(marker) + min(_SHOWN_SECRET_CHARS, secret // 4)]


_USER_COLUMNS = "id, name, display_name, is_admin, created_at"
_KEY_COLUMNS = "id, user_id, name, prefix, created_at, last_used_at, expires_at, revoked_at, limits"

INSERT_USER = f"""
INSERT INTO users (name, display_name, is_admin) VALUES ($1, $2, $3) RETURNING {_USER_COLUMNS}"""
GET_USER_BY_NAME = f"SELECT {_USER_COLUMNS} FROM users WHERE lower(name) = lower($1)"
COUNT_USERS = "SELECT count(*) FROM users"
# A page of users, by name; ``$1`` (NULL: everyone) is found anywhere in the name or display name, any case.
LIST_USERS = f"""
SELECT {_USER_COLUMNS}, count(*) OVER () AS total FROM users
WHERE $1::text IS NULL OR strpos(lower(name), lower($1)) > 0 OR strpos(lower(coalesce(display_name, '')), lower($1)) > 0
ORDER BY lower(name), id LIMIT $2 OFFSET $3"""
INSERT_KEY = f"""
INSERT INTO api_keys (user_id, name, prefix, key_hash, expires_at, limits) VALUES ($1, $2, $3, $4, $5, $6)
RETURNING {_KEY_COLUMNS}"""
# Serialises one user's key creations, so the count of live keys cannot be raced past its bound.
LOCK_USER_KEYS = "SELECT pg_advisory_xact_lock(hashtextextended('api_keys:' || $1::uuid::text, 0))"
COUNT_LIVE_KEYS = """SELECT count(*) FROM api_keys
WHERE user_id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"""
LIST_KEYS = f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY created_at DESC, id"
GET_KEY = f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = $1"
FIND_KEYS_BY_PREFIX = f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE prefix = $1"
REVOKE_KEY = f"""
UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING {_KEY_COLUMNS}"""
SET_KEY_LIMITS = f"UPDATE api_keys SET limits = $2 WHERE id = $1 RETURNING {_KEY_COLUMNS}"
AUTHENTICATE = """
SELECT k.id AS key_id, k.expires_at, k.revoked_at, k.limits, u.id AS user_id, u.name AS user_name, u.display_name,
       u.is_admin
FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.key_hash = $1"""
TOUCH_KEYS = """
UPDATE api_keys k SET last_used_at = t.used_at
FROM unnest($1::uuid[], $2::timestamptz[]) AS t(id, used_at)
WHERE k.id = t.id AND (k.last_used_at IS NULL OR k.last_used_at < t.used_at)"""
LOCK_BOOTSTRAP = "SELECT pg_advisory_xact_lock(7069657)"


class User(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    name: str
    display_name: str | None
    is_admin: bool
    created_at: datetime


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """A key as it may be shown: never the key itself, never its hash."""

    id: UUID
    user_id: UUID
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    limits: Limits = msgspec.field(default_factory=Limits)


class KeyOwner(msgspec.Struct, frozen=True, kw_only=True):
    key_id: UUID
    expires_at: datetime | None
    revoked_at: datetime | None
    user_id: UUID
    user_name: str
    display_name: str | None
    is_admin: bool
    limits: Limits = msgspec.field(default_factory=Limits)


def limits_column(limits: Limits | None) -> dict[str, int]:
    """Only the limits that are set: ``{}`` for none."""
    if limits is None:
        return {}
    return {name: value for name, value in msgspec.structs.asdict(limits).items() if value is not None}


class KeyChange(msgspec.Struct, frozen=True, kw_only=True):
    """What a key signal names: the key that changed (never the key or its hash)."""

    key_id: UUID


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> bytes:
    # A fast hash is right here: the key is 256 random bits, so there is nothing to brute-force.
    return hashlib.sha256(key.encode()).digest()


def _user(record: asyncpg.Record) -> User:
    return msgspec.convert(dict(record), User, strict=False)


def _key(record: asyncpg.Record) -> ApiKey:
    return msgspec.convert(dict(record), ApiKey, strict=False)


class Accounts:
    """SQL for users and keys."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create_user(
        self,
        name: str,
        *,
        display_name: str | None = None,
        is_admin: bool = False,
        conn: asyncpg.Connection | None = None,
    ) -> User:
        name = name.strip()
        if not 1 <= len(name) <= 100:
            raise BadRequest("`name` must be 1 to 100 characters.", field="name")
        try:
            record = await (conn or self._pool).fetchrow(INSERT_USER, name, display_name, is_admin)
        except asyncpg.UniqueViolationError:
            raise Conflict(f"A user named {name!r} already exists; choose another `name`.", field="name") from None
        return _user(record)

    async def list_users(self, search: str | None, *, limit: int, offset: int) -> tuple[list[User], int]:
        """A page of users in name order, those whose name or display name contains ``search`` (any case);
        and how many there are in all."""
        search = search or None
        records = await self._pool.fetch(LIST_USERS, search, limit, offset)
        if not records and offset > 0:  # past the last page: the count still answers
            first = await self._pool.fetch(LIST_USERS, search, 1, 0)
            return [], first[0]["total"] if first else 0
        return [_user(r) for r in records], records[0]["total"] if records else 0

    async def get_user_by_name(self, name: str) -> User | None:
        record = await self._pool.fetchrow(GET_USER_BY_NAME, name)
        return _user(record) if record else None

    async def create_key(
        self,
        user_id: UUID,
        *,
        name: str = "",
        expires_in_days: int | None = None,
        key: str | None = None,
        limits: Limits | None = None,
        conn: asyncpg.Connection | None = None,
        max_live: int | None = None,
    ) -> tuple[str, ApiKey]:
        """Create a key (random unless ``key`` is given) and return it with its record: the only time it is seen.

        ``max_live`` bounds the user's live (unrevoked, unexpired) keys: one more is a 409."""
        if expires_in_days is not None and not 1 <= expires_in_days <= 3650:
            raise BadRequest("`expires_in_days` must be between 1 and 3650.", field="expires_in_days")
        key = key or generate_key()
        if len(key) < 20:
            raise BadRequest("An API key must be at least 20 characters long.", field="key")
        expires_at = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
        row = (user_id, name, shown_prefix(key), hash_key(key), expires_at, limits_column(limits))
        try:
            if conn is not None:
                record = await self._insert_key(conn, row, max_live)
            else:
                async with self._pool.acquire() as own, own.transaction():
                    record = await self._insert_key(own, row, max_live)
        except asyncpg.UniqueViolationError:
            raise Conflict("That key is already in use.", field="key") from None
        except asyncpg.ForeignKeyViolationError:
            raise NotFound(f"User {user_id} not found.", field="user_id") from None
        return key, _key(record)

    async def _insert_key(self, conn: asyncpg.Connection, row: tuple[Any, ...], max_live: int | None) -> Any:
        if max_live is not None:
            await conn.execute(LOCK_USER_KEYS, row[0])
            live = await conn.fetchval(COUNT_LIVE_KEYS, row[0])
            if live >= max_live:
                raise Conflict(
                    f"This user already has {live} live API keys, the most one may hold ({max_live}): revoke one "
                    "they no longer use (DELETE /api/v1/keys/{id}) and try again."
                )
        return await conn.fetchrow(INSERT_KEY, *row)

    async def list_keys(self, user_id: UUID) -> list[ApiKey]:
        return [_key(r) for r in await self._pool.fetch(LIST_KEYS, user_id)]

    async def get_key(self, key_id: UUID) -> ApiKey | None:
        record = await self._pool.fetchrow(GET_KEY, key_id)
        return _key(record) if record else None

    async def find_keys(self, id_or_prefix: str) -> list[ApiKey]:
        try:
            key = await self.get_key(UUID(id_or_prefix))
            return [key] if key else []
        except ValueError:
            return [_key(r) for r in await self._pool.fetch(FIND_KEYS_BY_PREFIX, id_or_prefix)]

    async def revoke_key(self, key_id: UUID) -> ApiKey | None:
        async with self._pool.acquire() as conn, conn.transaction():
            record = await conn.fetchrow(REVOKE_KEY, key_id)
            if record is not None:
                await notify(conn, KEY_SIGNAL, KeyChange(key_id=key_id))
        return _key(record) if record else None

    async def set_key_limits(self, key_id: UUID, limits: Limits) -> ApiKey | None:
        record = await self._pool.fetchrow(SET_KEY_LIMITS, key_id, limits_column(limits))
        return _key(record) if record else None

    async def key_owner(self, key: str) -> KeyOwner | None:
        record = await self._pool.fetchrow(AUTHENTICATE, hash_key(key))
        return msgspec.convert(dict(record), KeyOwner, strict=False) if record else None

    async def touch_keys(self, used: dict[UUID, datetime]) -> None:
        if used:
            await self._pool.execute(TOUCH_KEYS, list(used.keys()), list(used.values()))

    async def bootstrap_admin(self, key: str | None) -> tuple[User, str] | None:
        """On an empty database, create user ``admin`` with ``key`` (or a new one). None if users exist."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_BOOTSTRAP)
            if await conn.fetchval(COUNT_USERS):
                return None
            admin = await self.create_user("admin", display_name="Administrator", is_admin=True, conn=conn)
            created_key, _ = await self.create_key(admin.id, name="bootstrap", key=key, conn=conn)
            return admin, created_key
