"""The streaming path's own plumbing: the upstream HTTP client, SSE framing, Nagle off on accepted sockets,
and one write per upstream read."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trustme
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from core.errors import ProviderError
from core.events import Finish, ProviderEvent, TextDelta, Usage
from providers import ChatMessage, EchoProvider, ProviderConfig, ProviderRegistry, ProviderRequest
from providers._http import HttpPool, PoolFull, ReadTimeout, UnsupportedProxy, default_ssl_context, proxy_for
from providers._upstream import SSESplitter
from runtime.server.serving import GuardedProtocol, NoDelayProtocol, uvicorn_options
from tests.conftest import make_settings, running
from tests.proxy import HttpProxy
from tests.waiting import eventually

# -- a small HTTP/1.1 server of our own: keep-alive, chunked answers, scripted per test -------------------------


class Origin:
    """An upstream server on loopback that counts its connections and answers each POST with ``body``."""

    def __init__(
        self,
        body: bytes = b"data: hi\n\n",
        *,
        keep_alive: bool = True,
        chunk_bytes: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.tls = tls
        self.body = body
        self.keep_alive = keep_alive
        self.chunk_bytes = chunk_bytes  # 0: the whole body in one chunk
        self.connections = 0
        self.requests = 0
        self.closed = 0  # connections this server has closed
        self.close_idle = False
        self.hold: asyncio.Event | None = None
        self.hold_end: asyncio.Event | None = None  # set: the body's last chunk is sent
        self.writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Origin:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self.writers:
            writer.transport.abort()

    @property
    def url(self) -> str:
        assert self._server is not None
        scheme = "https" if self.tls else "http"
        return f"{scheme}://localhost:{self._server.sockets[0].getsockname()[1]}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                self.requests += 1
                if self.hold is not None:
                    await self.hold.wait()
                connection = b"keep-alive" if self.keep_alive else b"close"
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
                    b"connection: " + connection + b"\r\n\r\n"
                )
                size = self.chunk_bytes or len(self.body)
                for start in range(0, len(self.body), size):
                    piece = self.body[start : start + size]
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                if self.hold_end is not None:
                    await writer.drain()
                    await self.hold_end.wait()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                if not self.keep_alive or self.close_idle:
                    break
        writer.close()
        self.closed += 1


def pool_for(origin: Origin, **options: Any) -> HttpPool:
    settings: dict[str, Any] = {"max_connections": 10, "connect_timeout": 2.0, "read_timeout": 2.0}
    settings.update(options)
    return HttpPool(origin.url, headers={"Authorization": "Bearer k", "Content-Type": "application/json"}, **settings)


async def test_kept_alive_connections_carry_the_next_request() -> None:
    async with Origin() as origin:
        pool = pool_for(origin)
        prepared = pool.prepare("chat/completions")
        bodies = [await (await pool.post(prepared, b"{}")).read() for _ in range(5)]
        await pool.aclose()
    assert bodies == [b"data: hi\n\n"] * 5
    assert origin.requests == 5
    assert origin.connections == 1


async def test_https_origins_are_reached_over_tls_with_the_certificate_checked() -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)
    trusting = default_ssl_context()
    authority.configure_trust(trusting)
    async with Origin(tls=server_context) as origin:
        pool = pool_for(origin, ssl_context=trusting)
        prepared = pool.prepare("chat/completions")
        assert [await (await pool.post(prepared, b"{}")).read() for _ in range(2)] == [b"data: hi\n\n"] * 2
        await pool.aclose()
        assert origin.connections == 1  # kept alive over TLS too
        # A client that does not trust the server's certificate does not talk to it.
        strict = pool_for(origin)
        with pytest.raises(ssl.SSLCertVerificationError):
            await strict.post(strict.prepare("chat/completions"), b"{}")
        await strict.aclose()


def _tls_pair() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for localhost and 127.0.0.1, and a client context that trusts it."""
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost", "127.0.0.1").configure_cert(server_context)
    trusting = default_ssl_context()
    authority.configure_trust(trusting)
    return server_context, trusting


_PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


def _clear_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.mark.parametrize("proxy_tls", [False, True], ids=["http-proxy", "https-proxy"])
@pytest.mark.parametrize("origin_tls", [False, True], ids=["http-origin", "https-origin"])
async def test_origins_are_reached_through_the_proxy_the_environment_names(
    monkeypatch: pytest.MonkeyPatch, proxy_tls: bool, origin_tls: bool
) -> None:
    server_context, trusting = _tls_pair()
    async with (
        HttpProxy(tls=server_context if proxy_tls else None) as proxy,
        Origin(tls=server_context if origin_tls else None) as origin,
    ):
        _clear_proxies(monkeypatch)
        monkeypatch.setenv("HTTPS_PROXY" if origin_tls else "HTTP_PROXY", proxy.url())
        pool = pool_for(origin, ssl_context=trusting)
        prepared = pool.prepare("chat/completions")
        assert [await (await pool.post(prepared, b"{}")).read() for _ in range(2)] == [b"data: hi\n\n"] * 2
        await pool.aclose()
        authority = origin.url.split("/")[2]
        if origin_tls:
            # One tunnel, kept alive for both requests; what travels inside it the proxy cannot read.
            assert proxy.request_lines == [f"CONNECT {authority} HTTP/1.1"]
        else:
            # No tunnel for a plain-http origin: each request is asked of the proxy in absolute form.
            assert proxy.request_lines == [f"POST http://{authority}/v1/chat/completions HTTP/1.1"] * 2
        assert proxy.connections == 1
        assert set(proxy.authorizations) == {"Basic dXNlcjpzM2NyZXQ="}  # user:s3cret from the proxy URL

        # NO_PROXY names hosts reached directly.
        monkeypatch.setenv("NO_PROXY", "localhost")
        direct = pool_for(origin, ssl_context=trusting)
        assert await (await direct.post(direct.prepare("chat/completions"), b"{}")).read() == b"data: hi\n\n"
        await direct.aclose()
        assert proxy.connections == 1


async def test_a_proxy_without_credentials_gets_no_authorization(monkeypatch: pytest.MonkeyPatch) -> None:
    async with HttpProxy() as proxy, Origin() as origin:
        _clear_proxies(monkeypatch)
        monkeypatch.setenv("ALL_PROXY", proxy.url().replace("user:s3cret@", ""))
        pool = pool_for(origin)
        assert await (await pool.post(pool.prepare("chat/completions"), b"{}")).read() == b"data: hi\n\n"
        await pool.aclose()
        assert proxy.authorizations == [None] and proxy.request_lines[0].startswith("POST http://localhost:")


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "ALL_PROXY", "https_proxy"])
@pytest.mark.parametrize("url", ["socks5://user:s3cret@127.0.0.1:1080", "socks5h://user:s3cret@proxy.example:1080"])
def test_a_socks_proxy_is_refused_naming_its_variable_not_its_credentials(
    monkeypatch: pytest.MonkeyPatch, variable: str, url: str
) -> None:
    _clear_proxies(monkeypatch)
    monkeypatch.setenv(variable, url)
    with pytest.raises(UnsupportedProxy) as caught:
        HttpPool("https://api.example.com/v1", headers={}, max_connections=1, connect_timeout=1, read_timeout=1)
    message = str(caught.value)
    assert caught.value.variable == variable
    assert message.startswith(f"{variable} is a socks5")
    assert "NO_PROXY" in message and "http:// or https://" in message
    assert "s3cret" not in message and "user" not in message
    # A host NO_PROXY exempts is reached directly, whatever the proxy.
    monkeypatch.setenv("NO_PROXY", "api.example.com")
    assert proxy_for("https://api.example.com/v1") is None


