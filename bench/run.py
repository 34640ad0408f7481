"""The benchmark: direct provider vs. persona-runtime's two streaming APIs, one client and many, as a table and JSON."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from bench.client import Run, Target, chat_target, completions_target, run_concurrent, run_sequential
from bench.fake_provider import StreamShape
from bench.report import PhaseResult, added_latency, summarize, table
from bench.services import ROOT, create_account, fake_provider, runtime_server, scratch_database

__all__ = ["main"]

DIRECT = "direct provider"
CHAT = "runtime /api/v1/chat"
COMPLETIONS = "runtime /v1/chat/completions"
PATHS = {"direct": DIRECT, "chat": CHAT, "completions": COMPLETIONS}
# Stands in for Mu's rendered prompt, so the direct request is about the size of the runtime's.
SYSTEM_PROMPT = (
    "You are Mu, a cheerful, supportive robot companion talking with Bench. Today is 2026-01-01.\n\n"
    "Personality traits:\n- tone: warm\n- humour: gentle\n\nCapabilities:\n- conversation: true"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    load = parser.add_argument_group("load")
    load.add_argument("--requests", type=int, default=200, help="sequential requests per path (default 200)")
    load.add_argument("--warmup", type=int, default=20, help="sequential warmup requests per path (default 20)")
    load.add_argument("--clients", type=int, default=10, help="concurrent clients, one connection each (default 10)")
    load.add_argument("--per-client", type=int, default=100, help="requests per concurrent client (default 100)")
    load.add_argument("--concurrent-warmup", type=int, default=5, help="warmup requests per concurrent client")
    load.add_argument(
        "--paths", default="direct,chat,completions", help="comma-separated subset of direct, chat, completions"
    )
    provider = parser.add_argument_group("fake provider")
    provider.add_argument("--chunks", type=int, default=35, help="content chunks per answer (default 35)")
    provider.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between chunks (default 0)")
    provider.add_argument("--first-byte-delay", type=float, default=0.0, help="seconds before the first byte")
    services = parser.add_argument_group("services")
    services.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL server to create the scratch database on ($BENCH_DATABASE_URL; embedded if unreachable)",
    )
    services.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL"),
        help="Redis for the runtime's cache ($BENCH_REDIS_URL; default: in-process cache). Give it a db of its own.",
    )
    services.add_argument("--server-log-level", default="WARNING", help="the runtime's LOG_LEVEL (default WARNING)")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results", help="where the JSON goes")
    return parser


async def _provider_connections(control: httpx.AsyncClient, provider_url: str) -> int:
    return int((await control.get(provider_url + "/stats")).json()["connections"])


async def _phase(
    args: argparse.Namespace,
    target: Target,
    load: str,
    clients: int,
    meters: dict[str, Callable[[], float]],
    provider_url: str,
) -> PhaseResult:
    """Warm up, then one measured run on the connections the warmup opened, with the CPU of every party."""
    start: dict[str, float] = {}
    # One keep-alive connection for both reads of the provider's counter, so it does not count itself.
    async with httpx.AsyncClient(timeout=10) as control:

        async def begin() -> None:
            # After the warmup: the control request to the provider is not metered.
            start["connections"] = await _provider_connections(control, provider_url)
            start.update({name: read() for name, read in meters.items()})

        run: Run
        if clients == 1:
            run = await run_sequential(target, args.requests, args.warmup, begin)
        else:
            run = await run_concurrent(target, clients, args.per_client, args.concurrent_warmup, begin)
        spent = {name: read() - start[name] for name, read in meters.items()}
        connections = int(await _provider_connections(control, provider_url) - start["connections"])
    return summarize(target.name, load, clients, run, spent, connections)


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    paths = [PATHS[p.strip()] for p in args.paths.split(",") if p.strip()]
    shape = StreamShape(chunks=args.chunks, chunk_delay=args.chunk_delay, first_byte_delay=args.first_byte_delay)
    results: list[PhaseResult] = []
    with tempfile.TemporaryDirectory(prefix="persona-bench-") as scratch, fake_provider(shape) as provider:
        workdir = Path(scratch)
        async with scratch_database(args.database_url, workdir) as database_url:
            server_ctx = runtime_server(
                database_url, args.redis_url, provider.url, log_level=args.server_log_level, workdir=workdir
            )
            async with server_ctx as server:
                account = await create_account(database_url)
                targets = {
                    DIRECT: completions_target(
                        DIRECT, provider.url + "/v1/chat/completions", {}, model="gpt-4o-mini", system=SYSTEM_PROMPT
                    ),
                    CHAT: chat_target(CHAT, server.url + "/api/v1/chat", account.headers),
                    COMPLETIONS: completions_target(
                        COMPLETIONS, server.url + "/v1/chat/completions", account.headers, model="persona", system=None
                    ),
                }
                for load, clients in (("1 client", 1), (f"{args.clients} clients", args.clients)):
                    for path in paths:
                        target = targets[path]
                        meters = {"provider": provider.cpu_seconds, "client": time.process_time}
                        if path != DIRECT:
                            meters["runtime"] = server.cpu_seconds
                        print(f"bench: {path}, {load} ...", file=sys.stderr, flush=True)
                        results.append(await _phase(args, target, load, clients, meters, provider.url))
    return {"results": results, "added": added_latency(results, DIRECT)}


async def _main_task(args: argparse.Namespace) -> dict[str, Any]:
    # SIGTERM ends the run like Ctrl-C does: the task is cancelled and every `finally` cleans up.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await _bench(args)


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
    return None


def _load(values: tuple[float, float, float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Ctrl-C must clean up even when the shell started us with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = dt.datetime.now(dt.UTC)
    load_at_start = os.getloadavg()
    try:
        outcome = asyncio.run(_main_task(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted; every process and the scratch database were cleaned up", file=sys.stderr)
        return 130
    results: list[PhaseResult] = outcome["results"]
    print()
    print(table(results, outcome["added"]))
    document = {
        "started_at": started.isoformat(timespec="seconds"),
        "command": "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "commit": _git_commit(),
            # Other work on the machine skews the figures: the load average says how busy it was.
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg(),
        },
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "database_url"},
        "database": "scratch database on the given server (embedded if unreachable)",
        "results": [asdict(r) for r in results],
        "added_by_runtime": outcome["added"],
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(document, indent=2, allow_nan=True) + "\n")
    print(f"\nload average (1, 5, 15 min) at start {_load(load_at_start)}, at end {_load(os.getloadavg())}")
    print(f"results: {path}")
    return 0
