"""Signals between instances, through PostgreSQL's LISTEN/NOTIFY: sent inside a transaction, heard by all.

A signal is a *kind* and a JSON payload on one channel. :func:`notify` sends one as part of a transaction,
so it reaches every instance exactly when (and only if) the change it describes commits, even if Redis is
not answering then. :class:`Signals` holds one connection of its own, outside the pool, listening, and hands
each payload to the subscribers of its kind. When that connection drops (a database restart), it says so
once, tells its watchers (they keep nothing long meanwhile: what is sent now goes unheard), and reconnects
with backoff; back, it tells them again, so they can drop what they kept, since signals may have been missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
import msgspec

__all__ = ["CHANNEL", "Signals", "notify"]

log = logging.getLogger("persona_runtime.signals")

CHANNEL = "persona_runtime"
# PostgreSQL refuses a payload of 8000 bytes or more.
_MAX_PAYLOAD = 7999

NOTIFY = "SELECT pg_notify($1, $2)"
PING = "SELECT 1"


class _Signal(msgspec.Struct, frozen=True):
    kind: str
    data: msgspec.Raw


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_Signal)


async def notify(conn: asyncpg.Connection | asyncpg.Pool, kind: str, payload: Any) -> None:
    """Send ``payload`` (anything msgspec encodes) under ``kind``. On a connection inside a transaction it
    is delivered when that commits, and never if it rolls back; on a pool, at once."""
    text = _encoder.encode(_Signal(kind, msgspec.Raw(_encoder.encode(payload)))).decode()
    if len(text.encode()) > _MAX_PAYLOAD:
        raise ValueError(f"a {kind!r} signal of {len(text)} characters is too long for NOTIFY; send less")
    await conn.execute(NOTIFY, CHANNEL, text)


Subscriber = Callable[[bytes], Coroutine[Any, Any, None]]


class Signals:
    """The listening side: one dedicated connection per process.

    Subscribers are called with the payload's JSON, each in a task of its own, so a slow one (a Redis that
    stalls) delays neither the others nor the next signal. Watchers are told ``True`` once the connection
    listens and ``False`` when it is lost. Nothing here runs per request: only per signal, and a ping of
    the connection every ``ping_seconds``, which finds a connection the network dropped silently.
    """

    def __init__(
        self, dsn: str, *, ping_seconds: float = 5.0, first_retry: float = 0.1, longest_retry: float = 2.0
    ) -> None:
        self._dsn = dsn
        self._ping_seconds = ping_seconds
        self._first_retry = first_retry
        self._longest_retry = longest_retry
        self._subscribers: dict[str, list[Subscriber]] = {}
        self._watchers: list[Callable[[bool], None]] = []
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    def subscribe(self, kind: str, callback: Subscriber) -> None:
        self._subscribers.setdefault(kind, []).append(callback)

    def watch(self, callback: Callable[[bool], None]) -> None:
        self._watchers.append(callback)

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    @property
    def backend_pid(self) -> int | None:
        """The PostgreSQL server process of the listening connection (``pg_stat_activity.pid``)."""
        return self._conn.get_server_pid() if self._conn is not None else None

    async def start(self) -> None:
        """Listen now; a database that cannot be reached at start-up is an error, not an outage."""
        self._conn = await self._connect()
        self._told(True)
        self._keeper = asyncio.create_task(self._keep_listening(), name="signals-listener")

    async def aclose(self) -> None:
        tasks = [t for t in (self._keeper, *self._handlers) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=2)
            except Exception:
                conn.terminate()

    async def _connect(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(self._dsn, timeout=5)
        try:
            await conn.add_listener(CHANNEL, self._heard)
        except BaseException:
            conn.terminate()
            raise
        # One event per connection: the old one's end, reported late, must not end the new one.
        lost = self._lost = asyncio.Event()
        conn.add_termination_listener(lambda _: lost.set())
        return conn

    async def _keep_listening(self) -> None:
        while True:
            await self._until_lost()
            since = time.monotonic()
            self._told(False)
            delay = self._first_retry
            while True:
                await asyncio.sleep(delay)
                try:
                    self._conn = await self._connect()
                    break
                except Exception as exc:  # down, starting up, refusing: try again, quietly
                    log.debug("listening for signals again failed (%s)", type(exc).__name__)
                    delay = min(delay * 2, self._longest_retry)
            log.warning(
                "listening for changes again after %.1fs; in-process caches start afresh", time.monotonic() - since
            )
            self._told(True)

    async def _until_lost(self) -> None:
        conn, lost = self._conn, self._lost
        assert conn is not None
        while not conn.is_closed():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), self._ping_seconds)
                break
            try:
                await conn.fetchval(PING, timeout=self._ping_seconds)
            except Exception:
                conn.terminate()
                break
        # Logged once per outage: the reconnecting attempts that follow are quiet.
        log.warning(
            "lost the connection that listens for changes; until it is back, in-process caches keep entries at "
            "most a second, since writes made on other instances go unheard"
        )

    def _told(self, listening: bool) -> None:
        for watcher in self._watchers:
            try:
                watcher(listening)
            except Exception:
                log.exception("a watcher of the signal connection failed")

    def _heard(self, conn: object, pid: int, channel: str, payload: str) -> None:
        try:
            signal = _decoder.decode(payload)
        except msgspec.DecodeError:
            log.warning("ignoring a notification on channel %s that is not a signal", channel)
            return
        # A kind nobody here subscribes to is ignored: a newer release may send kinds this one does not know.
        for callback in self._subscribers.get(signal.kind, ()):
            task = asyncio.get_running_loop().create_task(callback(bytes(signal.data)))
            self._handlers.add(task)
            task.add_done_callback(self._handled)

    def _handled(self, task: asyncio.Task[None]) -> None:
        self._handlers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("handling a signal failed", exc_info=task.exception())
