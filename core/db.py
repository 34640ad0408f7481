"""The asyncpg pool: JSON codecs, record conversion, and telling 'database down' apart from bugs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, TypeVar

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

__all__ = ["connect_pool", "is_database_unavailable", "to_struct", "to_structs"]

T = TypeVar("T")

_json_encoder = msgspec.json.Encoder()


def _encode_json(value: Any) -> str:
    return _json_encoder.encode(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(type_name, encoder=_encode_json, decoder=msgspec.json.decode, schema="pg_catalog")


class _Connection(asyncpg.Connection):
    """A pooled connection that closes itself when its protocol breaks under a query.

    A database restart caught mid-query can leave a connection open but unusable ("cannot switch to state
    ..."); closed, the pool replaces it instead of handing it to the next request. That is what lets the pool
    skip asyncpg's reset round trip on every release (see ``_keep_session``).
    """

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        return await self._closing_if_broken(super().execute(*args, **kwargs))

    async def fetch(self, *args: Any, **kwargs: Any) -> Any:
        return await self._closing_if_broken(super().fetch(*args, **kwargs))

    async def fetchrow(self, *args: Any, **kwargs: Any) -> Any:
        return await self._closing_if_broken(super().fetchrow(*args, **kwargs))

    async def fetchval(self, *args: Any, **kwargs: Any) -> Any:
        return await self._closing_if_broken(super().fetchval(*args, **kwargs))

    async def _closing_if_broken(self, query: Any) -> Any:
        try:
            return await query
        except asyncpg.exceptions.InternalClientError:
            self.terminate()
            raise


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to undo when a connection goes back to the pool.

    asyncpg's default reset is one more round trip per query (``RESET ALL``, ``UNLISTEN *``, unlocking
    advisory locks). This code keeps no session state outside a transaction: its locks and settings are
    transaction-scoped (``pg_advisory_xact_lock``, ``set_config(..., true)``), as a transaction-mode
    connection pooler also requires. asyncpg still rolls back a transaction left open, a connection the
    server closed is dropped, and one whose protocol broke closes itself (``_Connection``).
    """


class _Pool(asyncpg.Pool):
    """asyncpg's pool, handing a connection back at once when there is nothing to wait for.

    asyncpg releases every connection in a task of its own (``asyncio.shield``, so a cancel cannot keep it
    from the pool): a task and two more turns of the event loop per query, about 120,000 instructions, most
    of what a query of the hot path costs. With the reset a no-op (``_keep_session``) a release needs no await
    unless the connection is in a transaction, being cancelled, closed, expired or at its query limit; such a
    release is done here in one synchronous step, which no cancel can interrupt, and any other goes to asyncpg.
    The steps are asyncpg's own (``Pool.release``, ``PoolConnectionHolder.release``, ``Connection._reset``).
    """

    # A query on a connection of its own, as asyncpg's methods run them, without its acquire context and its
    # proxy's method wrapper between the pool and the connection.
    async def _on_a_connection(self, method: str, query: str, args: tuple[Any, ...], **options: Any) -> Any:
        proxy = await self._acquire(None)
        try:
            return await getattr(proxy._con, method)(query, *args, **options)
        finally:
            await self.release(proxy)

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:  # noqa: ASYNC109
        result: str = await self._on_a_connection("execute", query, args, timeout=timeout)
        return result

    async def fetch(self, query: str, *args: Any, timeout: float | None = None, record_class: Any = None) -> Any:  # noqa: ASYNC109
        return await self._on_a_connection("fetch", query, args, timeout=timeout, record_class=record_class)

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None, record_class: Any = None) -> Any:  # noqa: ASYNC109
        return await self._on_a_connection("fetchrow", query, args, timeout=timeout, record_class=record_class)

    async def fetchval(self, query: str, *args: Any, column: int = 0, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        return await self._on_a_connection("fetchval", query, args, column=column, timeout=timeout)

    async def release(self, connection: Any, *, timeout: float | None = None) -> None:  # noqa: ASYNC109 (asyncpg's signature)
        if not self._released_now(connection):
            await super().release(connection, timeout=timeout)

    def _released_now(self, proxy: Any) -> bool:
        if type(proxy) is not PoolConnectionProxy or self._reset is not _keep_session:
            return False
        holder, con = proxy._holder, proxy._con
        if holder._pool is not self or con is None or holder._in_use is None or self._closing:
            return False
        protocol = con._protocol
        if (
            con.is_closed()
            or protocol.queries_count >= holder._max_queries
            or holder._generation != self._generation
            or protocol._is_cancelling()
            or protocol.is_in_transaction()
            or con._top_xact is not None
        ):
            return False
        self._check_init()
        con._on_release()
        holder._timeout = None
        con._listeners.clear()
        con._log_listeners.clear()
        holder._release()
        holder._setup_inactive_callback()
        return True


def _fits_this_asyncpg() -> bool:
    """Whether the installed asyncpg has every internal :class:`_Pool` uses (written against asyncpg 0.32).

    Without one of them ``connect_pool`` makes asyncpg's own pool, and only the saving is lost;
    ``tests/test_db_pool.py`` fails then, so that a new asyncpg is looked at.
    """
    try:
        from asyncpg.connection import Connection
        from asyncpg.pool import PoolConnectionHolder
        from asyncpg.protocol.protocol import BaseProtocol
    except ImportError:
        return False
    needed = {
        asyncpg.Pool: ("_acquire", "_check_init", "_closing", "_generation", "_reset"),
        PoolConnectionProxy: ("_con", "_holder"),
        PoolConnectionHolder: (
            "_generation",
            "_in_use",
            "_max_queries",
            "_pool",
            "_release",
            "_setup_inactive_callback",
            "_timeout",
        ),
        Connection: ("_listeners", "_log_listeners", "_on_release", "_protocol", "_top_xact", "is_closed"),
        BaseProtocol: ("_is_cancelling", "is_in_transaction", "queries_count"),
    }
    return all(hasattr(owner, name) for owner, names in needed.items() for name in names)


_POOL_CLASS: type[asyncpg.Pool] = _Pool if _fits_this_asyncpg() else asyncpg.Pool


async def connect_pool(dsn: str, *, min_size: int = 1, max_size: int = 10, pool_mode: str = "session") -> asyncpg.Pool:
    """The pool; ``pool_mode="transaction"`` when ``dsn`` is a pooler in transaction mode (PgBouncer).

    Such a pooler hands each transaction (each statement, outside one) to whichever server connection is
    free, so a statement prepared under a name on one is unknown on the next. With the cache size at 0
    asyncpg prepares nothing by name and sends each query's parse, bind and execute in one message batch,
    which the pooler keeps on one server connection. Direct connections keep the cache: a cached
    statement saves the parse on every query of the hot path.
    """
    extra: dict[str, Any] = {"statement_cache_size": 0} if pool_mode == "transaction" else {}
    # asyncpg.create_pool's own construction, with the pool class above.
    pool: asyncpg.Pool = await _POOL_CLASS(
        dsn,
        min_size=min_size,
        max_size=max_size,
        max_queries=50000,
        init=_init_connection,
        command_timeout=30,
        # A restarted server invalidates connections; don't keep idle ones around for long.
        max_inactive_connection_lifetime=60,
        reset=_keep_session,
        loop=None,
        connection_class=_Connection,
        record_class=asyncpg.Record,
        **extra,
    )
    return pool


def to_struct(record: asyncpg.Record | None, type_: type[T]) -> T | None:
    if record is None:
        return None
    return msgspec.convert(dict(record), type_, from_attributes=False, strict=False)


def to_structs(records: Iterable[asyncpg.Record], type_: type[T]) -> list[T]:
    return [msgspec.convert(dict(r), type_, strict=False) for r in records]


def is_database_unavailable(exc: BaseException) -> bool:
    """True for failures of the database connection (down, restarting, overloaded), not of a query."""
    return isinstance(
        exc,
        asyncpg.exceptions.PostgresConnectionError
        | asyncpg.exceptions.CannotConnectNowError
        | asyncpg.exceptions.TooManyConnectionsError
        | asyncpg.exceptions.AdminShutdownError
        | asyncpg.exceptions.ConnectionDoesNotExistError
        # The client's protocol on a connection a restart broke ("cannot switch to state ...").
        | asyncpg.exceptions.InternalClientError
        | ConnectionError
        | OSError
        | asyncio.TimeoutError,
    )
