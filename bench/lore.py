"""What a lorebook adds to a turn's server CPU (contract section 14's budget: at most 0.3 ms).

``python -m bench.lore`` starts the runtime (one worker, the benchmark's fake OpenAI provider
(``bench.fake_provider``, 35 chunks), a scratch database on ``BENCH_DATABASE_URL``, Redis at
``BENCH_REDIS_URL``) and compares three kinds of ``/api/v1/chat`` turn, sent one at a time and interleaved in
blocks so that drift falls on both alike:

* **fresh**: a fresh conversation each turn, with a persona that has no lorebook;
* **long**: a turn of a conversation of 1,000 stored messages, with that persona;
* **lore**: a turn of another conversation of 1,000 stored messages, with a persona whose lorebook has 500
  entries (100 of them with plain keys that the messages name at random, the others with keys nobody says).

Both personas have a window of ``--window`` tokens (8,192 by default): what of a long conversation fits is
sent, so the window decides the history's share. Each figure is the server's CPU (user + system of its whole
process tree) over the turns of a kind, per turn; *lore - long* is what the lorebook itself costs, *lore -
fresh* the issue's comparison (history included). With ``--instructions`` the runtime runs under ``valgrind
--tool=callgrind`` (as in ``bench.instructions``) and each kind's ``--turns`` turns are counted in instructions
instead, one kind after another (user space, load-independent: the figure for an A/B on a busy machine);
``--root DIR`` runs another checkout's runtime, ``--dumps DIR`` keeps each kind's callgrind dump
(``callgrind.fresh``, ``callgrind.long``, ``callgrind.lore``) for ``callgrind_annotate``. Figures only: nothing
here passes or fails.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.instructions import add_counting_arguments, count_turns, turn_runtime
from bench.services import ROOT, create_account, delete_redis_keys, run_on_scratch

__all__ = ["lorebook", "main"]

_WORDS = [
    "the",
    "harbour",
    "at",
    "dawn",
    "was",
    "quiet",
    "and",
    "grey",
    "while",
    "gulls",
    "circled",
    "over",
    "boats",
    "and",
    "nets",
]
_FILL = """
INSERT INTO messages (conversation_id, role, content, status, tokens)
SELECT $1, CASE WHEN n % 2 = 1 THEN 'user' ELSE 'assistant' END,
       'message ' || n || ': ' || repeat('the harbour at dawn ', 10), 'complete', 60
