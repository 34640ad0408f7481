"""The benchmark: direct provider vs. persona-runtime (and LiteLLM), one client and many; held streams; cold start."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import msgspec

from bench import host, litellm_proxy, portkey_gateway
from bench.client import PARSER, Run, Target, chat_target, completions_target, run_concurrent, run_sequential
from bench.cold_start import ColdResult, cold_start, create_persona
from bench.fake_provider import StreamShape, raise_open_files_limit
from bench.held_streams import HeldResult, held_streams
from bench.report import (
    PhaseResult,
    added_latency,
    cold_table,
    held_table,
    ratios,
    summarize,
    table,
    unavailable,
)
from bench.resume import ResumeResult, resume_streams, resume_table
from bench.services import (
    ROOT,
    Account,
    ServerProcess,
    create_account,
    delete_redis_keys,
    fake_provider,
    runtime_server,
    scratch_database,
)

__all__ = ["main"]

DIRECT = "direct provider"
CHAT = "runtime /api/v1/chat"
COMPLETIONS = "runtime /v1/chat/completions"
LITELLM = "LiteLLM /v1/chat/completions"
PORTKEY = "Portkey /v1/chat/completions"
# The same requests with ``"stream": false``: one JSON answer each.
DIRECT_JSON = "direct provider non-stream"
COMPLETIONS_JSON = "runtime /v1 non-stream"
PORTKEY_JSON = "Portkey /v1 non-stream"
PATHS = {
    "direct": DIRECT,
    "chat": CHAT,
    "completions": COMPLETIONS,
    "direct-json": DIRECT_JSON,
    "completions-json": COMPLETIONS_JSON,
}
ORDER = {
    DIRECT: 0,
    CHAT: 1,
    COMPLETIONS: 2,
    LITELLM: 3,
    PORTKEY: 4,
    DIRECT_JSON: 5,
    COMPLETIONS_JSON: 6,
    PORTKEY_JSON: 7,
}
PEERS = ("litellm", "portkey")
# Stands in for Mu's rendered prompt, so the direct request is about the size of the runtime's.
SYSTEM_PROMPT = (
    "You are Mu, a cheerful, supportive robot companion talking with Bench. Today is 2026-01-01.\n\n"
    "Personality traits:\n- tone: warm\n- humour: gentle\n\nCapabilities:\n- conversation: true"
)


def _worker_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of worker counts: {text!r}") from None
    if not counts or any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError("worker counts are positive integers, e.g. 1 or 1,2")
    return list(dict.fromkeys(counts))


def _peers(text: str) -> list[str]:
    peers = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [p for p in peers if p not in PEERS]
    if not peers or unknown:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {', '.join(PEERS)}, got {text!r}")
    return list(dict.fromkeys(peers))


def _paths(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in PATHS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {', '.join(PATHS)}, got {text!r}")
    return [PATHS[n] for n in dict.fromkeys(names)]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    load = parser.add_argument_group("load (the throughput phases)")
    load.add_argument("--requests", type=int, default=200, help="sequential requests per path (default 200)")
    load.add_argument("--warmup", type=int, default=20, help="sequential warmup requests per path (default 20)")
    load.add_argument("--clients", type=int, default=10, help="concurrent clients, one connection each (default 10)")
    load.add_argument("--per-client", type=int, default=100, help="requests per concurrent client (default 100)")
    load.add_argument(
        "--concurrent-warmup", type=int, default=5, help="warmup requests per concurrent client (default 5)"
    )
    load.add_argument(
        "--paths",
        type=_paths,
        default=[DIRECT, CHAT, COMPLETIONS],
        help="comma-separated subset of direct, chat, completions, direct-json, completions-json (the last two: "
        '"stream": false; added by --compare portkey) (default direct,chat,completions)',
    )
    runtime = parser.add_argument_group("the runtime")
    runtime.add_argument(
        "--workers",
        type=_worker_counts,
        default=[1],
        metavar="N[,N...]",
        help="`serve --workers N`; a list (1,2) measures one runtime per count, side by side (default 1)",
    )
    modes = parser.add_argument_group("modes (given, they run instead of the throughput phases)")
    modes.add_argument(
        "--held",
        type=int,
        default=0,
        metavar="N",
        help="hold N streams open at once through /v1/chat/completions: stalls, RSS per stream, release",
    )
    modes.add_argument(
        "--held-wait", type=float, default=120.0, help="seconds to wait for every first content piece (default 120)"
    )
    modes.add_argument(
        "--cold",
        type=int,
        nargs="?",
        const=100,
        default=None,
        metavar="N",
        help="N (default 100) concurrent first requests for one persona on a fresh runtime: database reads",
    )
    modes.add_argument(
        "--resume",
        type=int,
        default=0,
        metavar="N",
        help="N resumable /api/v1/chat streams cut by the client and resumed with Last-Event-ID: resume latency "
        "(give --chunk-delay so the cut falls mid-answer)",
    )
    modes.add_argument("--cut-after", type=int, default=3, help="content events read before the cut (default 3)")
    compare = parser.add_argument_group("comparison")
    compare.add_argument(
        "--compare",
        type=_peers,
        default=[],
        metavar="litellm,portkey",
        help="measure LiteLLM's proxy and/or Portkey's gateway too, same provider, client and loads",
    )
    compare.add_argument("--litellm-version", default=litellm_proxy.VERSION, help="(default %(default)s)")
    compare.add_argument("--litellm-workers", type=int, default=2, help="LiteLLM's --num_workers (default 2)")
    compare.add_argument("--portkey-version", default=portkey_gateway.VERSION, help="(default %(default)s)")
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
        help="Redis for the runtime's cache ($BENCH_REDIS_URL; default: in-process cache); "
        "the run's keys have a prefix of their own and are deleted at the end",
    )
    services.add_argument("--server-log-level", default="WARNING", help="the runtime's LOG_LEVEL (default WARNING)")
    services.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        type=_env_setting,
        help="an environment variable for the runtime, such as KEY_REQUESTS_PER_MINUTE=1000000 (repeatable)",
    )
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results", help="where the JSON goes")
    return parser


class _Context:
    """What every part of a run shares: the arguments, the provider, the scratch database, the account."""

    def __init__(
        self, args: argparse.Namespace, provider: ServerProcess, database_url: str, workdir: Path, account: Account
    ) -> None:
        self.args = args
        self.provider = provider
        self.database_url = database_url
        self.workdir = workdir
        self.account = account
        self.redis_prefix = f"persona-bench-{os.getpid()}-{secrets.token_hex(4)}:"

    def runtime(
        self, workers: int, *, database_url: str | None = None, extra_env: dict[str, str] | None = None
    ) -> AbstractAsyncContextManager[ServerProcess]:
        return runtime_server(
            database_url or self.database_url,
            self.args.redis_url,
            self.provider.url,
            log_level=self.args.server_log_level,
            workdir=self.workdir,
            workers=workers,
            redis_prefix=self.redis_prefix,
            extra_env={**dict(self.args.server_env), **(extra_env or {})},
        )


def _env_setting(value: str) -> tuple[str, str]:
    name, equals, setting = value.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {value!r}")
    return name, setting


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


async def _provider_connections(control: httpx.AsyncClient, ctx: _Context) -> int:
    return int((await control.get(ctx.provider.url + "/stats")).json()["connections"])


async def _phase(ctx: _Context, target: Target, clients: int, server: ServerProcess | None, path: str) -> PhaseResult:
    """Warm up, then one measured run of ``target`` under ``clients`` clients, with the CPU of every party."""
    args = ctx.args
    load = "1 client" if clients == 1 else f"{clients} clients"
    workers = server.workers if server is not None else None
    _log(f"{path}{f' ({workers} worker(s))' if workers else ''}, {load} ...")
    meters: dict[str, Callable[[], float]] = {"provider": ctx.provider.cpu_seconds, "client": time.process_time}
    if server is not None:
        meters["server"] = server.cpu_seconds
    start: dict[str, float] = {}
    shares_at_start: list[float] = []
    # One keep-alive connection for both reads of the provider's counter, so it does not count itself.
    async with httpx.AsyncClient(timeout=10) as control:

        async def begin() -> None:
            # After the warmup, on the connections it opened: the control request to the provider is not metered.
            start["connections"] = await _provider_connections(control, ctx)
            start.update({name: read() for name, read in meters.items()})
            if server is not None and server.workers > 1:
                shares_at_start.extend(server.tree.worker_cpu_seconds())

        run: Run
        if clients == 1:
            run = await run_sequential(target, args.requests, args.warmup, begin)
        else:
            run = await run_concurrent(target, clients, args.per_client, args.concurrent_warmup, begin)
        spent = {name: read() - start[name] for name, read in meters.items()}
        connections = int(await _provider_connections(control, ctx) - start["connections"])
    changed = server.tree.changed if server is not None else False
    result = summarize(path, load, clients, run, spent, connections, workers=workers, tree_changed=changed)
    if server is not None and shares_at_start:
        used = [end - begun for end, begun in zip(server.tree.worker_cpu_seconds(), shares_at_start, strict=False)]
        total = sum(used)
        if total > 0:
            result.worker_shares = [seconds / total for seconds in used]
    return result


async def _throughput(ctx: _Context) -> list[PhaseResult]:
    args = ctx.args
    paths = list(args.paths)
    if "portkey" in args.compare:
        # Portkey is compared on non-streamed requests (its streams fail under Node 20): ours and the floor too.
        paths += [p for p in (DIRECT_JSON, COMPLETIONS_JSON) if p not in paths]
    loads = [1, args.clients]
    results: list[PhaseResult] = []
    headers = ctx.account.headers
    for path, streamed in ((DIRECT, True), (DIRECT_JSON, False)):
        if path in paths:
            direct = completions_target(
                path,
                ctx.provider.url + "/v1/chat/completions",
                {},
                model="gpt-4o-mini",
                system=SYSTEM_PROMPT,
                streamed=streamed,
            )
            for clients in loads:
                results.append(await _phase(ctx, direct, clients, None, path))
    runtime_paths = [p for p in paths if p not in (DIRECT, DIRECT_JSON)]
    if runtime_paths:
        for workers in args.workers:
            async with ctx.runtime(workers) as server:
                targets = {
                    CHAT: chat_target(CHAT, server.url + "/api/v1/chat", headers),
                    COMPLETIONS: completions_target(
                        COMPLETIONS, server.url + "/v1/chat/completions", headers, model="persona", system=None
                    ),
                    COMPLETIONS_JSON: completions_target(
                        COMPLETIONS_JSON,
                        server.url + "/v1/chat/completions",
                        headers,
                        model="persona",
                        system=None,
                        streamed=False,
                    ),
                }
                for clients in loads:
                    for path in runtime_paths:
                        results.append(await _phase(ctx, targets[path], clients, server, path))
    if "litellm" in args.compare:
        results += await _litellm(ctx, loads)
    if "portkey" in args.compare:
        results += await _portkey(ctx, loads)
    results.sort(key=lambda r: (r.clients, ORDER.get(r.path, 9), r.workers or 0))
    return results


async def _litellm(ctx: _Context, loads: list[int]) -> list[PhaseResult]:
    args = ctx.args
    try:
        python = await litellm_proxy.install(args.litellm_version)
        _log(f"starting LiteLLM {args.litellm_version} with {args.litellm_workers} worker(s) ...")
        proxy = litellm_proxy.litellm_proxy(python, ctx.provider.url, ctx.workdir, workers=args.litellm_workers)
        async with proxy as (server, key):
            target = completions_target(
                LITELLM,
                server.url + "/v1/chat/completions",
                {"Authorization": f"Bearer {key}"},
                model=litellm_proxy.MODEL,
                system=SYSTEM_PROMPT,
            )
            results = [await _phase(ctx, target, clients, server, LITELLM) for clients in loads]
            for result in results:
                result.note = f"LiteLLM {args.litellm_version}, its own venv ({python.parent.parent})"
            return results
    except litellm_proxy.LiteLLMUnavailable as exc:
        _log(f"LiteLLM could not be measured: {exc}")
        return [
            unavailable(LITELLM, "1 client" if c == 1 else f"{c} clients", c, f"not measured: {exc}") for c in loads
        ]


async def _portkey(ctx: _Context, loads: list[int]) -> list[PhaseResult]:
    """Portkey's gateway, non-streamed; streamed too when a first streamed request through it succeeds."""
    args = ctx.args
    loads_named = [(c, "1 client" if c == 1 else f"{c} clients") for c in loads]
    try:
        folder = await portkey_gateway.install(args.portkey_version)
        _log(f"starting Portkey's gateway {args.portkey_version} (one Node process) ...")
        async with portkey_gateway.portkey_gateway(folder, ctx.workdir) as server:
            note = f"Portkey {args.portkey_version} on Node {_node_version()}, its own folder ({folder})"
            url, headers = server.url + "/v1/chat/completions", portkey_gateway.headers(ctx.provider.url)
            plain = completions_target(
                PORTKEY_JSON, url, headers, model=portkey_gateway.MODEL, system=SYSTEM_PROMPT, streamed=False
            )
            results = [await _phase(ctx, plain, clients, server, PORTKEY_JSON) for clients in loads]
            streamed = completions_target(PORTKEY, url, headers, model=portkey_gateway.MODEL, system=SYSTEM_PROMPT)
            probe = (await run_sequential(streamed, 1, 0)).samples[0]
            if probe.error is None:
                results += [await _phase(ctx, streamed, clients, server, PORTKEY) for clients in loads]
            else:
                _log(f"Portkey's streamed request failed ({probe.error}); streams not measured")
                why = f"streams not measured: a first streamed request failed: {probe.error}"
                results += [unavailable(PORTKEY, load, c, why, workers=1) for c, load in loads_named]
            for result in results:
                result.note = note if result.note is None else f"{result.note}; {note}"
            return results
    except portkey_gateway.PortkeyUnavailable as exc:
        _log(f"Portkey could not be measured: {exc}")
        return [
            unavailable(p, load, c, f"not measured: {exc}") for p in (PORTKEY_JSON, PORTKEY) for c, load in loads_named
        ]


