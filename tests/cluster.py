"""Fixtures for the scale-out tests: a Redis Cluster, a PgBouncer, and several `serve` processes behind HAProxy.

Loaded from ``tests/conftest.py`` (``pytest_plugins``). All are session-scoped and started on first use:

- ``redis_cluster``: a :class:`~tests.services.RedisClusterProcess` (3 primaries); ``.url`` names one node.
- ``pgbouncer``: a :class:`~tests.services.PgBouncerProcess` in transaction mode in front of the test
  PostgreSQL; ``.dsn(database_url)`` is that database reached through it.
- ``scale_out``: a :class:`ScaleOut`: three ``persona-runtime serve`` processes on one fresh database, the
  session's Redis and the fake LLM server, behind HAProxy. Each test gets all three running and in rotation
  (an instance a test killed is started again first).

Where the binaries are missing, tests that use these are skipped, or fail in CI (see ``required_binary``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakellm import FakeLLM
from tests.services import HAProxyProcess, PgBouncerProcess, RedisClusterProcess, free_port

__all__ = ["ScaleOut", "ServeInstance"]

ADMIN_KEY = "prk_scale_out_admin_key_0123456789abcdef"

# Variables of the test process's environment that must not leak into the servers' configuration.
_OWN_VARIABLES = ("OPENAI_", "ANTHROPIC_", "PROVIDER_", "DEFAULT_", "DATABASE_", "REDIS_", "BOOTSTRAP_")


class ServeInstance:
    """One ``persona-runtime serve`` process on a port of its own, its output in a log file."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "runtime", "serve", "--port", str(self.port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a group of its own, so it can be killed whole
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited: {self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not become ready within {timeout:.0f} s: {self.log()}")

    def kill(self) -> None:
        """SIGKILL: the process ends on the spot, its connections reset, as in a crash."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not ended within 30 s."""
        self._signal(signal.SIGTERM, wait=30)

    def restart(self) -> None:
        if self.alive:
            self.stop()
        self.start()
        self.wait_ready()

    def _signal(self, signum: int, wait: float = 10) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)
        try:
            self.process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def metric(self, name: str, **labels: str) -> float:
        """The sum of this instance's samples of ``name`` (from its own ``/metrics``) that carry ``labels``."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"


class ScaleOut:
    """Several instances on one database and one Redis, behind a round-robin HAProxy at ``url``."""

    def __init__(self, instances: list[ServeInstance], balancer: HAProxyProcess, database_url: str) -> None:
        self.instances = instances
        self.balancer = balancer
        self.url = balancer.url
        self.database_url = database_url
        self.admin_key = ADMIN_KEY
        self.admin_headers = {"X-API-Key": ADMIN_KEY}

    def heal(self) -> None:
        """Every instance running and in HAProxy's rotation again."""
        for instance in self.instances:
            if not instance.alive:
                instance.start()
        for instance in self.instances:
            instance.wait_ready()
        self.balancer.wait_for_states({i.name: "UP" for i in self.instances})


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterProcess]:
    cluster = RedisClusterProcess()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def pgbouncer(postgres_server_url: str) -> Iterator[PgBouncerProcess]:
    bouncer = PgBouncerProcess(postgres_server_url, pool_mode="transaction")
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.close()


@pytest.fixture(scope="session")
async def _scale_out(
    create_database: Callable[[], Awaitable[str]], redis_url: str, fake_llm_server: FakeLLM
) -> AsyncIterator[ScaleOut]:
    from tests.conftest import llm_env

    database_url = await create_database()
    base = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_VARIABLES)}
    env = {
        **base,
        **llm_env(fake_llm_server),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": f"prt-test:{database_url.rsplit('/', 1)[-1]}:",
        "BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
        "LOG_LEVEL": "WARNING",
        # Long enough for every answer in flight at a SIGTERM to end (a rolling restart ends none early).
        "SHUTDOWN_GRACE_SECONDS": "5",
        "SSE_HEARTBEAT_SECONDS": "0.5",
        # An instance killed mid-answer has its answers marked incomplete by the others within seconds.
        "STREAM_LEASE_SECONDS": "1.5",
    }
    log_dir = Path(tempfile.mkdtemp(prefix="prt-scale-out-"))
    instances = [ServeInstance(f"runtime{n}", env, log_dir) for n in (1, 2, 3)]
    balancer = HAProxyProcess({i.name: i.port for i in instances})
    try:
        # Started together (they migrate one empty database at once, as a deploy does), then awaited.
        for instance in instances:
            instance.start()
        for instance in instances:
            instance.wait_ready()
        balancer.start()
        cluster = ScaleOut(instances, balancer, database_url)
        cluster.heal()
        yield cluster
    finally:
        balancer.close()
        for instance in instances:
            instance.stop()


@pytest.fixture
def scale_out(_scale_out: ScaleOut) -> ScaleOut:
    """The instances behind HAProxy, all three running and in rotation when the test begins."""
    _scale_out.heal()
    return _scale_out