def test_a_proxy_never_shows_its_credentials() -> None:
    proxy = proxy_for("https://api.example.com", {"HTTPS_PROXY": "https://user:s3cret@proxy.example:3129"})
    assert proxy is not None and proxy.tls and (proxy.host, proxy.port) == ("proxy.example", 3129)
    assert repr(proxy) == "Proxy(HTTPS_PROXY=https://proxy.example:3129)"
    # A bare host:port is an http:// proxy, as curl and the SDKs read it.
    bare = proxy_for("http://api.example.com", {"http_proxy": "proxy.example:3128"})
    assert bare is not None and not bare.tls and bare.port == 3128 and bare.authorization is None


async def test_a_server_that_closes_gets_a_new_connection_each_time() -> None:
    async with Origin(keep_alive=False) as origin:
        pool = pool_for(origin)
        prepared = pool.prepare("chat/completions")
        for _ in range(3):
            assert await (await pool.post(prepared, b"{}")).read() == b"data: hi\n\n"
        await pool.aclose()
    assert origin.connections == 3


async def test_a_kept_alive_connection_the_server_dropped_is_retried_once_on_a_new_one() -> None:
    async with Origin() as origin:
        origin.close_idle = True  # answers with keep-alive, then closes while the connection is idle
        pool = pool_for(origin)
        prepared = pool.prepare("chat/completions")
        assert await (await pool.post(prepared, b"{}")).read() == b"data: hi\n\n"
        assert await eventually(lambda: origin.closed == 1)
        assert await (await pool.post(prepared, b"{}")).read() == b"data: hi\n\n"
        await pool.aclose()
    assert origin.connections == 2 and origin.requests == 2


async def test_the_pool_holds_no_more_connections_than_its_bound() -> None:
    async with Origin() as origin:
        origin.hold = asyncio.Event()
        pool = pool_for(origin, max_connections=2)
        prepared = pool.prepare("chat/completions")
        posts = [asyncio.create_task(pool.post(prepared, b"{}")) for _ in range(4)]
        assert await eventually(lambda: origin.requests == 2)
        assert not any(post.done() for post in posts)  # the other two wait for a free connection
        origin.hold.set()
        for post in posts:
            await (await post).read()
        await pool.aclose()
    assert origin.connections == 2 and origin.requests == 4


async def test_a_stream_past_the_bound_is_told_so_rather_than_left_waiting() -> None:
    async with Origin() as origin:
        origin.hold = asyncio.Event()
        pool = pool_for(origin, max_connections=1, connect_timeout=0.2)
        prepared = pool.prepare("chat/completions")
        first = asyncio.create_task(pool.post(prepared, b"{}"))
        assert await eventually(lambda: origin.requests == 1)  # the one connection is taken
        with pytest.raises(PoolFull, match="all 1 connections are in use"):
            await pool.post(prepared, b"{}")
        origin.hold.set()
        await (await first).read()
        await pool.aclose()


async def test_a_silent_server_is_a_read_timeout() -> None:
    async with Origin() as origin:
        origin.hold = asyncio.Event()
        pool = pool_for(origin, read_timeout=0.2)
        with pytest.raises(ReadTimeout):
            await pool.post(pool.prepare("chat/completions"), b"{}")
        await pool.aclose()


async def test_a_slow_reader_stops_the_socket_being_read() -> None:
    big = b"data: " + b"x" * 4_000_000 + b"\n\n"
    async with Origin(big, chunk_bytes=64 * 1024) as origin:
        pool = pool_for(origin)
        response = await pool.post(pool.prepare("chat/completions"), b"{}")
        connection = response._connection
        assert connection is not None and connection.transport is not None
        # We read nothing: the socket stops being read once enough is held.
        assert await eventually(lambda: not connection.transport.is_reading())
        held = connection.buffered
        assert 0 < held < 2_000_000  # reading paused well before the whole body was taken in
        assert len(await response.read()) == len(big)
        await pool.aclose()


# -- the rest of a finished answer, read in the background, and closing ----------------------------------------

_FINISHED = (
    b'data: {"choices":[{"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\ndata: [DONE]\n\n'
)


def _drains() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__name__", "") == "_drain"]


