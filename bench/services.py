"""The processes the benchmark runs: the fake provider, persona-runtime under uvicorn, and a scratch database."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import psutil

from bench import host
from bench.fake_provider import StreamShape
from bench.processes import ProcessTree

__all__ = [
    "ROOT",
    "Account",
    "ServerProcess",
    "child_env",
    "create_account",
    "delete_redis_keys",
    "fake_provider",
    "free_port",
    "run_on_scratch",
    "runtime_server",
    "scratch_database",
    "spawn",
    "spawn_command",
    "wait_ready",
]

ROOT = Path(__file__).resolve().parent.parent
# Variables of the runtime (and its providers) that must come from the benchmark, not from the caller's shell.
_RUNTIME_PREFIXES = ("OPENAI_", "ANTHROPIC_", "PROVIDER_", "DEFAULT_", "DATABASE_", "REDIS_", "BOOTSTRAP_")


def _child_setup() -> None:
    """Runs in each child before exec: its own session (Ctrl-C reaches only us, and we stop it in order),
    and, on Linux, a SIGTERM when the benchmark dies, so nothing outlives a killed run."""
    os.setsid()
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ServerProcess:
    """A child process the benchmark started, its URL, and its process tree for CPU and memory per stream."""

    def __init__(
        self, name: str, popen: subprocess.Popen[bytes], url: str, log: Path | None = None, workers: int = 1
    ) -> None:
        self.name = name
        self.popen = popen
        self.url = url
        self.log = log
        self.workers = workers
        self.tree = ProcessTree(popen.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the whole tree: the master and every worker."""
        return self.tree.cpu_seconds()

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``grace``; workers left behind by a killed master are killed too."""
        leftovers = list(self.tree.processes[1:])
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for process in leftovers:
            with contextlib.suppress(psutil.Error):
                if process.is_running():
                    process.kill()

    def log_tail(self, lines: int = 30) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def spawn(
    args: list[str], env: dict[str, str], *, python: str = sys.executable, cwd: Path = ROOT, **kwargs: object
) -> subprocess.Popen[bytes]:
    """``python args...`` in its own session, from the repository root unless told otherwise."""
    return spawn_command([python, *args], env, cwd=cwd, **kwargs)


def spawn_command(argv: list[str], env: dict[str, str], *, cwd: Path, **kwargs: object) -> subprocess.Popen[bytes]:
    """``argv`` in its own session, with a SIGTERM when the benchmark dies."""
    return subprocess.Popen(  # type: ignore[call-overload]
        argv, cwd=cwd, env=env, preexec_fn=_child_setup, **kwargs
    )


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The benchmark's environment without the runtime's and providers' variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_RUNTIME_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@contextlib.contextmanager
def fake_provider(shape: StreamShape) -> Iterator[ServerProcess]:
    """The fake OpenAI-compatible provider in its own process."""
    popen = spawn(
        [
            "-m",
            "bench.fake_provider",
            "--chunks",
            str(shape.chunks),
            "--chunk-delay",
            str(shape.chunk_delay),
            "--first-byte-delay",
            str(shape.first_byte_delay),
        ],
        child_env({}),
        stdout=subprocess.PIPE,
    )
    server: ServerProcess | None = None
    try:
        assert popen.stdout is not None
        line = popen.stdout.readline().decode().split()
        if len(line) != 2 or line[0] != "READY":
            raise RuntimeError("the fake provider did not start")
        server = ServerProcess("fake provider", popen, f"http://127.0.0.1:{line[1]}")
        yield server
    finally:
        if server is not None:
            server.stop()
        elif popen.poll() is None:
            popen.kill()
            popen.wait()


def run_install_step(
    step: list[str], log: Path, sink: Any, *, timeout: float, unavailable: type[Exception], name: str
) -> None:
    """Run one step of a peer's one-time install with its output in ``log``; a failure raises ``unavailable``
    naming the step (``name``) and the log's last line."""
    try:
        code = subprocess.run(step, stdout=sink, stderr=subprocess.STDOUT, timeout=timeout).returncode
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise unavailable(f"{name} failed: {exc}") from None
    if code != 0:
        sink.flush()
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise unavailable(f"`{name}` exited with {code}: {tail[0][:200]}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def runtime_server(
    database_url: str,
    redis_url: str | None,
    provider_url: str,
    *,
    log_level: str,
    workdir: Path,
    workers: int = 1,
    redis_prefix: str = "persona-bench:",
    extra_env: dict[str, str] | None = None,
    wrapper: list[str] | None = None,
    ready_within: float = 60.0,
    root: Path = ROOT,
) -> AsyncIterator[ServerProcess]:
    """``python -m runtime serve --workers N`` (migrations, then uvicorn) on a free loopback port, ready to answer,
    its process tree (master and workers) fixed once start-up is over. ``wrapper`` goes before the Python
    command (``valgrind --tool=callgrind ...``); ``root`` is the checkout whose runtime runs (this one by default)."""
    port = free_port()
    env = child_env(
        {
            "DATABASE_URL": database_url,
            "OPENAI_API_KEY": "sk-bench-" + secrets.token_hex(8),
            "OPENAI_BASE_URL": provider_url + "/v1",
            # A throwaway admin key keeps `serve` from printing a generated one.
            "BOOTSTRAP_ADMIN_KEY": "prk_bench_" + secrets.token_urlsafe(24),
            "PERSONA_RUNTIME_HOME": str(workdir / "home"),
            "LOG_LEVEL": log_level,
            # The runtime's keys in a shared Redis: unique per benchmark run, deleted by it.
            "REDIS_KEY_PREFIX": redis_prefix,
            **(extra_env or {}),
        }
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
    if root != ROOT:
        env["PYTHONPATH"] = os.pathsep.join([str(root), env["PYTHONPATH"]])
    log = workdir / f"runtime-{workers}w-{port}.log"
    with log.open("wb") as sink:
        popen = spawn_command(
            [
                *(wrapper or []),
                sys.executable,
                "-m",
                "runtime",
                "serve",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            env,
            cwd=root,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess("persona-runtime", popen, f"http://127.0.0.1:{port}", log, workers)
    try:
        await wait_ready(server, "/ready", within=ready_within)
        await server.tree.settle(workers)
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def wait_ready(server: ServerProcess, path: str, within: float = 60.0) -> None:
    """Poll ``GET path`` until it answers 200; raise with the log's tail if the process exits or time runs out."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(base_url=server.url, timeout=2) as client:
        while time.monotonic() < deadline:
            if server.popen.poll() is not None:
                raise RuntimeError(f"{server.name} exited at startup:\n{server.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(path)).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{server.name} was not ready within {within:.0f} s:\n{server.log_tail()}")


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def _reachable(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@contextlib.asynccontextmanager
async def scratch_database(server_url: str, workdir: Path) -> AsyncIterator[str]:
    """A fresh database on ``server_url`` (or on an embedded server when that is unreachable), dropped after."""
    embedded = None
    if not await _reachable(server_url):
        from runtime.server.embedded import EmbeddedPostgres

        print(f"bench: {_redact(server_url)} is unreachable; starting an embedded PostgreSQL", file=sys.stderr)
        embedded = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="bench-pg-", dir=workdir)))
        server_url = await asyncio.to_thread(embedded.start)
    name = f"persona_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        try:
            yield _with_database(server_url, name)
        finally:
            # Shielded: this runs on Ctrl-C too, when the task around it is being cancelled.
            await asyncio.shield(_drop(server_url, name))
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
            shutil.rmtree(embedded.data_dir.parent, ignore_errors=True)


async def _drop(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(":" + parts.password + "@", ":***@")
    return url


async def delete_redis_keys(redis_url: str, prefix: str, limit: int = 100_000) -> int:
    """Delete the keys under ``prefix`` (at most ``limit``); return how many went."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=prefix + "*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                deleted += await client.delete(*batch)
                batch = []
            if deleted + len(batch) >= limit:
                break
        if batch:
            deleted += await client.delete(*batch)
    finally:
        await client.aclose()
    return deleted


class Account:
    """The benchmark's user and the headers that carry its API key."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.headers = {"Authorization": f"Bearer {key}"}


async def create_account(database_url: str) -> Account:
    """A fresh, non-admin user with one API key, made through the runtime's own account code (after the
    runtime's migrations, which its start-up would apply too)."""
    from core.db import connect_pool
    from runtime.access.accounts import Accounts
    from runtime.server.migrate import apply_migrations

    await apply_migrations(database_url)

    pool = await connect_pool(database_url, min_size=1, max_size=1)
    try:
        accounts = Accounts(pool)
        user = await accounts.create_user("bench", display_name="Bench")
        key, _ = await accounts.create_key(user.id, name="bench")
    finally:
        await pool.close()
    return Account(key)


def run_on_scratch(prefix: str, measure: Callable[[str, str, str, Path], Awaitable[object]]) -> None:
    """``measure(database_url, redis_url, provider_url, workdir)`` with the fake provider in its own process, a
    scratch database on ``BENCH_DATABASE_URL`` (default the local PostgreSQL) and Redis at ``BENCH_REDIS_URL``:
    what the single-purpose benchmarks (``bench.lore``, ``bench.memory``) run on."""
    server = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

    async def run() -> None:
        workdir = Path(tempfile.mkdtemp(prefix=prefix))
        with fake_provider(StreamShape()) as provider:
            async with scratch_database(server, workdir) as dsn:
                await measure(dsn, redis_url, provider.url, workdir)

    print(host.line(host.gauges()))
    asyncio.run(run())
