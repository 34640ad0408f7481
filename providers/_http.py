"""A lean HTTP/1.1 client for the streaming hot path: pooled keep-alive connections parsed by llhttp.

The SDKs' HTTP stack costs about 1.3 ms of CPU to send one streaming request and read its body; this
client does the same in about 0.03 ms. It does only what the adapters need: a POST with a prepared
head, a response whose body arrives as the bytes of each socket read (chunked encoding undone by
``httptools``, the parser uvicorn uses), keep-alive reuse, TLS, a connection bound per pool, connect
and read timeouts, back-pressure (reading pauses while the consumer is behind), and the proxy the
environment names (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``): an ``http://`` or
``https://`` proxy (TLS to the proxy itself), which reaches https origins through a ``CONNECT`` tunnel
and plain-http ones by absolute-form requests. Other proxies (SOCKS) are refused with a message, never
bypassed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
import time
import urllib.request
from collections import deque
from collections.abc import Mapping, Sequence
from urllib.parse import SplitResult, unquote, urlsplit

import httptools

__all__ = [
    "HttpPool",
    "HttpResponse",
    "PoolFull",
    "Proxy",
    "ReadTimeout",
    "UnsupportedProxy",
    "default_ssl_context",
    "proxy_for",
]

# Body bytes held for a slow consumer before the socket stops being read.
_HIGH_WATER = 256 * 1024
# Idle keep-alive connections older than this are not reused: servers close them (uvicorn after 5 s).
_KEEPALIVE_SECONDS = 4.0
# How long a finished answer's connection may wait for the rest of its body so it can be reused; closing
# the pool waits as long for those still waiting.
DRAIN_SECONDS = 1.0


class ReadTimeout(TimeoutError):
    """The server sent nothing for the read timeout."""


class PoolFull(ConnectionError):
    """Every connection of the pool stayed busy for the connect timeout."""


class _Closed(ConnectionError):
    """The connection ended before the response did."""


def default_ssl_context() -> ssl.SSLContext:
    """Certificates checked against ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set (a company's own CA), else
    against certifi's bundle, as the SDKs' own HTTP stack does."""
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cafile or capath:
        context = ssl.create_default_context(cafile=cafile, capath=capath)
    else:
        import certifi

        context = ssl.create_default_context(cafile=certifi.where())
    context.set_alpn_protocols(["http/1.1"])
    return context


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection carrying one response at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._paused = False
        self.status = 0
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.body: list[bytes] = []
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.received = False

    # asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(_Closed(f"malformed HTTP response ({exc})"))
            return
        if self.buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.complete and self._ends_with_connection():
            self.complete = True
        if not self.complete:
            self._fail(exc or _Closed("the server closed the connection"))
        self._wake()

    def _ends_with_connection(self) -> bool:
        """A body with neither a length nor chunks ends where the connection does."""
        chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        return not chunked and "content-length" not in self.headers

    # httptools callbacks -------------------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self.status = self._parser.get_status_code()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        # Asked now: the parser forgets the response's headers once it is done with it.
        self.keep_alive = self._parser.should_keep_alive()
        self.complete = True

    # the client side -----------------------------------------------------------------------------

    def begin(self, request: tuple[bytes, ...]) -> None:
        """Send ``request`` (its parts, in order) and get ready for its response."""
        assert self.transport is not None
        self._parser = httptools.HttpResponseParser(self)
        self.status, self.headers, self.headers_done = 0, {}, False
        self.body, self.buffered, self.complete, self.keep_alive, self.received = [], 0, False, False, False
        self.transport.writelines(request)

    @property
    def reusable(self) -> bool:
        return (
            self.complete
            and not self.closed
            and self._error is None
            and self.keep_alive
            and self.headers.get("connection", "").lower() != "close"
        )

    def take(self) -> bytes:
        """The body bytes received since the last call (possibly none)."""
        if not self.body:
            return b""
        data = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()
        self.buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def wait(self, seconds: float) -> None:
        """Until something arrives (or the connection ends); raises the connection's failure."""
        if self._error is not None:
            raise self._error
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        timer = loop.call_later(seconds, self._expire, self._waiter)
        try:
            await self._waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def interrupt(self, exc: BaseException) -> None:
        """Fail the response under way with ``exc``: the reader gets it at its next wait."""
        self._fail(exc)
        self._wake()

    def _expire(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(ReadTimeout("the server sent nothing in time"))

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class UnsupportedProxy(ValueError):
    """A proxy variable names a proxy this client cannot speak to; ``variable`` is its name."""

    def __init__(self, message: str, variable: str) -> None:
        super().__init__(message)
        self.variable = variable


class Proxy:
    """A forward proxy from the environment: where it is and the ``Proxy-Authorization`` it wants.

    ``name`` is the variable it came from. Neither the repr nor any message shows its credentials.
    """

    __slots__ = ("authorization", "host", "name", "port", "tls")

    def __init__(self, name: str, parts: SplitResult) -> None:
        self.name = name
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.tls else 80)
        self.authorization: str | None = None
        if parts.username:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self.authorization = "Basic " + base64.b64encode(credentials).decode()

    def __repr__(self) -> str:
        return f"Proxy({self.name}={'https' if self.tls else 'http'}://{self.host}:{self.port})"


def _variable(env: Mapping[str, str], scheme: str) -> tuple[str, str] | None:
    """The ``<scheme>_proxy`` variable that is set and its value, lower case first as ``urllib`` reads them."""
    for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY"):
        value = env.get(name, "").strip()
        if value:
            return name, value
    return None


def proxy_for(url: str, env: Mapping[str, str] | None = None) -> Proxy | None:
    """The proxy the environment (default: the process's) names for ``url``: ``HTTPS_PROXY`` or
    ``HTTP_PROXY`` by its scheme, else ``ALL_PROXY``; none when ``NO_PROXY`` exempts its host.

    Raises ``UnsupportedProxy`` (a ``ValueError``), naming the variable, for a proxy this client cannot
    speak to (SOCKS): answers must not go around a proxy the operator set.
    """
    env = os.environ if env is None else env
    parts = urlsplit(url)
    found = _variable(env, parts.scheme) or _variable(env, "all")
    if found is None:
        return None
    exempt = _variable(env, "no")
    # urllib's reading of NO_PROXY (``*``, host names, domain suffixes, ports), as the SDKs' stack reads it too.
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if exempt is not None and bypass(parts.hostname or "", {"no": exempt[1]}):
        return None
    name, value = found
    proxy = urlsplit(value if "://" in value else "http://" + value)
    if proxy.scheme not in ("http", "https") or not proxy.hostname:
        where = proxy.hostname or ""
        with contextlib.suppress(ValueError):
            where += f":{proxy.port}" if proxy.port else ""
        raise UnsupportedProxy(
            f"{name} is a {proxy.scheme}:// proxy ({where}), which providers cannot be reached through: only "
            f"http:// and https:// proxies are supported. Set {name} to an http:// or https:// proxy, or add "
            f"{parts.hostname} to NO_PROXY to reach that provider directly.",
            name,
        )
    return Proxy(name, proxy)


class HttpResponse:
    """A response on its way: status and headers are known, the body arrives read by read."""

    def __init__(self, pool: HttpPool, connection: _Connection) -> None:
        self._pool = pool
        self._connection: _Connection | None = connection
        self.status = connection.status
        self.headers: Mapping[str, str] = connection.headers

    async def chunk(self) -> bytes | None:
        """The body bytes that arrived since the last call, waiting for some; ``None`` once the body ended."""
        connection = self._connection
        if connection is None:
            return None
        while True:
            data = connection.take()
            if data:
                return data
            if connection.complete:
                self.close()
                return None
            await connection.wait(self._pool.read_timeout)

    @property
    def complete(self) -> bool:
        """The whole body has arrived (what is left may still wait to be taken)."""
        return self._connection is None or self._connection.complete

    def detach(self) -> HttpResponse:
        """Hand the rest of the response to a new owner; this one is then done with it."""
        connection, self._connection = self._connection, None
        assert connection is not None
        return HttpResponse(self._pool, connection)

    def drain(self) -> None:
        """Be done with the response, the pool reading the rest of its body in the background (briefly)."""
        self._pool.drain(self.detach())

    async def read(self) -> bytes:
        """The rest of the body."""
        parts = []
        while (data := await self.chunk()) is not None:
            parts.append(data)
        return b"".join(parts)

    def close(self) -> None:
        """Done with the response: a whole body gives the connection back, anything else drops it."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool.release(connection)


class HttpPool:
    """Keep-alive connections to one origin, at most ``max_connections`` of them at once."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str],
        max_connections: int,
        connect_timeout: float,
        read_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.base_path = parts.path.rstrip("/")
        self.read_timeout = read_timeout
        self.connect_timeout = connect_timeout
        host = self.host if ":" not in self.host else f"[{self.host}]"
        default_port = (self.tls and self.port == 443) or (not self.tls and self.port == 80)
        self._authority = host if default_port else f"{host}:{self.port}"
        self._proxy = proxy_for(base_url)
        # A plain-http origin is asked through its proxy in absolute form, the proxy's credentials in the
        # head (no tunnel: many proxies allow CONNECT to port 443 only); an https origin gets a CONNECT tunnel.
        self._forward = self._proxy if self._proxy is not None and not self.tls else None
        lines = [f"Host: {self._authority}", *(f"{k}: {v}" for k, v in headers.items() if k.lower() != "host")]
        if self._forward is not None and self._forward.authorization:
            lines.append(f"Proxy-Authorization: {self._forward.authorization}")
        self._head_lines = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._ssl = (ssl_context or default_ssl_context()) if self.tls else None
        # TLS to an https:// proxy is checked as TLS to an origin is (SSL_CERT_FILE may name a company's CA).
        self._proxy_ssl = None
        if self._proxy is not None and self._proxy.tls:
            self._proxy_ssl = self._ssl or ssl_context or default_ssl_context()
        self._idle: deque[_Connection] = deque()
        self._busy: set[_Connection] = set()
        self._draining: set[asyncio.Task[None]] = set()
        self._interrupted: BaseException | None = None
        self.max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    def prepare(self, path: str, headers: Sequence[tuple[str, str]] = ()) -> bytes:
        """The request line and headers for a JSON POST to ``path`` (below the base URL), less its length; ``headers``
        are sent after the pool's own."""
        target = self.base_path + "/" + path.lstrip("/")
        if self._forward is not None:
            target = f"http://{self._authority}{target}"
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers).encode("latin-1")
        return b"POST " + target.encode("latin-1") + b" HTTP/1.1\r\n" + self._head_lines + extra + b"Content-Length: "

    async def post(self, prepared: bytes, body: bytes) -> HttpResponse:
        """Send a prepared POST and wait for the response's status and headers."""
        if self._interrupted is not None:
            raise self._interrupted
        # The head and the body go out together, without being joined into one more copy of the body.
        request = (b"%s%d\r\n\r\n" % (prepared, len(body)), body)
        if self._slots.locked():
            # A stream past the bound waits for a free connection, but not forever: it is told why instead.
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise PoolFull(f"all {self.max_connections} connections are in use") from None
        else:
            await self._slots.acquire()
        try:
            return await self._send(request)
        except BaseException:
            self._slots.release()
            raise

    async def _send(self, request: tuple[bytes, ...]) -> HttpResponse:
        while True:
            connection, reused = self._checkout(), True
            if connection is None:
                connection, reused = await self._connect(), False
            connection.begin(request)
            self._busy.add(connection)
            try:
                while not connection.headers_done:
                    await connection.wait(self.read_timeout)
            except _Closed:
                connection.abort()
                self._busy.discard(connection)
                # A kept-alive connection the server had closed before our request: one fresh try.
                if reused and not connection.received:
                    continue
                raise
            except BaseException:
                connection.abort()
                self._busy.discard(connection)
                raise
            return HttpResponse(self, connection)

    def _checkout(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < _KEEPALIVE_SECONDS:
                return connection
            connection.abort()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        proxy = self._proxy
        async with asyncio.timeout(self.connect_timeout):
            if proxy is None:
                _, connection = await loop.create_connection(
                    _Connection, self.host, self.port, ssl=self._ssl, server_hostname=self.host if self._ssl else None
                )
                return connection
            _, connection = await loop.create_connection(
                _Connection,
                proxy.host,
                proxy.port,
                ssl=self._proxy_ssl,
                server_hostname=proxy.host if self._proxy_ssl else None,
            )
            if self._forward is None:
                try:
                    await self._tunnel(connection, proxy)
                except BaseException:
                    connection.abort()
                    raise
        return connection

    async def _tunnel(self, connection: _Connection, proxy: Proxy) -> None:
        """Turn a connection to the proxy into a ``CONNECT`` tunnel to the origin, with TLS to the origin inside."""
        target = f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"
        head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
        if proxy.authorization:
            head += f"Proxy-Authorization: {proxy.authorization}\r\n"
        connection.begin(((head + "\r\n").encode("latin-1"),))
        while not connection.headers_done:
            await connection.wait(self.connect_timeout)
        if connection.status != 200:
            raise _Closed(f"the proxy refused the tunnel (HTTP {connection.status})")
        # What follows the proxy's answer is the origin's: no body of the proxy's to read.
        connection.take()
        assert connection.transport is not None and self._ssl is not None
        connection.transport = await asyncio.get_running_loop().start_tls(
            connection.transport, connection, self._ssl, server_hostname=self.host
        )

    def interrupt(self, exc: BaseException) -> None:
        """End every response under way with ``exc`` (raised where it is being read), and refuse new requests."""
        self._interrupted = exc
        for connection in list(self._busy):
            connection.interrupt(exc)

    def drain(self, response: HttpResponse) -> None:
        """Read the rest of ``response``'s body in the background, so that its connection can be reused.

        The wait is bounded (``DRAIN_SECONDS``); ``aclose`` waits for the drains still running.
        """
        task = asyncio.get_running_loop().create_task(_drain(response))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    def release(self, connection: _Connection) -> None:
        self._busy.discard(connection)
        if connection.reusable and not self._closed:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.abort()
        self._slots.release()

    async def aclose(self) -> None:
        """Drop the idle connections, after the drains under way have ended (waited for ``DRAIN_SECONDS`` at most)."""
        self._closed = True
        if self._draining:
            draining = set(self._draining)
            _, late = await asyncio.wait(draining, timeout=DRAIN_SECONDS)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        while self._idle:
            self._idle.pop().abort()


async def _drain(response: HttpResponse) -> None:
    # The answer is complete whatever happens here (a timeout, a lost connection, an interrupt at shutdown):
    # the connection is then dropped rather than reused.
    try:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(DRAIN_SECONDS):
                await response.read()
    finally:
        response.close()
