"""What memory adds to a turn (contract section 15's budgets): server CPU, database statements, and the answer's
latency with extraction on and off.

``python -m bench.memory`` starts the runtime (one worker, the benchmark's fake OpenAI provider
(``bench.fake_provider``, 35 chunks), a scratch database on ``BENCH_DATABASE_URL`` reached through a statement
counter, Redis at ``BENCH_REDIS_URL``) for a user with 100 memories, and sends ``/api/v1/chat`` turns one at a
time, interleaved in blocks:

* **plain**: a persona without memory, each turn opening a conversation (a first turn);
* **memory**: a persona with ``memory.enabled`` (the 100 memories ranked against each message, those that fit
  its 512-token budget sent), each turn opening a conversation;
* with ``--history N`` (20 by default; 0 leaves them out), **plain later** and **memory later**: the same
  personas, each turn continuing a conversation of its own that already holds N stored messages (a later turn:
  the history is read and weighed, and the memory tier is chosen with every token counted);
* then streamed turns of a persona with ``memory.extract`` on and off, each message asking it to remember
  something, for the time to the first content event and to the end.

Figures: server CPU per turn (user + system of its process tree) over all turns of a kind and the median of its
blocks, statements per turn, memory - plain for first and for later turns, and the median TTFT and total.
With ``--instructions`` the runtime runs under ``valgrind --tool=callgrind`` (as in ``bench.instructions``) and
each kind's turns are counted in instructions instead (user space, load-independent: the figure for an A/B
on a busy machine; ``--root DIR`` runs another checkout's runtime, ``--dumps DIR`` keeps each kind's callgrind
dump for ``callgrind_annotate``). Nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.instructions import add_counting_arguments, count_turns, turn_runtime
from bench.query_counter import query_counter
from bench.services import ROOT, create_account, delete_redis_keys, run_on_scratch

__all__ = ["main"]

_WORDS = [
    "boat",
    "harbour",
    "cello",
    "tea",
    "garden",
    "music",
    "winter",
    "train",
    "city",
    "dog",
    "cat",
    "book",
    "river",
    "job",
]
_FILL = """
INSERT INTO memories (id, user_id, persona_id, content, source)
SELECT gen_random_uuid(), u.id, CASE WHEN n % 2 = 0 THEN $2::uuid END,
       'The user mentioned ' || (ARRAY['boat','harbour','cello','tea','garden','music','winter','train','city',
       'dog','cat','book','river','job'])[1 + n % 14] || ' number ' || n || ' once.', 'user'
FROM users u, generate_series(1, $3) n WHERE u.name = $1"""
# The earlier messages of the later turns' conversations, after the one exchange that opened each: $2 of them,
# alternately the user's and the persona's, with their stored token counts.
_HISTORY = """
INSERT INTO messages (conversation_id, role, content, status, tokens)
SELECT c, CASE WHEN n % 2 = 1 THEN 'user' ELSE 'assistant' END,
       'message ' || n || ': ' || repeat('the harbour at dawn ', 5), 'complete', 30
