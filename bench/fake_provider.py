"""A minimal, fast OpenAI-compatible streaming server for the benchmark: raw asyncio HTTP/1.1 with keep-alive."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import signal
import sys
from dataclasses import dataclass

import msgspec

__all__ = ["BACKLOG", "FakeProvider", "StreamShape", "main", "raise_open_files_limit"]

# Thousands of connections may arrive at once in held-streams mode.
BACKLOG = 8192
# A held stream is let go after this long even if nobody releases it, so a run always ends.
HOLD_LIMIT = 900.0

# A sentence cut into pieces, the way a model streams tokens; repeated for longer answers.
_SENTENCE = "Hello! I am Mu, a cheerful robot companion, and I am always happy to help you with anything you need."
_WORDS = _SENTENCE.split(" ")


@dataclass(frozen=True)
class StreamShape:
    """How every answer is streamed: ``chunks`` content pieces, and the delays around them (seconds)."""

    chunks: int = 35
    chunk_delay: float = 0.0
    first_byte_delay: float = 0.0


class _Options(msgspec.Struct):
    include_usage: bool = False


class _Body(msgspec.Struct):
    model: str = "fake-model"
    stream: bool = False
    stream_options: _Options | None = None


_decode_body = msgspec.json.Decoder(_Body).decode
_encode = msgspec.json.encode


def _http_chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk holding one server-sent event."""
    event = b"data: " + payload + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


class FakeProvider:
    """Answers ``POST /v1/chat/completions`` (streaming or not) with the same answer every time.

    Responses are pre-encoded per (model, include_usage), so the server spends almost no CPU per request
    and what the benchmark sees is the cost of the path in front of it.

    ``POST /hold`` makes the streams that start after it send the role chunk and one content chunk, then
    wait; ``POST /release`` lets every held stream finish (and ends the hold). ``GET /stats`` counts
    connections, requests and the streams held now.
    """

    def __init__(self, shape: StreamShape) -> None:
        self.shape = shape
        self.pieces = [(" " if i else "") + _WORDS[i % len(_WORDS)] for i in range(shape.chunks)]
        self._streams: dict[tuple[str, bool], tuple[bytes, list[bytes], bytes]] = {}
        # Served at GET /stats: a client that reuses its connections opens far fewer than it sends requests.
        self.connections = 0
        self.requests = 0
        self.held = 0
        self._hold: asyncio.Event | None = None

    def _encoded(self, model: str, include_usage: bool) -> tuple[bytes, list[bytes], bytes]:
        """Headers with the role chunk, one HTTP chunk per content piece, and the tail (finish, usage, DONE)."""
        found = self._streams.get((model, include_usage))
        if found is not None:
            return found
        base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": model}

        def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
            return _http_chunk(_encode({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}))

        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + chunk({"role": "assistant", "content": ""})
        )
        body = [chunk({"content": piece}) for piece in self.pieces]
        tail = chunk({}, "stop")
        if include_usage:
            usage = {"prompt_tokens": 42, "completion_tokens": len(self.pieces), "total_tokens": 42 + len(self.pieces)}
            tail += _http_chunk(_encode({**base, "choices": [], "usage": usage}))
        tail += _http_chunk(b"[DONE]") + b"0\r\n\r\n"
        self._streams[(model, include_usage)] = found = (head, body, tail)
        return found

    def _completion(self, model: str) -> bytes:
        message = {"role": "assistant", "content": "".join(self.pieces)}
        body = _encode(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": 42,
                    "completion_tokens": len(self.pieces),
                    "total_tokens": 42 + len(self.pieces),
                },
            }
        )
        return _response(200, body)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: requests one after another until the client closes it."""
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                request_line, _, header_block = head.partition(b"\r\n")
                method, target, _ = request_line.split(b" ", 2)
                length = 0
                for line in header_block.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                raw = await reader.readexactly(length) if length else b""
                path = target.split(b"?")[0]
                if method == b"POST" and path.endswith(b"/chat/completions"):
                    self.requests += 1
                    await self._answer(raw, writer)
                elif method == b"GET" and path == b"/stats":
                    stats = {"connections": self.connections, "requests": self.requests, "held": self.held}
                    writer.write(_response(200, _encode(stats)))
                elif method == b"POST" and path == b"/hold":
                    if self._hold is None:
                        self._hold = asyncio.Event()
                    writer.write(_response(200, b'{"hold":true}'))
                elif method == b"POST" and path == b"/release":
                    held, release, self._hold = self.held, self._hold, None
                    if release is not None:
                        release.set()
                    writer.write(_response(200, _encode({"released": held})))
                elif method == b"GET":
                    writer.write(_response(200, b'{"status":"ok"}'))
                else:
                    writer.write(_response(404, b'{"error":{"message":"not found"}}'))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _answer(self, raw: bytes, writer: asyncio.StreamWriter) -> None:
        try:
            body = _decode_body(raw)
        except msgspec.DecodeError:
            writer.write(_response(400, b'{"error":{"message":"the body is not JSON"}}'))
            return
        if self.shape.first_byte_delay:
            await asyncio.sleep(self.shape.first_byte_delay)
        if not body.stream:
            writer.write(self._completion(body.model))
            return
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        head, pieces, tail = self._encoded(body.model, include_usage)
        if self._hold is not None and pieces:
            await self._held(self._hold, writer, head + pieces[0])
            writer.write(b"".join((*pieces[1:], tail)))
            return
        if not self.shape.chunk_delay:
            writer.write(b"".join((head, *pieces, tail)))
            return
        writer.write(head + pieces[0] if pieces else head)
        for piece in pieces[1:]:
            await writer.drain()
            await asyncio.sleep(self.shape.chunk_delay)
            writer.write(piece)
        writer.write(tail)

    async def _held(self, release: asyncio.Event, writer: asyncio.StreamWriter, first: bytes) -> None:
        """Send the role chunk and the first content chunk, then wait to be released."""
        writer.write(first)
        await writer.drain()
        self.held += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), HOLD_LIMIT)
        finally:
            self.held -= 1


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to the hard limit; return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _response(status: int, body: bytes) -> bytes:
    reason = b"OK" if status == 200 else b"Error"
    return b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        status,
        reason,
        len(body),
        body,
    )


async def _run(host: str, port: int, shape: StreamShape) -> None:
    raise_open_files_limit()
    provider = FakeProvider(shape)
    server = await asyncio.start_server(provider.serve, host, port, backlog=BACKLOG)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # The parent reads this line to learn the port.
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fake_provider", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed as 'READY PORT')")
    parser.add_argument("--chunks", type=int, default=35)
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between content chunks")
    parser.add_argument("--first-byte-delay", type=float, default=0.0, help="seconds before the first byte")
    args = parser.parse_args(argv)
    shape = StreamShape(chunks=args.chunks, chunk_delay=args.chunk_delay, first_byte_delay=args.first_byte_delay)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(args.host, args.port, shape))
    return 0


if __name__ == "__main__":
    sys.exit(main())
