"""The load client against the fake provider and against servers that misbehave, in this process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bench.client import completions_target, open_connection, run_concurrent, run_sequential
from bench.fake_provider import FakeProvider, StreamShape


@pytest.fixture
async def provider() -> AsyncIterator[tuple[FakeProvider, str]]:
    fake = FakeProvider(StreamShape(chunks=7))
    server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield fake, f"http://127.0.0.1:{port}"
    finally:
        server.close()


async def test_streams_are_timed_and_connections_kept(provider: tuple[FakeProvider, str]) -> None:
    fake, url = provider
    target = completions_target("direct", url + "/v1/chat/completions", {}, model="m", system="be brief")
    run = await run_concurrent(target, 4, 5, 2)
    assert len(run.samples) == 20
    assert all(s.error is None for s in run.samples)
    assert all(s.pieces == 7 for s in run.samples)
    assert all(s.ttft is not None and 0 <= s.ttft <= s.total for s in run.samples)
    assert run.connects == 0  # opened during the warmup, reused after
    assert fake.connections == 4
    assert fake.requests == 28


async def test_non_streamed_answers_are_timed_at_their_body(provider: tuple[FakeProvider, str]) -> None:
    fake, url = provider
    target = completions_target("json", url + "/v1/chat/completions", {}, model="m", system="x", streamed=False)
    assert b'"stream":false' in target.request and b"stream_options" not in target.request
    assert b"Accept: application/json" in target.request
    run = await run_concurrent(target, 2, 3, 1)
    assert len(run.samples) == 6
    assert all(s.error is None and s.pieces == 1 and s.ttft == s.total for s in run.samples)
    assert run.connects == 0
    assert fake.connections == 2


async def test_a_non_streamed_answer_without_text_is_an_error(provider: tuple[FakeProvider, str]) -> None:
    fake, url = provider
    fake.pieces = []
    target = completions_target("json", url + "/v1/chat/completions", {}, model="m", system=None, streamed=False)
    run = await run_sequential(target, 1, 0)
    assert [s.error for s in run.samples] == ["no content"]


async def test_paced_stream_has_first_content_before_the_end(provider: tuple[FakeProvider, str]) -> None:
    fake, url = provider
    fake.shape = StreamShape(chunks=7, chunk_delay=0.01)
    target = completions_target("direct", url + "/v1/chat/completions", {}, model="m", system=None)
    run = await run_sequential(target, 2, 0)
    assert all(s.error is None and s.ttft is not None and s.ttft < s.total for s in run.samples)


async def test_http_error_is_reported_and_the_connection_reused(provider: tuple[FakeProvider, str]) -> None:
    _, url = provider
    target = completions_target("wrong", url + "/v1/nothing", {}, model="m", system=None)
    run = await run_sequential(target, 3, 0)
    assert [s.error for s in run.samples] == ['HTTP 404: {"error":{"message":"not found"}}'] * 3
    assert run.connects == 1


async def _serve(handler: object) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)  # type: ignore[arg-type]
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"


async def test_a_silent_server_is_a_timeout_in_state_sent() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(5)
        writer.close()

    server, url = await _serve(silent)
    try:
        target = completions_target("silent", url, {}, model="m", system=None)
        connection = await open_connection(target.host, target.port)
        sample = await connection.send(target, timeout=0.2)
        assert sample.error == "timeout (sent)"
    finally:
        server.close()


async def test_error_event_and_closed_connections() -> None:
    body = b'data: {"error":{"message":"upstream broke"}}\n\n'
    answer = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)

    async def failing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server, url = await _serve(failing)
    try:
        target = completions_target("failing", url, {}, model="m", system=None)
        run = await run_sequential(target, 3, 0)
        assert [s.error for s in run.samples] == ["error event: upstream broke"] * 3
        assert run.connects == 3  # the server closed each one
    finally:
        server.close()


async def test_a_body_cut_short_is_an_error() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n20\r\ndata: {"choices":[]}\n\n')
        await writer.drain()
        writer.close()

    server, url = await _serve(cut)
    try:
        target = completions_target("cut", url, {}, model="m", system=None)
        sample = (await run_sequential(target, 1, 0)).samples[0]
        assert sample.error is not None and "closed" in sample.error
    finally:
        server.close()
