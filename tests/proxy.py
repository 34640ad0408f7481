"""Proxies on loopback for tests: a TCP proxy a test can cut and restore, to play a database that goes away,
and a forward HTTP proxy that records the requests it gets."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit

from tests.services import free_port


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; ``cut()`` drops every connection and refuses new ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.returned = bytearray()  # everything the target has sent back through the proxy

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        # Connections go first: since Python 3.12 wait_closed() also waits for every open connection.
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._pipes):
            task.cancel()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        for source, sink, seen in ((reader, up_writer, None), (up_reader, writer, self.returned)):
            task = asyncio.create_task(self._pipe(source, sink, seen))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, seen: bytearray | None) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await source.read(65536):
                if seen is not None:
                    seen += data
                sink.write(data)
                await sink.drain()
        with contextlib.suppress(OSError):
            sink.close()


class HttpProxy:
    """A forward HTTP proxy on loopback (TLS to it when given ``tls``) that records the request lines it gets.

    ``CONNECT host:port`` opens a tunnel; any other request, in absolute form (``POST http://host:port/path``),
    is passed on to its origin, each request of a kept-alive connection recorded on its own. The
    ``Proxy-Authorization`` of each request line is kept in ``authorizations`` and not passed on.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.request_lines: list[str] = []
        self.authorizations: list[str | None] = []
        self.connections = 0
        self.refuse: int | None = None  # set: answer every request with this status (407, say)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> HttpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()

    def url(self, credentials: str = "user:s3cret") -> str:
        assert self._server is not None
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{credentials}@127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _head(self, reader: asyncio.StreamReader) -> tuple[str, list[str]]:
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")[:-2]
        self.request_lines.append(lines[0])
        self.authorizations.append(
            next((h.split(":", 1)[1].strip() for h in lines if h.lower().startswith("proxy-authorization")), None)
        )
        return lines[0], [h for h in lines[1:] if not h.lower().startswith("proxy-authorization")]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            request_line, headers = await self._head(reader)
            method, target, _ = request_line.split(" ")
            if self.refuse is not None:
                writer.write(b"HTTP/1.1 %d Refused\r\ncontent-length: 0\r\nconnection: close\r\n\r\n" % self.refuse)
                await writer.drain()
                writer.close()
                return
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
                self._writers.append(up_writer)
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self._spawn(_pipe(up_reader, writer))
                await _pipe(reader, up_writer)
                return
            origin = urlsplit(target)
            assert origin.scheme == "http" and origin.hostname, f"not an absolute-form request: {request_line}"
            up_reader, up_writer = await asyncio.open_connection(origin.hostname, origin.port or 80)
            self._writers.append(up_writer)
            self._spawn(_pipe(up_reader, writer))
            while True:
                length = next((int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length")), 0)
                body = await reader.readexactly(length)
                up_writer.write(("\r\n".join([request_line, *headers]) + "\r\n\r\n").encode("latin-1") + body)
                request_line, headers = await self._head(reader)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    with contextlib.suppress(OSError):
        sink.close()