def _node_version() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.check_output(["node", "--version"], text=True).strip().lstrip("v")
    return "?"


async def _held(ctx: _Context) -> list[HeldResult]:
    args = ctx.args
    results = []
    for workers in args.workers:
        # The runtime's upstream pool, per provider and per worker, must not be what caps the streams.
        env = {"PROVIDER_MAX_CONNECTIONS": str(max(args.held, 100))}
        _log(f"held streams: {args.held} through a runtime with {workers} worker(s) ...")
        async with ctx.runtime(workers, extra_env=env) as server:
            target = completions_target(
                "held", server.url + "/v1/chat/completions", ctx.account.headers, model="persona", system=None
            )
            results.append(await held_streams(server, ctx.provider.url, target, args.held, wait=args.held_wait))
    return results


async def _resume(ctx: _Context) -> list[ResumeResult]:
    args = ctx.args
    results = []
    for workers in args.workers:
        _log(f"resume: {args.resume} streams cut and resumed, {workers} worker(s) ...")
        async with ctx.runtime(workers) as server:
            results.append(
                await resume_streams(
                    server, ctx.account, args.resume, cut_after=args.cut_after, redis=bool(args.redis_url)
                )
            )
    return results


async def _cold(ctx: _Context) -> ColdResult:
    args = ctx.args
    _log("cold start: creating a persona through the HTTP API ...")
    async with ctx.runtime(1) as server:
        persona = await create_persona(server.url, ctx.account)
    deleted = None
    if args.redis_url:
        deleted = await delete_redis_keys(args.redis_url, ctx.redis_prefix)
    _log(f"cold start: {args.cold} concurrent first requests on a fresh runtime ...")
    result = await cold_start(
        ctx.database_url, lambda url: ctx.runtime(1, database_url=url), ctx.account, persona, args.cold
    )
    result.redis_keys_deleted = deleted
    return result


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    shape = StreamShape(chunks=args.chunks, chunk_delay=args.chunk_delay, first_byte_delay=args.first_byte_delay)
    outcome: dict[str, Any] = {"results": [], "held": [], "cold": None, "resume": []}
    with tempfile.TemporaryDirectory(prefix="persona-bench-") as scratch, fake_provider(shape) as provider:
        workdir = Path(scratch)
        async with scratch_database(args.database_url, workdir) as database_url:
            account = await create_account(database_url)
            ctx = _Context(args, provider, database_url, workdir, account)
            outcome["redis_prefix"] = ctx.redis_prefix
            try:
                if not args.held and args.cold is None and not args.resume:
                    outcome["results"] = await _throughput(ctx)
                if args.resume:
                    outcome["resume"] = await _resume(ctx)
                if args.held:
                    outcome["held"] = await _held(ctx)
                if args.cold is not None:
                    outcome["cold"] = await _cold(ctx)
            finally:
                if args.redis_url:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(delete_redis_keys(args.redis_url, ctx.redis_prefix))
    return outcome


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
    # Inherited by every process started from here; thousands of streams need thousands of descriptors.
    open_files = raise_open_files_limit()
    started = dt.datetime.now(dt.UTC)
    load_at_start = os.getloadavg()
    gauges = host.gauges()
    try:
        outcome = asyncio.run(_main_task(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted; every process and the scratch database were cleaned up", file=sys.stderr)
        return 130
    results: list[PhaseResult] = outcome["results"]
    added = added_latency(results, DIRECT, {COMPLETIONS_JSON: DIRECT_JSON, PORTKEY_JSON: DIRECT_JSON})
    compared = ratios(results, COMPLETIONS, LITELLM, args.clients) + ratios(results, COMPLETIONS, PORTKEY, args.clients)
    compared += ratios(results, COMPLETIONS_JSON, PORTKEY_JSON, args.clients)
    print()
    if results:
        print(table(results, added, compared))
        print(f"\nclient: raw asyncio, one keep-alive connection per client, {PARSER} response parser")
    for held in outcome["held"]:
        print()
        print(held_table(held, COMPLETIONS))
    if outcome["cold"] is not None:
        print()
        print(cold_table(outcome["cold"]))
    for resumed in outcome["resume"]:
        print()
        print(resume_table(resumed))
    document = {
        "started_at": started.isoformat(timespec="seconds"),
        "command": "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "commit": _git_commit(),
            "open_files_limit": open_files,
            # Other work on the machine skews the figures: the load average says how busy it was.
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg(),
            # The host's own speed at the start (bench/host.py): runs are comparable when these match.
            "host": gauges,
        },
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "database_url"},
        "client": {"kind": "raw asyncio, one keep-alive HTTP/1.1 connection per client", "parser": PARSER},
        "database": "scratch database on the given server (embedded if unreachable)",
        "redis_prefix": outcome.get("redis_prefix"),
        "results": results,
        "added_by_server": added,
        "compared": compared,
        "held": outcome["held"],
        "cold": outcome["cold"],
        "resume": outcome["resume"],
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_bytes(msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n")
    print(f"\nload average (1, 5, 15 min) at start {_load(load_at_start)}, at end {_load(os.getloadavg())}")
    print(host.line(gauges))
    print(f"results: {path}")
    return 0
