"""The load client: keep-alive HTTP/1.1 connections on raw asyncio, a pre-encoded request, timed SSE streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgspec

from bench.events import CONTENT, END, FAILED, EventScanner, completion_event, openai_event, runtime_event
from bench.response import PARSER, ParseError, ResponseParser, new_parser

__all__ = [
    "MESSAGE",
    "PARSER",
    "Connection",
    "Run",
    "Sample",
    "Target",
    "chat_target",
    "completions_target",
    "open_connection",
    "run_concurrent",
    "run_sequential",
]

MESSAGE = "Hello! Could you tell me something cheerful about robots?"
# No request of a measured run may take longer; a stalled one is reported as a timeout, not waited for.
REQUEST_TIMEOUT = 60.0


@dataclass(frozen=True)
class Target:
    """One path to measure: where to connect, the whole request as bytes, and how to read the answer."""

    name: str
    host: str
    port: int
    request: bytes
    classify: Callable[[bytes], int]
    # False: one JSON body (``"stream": false``), whose content counts as arriving when the body has.
    streamed: bool = True


def _request(url: str, body: bytes, headers: dict[str, str], *, streamed: bool = True) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    accept = "text/event-stream" if streamed else "application/json"
    lines = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {host}:{port}", f"Accept: {accept}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def completions_target(
    name: str,
    url: str,
    headers: dict[str, str],
    *,
    model: str,
    system: str | None,
    include_usage: bool | None = None,
    streamed: bool = True,
) -> Target:
    """An OpenAI-shaped chat completion (the provider, the runtime's /v1, LiteLLM, Portkey), streamed or, with
    ``streamed=False``, one JSON answer (``"stream": false``)."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": MESSAGE})
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": streamed}
    if streamed and (include_usage if include_usage is not None else bool(system)):
        # What the runtime itself asks its provider for, so the direct baseline streams the same bytes.
        body["stream_options"] = {"include_usage": True}
    encoded = msgspec.json.encode(body)
    host, port, request = _request(url, encoded, {"Content-Type": "application/json", **headers}, streamed=streamed)
    return Target(name, host, port, request, openai_event, streamed)


def chat_target(name: str, url: str, headers: dict[str, str]) -> Target:
    """The runtime's own SSE chat, a new conversation each time."""
    body = msgspec.json.encode({"message": MESSAGE, "stream": True})
    host, port, request = _request(url, body, {"Content-Type": "application/json", **headers})
    return Target(name, host, port, request, runtime_event)


@dataclass
class Sample:
    """One request: seconds to the first content piece and to the end of the stream, or why it failed."""

    ttft: float | None
    total: float
    pieces: int
    error: str | None = None


@dataclass
class Run:
    """The samples of one measured run, its wall-clock time, and the connections the client had to (re)open."""

    samples: list[Sample] = field(default_factory=list)
    wall: float = 0.0
    connects: int = 0


# Where a request stands; held-streams mode reads it to tell a stall from a slow start.
SENT, HEADERS, STREAMING, DONE = "sent", "headers", "streaming", "done"


class Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time.

    All timing is taken once per received block (``data_received``), so a block holding the first content
    piece and ``[DONE]`` gives both their instants from one clock read.
    """

    def __init__(self, parser_kind: str = PARSER) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.parser: ResponseParser = new_parser(self._on_head, self._on_body, self._on_complete, parser_kind)
        self.scanner = EventScanner(openai_event)
        self.state = DONE
        self._waiter: asyncio.Future[Sample] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._now = 0.0
        self._started = 0.0
        self._first: float | None = None
        self._ended: float | None = None
        self._status = 0
        self._error: str | None = None
        self._error_body = b""
        self._streamed = True
        self._body: list[bytes] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._now = time.perf_counter()
        try:
            self.parser.feed(data)
        except ParseError as exc:
            self._fail(f"bad response: {exc}")

    def eof_received(self) -> bool | None:
        try:
            self.parser.feed_eof()
        except ParseError as exc:
            self._fail(str(exc))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None:
            self._fail("connection closed" + (f": {exc}" if exc else "") + f" ({self.state})")

    # parser callbacks
    def _on_head(self, status: int) -> None:
        self._status = status
        if self.state == SENT:
            self.state = HEADERS

    def _on_body(self, data: bytes) -> None:
        if self._status != 200:
            if len(self._error_body) < 300:
                self._error_body += data[:300]
            return
        if not self._streamed:
            self._body.append(data)
            return
        if self._ended is not None or self._error is not None:
            return  # past [DONE]: the rest of the body is read, not looked at
        kind = self.scanner.feed(data)
        if kind == CONTENT:
            if self._first is None:
                self._first = self._now
                self.state = STREAMING
        elif kind == END:
            if self._first is None and self.scanner.pieces:
                self._first = self._now
                self.state = STREAMING
            self._ended = self._now
        elif kind == FAILED:
            self._error = "error event: " + _message(self.scanner.failure)

    def _on_complete(self) -> None:
        if self._waiter is None:
            return
        if self._status != 200:
            snippet = self._error_body.decode(errors="replace").strip()[:200]
            self._error = f"HTTP {self._status}" + (f": {snippet}" if snippet else "")
        elif not self._streamed:
            self._completed(b"".join(self._body))
        elif self._error is None and self._ended is None:
            self._error = "stream ended without [DONE]"
        elif self._error is None and self._first is None:
            self._error = "no content"
        if not self.parser.keep_alive and self.transport is not None:
            self.transport.close()
            self.closed = True
        self._resolve()

    def _completed(self, body: bytes) -> None:
        """A whole JSON answer: its content (one piece) arrived with the body's last block."""
        kind = completion_event(body)
        if kind == CONTENT:
            self.scanner.pieces = 1
            self._first = self._ended = self._now
        elif kind == FAILED:
            self._error = "error body: " + _message(b"data:" + body)
        else:
            self._error = "no content"

    # requests
    def send(self, target: Target, timeout: float = REQUEST_TIMEOUT) -> asyncio.Future[Sample]:
        """Write the request; the future resolves once the whole response body has been read."""
        if self.transport is None or self.closed:
            raise ConnectionError("the connection is closed")
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self.scanner.reset(target.classify)
        self._first = self._ended = self._error = None
        self._status = 0
        self._error_body = b""
        self._streamed = target.streamed
        self._body = []
        self.state = SENT
        self._timer = loop.call_later(timeout, self._on_timeout)
        self._started = time.perf_counter()
        self.transport.write(target.request)
        return waiter

    def _on_timeout(self) -> None:
        self._timer = None
        self._fail(f"timeout ({self.state})")
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, error: str) -> None:
        if self._waiter is None:
            return
        if self._error is None:
            self._error = error
        self._ended = None
        if self.transport is not None:
            self.transport.abort()
        self.closed = True
        self._resolve()

    def _resolve(self) -> None:
        waiter, self._waiter = self._waiter, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.state = DONE
        if waiter is None or waiter.done():
            return
        end = self._ended if self._ended is not None else time.perf_counter()
        total = end - self._started
        if self._error is not None:
            waiter.set_result(Sample(None, total, self.scanner.pieces, self._error))
        else:
            assert self._first is not None
            waiter.set_result(Sample(self._first - self._started, total, self.scanner.pieces))

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True


def _message(event: bytes) -> str:
    """The ``message`` of an error event's JSON, else the event's data, shortened."""
    data = event.partition(b"data:")[2].strip()
    try:
        decoded = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return data.decode(errors="replace")[:200]
    error = decoded.get("error", decoded) if isinstance(decoded, dict) else decoded
    if isinstance(error, dict) and "message" in error:
        return str(error["message"])[:200]
    return str(error)[:200]


async def open_connection(host: str, port: int, within: float = 10.0) -> Connection:
    """A new connection, given ``within`` seconds to be accepted."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(within):
        _, protocol = await loop.create_connection(Connection, host, port)
    return protocol


class _Client:
    """One closed-loop client: a connection, reopened only when the server closed it."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.connection: Connection | None = None
        self.connects = 0

    async def request(self) -> Sample:
        started = time.perf_counter()
        if self.connection is None or self.connection.closed:
            try:
                self.connection = await open_connection(self.target.host, self.target.port)
            except (OSError, TimeoutError) as exc:
                return Sample(None, time.perf_counter() - started, 0, f"connect: {type(exc).__name__}: {exc}")
            self.connects += 1
        return await self.connection.send(self.target)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


async def run_sequential(
    target: Target, requests: int, warmup: int, before: Callable[[], Awaitable[None]] | None = None
) -> Run:
    """One client, one request after another on one connection."""
    return await run_concurrent(target, 1, requests, warmup, before)


async def run_concurrent(
    target: Target, clients: int, per_client: int, warmup: int, before: Callable[[], Awaitable[None]] | None = None
) -> Run:
    """``clients`` clients at once, each with its own connection, sending ``warmup`` then ``per_client`` requests
    back to back; ``before()`` runs between the two (to start the meters), the connections already open."""
    pool = [_Client(target) for _ in range(clients)]

    async def loop(client: _Client, count: int, into: list[Sample] | None) -> None:
        for _ in range(count):
            sample = await client.request()
            if into is not None:
                into.append(sample)

    try:
        await asyncio.gather(*(loop(c, warmup, None) for c in pool))
        if before is not None:
            await before()
        connects = sum(c.connects for c in pool)
        run = Run()
        started = time.perf_counter()
        await asyncio.gather(*(loop(c, per_client, run.samples) for c in pool))
        run.wall = time.perf_counter() - started
        run.connects = sum(c.connects for c in pool) - connects
        return run
    finally:
        for client in pool:
            client.close()
