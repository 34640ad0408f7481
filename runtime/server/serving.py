"""How ``serve`` runs the app: uvicorn on uvloop and httptools, with Nagle off on every accepted socket and a
guard against slow and large clients (:class:`GuardedProtocol`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import Multiprocess

__all__ = [
    "FrontLimits",
    "GuardedProtocol",
    "NoDelayProtocol",
    "configure_front",
    "raise_open_file_limit",
    "run",
    "uvicorn_options",
]

log = logging.getLogger("persona_runtime.serving")


class NoDelayProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, setting ``TCP_NODELAY`` on each connection itself.

    asyncio sets it only on sockets it made with ``IPPROTO_TCP``; with ``--workers`` uvicorn binds the
    socket itself (protocol 0), so without this every stream's small writes wait ~40 ms on delayed ACKs.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # the peer may already be gone
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


@dataclass(frozen=True)
class FrontLimits:
    """What one request's head may be, and how long it may take to arrive.

    ``header_bytes`` bounds one header line (name and value), ``head_bytes`` the request line and all headers,
    ``headers`` their number; past any of them the answer is 431 and the connection is closed. A request whose
    head has not arrived ``head_timeout`` seconds after the connection opened (or after the previous response,
    on a kept-alive connection) is answered 408 and closed.
    """

    header_bytes: int = 16 * 1024
    head_bytes: int = 64 * 1024
    headers: int = 100
    head_timeout: float = 10.0


class _Refused(Exception):
    """Raised from a parser callback: the request's head broke a limit."""


_TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\n"
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\n"
# After a 431 or a 400 the rest of what the client sent is read and dropped, for at most this long and this
# much, then the connection closes. Closed with bytes unread, it would answer the client with a reset, which can
# reach it before the answer does.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 8 * 1024 * 1024


class GuardedProtocol(NoDelayProtocol):
    """httptools' protocol with bounds it lacks: the head's size, its number of headers, and its arrival time.

    httptools gathers a header's pieces in memory for as long as the client keeps sending them, and uvicorn
    times out only idle kept-alive connections, never a request that is still arriving. So bytes are counted
    before they reach the parser while a head is being read, each header is checked as it completes, and a
    timer runs from the connection's start (or the previous response) until the head is complete. How many
    connections a worker serves at once is uvicorn's ``limit_concurrency`` (a 503 past it).
    """

    limits: ClassVar[FrontLimits] = FrontLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head = 0
        self._in_head = True
        self._count = 0
        # The request line's target and the headers parsed so far, in bytes.
        self._size = 0
        self._refusal: bytes | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        # Bytes dropped since a 431 went out (None: not refused).
        self._dropped: int | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._start_head_timer()

    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.head_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._answer(_TIMEOUT, "The request's headers did not arrive in time.")

    def _answer(self, status: bytes, message: str, *, linger: bool = False) -> None:
        body = message.encode()
        head = b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: "
        self.transport.write(status + head + str(len(body)).encode() + b"\r\n\r\n" + body)
        if linger and self.transport.can_write_eof():
            # The answer and then the end of our side; the client's remaining bytes are dropped until it closes
            # its side (the transport then closes), or the time or the bytes run out.
            self._in_head = False
            self._dropped = 0
            self.transport.write_eof()
            self._linger_timer = self.loop.call_later(_LINGER_SECONDS, self.transport.close)
            return
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._dropped is not None:
            self._dropped += len(data)
            if self._dropped > _LINGER_BYTES:
                self.transport.close()
            return
        # Counted while a head is being read; a read may also hold the end of the head and a body, so the head
        # is refused only if, once the read is parsed, it is still incomplete past the bound. What the parser
        # holds meanwhile is bounded by the bound plus one read.
        if self._in_head:
            self._head += len(data)
        super().data_received(data)
        if self._in_head and self._head > self.limits.head_bytes and not self.transport.is_closing():
            self._stop_head_timer()
            self._answer(_TOO_LARGE, f"The request's headers are over {self.limits.head_bytes} bytes.", linger=True)

    def on_message_begin(self) -> None:
        self._in_head, self._head, self._count, self._size = True, 0, 0, 0
        self._start_head_timer()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count += 1
        self._size += len(name) + len(value) + 4
        if self._size > self.limits.head_bytes:
            self._refusal = f"The request's headers are over {self.limits.head_bytes} bytes.".encode()
            raise _Refused
        if len(name) + len(value) > self.limits.header_bytes:
            self._refusal = f"A header is over {self.limits.header_bytes} bytes.".encode()
            raise _Refused
        if self._count > self.limits.headers:
            self._refusal = f"The request has more than {self.limits.headers} headers.".encode()
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:
            cycle.transport = _HeldHead(cycle, self.transport, self.loop)  # type: ignore[assignment]

    def send_400_response(self, msg: str) -> None:
        # The parser reports a callback's exception as an invalid request: a refused head is a 431 instead.
        # Either way what the client is still sending is read and dropped, so that it reads the answer.
        self._stop_head_timer()
        if self._refusal is not None:
            self._answer(_TOO_LARGE, self._refusal.decode(), linger=True)
            return
        self._answer(_BAD_REQUEST, msg, linger=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)


