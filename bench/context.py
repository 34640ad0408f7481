"""What loading a turn's history costs as a conversation grows: the SQL, its plan, and its time.

``python -m bench.context`` makes a scratch database (``BENCH_DATABASE_URL``, default the local PostgreSQL),
fills one conversation with 1,000 messages and another with 100,000 (about 60 tokens each), and times the
history walk a turn makes (``ConversationStore.window``) for a 4,000-token budget: the median of 200 runs,
round trip included, with the rows it read and PostgreSQL's plan of it. Figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from bench.services import scratch_database
from runtime.chat.conversations import WINDOW, ConversationStore, WindowRow
from runtime.server.migrate import apply_migrations

__all__ = ["main"]

_FILL = """
INSERT INTO messages (conversation_id, role, content, status, tokens)
SELECT $1, CASE WHEN n % 2 = 1 THEN 'user' ELSE 'assistant' END,
       'message ' || n || ': ' || repeat('the harbour at dawn ', 10), 'complete', 60
FROM generate_series(1, $2) n"""


async def _conversation(pool: asyncpg.Pool, user_id: uuid.UUID, size: int) -> uuid.UUID:
    conversation_id = await pool.fetchval(
        "INSERT INTO conversations (user_id, title) VALUES ($1, $2) RETURNING id", user_id, f"{size} messages"
    )
    await pool.execute(_FILL, conversation_id, size)
    return conversation_id


async def measure(dsn: str, sizes: list[int], budget: int, runs: int) -> None:
    await apply_migrations(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        user_id = await pool.fetchval("INSERT INTO users (name) VALUES ('bench') RETURNING id")
        store = ConversationStore(pool, cached_windows=0)  # the SQL itself, every time
        print(f"history walk for a {budget}-token budget ({runs} runs each)\n{WINDOW.strip()}\n")
        for size in sizes:
            conversation_id = await _conversation(pool, user_id, size)
            await pool.execute("ANALYZE messages")
            times = []
            rows: list[WindowRow] = []
            for _ in range(runs):
                began = time.perf_counter()
                rows, _more = await store.window(conversation_id, after_seq=0, budget=budget, limit=1000)
                times.append((time.perf_counter() - began) * 1000)
            plan = await pool.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {WINDOW}", conversation_id, 0, budget, 1000, 2**62)
            lines = [r[0] for r in plan]
            scans = sorted({line.strip().split(" on ")[0].lstrip("-> ") for line in lines if " on messages" in line})
            print(
                f"{size:>7} messages: {len(rows)} rows read, median {statistics.median(times):.2f} ms, "
                f"p95 {sorted(times)[int(runs * 0.95) - 1]:.2f} ms; scans: {', '.join(scans)}"
            )
            print("         " + next(line for line in lines if line.startswith("Execution Time")))
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.context", description=__doc__)
    parser.add_argument("--sizes", default="1000,100000", help="messages in each conversation")
    parser.add_argument("--budget", type=int, default=4000, help="the history's share of the budget, in tokens")
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    server = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

    async def run() -> None:
        async with scratch_database(server, Path(tempfile.gettempdir())) as dsn:
            await measure(dsn, [int(s) for s in args.sizes.split(",")], args.budget, args.runs)

    asyncio.run(run())


if __name__ == "__main__":
    main()
