"""A scripted fake LLM server speaking OpenAI's and Anthropic's HTTP APIs on loopback, for tests."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import hashlib
import json
import math
import re
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from providers._schema import example_of

__all__ = ["EMBEDDING_DIMENSIONS", "FakeLLM", "FakeToolCall", "RecordedRequest", "Script", "fake_embedding"]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    529: "Overloaded",
}


@dataclass(frozen=True)
class FakeToolCall:
    """A tool call the fake model makes; ``arguments`` is streamed in ``pieces`` fragments."""

    name: str
    arguments: str = "{}"
    id: str = "call_1"
    pieces: int = 2


@dataclass(frozen=True)
class Script:
    """How the fake server answers one request.

    ``chunks`` are the text pieces, then ``tool_calls``. Failure modes: ``status`` answers with
    that HTTP error (``error_body`` and ``headers`` optional) instead of a stream; ``drop_after``
    closes the connection mid-body after that many pieces; ``error_after`` sends the vendor's
    in-stream error event after that many pieces; ``garbage_after`` sends a malformed data line;
    ``hang_after`` stops sending after that many pieces and waits for the client to leave
    (``hang_after=0`` hangs right after the headers; a large ``first_byte_delay`` hangs before them).

    A request that asks for JSON matching a schema (OpenAI's ``response_format`` ``json_schema``, Anthropic's
    ``output_config.format``) is answered, when its script left ``chunks`` as they are and calls no tool, with
    the smallest document the schema accepts (``providers._schema.example_of``, free strings ``"fake"``), in
    three pieces; ``json_object`` gets ``{"fake": true}``.
    """

    chunks: tuple[str, ...] = ("Hello", " from", " the fake model.")
    tool_calls: tuple[FakeToolCall, ...] = ()
    input_tokens: int = 11
    # Of the input tokens, how many the provider read from its prompt cache.
    cached_tokens: int = 0
    output_tokens: int = 7
    finish_reason: str | None = None  # vendor's own value; default from the content
    chunk_delay: float = 0.0
    first_byte_delay: float = 0.0
    status: int | None = None
    error_body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    drop_after: int | None = None
    error_after: int | None = None
    garbage_after: int | None = None
    hang_after: int | None = None
    model: str = "fake-model"


@dataclass
class RecordedRequest:
    """One request as it arrived, and how it ended."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None
    completed: bool = False  # the whole answer was sent
    disconnected: threading.Event = field(default_factory=threading.Event)  # client left first
    disconnected_at: float | None = None  # time.monotonic()

    async def wait_disconnected(self, within: float) -> bool:
        """True once the client has gone away without reading the whole answer."""
        return await asyncio.to_thread(self.disconnected.wait, within)


class _ClientGone(Exception):
    pass