class _HeldHead:
    """A response's transport until its head and first piece of body have left, together.

    uvicorn writes a response's status line and headers as soon as the app starts the response, and its body
    in a write of its own: two system calls where one would do, and on loopback a write costs as much as the
    rest of a small response's work. The head is held here until the first piece of body, or the end of this
    turn of the event loop, whichever comes first, so nothing waits longer than it would have; then the cycle
    gets its own transport back and writes straight to it.
    """

    __slots__ = ("_cycle", "_head", "_loop", "_transport")

    def __init__(self, cycle: Any, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._cycle = cycle
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        head = self._head
        if head is None:
            self._head = data
            self._loop.call_soon(self._release)
            return
        self._cycle.transport = self._transport
        self._head = None
        self._transport.write(head + data)

    def _release(self) -> None:
        """The end of the loop's turn: what is held goes out alone, and the cycle writes straight from now on."""
        if self._cycle.transport is self:
            self._cycle.transport = self._transport
        head, self._head = self._head, None
        if head is not None and not self._transport.is_closing():
            self._transport.write(head)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self._release()
        self._transport.close()


def configure_front(limits: FrontLimits) -> None:
    """Set the limits every guarded connection of this process keeps: called in each worker (uvicorn starts them
    from a pickled config, which can carry only an importable class), from the same settings as the master."""
    GuardedProtocol.limits = limits


def raise_open_file_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit (workers inherit it); the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
            return soft
        return hard
    return soft


def uvicorn_options(
    *,
    host: str,
    port: int,
    workers: int,
    grace: float = 25.0,
    max_connections: int | None = None,
) -> dict[str, Any]:
    """``uvicorn.run`` keywords for the app factory; the same protocol and loop for any worker count.

    uvloop and httptools were chosen by measurement: a Litestar streaming route costs about 0.25 ms of
    CPU on them against 0.45-0.55 ms on asyncio's loop with h11 (``bench/README.md``). ``max_connections``
    bounds each worker's connections (503 past it).
    """
    return {
        "factory": True,
        "host": host,
        "port": port,
        "workers": workers,
        "loop": "uvloop",
        "http": GuardedProtocol,
        "limit_concurrency": max_connections,
        # Idle kept-alive connections close after this many seconds.
        "timeout_keep_alive": 5,
        # Logging is ours (core/logs.py): uvicorn's records through our handler, and our access log for its own.
        "log_config": None,
        "use_colors": False,
        "access_log": False,
        # Streams get SHUTDOWN_GRACE_SECONDS, then a few seconds to send their `shutting_down` end.
        "timeout_graceful_shutdown": grace + 5,
        # A burst of clients connecting at once (the held-streams benchmark, a deploy) must not be refused.
        "backlog": 4096,
    }


class _Supervisor(Multiprocess):
    """uvicorn's supervisor of ``--workers``, which stops listening as soon as it is told to stop.

    It holds the listening socket its workers share. Each worker closes its own copy on SIGTERM, but as long as
    the supervisor's stays open the kernel still takes connections into the backlog, where nobody accepts them:
    they hang until the last worker has ended (up to the whole grace), then are reset, and a balancer keeps
    sending requests and health checks there meanwhile. Closed first, new connections are refused at once, as
    with one worker, and a balancer sends them elsewhere.
    """

    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()
        super().terminate_all()


def run(app: str, options: dict[str, Any]) -> None:
    """``uvicorn.run(app, **options)``, its workers (if more than one) under :class:`_Supervisor`."""
    if options.get("workers", 1) <= 1:
        uvicorn.run(app, **options)
        return
    config = uvicorn.Config(app, **options)
    _Supervisor(config, sockets=[config.bind_socket()]).run()
