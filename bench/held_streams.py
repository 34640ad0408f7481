"""Held-streams mode: N streams open at once through the runtime, the memory they cost, and whether they all end."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from dataclasses import dataclass, field

import httpx
import psutil

from bench.client import HEADERS, SENT, STREAMING, Connection, Sample, Target, open_connection, run_concurrent
from bench.processes import TreeMemory
from bench.services import ServerProcess

__all__ = ["HeldResult", "held_streams"]

# Connections opened at once: well under the listen backlogs (uvicorn's 2048, the kernel's somaxconn).
CONNECT_BATCH = 200
MIB = 1024 * 1024


@dataclass
class HeldResult:
    """What became of N streams held open at once, and the runtime's memory with and without them."""

    workers: int
    streams: int
    # Where each stream stood when the wait for first content ended.
    connect_failed: int = 0
    content: int = 0
    headers_only: int = 0
    stalled: int = 0  # request sent, neither response headers nor an error
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    seconds_to_all_content: float | None = None
    wait_seconds: float = 0.0
    provider_held: int = 0
    # Memory: per process of the runtime's tree (master first), idle just before and with the streams open.
    idle_rss_mib: dict[str, float] = field(default_factory=dict)
    open_rss_mib: dict[str, float] = field(default_factory=dict)
    streams_per_process: dict[str, int] = field(default_factory=dict)
    # (RSS open - RSS idle) / the streams still open at the runtime (content, headers only or stalled).
    kib_per_stream: float | None = None
    kib_per_stream_by_process: dict[str, float] = field(default_factory=dict)
    # After the release.
    finished_ok: int = 0
    finished_errors: dict[str, int] = field(default_factory=dict)
    unfinished: int = 0
    tree_changed: bool = False


def _mib(memory: TreeMemory, names: dict[int, str]) -> dict[str, float]:
    return {names[pid]: rss / MIB for pid, rss in memory.rss.items()}


def _names(server: ServerProcess) -> dict[int, str]:
    """``master`` and ``worker 1..N``, or ``process`` for a master that serves alone; ``helper PID`` for others."""
    master = server.tree.master.pid
    workers = [p.pid for p in server.tree.workers]
    names: dict[int, str] = {}
    for process in server.tree.processes:
        if process.pid == master:
            names[process.pid] = "process" if workers == [master] else "master"
        elif process.pid in workers:
            names[process.pid] = f"worker {workers.index(process.pid) + 1}"
        else:
            names[process.pid] = _helper_name(process)
    return names


def _helper_name(process: psutil.Process) -> str:
    try:
        if any("resource_tracker" in part for part in process.cmdline()):
            return "resource tracker"
    except psutil.Error:
        pass
    return f"helper {process.pid}"


def _streams_per_process(server: ServerProcess, port: int, names: dict[int, str]) -> dict[str, int]:
    """Established client connections on the runtime's port, by the process that holds each socket."""
    counts: dict[str, int] = {}
    for process in server.tree.processes:
        try:
            conns = process.net_connections(kind="tcp")
        except psutil.Error:
            continue
        held = sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)
        if held or process in server.tree.workers:
            counts[names[process.pid]] = held
    return counts


async def _open(target: Target, count: int, within: float) -> tuple[list[Connection], list[str]]:
    connections: list[Connection] = []
    failures: list[str] = []
    for start in range(0, count, CONNECT_BATCH):
        batch = min(CONNECT_BATCH, count - start)
        opened = await asyncio.gather(
            *(open_connection(target.host, target.port, within) for _ in range(batch)), return_exceptions=True
        )
        for item in opened:
            if isinstance(item, BaseException):
                failures.append(f"connect: {type(item).__name__}")
            else:
                connections.append(item)
    return connections, failures