class FakeLLM:
    """The server: a raw asyncio HTTP/1.1 server in its own thread, one request per connection.

    Scripts are taken from a queue, one per chat request; when it is empty ``default`` answers.
    ``POST /v1/embeddings`` takes no script: it answers :func:`fake_embedding` of each input, or the HTTP error
    ``embeddings_status`` while that is set, after ``embeddings_delay`` seconds.
    """

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.default = Script()
        self.embeddings_status: int | None = None
        self.embeddings_delay = 0.0
        self._queue: collections.deque[Script] = collections.deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- test-facing API -------------------------------------------------------------------
    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.root_url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.root_url

    def enqueue(self, *scripts: Script) -> None:
        with self._lock:
            self._queue.extend(scripts)

    def script(self, **fields: Any) -> Script:
        """Queue ``Script(**fields)`` for the next chat request and return it."""
        script = Script(**fields)
        self.enqueue(script)
        return script

    @property
    def last_request(self) -> RecordedRequest:
        return self.requests[-1]

    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path != "/v1/embeddings"]

    def embedding_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/embeddings"]

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
        self.requests.clear()
        self.default = Script()
        self.embeddings_status = None
        self.embeddings_delay = 0.0

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> FakeLLM:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-llm", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # -- HTTP ------------------------------------------------------------------------------
    def _next_script(self) -> Script:
        with self._lock:
            return self._queue.popleft() if self._queue else self.default

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        raw = await reader.readexactly(int(headers.get("content-length", "0") or 0))
        body = json.loads(raw) if raw else None
        record = RecordedRequest(method=method, path=target.split("?", 1)[0], headers=headers, body=body)
        self.requests.append(record)
        # EOF on the socket means the client closed its end: it gave up on the answer.
        gone = asyncio.ensure_future(reader.read(1))
        try:
            record.completed = await self._route(record, writer, gone)
        except (_ClientGone, ConnectionError):
            if not record.completed:
                record.disconnected_at = time.monotonic()
                record.disconnected.set()
        finally:
            gone.cancel()
            with contextlib.suppress(Exception):
                writer.close()

    async def _route(self, record: RecordedRequest, writer: asyncio.StreamWriter, gone: asyncio.Future) -> bool:
        """Answer one request; False when the script cut the answer short on purpose."""
        if record.method == "GET" and record.path == "/v1/models":
            data = [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "fakellm"}]
            await self._json(writer, 200, {"object": "list", "data": data})
            return True
        if record.method == "POST" and record.path == "/v1/embeddings":
            status = self.embeddings_status
            await self._wait(self.embeddings_delay, gone)
            if status is not None:
                await self._json(writer, status, _error_body(True, status))
            else:
                await self._json(writer, 200, _embeddings(record.body))
            return True
        if record.method != "POST" or record.path not in ("/v1/chat/completions", "/v1/messages"):
            await self._json(writer, 404, {"error": {"message": f"no route {record.path}", "type": "not_found"}})
            return True
        openai = record.path == "/v1/chat/completions"
        script = _shaped(self._next_script(), record.body, openai)
        await self._wait(script.first_byte_delay, gone)
        if script.status is not None:
            body = script.error_body if script.error_body is not None else _error_body(openai, script.status)
            await self._json(writer, script.status, body, script.headers)
            return True
        stream = bool(isinstance(record.body, dict) and record.body.get("stream"))
        if not stream:
            body = _openai_completion(script) if openai else _anthropic_message(script)
            await self._json(writer, 200, body, script.headers)
            return True
        writer.write(
            _head(
                200,
                {
                    "content-type": "text/event-stream",
                    "transfer-encoding": "chunked",
                    "cache-control": "no-cache",
                    **script.headers,
                },
            )
        )
        await writer.drain()
        include_usage = bool((record.body.get("stream_options") or {}).get("include_usage"))
        events = _openai_events(script, include_usage) if openai else _anthropic_events(script)
        sent = 0
        for counted, event in events:
            if counted:
                if sent == script.drop_after:
                    writer.transport.abort()  # no terminating chunk: the body is cut short
                    return False
                if sent == script.error_after:
                    await self._chunk(writer, _stream_error(openai))
                    break
                if sent == script.garbage_after:
                    await self._chunk(writer, b"data: {not json\n\n")
                    break
                if sent == script.hang_after:
                    await gone
                    raise _ClientGone
                if sent:
                    await self._wait(script.chunk_delay, gone)
                sent += 1
            await self._chunk(writer, event)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    @staticmethod
    async def _wait(seconds: float, gone: asyncio.Future) -> None:
        if seconds > 0:
            await asyncio.wait([gone], timeout=seconds)
        if gone.done():
            raise _ClientGone

    @staticmethod
    async def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        await writer.drain()

    @staticmethod
    async def _json(
        writer: asyncio.StreamWriter, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        extra = {"content-type": "application/json", "content-length": str(len(data)), **(headers or {})}
        writer.write(_head(status, extra) + data)
        await writer.drain()


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", "connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _sse(data: Any, event: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "").encode() + f"data: {text}\n\n".encode()


def _pieces(text: str, n: int) -> list[str]:
    n = max(1, min(n, len(text) or 1))
    size = -(-len(text) // n) or 1
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _error_body(openai: bool, status: int) -> Any:
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
        529: "overloaded_error",
    }
    kind = kinds.get(status, "api_error")
    message = f"fake {kind} ({status})"
    if openai:
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return {"type": "error", "error": {"type": kind, "message": message}}


def _stream_error(openai: bool) -> bytes:
    if openai:
        return _sse(
            {
                "error": {
                    "message": "The server had an error while processing your request.",
                    "type": "server_error",
                }
            }
        )
    return _sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error")


_DEFAULT_CHUNKS = Script().chunks


def _shaped(script: Script, body: Any, openai: bool) -> Script:
    """The script, answering with JSON when the request asks for it (and the script says nothing of its own)."""
    if script.chunks != _DEFAULT_CHUNKS or script.tool_calls or not isinstance(body, dict):
        return script
    if openai:
        form = body.get("response_format") or {}
        kind = form.get("type")
        schema = (form.get("json_schema") or {}).get("schema") if kind == "json_schema" else None
    else:
        form = (body.get("output_config") or {}).get("format") or {}
        kind = form.get("type")
        schema = form.get("schema") if kind == "json_schema" else None
    if kind == "json_object":
        return dataclasses.replace(script, chunks=('{"fake":', " true}"))
    if not isinstance(schema, dict):
        return script
    document = json.dumps(example_of(schema, "fake"))
    return dataclasses.replace(script, chunks=tuple(_pieces(document, 3)))


# -- OpenAI shapes -------------------------------------------------------------------------
def _openai_finish(script: Script) -> str:
    return script.finish_reason or ("tool_calls" if script.tool_calls else "stop")


def _openai_usage(script: Script) -> dict[str, Any]:
    total = script.input_tokens + script.output_tokens
    usage: dict[str, Any] = {
        "prompt_tokens": script.input_tokens,
        "completion_tokens": script.output_tokens,
        "total_tokens": total,
    }
    if script.cached_tokens:
        usage["prompt_tokens_details"] = {"cached_tokens": script.cached_tokens, "audio_tokens": 0}
    return usage


def _openai_events(script: Script, include_usage: bool) -> list[tuple[bool, bytes]]:
    """``(counts as a piece, SSE bytes)`` for a streamed chat completion."""
    base = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": script.model,
        "system_fingerprint": None,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        extra = {"usage": None} if include_usage else {}
        return _sse({**base, "choices": [choice], **extra})

    events = [(False, chunk({"role": "assistant", "content": "", "refusal": None}))]
    events += [(True, chunk({"content": text})) for text in script.chunks]
    for index, call in enumerate(script.tool_calls):
        first = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        events.append((True, chunk({"tool_calls": [first]})))
        for piece in _pieces(call.arguments, call.pieces):
            events.append((True, chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})))
    events.append((False, chunk({}, _openai_finish(script))))
    if include_usage:
        events.append((False, _sse({**base, "choices": [], "usage": _openai_usage(script)})))
    events.append((False, _sse("[DONE]")))
    return events


