"""What the analytics cost at scale (contract section 16's budget: a stats query over 1 million turn records
in under 200 ms).

``python -m bench.turns`` migrates a scratch database on ``BENCH_DATABASE_URL`` (default the local PostgreSQL),
fills it with ``--rows`` turn records (1 million; one ``generate_series`` insert, 30 days of them in arrival
order, 1,000 users, ``--personas`` personas of which the first serves ``--share`` of the turns and the rest
share the others evenly, 5 versions, 3 models, feedback on 2%), and times, each ``--runs`` times:

* **writing**: first, what recording costs the runtime's process per turn, in CPU: a turn's end (a new id, the
  record's tuple, one append) and its share of the writes (``TurnLog.flush``: ``COPY`` of 500 records, as at
  500 turns a second), for 20,000 records;

* **stats, big persona**: ``GET /api/v1/chat/personas/{id}/stats?by=version`` of the first persona, 30 days;
* **stats, one of many**: the same for one of the other personas;
* **stats by day**: the big persona's, by day;
* **usage, one user**: ``GET /api/v1/usage?by=persona`` of one user, 30 days;
* **usage, everyone**: an admin's, by day, over all the records.

Each is the exact SQL the runtime runs (``runtime.turns.stats``), in a transaction with its settings.
Figures: the median and fastest time, and ``EXPLAIN (ANALYZE, BUFFERS)`` of each. Nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from bench.services import scratch_database
from runtime.server.migrate import apply_migrations
from runtime.turns import TurnLog
from runtime.turns.stats import SETTINGS, stats_query, usage_query

__all__ = ["main"]

# The ids are made from numbers, so the queries can name them: persona n, user n.
_PERSONA = "('00000000-0000-0000-0001-' || lpad(to_hex({n}), 12, '0'))::uuid"
_USER = "('00000000-0000-0000-0002-' || lpad(to_hex({n}), 12, '0'))::uuid"
_FILL = f"""
INSERT INTO turns (id, created_at, user_id, key_id, persona_id, persona_version, variant, route, provider, model,
                   outcome, ttft_ms, duration_ms, input_tokens, output_tokens, cached_input_tokens)
SELECT gen_random_uuid(),
       $1::timestamptz + n * ($2::float8 / $3) * interval '1 second',
       {_USER.format(n="n % 1000")},
       NULL,
       CASE WHEN n % 10000 < $4 THEN {_PERSONA.format(n="0")}
            ELSE {_PERSONA.format(n="1 + n % ($5 - 1)")} END,
       1 + (n / 7) % 5,
       CASE WHEN n % 10 = 0 THEN 'rollout' ELSE 'production' END,
       (ARRAY['chat', 'chat_completions', 'messages'])[1 + n % 3],
       'openai',
       (ARRAY['gpt-4o-mini', 'gpt-4o', 'gpt-4.1'])[1 + (n / 3) % 3],
       CASE WHEN n % 97 = 0 THEN 'error' WHEN n % 89 = 0 THEN 'incomplete' ELSE 'complete' END,
       CASE WHEN n % 97 = 0 THEN NULL ELSE 150 + (n * 7919) % 900 END,
       800 + (n * 104729) % 4000,
       400 + n % 3000, 20 + n % 400, (n % 3) * 200
FROM generate_series(1::bigint, $3::bigint) n"""
_FEEDBACK = """
INSERT INTO turn_feedback (turn_id, user_id, key_id, persona_id, persona_version, variant, model, turn_created_at,
                           rating)
SELECT id, user_id, key_id, persona_id, persona_version, variant, model, created_at,
       CASE WHEN random() < 0.8 THEN 1 ELSE -1 END