FROM unnest($1::uuid[]) c, generate_series(1, $2) n ORDER BY c, n"""


async def _stream(http: httpx.AsyncClient, body: dict[str, Any]) -> tuple[float, float]:
    began = time.perf_counter()
    first = None
    async with http.stream("POST", "/api/v1/chat", json={**body, "stream": True}) as answer:
        answer.raise_for_status()
        async for line in answer.aiter_lines():
            if first is None and line.startswith("event: content"):
                first = time.perf_counter()
    end = time.perf_counter()
    return ((first or end) - began) * 1000, (end - began) * 1000


async def measure(
    dsn: str,
    redis_url: str,
    provider_url: str,
    *,
    turns: int,
    block: int,
    memories: int,
    history: int,
    workdir: Path,
    instructions: bool = False,
    root: Path = ROOT,
    dumps: Path | None = None,
) -> None:
    account = await create_account(dsn)
    prefix = f"persona-bench-memory-{os.getpid()}:"
    rng = random.Random(11)
    async with (
        query_counter(dsn) as (counter, counted_url),
        turn_runtime(
            counted_url, redis_url, provider_url, workdir, prefix, instructions=instructions, root=root
        ) as server,
    ):
        try:
            async with httpx.AsyncClient(base_url=server.url, headers=account.headers, timeout=30) as http:
                personas = {}
                for kind, memory in (
                    ("plain", {}),
                    ("memory", {"enabled": True}),
                    ("extract", {"enabled": True, "extract": True}),
                    ("no-extract", {"enabled": True, "extract": False}),
                ):
                    body = {
                        "name": f"Bench memory {kind} {os.getpid()}",
                        "description": "A persona for the memory benchmark.",
                        "system_prompt": "You are {{persona_name}}, a harbour pilot.",
                        "model_settings": {"provider": "openai", "model": "gpt-4o-mini", "memory": memory},
                    }
                    r = await http.post("/api/v1/chat/personas", json=body)
                    r.raise_for_status()
                    personas[kind] = r.json()["persona"]["id"]
                connection = await asyncpg.connect(dsn)
                try:
                    await connection.execute(_FILL, "bench", personas["memory"], memories)
                finally:
                    await connection.close()

                def message() -> str:
                    return " ".join(rng.choice(_WORDS) for _ in range(20))

                rounds = max(turns // block, 1)
                count = rounds * block
                kinds: tuple[str, ...] = ("plain", "memory")
                # The later turns' conversations: one per turn (the warm-up's included), each opened by a turn
                # and given its earlier messages, so that every measured turn continues one of ``history``.
                waiting: dict[str, list[str]] = {}
                if history > 0:
                    kinds = (*kinds, "plain later", "memory later")
                    for kind in ("plain", "memory"):
                        opened = []
                        for _ in range(count + 10):
                            body = {"message": message(), "persona_id": personas[kind]}
                            r = await http.post("/api/v1/chat", json=body)
                            r.raise_for_status()
                            opened.append(r.json()["conversation_id"])
                        waiting[f"{kind} later"] = opened
                    connection = await asyncpg.connect(dsn)
                    try:
                        ids = [c for opened in waiting.values() for c in opened]
                        await connection.execute(_HISTORY, ids, max(history - 2, 0))
                        await connection.execute(
                            "UPDATE conversations SET user_turns = $2 WHERE id = ANY($1::uuid[])", ids, history // 2
                        )
                        await connection.execute("ANALYZE messages")
                    finally:
                        await connection.close()

                async def turn(kind: str) -> None:
                    body = {"message": message(), "persona_id": personas[kind.removesuffix(" later")]}
                    if kind in waiting:
                        body["conversation_id"] = waiting[kind].pop()
                    answer = await http.post("/api/v1/chat", json=body)
                    if answer.status_code != 200:
                        raise RuntimeError(f"{kind}: {answer.status_code} {answer.text[:300]}")

                if instructions:
                    figures = await count_turns(
                        server.popen.pid,
                        workdir,
                        dumps,
                        kinds,
                        turns,
                        turn,
                        statements=lambda: sum(counter.statements.values()),
                        reset=counter.reset,
                    )
                    for plain, memory, what in (
                        ("plain", "memory", "first turns"),
                        ("plain later", "memory later", "later turns"),
                    ):
                        if memory in figures:
                            added = (figures[memory] - figures[plain]) / 1e6
                            print(f"memory - plain ({what}): {added:+.3f} M instructions per turn")
                    return
                for kind in kinds * 10:
                    await turn(kind)
                spent = dict.fromkeys(kinds, 0.0)
                blocks: dict[str, list[float]] = {kind: [] for kind in kinds}
                statements = dict.fromkeys(kinds, 0)
                for _ in range(rounds):
                    for kind in kinds:
                        counter.reset()
                        before = server.cpu_seconds()
                        for _ in range(block):
                            await turn(kind)
                        used = server.cpu_seconds() - before
                        spent[kind] += used
                        blocks[kind].append(used / block * 1000)
                        await asyncio.sleep(0.05)  # the answers' saves, which run after each answer
                        statements[kind] += sum(counter.statements.values())
                for kind in kinds:
                    print(
                        f"{kind:>12}: {spent[kind] / count * 1000:.3f} ms of server CPU per turn "
                        f"(blocks of {block}: median {statistics.median(blocks[kind]):.3f} ms), "
                        f"{statements[kind] / count:.2f} statements per turn ({count} turns)"
                    )
                for plain, memory, what in (
                    ("plain", "memory", "first turns"),
                    ("plain later", "memory later", f"later turns, {history} stored messages"),
                ):
                    if memory in spent:
                        print(
                            f"memory - plain ({what}): {(spent[memory] - spent[plain]) / count * 1000:+.3f} ms per "
                            f"turn, {(statements[memory] - statements[plain]) / count:+.2f} statements per turn"
                        )

                latencies: dict[str, list[tuple[float, float]]] = {"extract": [], "no-extract": []}
                for n in range(max(turns // 2, 20)):
                    for kind in ("extract", "no-extract"):
                        body = {
                            "message": f"Please remember that I like {message()} {n}.",
                            "persona_id": personas[kind],
                        }
                        latencies[kind].append(await _stream(http, body))
                for kind, samples in latencies.items():
                    ttft = statistics.median(s[0] for s in samples)
                    total = statistics.median(s[1] for s in samples)
                    print(f"{kind:>10}: median TTFT {ttft:.2f} ms, total {total:.2f} ms over {len(samples)} streams")
        finally:
            await delete_redis_keys(redis_url, prefix)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--turns", type=int, default=400, help="turns of each kind")
    parser.add_argument("--block", type=int, default=50, help="turns of one kind in a row")
    parser.add_argument("--memories", type=int, default=100, help="the user's memories")
    parser.add_argument(
        "--history",
        type=int,
        default=20,
        help="stored messages before each later turn (0: first turns only)",
    )
    add_counting_arguments(parser)
    args = parser.parse_args()
    run_on_scratch(
        "bench-memory-",
        lambda dsn, redis_url, provider_url, workdir: measure(
            dsn,
            redis_url,
            provider_url,
            turns=args.turns,
            block=args.block,
            memories=args.memories,
            history=args.history,
            workdir=workdir,
            instructions=args.instructions,
            root=args.root,
            dumps=args.dumps,
        ),
    )


if __name__ == "__main__":
    main()