def _openai_completion(script: Script) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(script.chunks) or None,
        "refusal": None,
    }
    if script.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in script.tool_calls
        ]
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": script.model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": _openai_finish(script)}],
        "usage": _openai_usage(script),
        "system_fingerprint": None,
    }


# -- OpenAI embeddings ---------------------------------------------------------------------
EMBEDDING_DIMENSIONS = 256
# Words that mean one thing to the fake model, so texts that share no word can still be near.
_SYNONYMS = {
    word: concept
    for concept, words in {
        "dog": "dog dogs puppy puppies hound hounds terrier labrador spaniel",
        "cat": "cat cats kitten kittens",
        "boat": "boat boats sailing sail sails yacht sailboat harbour harbor",
        "music": "music cello violin piano guitar concert orchestra",
        "food": "vegetarian vegan meat food eat eats eating dinner lunch cook cooking recipe",
        "coffee": "coffee espresso latte cappuccino",
    }.items()
    for word in words.split()
}
# Small words carry no meaning here.
_SMALL_WORDS = (
    "a an and are at be do does for from has have her his i in is it its me my of on or our she so that the their "
    "them they this to was we what when where which who will with you your"
)
_STOP_WORDS = frozenset(_SMALL_WORDS.split())
_WORD = re.compile(r"[a-z0-9]+")