async def _answer_whose_body_has_not_ended(origin: Origin) -> Any:
    """An OpenAI adapter that has streamed a whole answer whose body's last chunk the origin holds back."""
    provider = ProviderRegistry.with_builtins(plugins=False).create(
        ProviderConfig(name="held", kind="openai", api_key="k", base_url=origin.url)
    )
    request = ProviderRequest(model="m", system=None, messages=(ChatMessage(role="user", content="hi"),))
    events = [event async for event in provider.stream(request)]
    assert events[-1] == Finish(finish_reason="stop")  # the answer is complete before its body has ended
    assert len(_drains()) == 1
    return provider


async def test_closing_waits_for_a_drain_under_way(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_proxies(monkeypatch)
    async with Origin(_FINISHED) as origin:
        origin.hold_end = asyncio.Event()
        provider = await _answer_whose_body_has_not_ended(origin)
        (drain,) = _drains()
        closing = asyncio.create_task(provider.aclose())
        for _ in range(5):
            await asyncio.sleep(0)
        assert not closing.done()  # waiting for the drain, not leaving it behind
        origin.hold_end.set()
        await closing
        assert drain.done() and not drain.cancelled()
        assert _drains() == []


async def test_closing_ends_a_drain_that_outlives_its_bound_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_proxies(monkeypatch)
    async with Origin(_FINISHED) as origin:
        origin.hold_end = asyncio.Event()  # never set: the body never ends
        provider = await _answer_whose_body_has_not_ended(origin)
        (drain,) = _drains()
        await provider.aclose()
        # Ended, its connection dropped: nothing is left pending to be destroyed with the event loop.
        assert drain.done() and _drains() == []
        assert drain.cancelled() or drain.exception() is None
        origin.hold_end.set()


# -- SSE framing -------------------------------------------------------------------------------------------------


def test_sse_events_are_cut_at_blank_lines_whatever_the_reads() -> None:
    stream = b'event: message_start\ndata: {"a":1}\n\n: ping\n\ndata: line one\ndata: line two\n\ndata: [DONE]\n\n'
    whole = SSESplitter().feed(stream)
    assert whole == [(b"message_start", b'{"a":1}'), (b"", b"line one\nline two"), (b"", b"[DONE]")]
    splitter = SSESplitter()
    byte_by_byte = [event for i in range(len(stream)) for event in splitter.feed(stream[i : i + 1])]
    assert byte_by_byte == whole


def test_crlf_line_ends_count_once_even_when_a_read_splits_them() -> None:
    splitter = SSESplitter()
    events = splitter.feed(b"data: one\r") + splitter.feed(b"\n\r\ndata: two\r\n\r\n")
    assert events == [(b"", b"one"), (b"", b"two")]


def test_an_event_the_stream_ends_without_its_blank_line_is_kept() -> None:
    splitter = SSESplitter()
    assert splitter.feed(b"data: a\n\ndata: b") == [(b"", b"a")]
    assert splitter.end() == [(b"", b"b")]


def _plain_or_general(splitter: SSESplitter, data: bytes) -> list[tuple[bytes, bytes]]:
    payloads = splitter.feed_plain(data)
    return splitter.feed(data) if payloads is None else [(b"", payload) for payload in payloads]


@pytest.mark.parametrize(
    "stream",
    [
        b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n',
        b'data: {"a":1}\n\nevent: named\ndata: {"b":2}\n\ndata: x\n\n',
        b"data: a\n\n: ping\n\ndata: b\n\n",
        b"data: a\ndata: b\n\ndata: c\n\n",
        b"data: a\n\n\ndata: b\n\n",
        b"data: a\r\n\r\ndata: b\n\n",
        b"data:a\n\ndata: b\n\n",
        b"data: \n\ndata: b\n\n",
    ],
)
def test_the_one_pass_cut_of_plain_data_events_agrees_with_the_general_one(stream: bytes) -> None:
    whole = SSESplitter().feed(stream)
    for size in (1, 2, 3, 7, len(stream)):
        splitter = SSESplitter()
        pieces = [stream[i : i + size] for i in range(0, len(stream), size)]
        assert [event for piece in pieces for event in _plain_or_general(splitter, piece)] == whole, size


def test_the_one_pass_cut_agrees_with_the_general_one_on_random_streams() -> None:
    rng = random.Random(20261206)
    lines = [b"data: {}", b"data: x", b"data:", b"data: [DONE]", b"event: e", b": ping", b"id: 1", b"", b"\r"]
    for _ in range(2_000):
        stream = b"".join(rng.choice(lines) + rng.choice([b"\n", b"\n\n", b"\n\n"]) for _ in range(rng.randint(1, 12)))
        whole = SSESplitter().feed(stream)
        splitter, at, events = SSESplitter(), 0, []
        while at < len(stream):
            size = rng.randint(1, len(stream))
            events += _plain_or_general(splitter, stream[at : at + size])
            at += size
        assert events == whole, stream


def test_the_one_pass_cut_leaves_other_shapes_to_the_general_one_untouched() -> None:
    splitter = SSESplitter()
    assert splitter.feed_plain(b"data: a\n\nevent: e\ndata: b\n\ndata: c") is None
    assert splitter.feed(b"data: a\n\nevent: e\ndata: b\n\ndata: c") == [(b"", b"a"), (b"e", b"b")]
    assert splitter.feed_plain(b"\n\n") == [b"c"]


@pytest.mark.parametrize("garbage", [b"{not json", b"", b'{"choices":[]}, {"choices":[]}'])
async def test_a_malformed_chunk_among_others_of_one_read_fails_after_the_chunks_before_it(garbage: bytes) -> None:
    body = (
        b'data: {"choices":[{"delta":{"content":"one"}}]}\n\ndata: ' + garbage + b"\n\n"
        b'data: {"choices":[{"delta":{"content":"two"}}]}\n\ndata: [DONE]\n\n'
    )
    async with Origin(body) as origin:
        provider = ProviderRegistry.with_builtins(plugins=False).create(
            ProviderConfig(name="sloppy", kind="openai", api_key="k", base_url=origin.url)
        )
        request = ProviderRequest(model="m", system=None, messages=(ChatMessage(role="user", content="hi"),))
        events: list[ProviderEvent] = []
        with pytest.raises(ProviderError, match="malformed chunk"):
            async for event in provider.stream(request):
                events.append(event)
        await provider.aclose()
    assert events == [TextDelta(content="one")]


async def test_the_chunks_of_one_read_come_out_in_order_up_to_done() -> None:
    body = b"".join(b'data: {"choices":[{"delta":{"content":"%d"}}]}\n\n' % i for i in range(5)) + (
        b'data: {"choices":[{"delta":{},"finish_reason":"length"}]}\n\ndata: [DONE]\n\n'
        b'data: {"choices":[{"delta":{"content":"after"}}]}\n\n'
    )
    async with Origin(body) as origin:
        provider = ProviderRegistry.with_builtins(plugins=False).create(
            ProviderConfig(name="plain", kind="openai", api_key="k", base_url=origin.url)
        )
        request = ProviderRequest(model="m", system=None, messages=(ChatMessage(role="user", content="hi"),))
        events = [event async for event in provider.stream(request)]
        await provider.aclose()
    assert events == [*(TextDelta(content=str(i)) for i in range(5)), Finish(finish_reason="length")]


# -- Nagle off on every accepted socket, whatever the worker count -------------------------------------------------


async def _accepted_nodelay(protocol: type[asyncio.Protocol]) -> int:
    """TCP_NODELAY on the server's side of a connection accepted on a socket bound as ``--workers`` binds it."""
    from litestar import Litestar, get

    @get("/")
    async def hello() -> str:
        return "hi"

    # uvicorn binds the shared socket of its workers with protocol 0, which asyncio does not take for TCP.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(Litestar([hello]), http=protocol, log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        await reader.readuntil(b"hi")
        (connection,) = server.server_state.connections
        accepted = connection.transport.get_extra_info("socket")
        value = int(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()
        return value
    finally:
        server.should_exit = True
        await task
        sock.close()


async def test_accepted_sockets_have_nagle_off_also_on_a_socket_bound_for_workers() -> None:
    assert await _accepted_nodelay(NoDelayProtocol) == 1
    # What uvicorn's own protocol leaves: the ~40 ms delayed-ACK stall this guards against.
    assert await _accepted_nodelay(HttpToolsProtocol) == 0


def test_serve_uses_the_same_protocol_for_any_worker_count() -> None:
    for workers in (1, 2, 4):
        options = uvicorn_options(host="127.0.0.1", port=8666, workers=workers)
        assert issubclass(options["http"], NoDelayProtocol) and options["workers"] == workers
        assert options["http"] is GuardedProtocol


# -- one write per upstream read ---------------------------------------------------------------------------------


class OneRead(EchoProvider):
    """An answer that arrives in one upstream read: all its events in one batch."""

    kind = "one-read"

    async def stream_batches(self, request: ProviderRequest) -> AsyncIterator[list[ProviderEvent]]:
        pieces: list[ProviderEvent] = [TextDelta(content=f"piece{i} ") for i in range(20)]
        yield [*pieces, Usage(input_tokens=3, output_tokens=20), Finish(finish_reason="stop")]


async def _body_messages(app: Any, path: str, body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The ``http.response.body`` messages the app sends for one streamed request, as a server would get them."""
    import msgspec

    raw = msgspec.json.encode(body)
    sent: list[dict[str, Any]] = []
    received = [{"type": "http.request", "body": raw, "more_body": False}]
    finished = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if received:
            return received.pop()
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            finished.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"authorization", f"Bearer {key}".encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8666),
        "state": {},
    }
    await app(scope, receive, send)
    return [m for m in sent if m["type"] == "http.response.body"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "persona", "messages": [{"role": "user", "content": "hi"}], "stream": True}),
        (
            "/api/v1/chat/personas/preview",
            {"persona": {"name": "Once", "description": "d", "system_prompt": "Hi."}, "message": "hi", "stream": True},
        ),
    ],
)
async def test_an_answer_read_at_once_goes_to_the_client_in_one_write(
    database_url: str, redis_url: str, alice: Any, path: str, body: dict[str, Any]
) -> None:
    from api.app import create_app

    registry = ProviderRegistry.with_builtins(plugins=False)
    registry.register("one-read", OneRead)
    env = {"PROVIDER_ONCE_BASE_URL": "http://127.0.0.1:9", "PROVIDER_ONCE_KIND": "one-read", "DEFAULT_PROVIDER": "once"}
    app = create_app(make_settings(database_url, redis_url, env=env), registry=registry)
    async with running(app):
        messages = await _body_messages(app, path, body, alice.key)
    assert len(messages) == 1 and messages[0]["more_body"] is False
    text = messages[0]["body"].decode()
    assert text.count("piece") == 20 and text.endswith("data: [DONE]\n\n")


@pytest.mark.parametrize("origin_tls", [False, True], ids=["http-origin", "https-origin"])
async def test_a_proxy_that_refuses_is_an_error_without_its_credentials(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, origin_tls: bool
) -> None:
    from core.errors import ProviderError

    server_context, _ = _tls_pair()
    async with HttpProxy() as proxy, Origin(tls=server_context if origin_tls else None) as origin:
        proxy.refuse = 407  # before any TLS to the origin: no need to trust its certificate
        _clear_proxies(monkeypatch)
        monkeypatch.setenv("ALL_PROXY", proxy.url())
        provider = ProviderRegistry.with_builtins(plugins=False).create(
            ProviderConfig(name="behind", kind="openai", api_key="sk-k", base_url=origin.url)
        )
        request = ProviderRequest(model="m", system=None, messages=(ChatMessage(role="user", content="hi"),))
        with pytest.raises(ProviderError) as caught:
            async for _ in provider.stream(request):
                pass
        await provider.aclose()
    assert proxy.request_lines[0].startswith("CONNECT " if origin_tls else "POST http://")
    shown = f"{caught.value} {caught.value.__cause__!r} {caplog.text}"
    assert "s3cret" not in shown and "dXNlcjpzM2NyZXQ=" not in shown
