"""What the tests' HAProxy (``docs/haproxy.cfg``'s retries) does with servers that close kept-alive connections,
as a stopping instance does: each request is sent again, none reaches the client as a failure."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.services import HAProxyProcess, free_port


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer health checks and keep the connection; answer anything else, then close it a moment later
    without reading on, as a server that stops (or ends an idle kept-alive connection) does."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            if head.startswith(b"GET /ready "):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
                continue
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)  # meanwhile HAProxy may send the client's next request on it
            break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def closing_servers(count: int) -> AsyncIterator[HAProxyProcess]:
    ports = [free_port() for _ in range(count)]
    servers = [await asyncio.start_server(_serve, "127.0.0.1", port) for port in ports]
    balancer = HAProxyProcess({f"s{n}": port for n, port in enumerate(ports)})
    try:
        await asyncio.to_thread(balancer.start)
        await asyncio.to_thread(balancer.wait_for_states, {name: "UP" for name in balancer.servers})
        yield balancer
    finally:
        balancer.close()
        for server in servers:
            server.close()


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_a_request_on_a_kept_alive_connection_the_server_closes_is_sent_again(method):
    async with (
        closing_servers(2) as balancer,
        httpx.AsyncClient(base_url=balancer.url, timeout=10) as http,
    ):
        failed = []
        for n in range(100):  # one client connection: each request right after the previous answer
            try:
                r = await http.request(
                    method, "/api/v1/chat", json={"message": f"turn {n}"} if method == "POST" else None
                )
            except httpx.HTTPError as exc:
                failed.append(repr(exc))
                continue
            if r.status_code != 200 or r.text != "ok":
                failed.append(f"{r.status_code} {r.text[:100]}")
        stats = await asyncio.to_thread(balancer.stats)
        log = balancer.log()
    assert failed == [], log
    # Not by luck: requests met a closing connection and HAProxy sent them again.
    backend = next(
        r
        for r in stats
        if r["svname"] == "BACKEND" and r["pxname"] == ("runtime_writes" if method == "POST" else "runtime")
    )
    assert int(backend["wretr"]) + int(backend["wredis"]) > 0
