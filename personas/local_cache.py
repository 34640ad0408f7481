"""LocalCache: values kept in this process for a moment, each loaded once however many ask for it at once."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["LocalCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LocalCache(Generic[K, V]):
    """An in-process layer in front of a slower read: a hit costs a dict lookup and a clock read.

    Entries live ``ttl`` seconds, which bounds how long a write this process is not told about stays unseen;
    ``forget`` drops them at once for writes it is told about (made here, or announced by another instance).
    Concurrent misses for one key share one load, a *flight*: a waiter that is cancelled (its client went
    away) leaves the load running for the others, and a load that fails raises in every waiter of that
    flight and leaves nothing behind, so the next read tries again.
    """

    def __init__(self, *, ttl: float, max_entries: int, on_lookup: Callable[[str], None] | None = None) -> None:
        self._ttl = ttl
        # Told "hit", "miss" (this read loads) or "joined" (it waits for a load under way), for metrics.
        self._on_lookup = on_lookup
        self._max = max_entries
        # In insertion order, which is expiry order since every entry lives equally long.
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._flights: dict[K, asyncio.Task[V]] = {}
        # The event loop holds tasks weakly; a flight every waiter gave up on must still finish.
        self._running: set[asyncio.Task[V]] = set()

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The value for ``key``: kept, already being loaded, or loaded now by ``load``."""
        entry = self._entries.get(key)
        if entry is not None and entry[0] > time.monotonic():
            if self._on_lookup is not None:
                self._on_lookup("hit")
            return entry[1]
        flight = self._flights.get(key)
        if self._on_lookup is not None:
            self._on_lookup("miss" if flight is None else "joined")
        if flight is None:
            flight = asyncio.create_task(_run(load))
            self._flights[key] = flight
            self._running.add(flight)
            flight.add_done_callback(lambda done: self._landed(key, done))
        # Shielded: cancelling one waiter must not cancel the load the others are waiting for.
        return await asyncio.shield(flight)

    def peek(self, key: K) -> V | None:
        """The value kept for ``key`` while it is fresh, else None; neither counted as a look-up nor loaded. For a
        second read of what the same request has just read through :meth:`get`."""
        entry = self._entries.get(key)
        return entry[1] if entry is not None and entry[0] > time.monotonic() else None

    def forget(self, *keys: K) -> None:
        """Drop the entries for ``keys``, and disown loads of them under way: what they read may predate
        the write that calls this, so it is handed to the waiters already there but never kept."""
        for key in keys:
            self._entries.pop(key, None)
            self._flights.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
        self._flights.clear()

    def retime(self, ttl: float) -> None:
        """Keep entries ``ttl`` seconds from now on. Everything kept so far is dropped, which also keeps
        insertion order the expiry order."""
        self._ttl = ttl
        self.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _landed(self, key: K, flight: asyncio.Task[V]) -> None:
        self._running.discard(flight)
        if self._flights.get(key) is not flight:
            return  # disowned by forget(): a newer read loads afresh
        del self._flights[key]
        # Reading the exception also marks it retrieved when every waiter was cancelled.
        if flight.cancelled() or flight.exception() is not None or self._ttl <= 0:
            return
        now = time.monotonic()
        self._entries.pop(key, None)
        self._entries[key] = (now + self._ttl, flight.result())
        # The oldest entries expire first: drop the expired ones, and the oldest while over the bound.
        while self._entries:
            oldest = next(iter(self._entries))
            if len(self._entries) <= self._max and self._entries[oldest][0] > now:
                break
            del self._entries[oldest]


async def _run(load: Callable[[], Awaitable[V]]) -> V:
    return await load()
