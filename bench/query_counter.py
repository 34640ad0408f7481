"""A PostgreSQL wire-protocol proxy on loopback that counts the statements its clients execute, by SQL text."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import struct
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

__all__ = ["QueryCounter", "classify", "query_counter"]

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102
_INT32 = struct.Struct("!i")

# Which lookups a statement is: by the table it reads (FROM or JOIN), first match wins.
CATEGORIES = (
    ("api_key_lookups", re.compile(r"\b(?:from|join)\s+api_keys\b", re.IGNORECASE)),
    ("persona_selects", re.compile(r"\b(?:from|join)\s+personas\b", re.IGNORECASE)),
    ("preference_selects", re.compile(r"\b(?:from|join)\s+user_persona_preferences\b", re.IGNORECASE)),
)
_READS = re.compile(r"^\s*(?:select|with)\b", re.IGNORECASE)
# What asyncpg sends when a connection goes back to its pool: one per acquire and release.
_POOL_RESET = re.compile(r"^\s*SELECT pg_advisory_unlock_all\(\)", re.IGNORECASE)


def classify(sql: str) -> str:
    """``api_key_lookups``, ``persona_selects``, ``preference_selects`` for a read of those tables,
    ``pool_resets`` for asyncpg's reset of a connection released to its pool, else ``other``."""
    if _POOL_RESET.match(sql):
        return "pool_resets"
    if _READS.match(sql):
        for name, pattern in CATEGORIES:
            if pattern.search(sql):
                return name
    return "other"


def _cstring(payload: bytes, start: int) -> tuple[str, int]:
    end = payload.index(b"\0", start)
    return payload[start:end].decode(errors="replace"), end + 1


class QueryCounter:
    """Counts executed statements by their whitespace-normalized SQL text, over every proxied connection.

    Frontend messages are read as they pass: a simple query (``Q``) counts once; in the extended protocol a
    ``Parse`` (``P``) names a statement's text and each ``Bind`` (``B``) of it counts one execution, so the
    prepared statements asyncpg caches per connection count every time they run. SSL is declined (``N``) so
    the traffic stays readable; everything else is forwarded unchanged, both ways.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.statements: collections.Counter[str] = collections.Counter()
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    def reset(self) -> None:
        self.statements.clear()

    def categories(self) -> dict[str, int]:
        counts = dict.fromkeys([name for name, _ in CATEGORIES] + ["pool_resets", "other"], 0)
        for sql, n in self.statements.items():
            counts[classify(sql)] += n
        return counts

    def _count(self, sql: str) -> None:
        self.statements[" ".join(sql.split())] += 1

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        back = asyncio.create_task(_pipe(up_reader, writer))
        try:
            await self._frontend(reader, writer, up_writer)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            up_writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(back, 5)
            writer.close()

    async def _frontend(
        self, reader: asyncio.StreamReader, client: asyncio.StreamWriter, server: asyncio.StreamWriter
    ) -> None:
        # Untyped start-up packets: SSL and GSSAPI requests are declined here, the start-up message forwarded.
        while True:
            (length,) = _INT32.unpack(await reader.readexactly(4))
            body = await reader.readexactly(length - 4)
            (code,) = _INT32.unpack(body[:4])
            if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                client.write(b"N")
                await client.drain()
                continue
            server.write(_INT32.pack(length) + body)
            await server.drain()
            if code == _CANCEL_REQUEST:
                return
            break
        names: dict[str, str] = {}
        while True:
            head = await reader.readexactly(5)
            kind = head[:1]
            (length,) = _INT32.unpack(head[1:])
            payload = await reader.readexactly(length - 4)
            if kind == b"Q":
                self._count(_cstring(payload, 0)[0])
            elif kind == b"P":
                name, at = _cstring(payload, 0)
                names[name] = _cstring(payload, at)[0]
            elif kind == b"B":
                _, at = _cstring(payload, 0)
                statement, _ = _cstring(payload, at)
                self._count(names.get(statement, f"<unknown prepared statement {statement}>"))
            server.write(head + payload)
            await server.drain()
            if kind == b"X":
                return


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def query_counter(database_url: str) -> AsyncIterator[tuple[QueryCounter, str]]:
    """A counter in front of ``database_url``'s server, and the same URL pointed at the counter."""
    parts = urlsplit(database_url)
    counter = QueryCounter(parts.hostname or "127.0.0.1", parts.port or 5432)
    await counter.start()
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (userinfo + "@" if userinfo else "") + f"127.0.0.1:{counter.port}"
    try:
        yield counter, urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    finally:
        await counter.close()