async def held_streams(
    server: ServerProcess,
    provider_url: str,
    target: Target,
    count: int,
    *,
    wait: float = 120.0,
    finish_within: float = 120.0,
) -> HeldResult:
    """Open ``count`` streams on ``target`` (one connection each) while the provider holds every stream after
    its first content piece; measure the runtime tree's memory; release them and check that all finish."""
    result = HeldResult(workers=server.workers, streams=count)
    names = _names(server)
    port = int(server.url.rsplit(":", 1)[1])
    # A few ordinary streams first, so memory the first requests allocate for good is in the idle figure.
    await run_concurrent(target, min(10, count), 3, 0)
    await asyncio.sleep(1.0)
    idle = server.tree.memory()
    result.idle_rss_mib = _mib(idle, names)
    connections: list[Connection] = []
    waiters: list[asyncio.Future[Sample]] = []
    async with httpx.AsyncClient(base_url=provider_url, timeout=30) as control:
        (await control.post("/hold")).raise_for_status()
        try:
            started = time.perf_counter()
            connections, failures = await _open(target, count, within=30)
            result.connect_failed = len(failures)
            result.errors.update(collections.Counter(failures))
            for connection in connections:
                waiters.append(connection.send(target, timeout=wait + finish_within + 30))
            deadline = started + wait
            # Until every stream has its first content piece or has ended (a failure brings no content), or time
            # is up: a poll of the connections' states, four times a second.
            while (waiting := _waiting(connections, waiters)) and time.perf_counter() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.25)
            result.wait_seconds = time.perf_counter() - started
            if not waiting and not failures and all(not w.done() for w in waiters):
                result.seconds_to_all_content = result.wait_seconds
            _classify(result, connections, waiters)
            result.provider_held = (await control.get("/stats")).json()["held"]
            opened = server.tree.memory()
            result.open_rss_mib = _mib(opened, names)
            result.streams_per_process = _streams_per_process(server, port, names)
            # Every stream still open at the runtime costs memory, whether it got content yet or not.
            still_open = result.content + result.headers_only + result.stalled
            if still_open:
                result.kib_per_stream = (opened.total - idle.total) / 1024 / still_open
                for pid, rss in opened.rss.items():
                    name = names[pid]
                    streams = result.streams_per_process.get(name, 0)
                    if streams:
                        result.kib_per_stream_by_process[name] = (rss - idle.rss.get(pid, 0)) / 1024 / streams
        finally:
            # Whatever happened, the provider lets every held stream go.
            with contextlib.suppress(httpx.HTTPError):
                await control.post("/release")
        try:
            if waiters:
                await asyncio.wait(waiters, timeout=finish_within)
            finished = [w.result() for w in waiters if w.done()]
            result.finished_ok = sum(1 for s in finished if s.error is None)
            result.finished_errors = dict(collections.Counter(s.error for s in finished if s.error is not None))
            result.unfinished = sum(1 for w in waiters if not w.done())
            result.tree_changed = server.tree.changed
        finally:
            for connection in connections:
                connection.close()
            # Let the closed connections' futures resolve before the loop goes on.
            await asyncio.sleep(0)
    return result


def _waiting(connections: list[Connection], waiters: list[asyncio.Future[Sample]]) -> int:
    """Streams neither streaming content nor ended."""
    return sum(1 for c, w in zip(connections, waiters, strict=True) if not w.done() and c.state != STREAMING)


def _classify(result: HeldResult, connections: list[Connection], waiters: list[asyncio.Future[Sample]]) -> None:
    errors: collections.Counter[str] = collections.Counter()
    for connection, waiter in zip(connections, waiters, strict=True):
        if waiter.done():
            sample = waiter.result()
            result.failed += 1
            errors[sample.error or "ended before the release"] += 1
        elif connection.state == STREAMING:
            result.content += 1
        elif connection.state == HEADERS:
            result.headers_only += 1
        elif connection.state == SENT:
            result.stalled += 1
    for error, n in errors.items():
        result.errors[error] = result.errors.get(error, 0) + n
