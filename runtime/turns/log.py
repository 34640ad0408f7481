"""TurnLog: the turn records of this process, kept in memory and written in batches, off the hot path.

A turn's end appends one tuple to a list (:meth:`TurnLog.add`): no await, no I/O. A task writes what
gathered once a second with one ``COPY`` (:meth:`TurnLog.flush`), and once more when the app closes, so a
graceful shutdown loses none. A crash loses what gathered since the last write: at most a second of turns.
The same task prunes records older than the retention, once an hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg

__all__ = ["COLUMNS", "TurnLog", "TurnRow"]

log = logging.getLogger("persona_runtime.turns")

# A record's columns, in the order of the tuples :meth:`TurnLog.add` takes (``created_at`` as a Unix time).
COLUMNS = (
    "id",
    "created_at",
    "user_id",
    "key_id",
    "persona_id",
    "persona_version",
    "variant",
    "route",
    "provider",
    "model",
    "outcome",
    "ttft_ms",
    "duration_ms",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
)
TurnRow = tuple[Any, ...]

# After a failed COPY that may have half-landed (a duplicate id on the retry), the rows one by one.
INSERT = f"""
INSERT INTO turns ({", ".join(COLUMNS)})
VALUES ({", ".join(f"${n}" for n in range(1, len(COLUMNS) + 1))})
ON CONFLICT (id) DO NOTHING"""
PRUNE = "DELETE FROM turns WHERE created_at < now() - $1 * interval '1 day'"

# Records held while the database is away, newest kept: about 30 MB at most.
MAX_PENDING = 100_000


class TurnLog:
    """The turn records of this process: :meth:`add` on the hot path, written by :meth:`flush` every
    ``interval`` seconds and at :meth:`aclose`, older than ``retention_days`` pruned every ``prune_interval``."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        retention_days: float,
        interval: float = 1.0,
        prune_interval: float = 3600.0,
    ) -> None:
        self._pool = pool
        self.retention_days = retention_days
        self.interval = interval
        self.prune_interval = prune_interval
        self._rows: list[TurnRow] = []
        self._writing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._failing = False

    def add(self, row: TurnRow) -> None:
        """Keep one turn's record (the :data:`COLUMNS` in order) for the next write."""
        self._rows.append(row)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        next_prune = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)
            await self.flush()
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + self.prune_interval
                try:
                    await self.prune()
                except Exception as exc:
                    log.warning("could not prune old turn records (%s); trying again later", type(exc).__name__)

    async def flush(self) -> int:
        """Write the records gathered so far in one ``COPY``; how many were written. When the database
        refuses, they are kept for the next write (at most :data:`MAX_PENDING`, the newest)."""
        async with self._writing:
            rows, self._rows = self._rows, []
            if not rows:
                return 0
            records = [(r[0], datetime.fromtimestamp(r[1], UTC), *r[2:]) for r in rows]
            try:
                async with self._pool.acquire() as conn:
                    try:
                        await conn.copy_records_to_table("turns", records=records, columns=COLUMNS)
                    except asyncpg.UniqueViolationError:
                        # An earlier write landed though its answer was lost: the rows it had are skipped.
                        await conn.executemany(INSERT, records)
            except BaseException as exc:
                kept = rows + self._rows
                self._rows = kept[-MAX_PENDING:]
                if not isinstance(exc, Exception):
                    raise  # cancelled: the rows wait for the next write
                if not self._failing:
                    reason = type(exc).__name__
                    log.warning("could not write %d turn records (%s); they wait for the next try", len(rows), reason)
                self._failing = True
                return 0
            if self._failing:
                log.info("turn records are written again")
                self._failing = False
            return len(rows)

    async def prune(self) -> int:
        """Delete the records older than the retention; how many went."""
        done = await self._pool.execute(PRUNE, self.retention_days)
        return int(done.rsplit(" ", 1)[-1])

    async def aclose(self) -> None:
        """Stop the writer and write what is left (at shutdown, after the last turns have ended)."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
            self._task = None
        for _ in range(3):
            await self.flush()
            if not self._rows:
                return
            await asyncio.sleep(0.5)
        log.error("%d turn records could not be written before shutdown: the database is unavailable", len(self._rows))
