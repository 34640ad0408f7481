"""API key authentication with a short-lived, single-flight lookup cache and buffered "last used" times."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from uuid import UUID

from core.db import is_database_unavailable
from core.errors import DatabaseUnavailable, Unauthorized
from personas.changes import UNHEARD_SECONDS
from personas.local_cache import LocalCache
from personas.models import Caller
from runtime.access.accounts import Accounts, KeyOwner, hash_key

__all__ = ["Authenticator"]

log = logging.getLogger("persona_runtime.auth")


class Authenticator:
    """Turns an API key into a :class:`Caller`, or refuses it.

    A revocation anywhere is announced to every instance (:meth:`hear`), which drops its lookups at once.
    A lookup is trusted for ``cache_seconds`` at most (one second by default), the last resort should an
    announcement be missed; while announcements cannot be heard (``set_hearing(False)``), at most a second.
    Concurrent requests with a key not looked up yet share one lookup. A database outage never lets a key
    through: with nothing cached, the request gets a 503, and the failed lookup is not remembered.
    """

    def __init__(
        self,
        accounts: Accounts,
        *,
        cache_seconds: float = 1.0,
        touch_interval: float = 15.0,
        on_lookup: Callable[[str], None] | None = None,
    ) -> None:
        self._accounts = accounts
        self._cache_seconds = cache_seconds
        self._touch_interval = touch_interval
        self._lookups: LocalCache[bytes, KeyOwner | None] = LocalCache(
            ttl=cache_seconds, max_entries=50_000, on_lookup=on_lookup
        )
        self._used: dict[UUID, datetime] = {}
        self._flusher: asyncio.Task[None] | None = None
        # One write at a time, so that a caller of flush() also waits for a write already under way.
        self._flush_lock = asyncio.Lock()

    async def authenticate(self, key: str | None) -> Caller:
        if not key:
            raise Unauthorized("Missing API key: send it as `X-API-Key: KEY` or `Authorization: Bearer KEY`.")
        try:
            owner = await self._lookups.get(hash_key(key), lambda: self._accounts.key_owner(key))
        except Exception as exc:
            if is_database_unavailable(exc):
                raise DatabaseUnavailable("Cannot check the API key: the database is unavailable.") from None
            raise
        if owner is None:
            raise Unauthorized("Unknown API key: check it, or create one with `persona-runtime keys create`.")
        wall = datetime.now(UTC)
        if owner.revoked_at is not None:
            raise Unauthorized("This API key has been revoked; create a new one.")
        if owner.expires_at is not None and owner.expires_at <= wall:
            raise Unauthorized("This API key has expired; create a new one.")
        self._used[owner.key_id] = wall
        return Caller(
            user_id=owner.user_id,
            user_name=owner.user_name,
            display_name=owner.display_name,
            is_admin=owner.is_admin,
            key_id=owner.key_id,
            key_limits=owner.limits if owner.limits.any else None,
        )

    def forget(self) -> None:
        """Drop every cached lookup (used after a revocation on this instance)."""
        self._lookups.clear()

    async def hear(self, payload: bytes) -> None:
        """A key was revoked somewhere (here too: harmless). Lookups are kept by the key's hash, which the
        signal does not carry, so all of them go: revocations are rare, and a lookup is one query."""
        self._lookups.clear()

    def set_hearing(self, heard: bool) -> None:
        """Whether revocations elsewhere are announced to this process from now on. Either way the lookups
        kept so far go: while they were not, some may have been missed."""
        self._lookups.retime(self._cache_seconds if heard else min(self._cache_seconds, UNHEARD_SECONDS))

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_periodically(), name="api-key-last-used")

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()

    async def flush(self) -> None:
        """Write the buffered "last used" times."""
        async with self._flush_lock:
            used, self._used = self._used, {}
            if not used:
                return
            try:
                await self._accounts.touch_keys(used)
            except Exception as exc:
                # A lost "last used" time is harmless; try again with the next batch.
                log.warning("could not record API key use (%s); will retry", type(exc).__name__)
                for key_id, at in used.items():
                    self._used.setdefault(key_id, at)

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._touch_interval)
            await self.flush()
