"""The HTTP front against slow and large clients (issue 16, item 2): head size and count limits answered 431,
heads that do not arrive in time answered 408, idle kept-alive connections closed, and a worker's connection
bound answered 503. Raw sockets against uvicorn running the protocol `serve` runs, in this event loop."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from runtime.server.serving import FrontLimits, GuardedProtocol, raise_open_file_limit
from tests.services import free_port
from tests.waiting import eventually

LIMITS = FrontLimits(head_timeout=0.5)


class Guarded(GuardedProtocol):
    """The protocol `serve` runs, with a head timer short enough for a test."""

    limits = LIMITS


class App:
    """Answers 200 "ok"; ``/hold`` waits until ``release`` is set, to keep a request in flight."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.holding = 0  # requests waiting in /hold

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/hold":
            self.holding += 1
            await self.release.wait()
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        if scope["path"] == "/late-body":  # the head goes out, the body only once released
            await self.release.wait()
        await send({"type": "http.response.body", "body": b"ok"})


@contextlib.asynccontextmanager
async def front(app: App, **options: Any) -> AsyncIterator[int]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off", http=Guarded, **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        app.release.set()
        server.should_exit = True
        await task


async def exchange(port: int, data: bytes, *, wait: float = 5.0) -> bytes:
    """Send ``data``, then read until the server closes the connection (or ``wait`` runs out)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), wait)
    finally:
        writer.close()


def request(*headers: str) -> bytes:
    return (
        "GET / HTTP/1.1\r\nHost: test\r\n" + "".join(f"{h}\r\n" for h in headers) + "Connection: close\r\n\r\n"
    ).encode()


async def test_a_head_is_not_held_for_a_body_that_comes_later():
    # A head waits for its body only within one turn of the event loop: an app that starts its response and
    # then waits has its head at the client while it waits.
    app = App()
    async with front(app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /late-body HTTP/1.1\r\nHost: test\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            assert head.startswith(b"HTTP/1.1 200 ") and b"content-length: 2" in head
            assert not app.release.is_set()
            app.release.set()
            assert await asyncio.wait_for(reader.readexactly(2), 2) == b"ok"
        finally:
            writer.close()


async def test_pipelined_and_expect_continue_requests_are_answered_whole_and_in_order():
    async with front(App()) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n" * 3)
            for _ in range(3):
                answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\nok"), 2)
                assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1") == 1
            writer.write(b"POST / HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"hello")
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\nok"), 2)
            assert answer.startswith(b"HTTP/1.1 200 ")
        finally:
            writer.close()


async def test_a_header_over_16_kib_is_a_431_and_one_under_is_served():
    async with front(App()) as port:
        answer = await exchange(port, request("X-Big: " + "a" * (16 * 1024)))
        assert answer.startswith(b"HTTP/1.1 431 ") and b"over 16384 bytes" in answer
        answer = await exchange(port, request("X-Big: " + "a" * (15 * 1024)))
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ok")


async def test_more_than_100_headers_or_64_kib_in_all_are_a_431():
    async with front(App()) as port:
        assert (await exchange(port, request(*(f"X-{i}: v" for i in range(98))))).startswith(b"HTTP/1.1 200 ")
        answer = await exchange(port, request(*(f"X-{i}: v" for i in range(100))))
        assert answer.startswith(b"HTTP/1.1 431 ") and b"more than 100 headers" in answer
        answer = await exchange(port, request(*(f"X-{i}: {'v' * 1000}" for i in range(70))))
        assert answer.startswith(b"HTTP/1.1 431 ") and b"over 65536 bytes" in answer


async def test_a_large_body_is_not_taken_for_a_large_head():
    async with front(App()) as port:
        body = b"x" * 200_000
        head = b"POST / HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
        assert (await exchange(port, head + body)).startswith(b"HTTP/1.1 200 ")


async def test_an_endless_header_line_is_cut_off_at_64_kib():
    async with front(App()) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: test\r\nX-Endless: ")
            sent = 0
            answer = b""
            with contextlib.suppress(ConnectionError):
                while sent < 1024 * 1024 and not reader.at_eof():
                    writer.write(b"a" * 8192)
                    await writer.drain()
                    sent += 8192
                    with contextlib.suppress(TimeoutError):
                        answer += await asyncio.wait_for(reader.read(4096), 0.01)
                    if answer:
                        break
            answer += await asyncio.wait_for(reader.read(), 2)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 431 ")
        assert sent < 256 * 1024  # refused once the head passed 64 KiB, long before the client stopped


async def test_a_client_that_sends_a_whole_megabyte_of_head_at_once_reads_its_431_not_a_reset():
    # Refused at 64 KiB while most of the megabyte is still on its way: closing with it unread would answer the
    # client with a reset, which loses the 431 it was written. The rest is read and dropped, then it closes.
    head = b"GET / HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"
    async with front(App()) as port:
        for _ in range(3):
            answer = await exchange(port, head)
            assert answer.startswith(b"HTTP/1.1 431 ") and b"over 65536 bytes" in answer


async def test_a_malformed_request_followed_by_more_bytes_reads_its_400_not_a_reset():
    async with front(App()) as port:
        answer = await exchange(port, b"NOT HTTP AT ALL\r\n" + b"x" * 1_000_000)
        assert answer.startswith(b"HTTP/1.1 400 ") and b"Invalid HTTP request" in answer


async def test_a_refused_client_that_never_stops_sending_is_cut_off():
    # The rest of a refused head is dropped for a bounded time and a bounded number of bytes, no more.
    async with front(App()) as port:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        began = time.monotonic()
        sent = 0
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: test\r\nX-Endless: ")
            with contextlib.suppress(ConnectionError):
                while time.monotonic() - began < 20:
                    writer.write(b"a" * 65536)
                    await writer.drain()
                    sent += 65536
        finally:
            writer.close()
        assert time.monotonic() - began < 15 and sent < 64 * 1024 * 1024


async def test_a_head_that_does_not_arrive_in_time_is_a_408_and_the_connection_closes():
    async with front(App()) as port:
        began = time.monotonic()
        answer = await exchange(port, b"GET / HTTP/1.1\r\nHost: test\r\n")  # never finished
        assert answer.startswith(b"HTTP/1.1 408 ") and 0.4 < time.monotonic() - began < 3
        answer = await exchange(port, b"")  # connected, sends nothing
        assert answer.startswith(b"HTTP/1.1 408 ")


async def test_a_kept_alive_connection_gets_the_head_timer_again_and_idles_out():
    async with front(App(), timeout_keep_alive=1) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            first = await asyncio.wait_for(reader.readuntil(b"ok"), 2)
            assert first.startswith(b"HTTP/1.1 200 ")
            writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n")  # a second request that never ends its head
            second = await asyncio.wait_for(reader.read(), 3)
            assert second.startswith(b"HTTP/1.1 408 ")
        finally:
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            await asyncio.wait_for(reader.readuntil(b"ok"), 2)
            began = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 3) == b""  # closed once idle
            assert time.monotonic() - began < 2.5
        finally:
            writer.close()


async def test_past_the_connection_bound_a_request_is_a_503_not_a_hang():
    app = App()
    # uvicorn counts the connection asking too: with a bound of 3, two held requests leave room for none.
    async with front(app, limit_concurrency=3) as port:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for _, writer in held:
            writer.write(b"GET /hold HTTP/1.1\r\nHost: test\r\n\r\n")
            await writer.drain()
        assert await eventually(lambda: app.holding == 2)
        answer = await exchange(port, request(), wait=2)
        assert answer.startswith(b"HTTP/1.1 503 ")
        app.release.set()
        for reader, writer in held:
            assert (await asyncio.wait_for(reader.readuntil(b"ok"), 2)).startswith(b"HTTP/1.1 200 ")
            writer.close()
        assert (await exchange(port, request())).startswith(b"HTTP/1.1 200 ")


def test_the_open_file_limit_is_raised_to_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY and soft == hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard // 2, hard))
        assert raise_open_file_limit() == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if hard != resource.RLIM_INFINITY:
            assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_each_worker_takes_its_head_timeout_from_the_settings(monkeypatch):
    from api.app import app_from_env

    monkeypatch.setenv("HEADER_TIMEOUT_SECONDS", "7.5")
    monkeypatch.setattr(GuardedProtocol, "limits", FrontLimits())
    app_from_env()
    assert GuardedProtocol.limits.head_timeout == 7.5 and GuardedProtocol.limits.header_bytes == 16 * 1024


def test_serve_guards_every_connection():
    from runtime.server.serving import uvicorn_options

    options = uvicorn_options(host="127.0.0.1", port=8666, workers=2, max_connections=5)
    assert options["http"] is GuardedProtocol and options["limit_concurrency"] == 5
    assert options["timeout_keep_alive"] == 5
