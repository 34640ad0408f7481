"""The response parsers: bodies decoded the same however the bytes are cut."""

from __future__ import annotations

import pytest

from bench.response import PARSER, ParseError, new_parser

KINDS = ["python"] + (["httptools"] if PARSER == "httptools" else [])


class Recorder:
    def __init__(self, kind: str) -> None:
        self.statuses: list[int] = []
        self.bodies: list[bytes] = [b""]
        self.completed = 0
        self.parser = new_parser(self.on_head, self.on_body, self.on_complete, kind)

    def on_head(self, status: int) -> None:
        self.statuses.append(status)

    def on_body(self, data: bytes) -> None:
        self.bodies[-1] += data

    def on_complete(self) -> None:
        self.completed += 1
        self.bodies.append(b"")


def chunked(*pieces: bytes, extension: bytes = b"", trailer: bytes = b"") -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"".join(b"%x%s\r\n%s\r\n" % (len(p), extension, p) for p in pieces)
    return head + body + b"0\r\n" + trailer + b"\r\n"


def feed_cut(kind: str, data: bytes, cuts: list[int]) -> Recorder:
    recorder = Recorder(kind)
    start = 0
    for cut in [*cuts, len(data)]:
        recorder.parser.feed(data[start:cut])
        start = cut
    return recorder


@pytest.mark.parametrize("kind", KINDS)
def test_chunked_body_is_the_same_at_every_cut(kind: str) -> None:
    pieces = [b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"]
    data = chunked(*pieces)
    for cut in range(1, len(data)):
        recorder = feed_cut(kind, data, [cut])
        assert recorder.statuses == [200], cut
        assert recorder.completed == 1, cut
        assert recorder.bodies[0] == b"".join(pieces), cut
        assert recorder.parser.keep_alive


@pytest.mark.parametrize("kind", KINDS)
def test_byte_by_byte(kind: str) -> None:
    data = chunked(b"abc", b"de" * 300)
    recorder = feed_cut(kind, data, list(range(1, len(data))))
    assert recorder.bodies[0] == b"abc" + b"de" * 300
    assert recorder.completed == 1


@pytest.mark.parametrize("kind", KINDS)
def test_chunk_extensions_and_trailers(kind: str) -> None:
    data = chunked(b"hello", extension=b";name=value", trailer=b"x-trailer: 1\r\n")
    recorder = feed_cut(kind, data, [])
    assert recorder.bodies[0] == b"hello"
    assert recorder.completed == 1


@pytest.mark.parametrize("kind", KINDS)
def test_content_length_then_a_second_response_on_the_same_connection(kind: str) -> None:
    first = b'HTTP/1.1 401 Unauthorized\r\ncontent-length: 14\r\ncontent-type: application/json\r\n\r\n{"error":"no"}'
    second = chunked(b"data: x\n\n")
    for cut in range(1, len(first + second)):
        recorder = feed_cut(kind, first + second, [cut])
        assert recorder.statuses == [401, 200]
        assert recorder.bodies[:2] == [b'{"error":"no"}', b"data: x\n\n"]
        assert recorder.completed == 2


@pytest.mark.parametrize("kind", KINDS)
def test_connection_close_is_seen(kind: str) -> None:
    data = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
    recorder = feed_cut(kind, data, [])
    assert recorder.completed == 1
    assert not recorder.parser.keep_alive


@pytest.mark.parametrize("kind", KINDS)
def test_close_delimited_body_ends_at_eof(kind: str) -> None:
    recorder = feed_cut(kind, b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\npartial body", [20])
    assert recorder.completed == 0
    recorder.parser.feed_eof()
    assert recorder.completed == 1
    assert recorder.bodies[0] == b"partial body"


@pytest.mark.parametrize("kind", KINDS)
def test_eof_inside_a_chunked_body_is_an_error(kind: str) -> None:
    data = chunked(b"data: one\n\n")
    recorder = feed_cut(kind, data[:-10], [])
    with pytest.raises(ParseError):
        recorder.parser.feed_eof()


def test_interim_and_bodyless_responses() -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n" + chunked(b"x")
    recorder = feed_cut("python", data, [])
    assert recorder.statuses == [204, 200]
    assert recorder.completed == 2
    assert recorder.bodies[:2] == [b"", b"x"]


@pytest.mark.parametrize("kind", KINDS)
def test_garbage_is_a_parse_error(kind: str) -> None:
    with pytest.raises(ParseError):
        feed_cut(kind, b"SSH-2.0-OpenSSH_9.6\r\n\r\n", [])


def test_bad_chunk_size() -> None:
    with pytest.raises(ParseError):
        feed_cut("python", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", [])