def fake_embedding(text: str) -> list[float]:
    """The fake model's vector of ``text``: a normalised bag of its words (synonyms one word, small words left
    out), each hashed to one of :data:`EMBEDDING_DIMENSIONS` axes with a sign. Deterministic; a text of no such
    words gets the same fixed vector."""
    vector = [0.0] * EMBEDDING_DIMENSIONS
    for word in _WORD.findall(text.lower()):
        if word in _STOP_WORDS:
            continue
        digest = hashlib.sha256(_SYNONYMS.get(word, word).encode()).digest()
        vector[digest[0] % EMBEDDING_DIMENSIONS] += 1.0 if digest[1] % 2 else -1.0
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0:
        return [1.0] + [0.0] * (EMBEDDING_DIMENSIONS - 1)
    return [x / norm for x in vector]


def _embeddings(body: Any) -> dict[str, Any]:
    """OpenAI's answer to ``POST /v1/embeddings``: floats, or base64 of little-endian float32 when asked."""
    body = body if isinstance(body, dict) else {}
    inputs = body.get("input")
    texts = [inputs] if isinstance(inputs, str) else [str(t) for t in inputs or []]
    packed = body.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(texts):
        vector = fake_embedding(text)
        embedding: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if packed else vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(len(text.split()) for text in texts)
    return {
        "object": "list",
        "data": data,
        "model": body.get("model", "fake-embedding"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# -- Anthropic shapes ----------------------------------------------------------------------
def _anthropic_stop(script: Script) -> str:
    return script.finish_reason or ("tool_use" if script.tool_calls else "end_turn")


def _anthropic_input(script: Script) -> dict[str, int]:
    """Anthropic counts tokens read from the prompt cache apart from ``input_tokens``."""
    return {
        "input_tokens": script.input_tokens - script.cached_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": script.cached_tokens,
    }


def _anthropic_events(script: Script) -> list[tuple[bool, bytes]]:
    message: dict[str, Any] = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": script.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**_anthropic_input(script), "output_tokens": 1},
    }
    events = [(False, _sse({"type": "message_start", "message": message}, "message_start"))]
    block = 0
    if script.chunks:
        start = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        events.append((False, _sse(start, "content_block_start")))
        events.append((False, _sse({"type": "ping"}, "ping")))
        for text in script.chunks:
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
            events.append((True, _sse(delta, "content_block_delta")))
        events.append((False, _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")))
        block = 1
    for offset, call in enumerate(script.tool_calls):
        index = block + offset
        content_block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
        start = {"type": "content_block_start", "index": index, "content_block": content_block}
        events.append((True, _sse(start, "content_block_start")))
        for piece in _pieces(call.arguments, call.pieces):
            delta = {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": piece},
            }
            events.append((True, _sse(delta, "content_block_delta")))
        events.append((False, _sse({"type": "content_block_stop", "index": index}, "content_block_stop")))
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": _anthropic_stop(script), "stop_sequence": None},
        "usage": {"output_tokens": script.output_tokens},
    }
    events.append((False, _sse(end, "message_delta")))
    events.append((False, _sse({"type": "message_stop"}, "message_stop")))
    return events


def _anthropic_message(script: Script) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": "".join(script.chunks)}] if script.chunks else []
    content += [
        {"type": "tool_use", "id": c.id, "name": c.name, "input": json.loads(c.arguments or "{}")}
        for c in script.tool_calls
    ]
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": script.model,
        "content": content,
        "stop_reason": _anthropic_stop(script),
        "stop_sequence": None,
        "usage": {**_anthropic_input(script), "output_tokens": script.output_tokens},
    }