FROM generate_series(1, $2) n"""


def lorebook(entries: int = 500, firing: int = 100) -> dict[str, Any]:
    """A book of ``entries`` entries, the first ``firing`` keyed on ``lore<n>``, the rest on words nobody says."""
    made = []
    for n in range(entries):
        keys = [f"lore{n}", f"lore{n} alt"] if n < firing else [f"silent{n}", f"never said {n}"]
        content = f"Entry {n}: " + " ".join(_WORDS[(n + i) % len(_WORDS)] for i in range(30))
        made.append({"id": f"entry-{n}", "keys": keys, "content": content, "insertion_order": n % 50})
    return {"scan_depth": 2, "token_budget": 1024, "entries": made}


def _message(rng: random.Random, firing: int) -> str:
    words = [rng.choice(_WORDS) for _ in range(30)]
    for _ in range(3):
        words.insert(rng.randrange(len(words)), f"lore{rng.randrange(firing)}")
    return " ".join(words)


async def measure(
    dsn: str,
    redis_url: str,
    provider_url: str,
    *,
    turns: int,
    block: int,
    window: int,
    workdir: Path,
    summaries: bool = True,
    instructions: bool = False,
    root: Path = ROOT,
    dumps: Path | None = None,
) -> dict[str, float]:
    account = await create_account(dsn)
    prefix = f"persona-bench-lore-{os.getpid()}:"
    rng = random.Random(7)
    async with turn_runtime(
        dsn, redis_url, provider_url, workdir, prefix, instructions=instructions, root=root
    ) as server:
        try:
            async with httpx.AsyncClient(base_url=server.url, headers=account.headers, timeout=30) as http:
                personas = {}
                for kind, extra in (("plain", {}), ("lore", {"lorebook": lorebook()})):
                    body = {
                        "name": f"Bench {kind} {os.getpid()}",
                        "description": "A persona for the lore benchmark.",
                        "system_prompt": "You are {{persona_name}}, a harbour pilot.",
                        "model_settings": {
                            "provider": "openai",
                            "model": "gpt-4o-mini",
                            "context_window": window,
                            "summaries": summaries,
                        },
                        **extra,
                    }
                    r = await http.post("/api/v1/chat/personas", json=body)
                    r.raise_for_status()
                    personas[kind] = r.json()["persona"]["id"]
                conversations = {}
                connection = await asyncpg.connect(dsn)
                try:
                    for kind, persona in (("long", "plain"), ("lore", "lore")):
                        r = await http.post("/api/v1/chat", json={"message": "hello", "persona_id": personas[persona]})
                        r.raise_for_status()
                        conversations[kind] = conversation_id = r.json()["conversation_id"]
                        await connection.execute(_FILL, conversation_id, 998)
                        await connection.execute(
                            "UPDATE conversations SET user_turns = 500 WHERE id = $1", conversation_id
                        )
                    await connection.execute("ANALYZE messages")
                finally:
                    await connection.close()

                async def turn(kind: str) -> None:
                    persona = personas["lore" if kind == "lore" else "plain"]
                    body: dict[str, Any] = {"message": _message(rng, 100), "persona_id": persona}
                    if kind in conversations:
                        body["conversation_id"] = conversations[kind]
                    answer = await http.post("/api/v1/chat", json=body)
                    answer.raise_for_status()

                kinds = ("fresh", "long", "lore")
                if instructions:
                    figures = await count_turns(server.popen.pid, workdir, dumps, kinds, turns, turn)
                    for what, other in (("lorebook's own cost", "long"), ("lorebook and history", "fresh")):
                        added = (figures["lore"] - figures[other]) / 1e6
                        print(f"lore - {other} ({what}): {added:+.3f} M instructions per turn")
                    return figures
                for kind in kinds * 10:  # warm-up: caches, prepared statements, the compiled book
                    await turn(kind)
                spent = dict.fromkeys(kinds, 0.0)
                blocks: dict[str, list[float]] = {kind: [] for kind in kinds}
                for _ in range(max(turns // block, 1)):
                    for kind in kinds:
                        before = server.cpu_seconds()
                        for _ in range(block):
                            await turn(kind)
                        used = server.cpu_seconds() - before
                        spent[kind] += used
                        blocks[kind].append(used / block * 1000)
        finally:
            await delete_redis_keys(redis_url, prefix)
    count = max(turns // block, 1) * block
    result = {kind: spent[kind] / count * 1000 for kind in spent}
    for kind in spent:
        print(
            f"{kind:>5}: {result[kind]:.3f} ms of server CPU per turn over {count} turns "
            f"(blocks of {block}: median {statistics.median(blocks[kind]):.3f} ms)"
        )
    print(f"lore - long (the lorebook's own cost): {result['lore'] - result['long']:+.3f} ms per turn")
    print(f"lore - fresh (lorebook and 1,000-message history): {result['lore'] - result['fresh']:+.3f} ms per turn")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lore", description=__doc__)
    parser.add_argument("--turns", type=int, default=600, help="turns of each kind")
    parser.add_argument("--block", type=int, default=50, help="turns of one kind in a row")
    parser.add_argument("--window", type=int, default=8192, help="the personas' context window, in tokens")
    parser.add_argument(
        "--no-summaries",
        action="store_true",
        help="personas without rolling summaries (a long conversation otherwise asks for one after each turn)",
    )
    add_counting_arguments(parser)
    args = parser.parse_args()
    run_on_scratch(
        "bench-lore-",
        lambda dsn, redis_url, provider_url, workdir: measure(
            dsn,
            redis_url,
            provider_url,
            turns=args.turns,
            block=args.block,
            window=args.window,
            workdir=workdir,
            summaries=not args.no_summaries,
            instructions=args.instructions,
            root=args.root,
            dumps=args.dumps,
        ),
    )


if __name__ == "__main__":
    main()
