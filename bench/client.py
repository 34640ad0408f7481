"""Streaming clients for the three paths, timing the first content piece and the whole stream of each request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

__all__ = ["Sample", "Target", "chat_target", "completions_target", "run_concurrent", "run_sequential"]

MESSAGE = "Hello! Could you tell me something cheerful about robots?"


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] | None = None
    error: Any = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode

# What one server-sent event tells the client: nothing, a content piece, the end, or a failure.
NOTHING, CONTENT, END, FAILED = 0, 1, 2, 3


def openai_event(event: bytes) -> int:
    """An event of an OpenAI ``chat.completion.chunk`` stream (the provider's, or the runtime's /v1)."""
    if not event.startswith(b"data:"):
        return NOTHING
    data = event[5:].strip()
    if data == b"[DONE]":
        return END
    chunk = _decode_chunk(data)
    if chunk.error is not None:
        return FAILED
    for choice in chunk.choices or ():
        if choice.delta is not None and choice.delta.content:
            return CONTENT
    return NOTHING


def runtime_event(event: bytes) -> int:
    """An event of the runtime's own SSE (``event: content`` ... ``data: [DONE]``)."""
    if event.startswith(b"event: content\n"):
        return CONTENT
    if event == b"data: [DONE]":
        return END
    if event.startswith(b"event: error\n"):
        return FAILED
    return NOTHING


@dataclass(frozen=True)
class Target:
    """One path to measure: where to POST, what, and how to read the answer."""

    name: str
    url: str
    body: bytes
    headers: dict[str, str]
    classify: Callable[[bytes], int]


def completions_target(name: str, url: str, headers: dict[str, str], *, model: str, system: str | None) -> Target:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": MESSAGE})
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
    if system:
        # What the runtime itself asks its provider for, so the direct baseline streams the same bytes.
        body["stream_options"] = {"include_usage": True}
    return Target(name, url, msgspec.json.encode(body), {"content-type": "application/json", **headers}, openai_event)


def chat_target(name: str, url: str, headers: dict[str, str]) -> Target:
    body = msgspec.json.encode({"message": MESSAGE, "stream": True})
    return Target(name, url, body, {"content-type": "application/json", **headers}, runtime_event)


@dataclass
class Sample:
    """One request: seconds to the first content piece and to the end of the stream, or why it failed."""

    ttft: float | None
    total: float
    pieces: int
    error: str | None = None


@dataclass
class Run:
    """The samples of one measured run, and its wall-clock time."""

    samples: list[Sample] = field(default_factory=list)
    wall: float = 0.0


async def measure(client: httpx.AsyncClient, target: Target) -> Sample:
    started = time.perf_counter()
    first: float | None = None
    pieces = 0
    try:
        async with client.stream("POST", target.url, content=target.body, headers=target.headers) as response:
            if response.status_code != 200:
                await response.aread()
                return Sample(None, time.perf_counter() - started, 0, f"HTTP {response.status_code}")
            # Raw bytes split into events here: httpx's line iterator would cost the client more CPU
            # than the server under test spends, on the same cores.
            buffer = b""
            ended: float | None = None
            async for data in response.aiter_raw():
                if ended is not None:
                    continue
                buffer += data
                *events, buffer = buffer.split(b"\n\n")
                for event in events:
                    kind = target.classify(event)
                    if kind == CONTENT:
                        if first is None:
                            first = time.perf_counter()
                        pieces += 1
                    elif kind == END:
                        ended = time.perf_counter()
                        break
                    elif kind == FAILED:
                        return Sample(None, time.perf_counter() - started, pieces, "error event in the stream")
            # The body is read to its end, past [DONE]: a response closed early costs its keep-alive connection.
    except httpx.HTTPError as exc:
        return Sample(None, time.perf_counter() - started, pieces, type(exc).__name__)
    if ended is None:
        return Sample(None, time.perf_counter() - started, pieces, "stream ended without [DONE]")
    if first is None:
        return Sample(None, ended - started, 0, "no content")
    return Sample(first - started, ended - started, pieces)


async def run_sequential(client: httpx.AsyncClient, target: Target, requests: int, warmup: int) -> Run:
    """One client, one request after another."""
    for _ in range(warmup):
        await measure(client, target)
    run = Run()
    started = time.perf_counter()
    for _ in range(requests):
        run.samples.append(await measure(client, target))
    run.wall = time.perf_counter() - started
    return run


async def run_concurrent(client: httpx.AsyncClient, target: Target, clients: int, per_client: int, warmup: int) -> Run:
    """``clients`` clients at once, each sending ``per_client`` requests back to back."""

    async def one_client(count: int, into: list[Sample] | None) -> None:
        for _ in range(count):
            sample = await measure(client, target)
            if into is not None:
                into.append(sample)

    await asyncio.gather(*(one_client(warmup, None) for _ in range(clients)))
    run = Run()
    started = time.perf_counter()
    await asyncio.gather(*(one_client(per_client, run.samples) for _ in range(clients)))
    run.wall = time.perf_counter() - started
    return run
