"""The persona cache: Redis (a single server or a Redis Cluster) when configured, else in-process. A cache
failure never fails a request.

PostgreSQL is the truth and the cache may be flushed at any moment, so every method here degrades to
"miss" or "no-op" on error. While Redis is unreachable the cache stops trying for a short while (so a
dead Redis costs no time per request), logs the outage once, and remembers the keys it failed to
delete: they are deleted first thing when Redis answers again, so a write made during the outage is
never hidden by an entry cached before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import Protocol

from redis.asyncio import Redis

from core.redis_client import REDIS_ERRORS, RedisClient, open_redis, ping
from personas.changes import UNHEARD_SECONDS

__all__ = ["Cache", "MemoryCache", "RedisCache"]

log = logging.getLogger("persona_runtime.cache")


class Cache(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl: int) -> None: ...
    async def delete(self, *keys: str) -> None: ...
    async def ping(self) -> bool: ...
    async def aclose(self) -> None: ...


class MemoryCache:
    """A bounded in-process cache, for instances without ``REDIS_URL`` (one, or the ``--workers`` of one).

    Writes made outside this process (another worker, ``persona-runtime personas import``) reach it only
    as announcements, delete by delete. While it hears them (``set_hearing(True)``) entries live at most
    ``heard_ttl`` seconds; otherwise, at most ``max_ttl``, so that an unheard write stays unseen no longer.
    """

    def __init__(self, max_entries: int = 10_000, max_ttl: float = UNHEARD_SECONDS, heard_ttl: float = 60.0) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max = max_entries
        self._unheard_ttl = max_ttl
        self._heard_ttl = heard_ttl
        self._max_ttl = max_ttl

    def set_hearing(self, heard: bool) -> None:
        """Whether writes made elsewhere are announced to this process from now on. Either way what is kept
        is dropped: while they were not, some may have been missed."""
        self._max_ttl = self._heard_ttl if heard else self._unheard_ttl
        self._entries.clear()

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires < time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        self._entries[key] = (time.monotonic() + min(ttl, self._max_ttl), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    async def delete(self, *keys: str) -> None:
        for key in keys:
            self._entries.pop(key, None)

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        self._entries.clear()


class RedisCache:
    """Cache-aside on a shared Redis, so every instance sees the same entries and the same deletes.

    ``client`` may be a cluster client: every call here names one key, except the deletes, which the
    cluster client splits by slot. A client handed in is the app's shared one and is left open by
    :meth:`aclose` unless ``close_client`` says this cache owns it.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = "persona-runtime:",
        retry_after: float = 1.0,
        close_client: bool = False,
    ) -> None:
        self._redis = client
        self._close_client = close_client
        self._prefix = prefix
        self._retry_after = retry_after
        self._down_since: float | None = None
        self._next_try = 0.0
        self._unflushed: set[str] = set()
        self._replayer: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "persona-runtime:") -> RedisCache:
        # Short timeouts: a slow cache must cost less than the database read it is meant to save.
        client = Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5, health_check_interval=10)
        return cls(client, prefix=prefix, close_client=True)

    @classmethod
    async def open(cls, url: str, *, prefix: str = "persona-runtime:") -> RedisCache:
        """A cache with a client of its own, a cluster client when ``url`` names a Redis Cluster."""
        return cls(await open_redis(url), prefix=prefix, close_client=True)

    @property
    def available(self) -> bool:
        return self._down_since is None

    async def get(self, key: str) -> bytes | None:
        if not await self._usable():
            return None
        try:
            value = await self._redis.get(self._prefix + key)
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return None
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        if not await self._usable():
            return
        try:
            await self._redis.set(self._prefix + key, value, ex=ttl)
        except REDIS_ERRORS as exc:
            self._failed(exc)

    async def delete(self, *keys: str) -> None:
        if not keys:
            return
        if await self._usable():
            try:
                await self._redis.delete(*(self._prefix + k for k in keys))
                return
            except REDIS_ERRORS as exc:
                self._failed(exc)
        self._unflushed.update(keys)
        self._replay_soon()

    def _replay_soon(self) -> None:
        """Make the missed deletes as soon as Redis answers, whether or not another request comes: other
        instances read the stale entries until they are made."""
        if self._replayer is None or self._replayer.done():
            self._replayer = asyncio.get_running_loop().create_task(self._replay())

    async def _replay(self) -> None:
        while self._unflushed:
            await asyncio.sleep(max(0.0, self._next_try - time.monotonic()) or self._retry_after)
            try:
                await self._usable(force=True)
            except Exception:  # never let the replay die: the keys stay queued for the next try
                log.exception("replaying missed cache deletes failed; trying again")

    async def ping(self) -> bool:
        try:
            await ping(self._redis)
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return False
        return await self._usable(force=True)

    async def aclose(self) -> None:
        if self._replayer is not None:
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replayer
        if self._close_client:
            await self._redis.aclose()

    async def _usable(self, *, force: bool = False) -> bool:
        down_since = self._down_since
        if down_since is None:
            return True
        now = time.monotonic()
        if not force and now < self._next_try:
            return False
        # One probe at a time: requests arriving meanwhile skip the cache rather than probe again.
        self._next_try = now + self._retry_after
        try:
            while True:
                # Deletes missed during the outage (and any missed while these are made) go first.
                pending = set(self._unflushed)
                if pending:
                    await self._redis.delete(*(self._prefix + k for k in pending))
                else:
                    await ping(self._redis)
                self._unflushed -= pending
                if not self._unflushed:
                    break
        except REDIS_ERRORS:
            self._next_try = time.monotonic() + self._retry_after
            return False
        if self._down_since is not None:  # another request may have seen it back already
            log.warning("Redis is reachable again after %.1fs; cache back in use", now - down_since)
            self._down_since = None
        return True

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._down_since is None:
            # Logged once per outage, not once per request.
            log.warning("Redis unavailable (%s); serving from PostgreSQL until it is back", type(exc).__name__)
            self._down_since = now
        self._next_try = now + self._retry_after
