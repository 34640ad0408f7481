"""The cost of recording a chat stream, on its own: ``python -m bench.recording [--redis-url URL]``.

The throughput phases measure a whole stream, whose CPU varies by more between identical runs on a shared
machine than recording costs. This runs only what recording adds to a stream, in one process: N streams
of the benchmark's shape (start, 35 content pieces, usage, done), each encoded by the chat codec with and
without a recording (in memory, and in Redis when a URL is given), ``--concurrent`` at a time as a busy
server would, and reports the process CPU per stream of each, the difference being the recording's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from redis.asyncio import Redis

from core.events import Done, PersonaRef, Start, TextDelta, TurnEvent, Usage
from runtime.chat.frames import ChatFrames
from runtime.chat.recordings import StreamRecorder

__all__ = ["main"]


def _turn(message_id: uuid.UUID, chunks: int) -> list[list[TurnEvent]]:
    start = Start(
        conversation_id=uuid.uuid4(),
        message_id=message_id,
        persona=PersonaRef(id=uuid.uuid4(), name="Mu", version=1),
        persona_source="default",
        provider="openai",
        model="gpt-4o-mini",
    )
    pieces: list[TurnEvent] = [TextDelta(content=f"word{n} ") for n in range(chunks)]
    return [
        [start, *pieces[: chunks // 2]],
        pieces[chunks // 2 :],
        [Usage(input_tokens=120, output_tokens=chunks)],
        [Done(finish_reason="stop", message_id=message_id)],
    ]


async def _run(recorder: StreamRecorder | None, streams: int, concurrent: int, chunks: int) -> float:
    async def one() -> None:
        message_id = uuid.uuid4()
        batches = _turn(message_id, chunks)
        recording = recorder.open(message_id, uuid.uuid4()) if recorder is not None else None
        frames = ChatFrames(message_id, recorder, recording)
        for batch in batches:
            frames.encode(batch)
            await asyncio.sleep(0)  # the next read of the provider
        frames.close()

    started = time.process_time()
    for offset in range(0, streams, concurrent):
        await asyncio.gather(*(one() for _ in range(min(concurrent, streams - offset))))
    await asyncio.sleep(0.2)  # the last flush, at most 50 ms after the last stream's end
    return (time.process_time() - started) / streams * 1000


def _spawn(tasks: set[asyncio.Task[None]]) -> Any:
    def spawn(work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return spawn


async def _main(args: argparse.Namespace) -> None:
    tasks: set[asyncio.Task[None]] = set()
    runs: dict[str, StreamRecorder | None] = {
        "no recording": None,
        "memory": StreamRecorder(None, prefix="bench-rec:", retention=600, spawn=_spawn(tasks)),
    }
    client = None
    if args.redis_url:
        client = Redis.from_url(args.redis_url, socket_connect_timeout=0.5)
        prefix = f"bench-rec-{uuid.uuid4().hex[:8]}:"
        runs["Redis"] = StreamRecorder(client, writer=client, prefix=prefix, retention=60, spawn=_spawn(tasks))
    try:
        for _ in range(args.rounds):
            line = []
            for name, recorder in runs.items():
                spent = await _run(recorder, args.streams, args.concurrent, args.chunks)
                line.append(f"{name} {spent * 1000:.0f} µs")
            print("CPU per stream: " + ", ".join(line), flush=True)
    finally:
        if client is not None:
            async for key in client.scan_iter(match="bench-rec-*"):
                await client.delete(key)
            await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.recording", description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="also record into this Redis (keys under a random prefix, deleted after)")
    parser.add_argument("--streams", type=int, default=5000, help="streams per measurement (default 5000)")
    parser.add_argument("--concurrent", type=int, default=50, help="streams under way at once (default 50)")
    parser.add_argument("--chunks", type=int, default=35, help="content pieces per stream (default 35)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each (default 3)")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