FROM turns TABLESAMPLE BERNOULLI (2)"""


async def _timed(conn: asyncpg.Connection, query: str, args: tuple[object, ...], runs: int) -> tuple[list[float], int]:
    took: list[float] = []
    rows = 0
    for _ in range(runs):
        began = time.perf_counter()
        async with conn.transaction(readonly=True):
            await conn.execute(SETTINGS)
            rows = len(await conn.fetch(query, *args))
        took.append((time.perf_counter() - began) * 1000)
    return took, rows


async def _plan(conn: asyncpg.Connection, query: str, args: tuple[object, ...]) -> str:
    async with conn.transaction(readonly=True):
        await conn.execute(SETTINGS)
        lines = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + query, *args)
    return "\n".join(r[0] for r in lines)


async def _writing(dsn: str, turns: int = 20_000, batch: int = 500) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        log = TurnLog(pool, retention_days=90)
        user, persona = uuid.uuid4(), uuid.uuid4()
        labels = ("production", "chat", "openai", "gpt-4o-mini", "complete")
        began = time.process_time()
        for _ in range(turns):
            log.add((uuid.uuid4(), time.time(), user, None, persona, 1, *labels, 212.5, 940.1, 700, 35, 0))
        added = time.process_time() - began
        pending = log._rows
        began = time.process_time()
        for start in range(0, turns, batch):
            log._rows = pending[start : start + batch]
            await log.flush()
        written = time.process_time() - began
        await pool.execute("TRUNCATE turns CASCADE")
    finally:
        await pool.close()
    print(
        f"writing: a turn's end {added / turns * 1e6:.1f} µs, its share of the writes {written / turns * 1e6:.1f} µs "
        f"of this process's CPU ({turns:,} records, COPY of {batch} at a time)"
    )


async def measure(dsn: str, *, rows: int, personas: int, share: float, runs: int) -> None:
    await apply_migrations(dsn)
    await _writing(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        end = datetime.now(UTC)
        start = end - timedelta(days=30)
        began = time.perf_counter()
        await conn.execute(_FILL, start, 30 * 86400.0, rows, int(share * 10000), personas)
        await conn.execute(_FEEDBACK)
        await conn.execute("VACUUM ANALYZE turns")
        await conn.execute("ANALYZE turn_feedback")
        filled = time.perf_counter() - began
        size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('turns'))")
        counts = await conn.fetchrow(
            "SELECT count(*) AS turns, count(*) FILTER (WHERE persona_id = $1) AS big, "
            "count(*) FILTER (WHERE persona_id = $2) AS small FROM turns",
            _id(1, 0),
            _id(1, 1),
        )
        feedback = await conn.fetchval("SELECT count(*) FROM turn_feedback")
        print(
            f"filled {counts['turns']:,} turn records ({size} with indexes, {feedback:,} feedback) in {filled:.1f} s; "
            f"the big persona has {counts['big']:,}, one of the others {counts['small']:,}"
        )
        window = (start - timedelta(minutes=1), end + timedelta(minutes=1))
        cases = [
            ("stats, big persona, by version", stats_query("version"), (*window, _id(1, 0))),
            ("stats, one of many, by version", stats_query("version"), (*window, _id(1, 1))),
            ("stats, big persona, by day", stats_query("day"), (*window, _id(1, 0))),
            ("usage, one user, by persona", usage_query("persona"), (*window, _id(2, 7))),
            ("usage, everyone, by day", usage_query("day", everyone=True), window),
        ]
        plans = []
        print(f"\n{'query':<34} {'rows':>5} {'median ms':>10} {'fastest ms':>11}")
        for name, query, args in cases:
            took, found = await _timed(conn, query, args, runs)
            print(f"{name:<34} {found:>5} {statistics.median(took):>10.1f} {min(took):>11.1f}")
            plans.append((name, await _plan(conn, query, args)))
        for name, plan in plans:
            print(f"\n--- EXPLAIN (ANALYZE, BUFFERS): {name}\n{plan}")
    finally:
        await conn.close()


def _id(kind: int, n: int) -> uuid.UUID:
    return uuid.UUID(f"00000000-0000-0000-000{kind}-{n:012x}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.turns", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="turn records")
    parser.add_argument("--personas", type=int, default=50, help="personas they are spread over")
    parser.add_argument("--share", type=float, default=0.2, help="the share of the turns the first persona serves")
    parser.add_argument("--runs", type=int, default=7, help="times each query is run")
    args = parser.parse_args()
    server = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

    async def run() -> None:
        async with scratch_database(server, Path(tempfile.mkdtemp(prefix="bench-turns-"))) as dsn:
            await measure(dsn, rows=args.rows, personas=args.personas, share=args.share, runs=args.runs)

    asyncio.run(run())


if __name__ == "__main__":
    main()
