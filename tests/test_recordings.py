"""Recordings in Redis: a stream recorded across a Redis outage is replayed whole, from any id, by another
instance; frames Redis lacks are never handed out as a stream with holes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
import redis.asyncio as aioredis

from core.errors import StreamExpired
from core.events import Done, TextDelta, TurnEvent
from runtime.chat.frames import encode_events
from runtime.chat.recordings import DONE, HEARTBEAT, Recording, StreamRecorder

LOGGER = "persona_runtime.streams"


@dataclass
class Stored:
    """The stored message, as a reader of a stream sees it."""

    status: str = "complete"
    finish_reason: str | None = "stop"
    error: dict[str, Any] | None = None


async def complete() -> Stored:
    return Stored()


class Instance(logging.Handler):
    """One instance's recorder on a Redis, with the background tasks its flushes run in, and what it logged
    from them (not what other recorders of the test session log meanwhile)."""

    def __init__(self, url: str, prefix: str, *, script: bool = True) -> None:
        super().__init__(logging.WARNING)
        self.client = aioredis.from_url(url, socket_connect_timeout=0.5)
        self.tasks: set[asyncio.Task[None]] = set()
        self.said: list[str] = []
        logging.getLogger(LOGGER).addHandler(self)
        # With a writer, one script call a flush (a single server); without, the pipeline a cluster uses.
        writer = self.client if script else None
        self.recorder = StreamRecorder(
            self.client, writer=writer, prefix=prefix, retention=60, spawn=self._spawn, retry_after=0.3
        )

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(RuntimeError):  # logged outside a task
            if asyncio.current_task() in self.tasks:
                self.said.append(record.getMessage())

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.said)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def aclose(self) -> None:
        logging.getLogger(LOGGER).removeHandler(self)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.client.aclose()


@pytest.fixture(params=["script", "pipeline"])
async def instances(request, redis_process) -> AsyncIterator[tuple[Instance, Instance]]:
    """Two instances sharing a Redis of the test's own: the one running the stream, and another."""
    prefix = f"rec-{uuid.uuid4().hex[:8]}:"
    script = request.param == "script"
    here, elsewhere = Instance(redis_process.url, prefix, script=script), Instance(redis_process.url, prefix)
    yield here, elsewhere
    await here.aclose()
    await elsewhere.aclose()


def frame(message_id: uuid.UUID, n: int, event: TurnEvent) -> bytes:
    """The ``n``-th frame of a stream, as the chat codec writes it."""
    (part,), _, _ = encode_events((event,), n - 1, b"%s:" % str(message_id).encode())
    return part


class Answer:
    """A stream being recorded: numbered content frames added a few at a time, as the SSE codec adds them."""

    def __init__(self, recorder: StreamRecorder, *, write_ahead: bool = False) -> None:
        self.recorder = recorder
        self.message_id = uuid.uuid4()
        self.recording: Recording = recorder.open(self.message_id, uuid.uuid4(), write_ahead=write_ahead)
        self.n = 0

    def send(self, count: int = 1) -> None:
        frames = []
        for _ in range(count):
            self.n += 1
            frames.append(frame(self.message_id, self.n, TextDelta(content=f"w{self.n} ")))
        self.recorder.add(self.recording, frames)

    def finish(self) -> None:
        self.n += 1
        done = Done(finish_reason="stop", message_id=self.message_id)
        self.recorder.add(self.recording, [frame(self.message_id, self.n, done)])
        self.recorder.close(self.recording, terminal=True)


def numbers(stream: bytes, message_id: uuid.UUID) -> list[int]:
    """The event numbers of a stream's frames, in the order they came."""
    prefix = b"id: %s:" % str(message_id).encode()
    return [int(line[len(prefix) :]) for line in stream.split(b"\n") if line.startswith(prefix)]


async def replayed(recorder: StreamRecorder, message_id: uuid.UUID, after: int) -> bytes:
    chunks = []
    async for chunk in await recorder.replay(message_id, after, 30, complete):
        if chunk != HEARTBEAT:
            chunks.append(chunk)
    assert chunks[-1] == DONE
    return b"".join(chunks)


async def until(condition, what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await condition() if asyncio.iscoroutinefunction(condition) else not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within} s")
        await asyncio.sleep(0.02)


async def keep_answering(answer: Answer, instance: Instance, text: str) -> None:
    """Go on streaming, a frame every flush or so, until the instance's recorder logs ``text``."""
    deadline = time.monotonic() + 10
    while not instance.logged(text):
        assert time.monotonic() < deadline, f"the recorder never logged {text!r}"
        answer.send()
        await asyncio.sleep(0.05)  # the provider's pace


async def in_redis(client: aioredis.Redis, key: str, *, ended: bool = False) -> bool:
    entries = await client.xrange(key)
    return bool(entries) and (not ended or b"e" in entries[-1][1])


async def test_a_stream_recorded_across_a_redis_outage_is_resumed_elsewhere_after_the_gap_whole(
    instances, redis_process
):
    here, elsewhere = instances
    answer = Answer(here.recorder)
    key = here.recorder.key(answer.message_id)
    answer.send(3)
    await until(partial(in_redis, here.client, key), "the first frames reached Redis")
    redis_process.pause()  # hung: the next write times out, and the ones after it wait for the retry
    try:
        answer.send(3)
        await until(lambda: here.logged("Redis unavailable"), "the outage was noticed")
        answer.send(3)  # while the recorder does without Redis
    finally:
        redis_process.resume()
    await keep_answering(answer, here, "reachable again")
    answer.send(2)
    answer.finish()
    await until(partial(in_redis, here.client, key, ended=True), "the stream's end reached Redis")

    for after in (5, 8, answer.n - 1):  # within the gap, just after it, and at the last frame but one
        stream = await replayed(elsewhere.recorder, answer.message_id, after)
        assert numbers(stream, answer.message_id) == list(range(after + 1, answer.n + 1)), after
    whole = await replayed(elsewhere.recorder, answer.message_id, 0)
    assert whole == b"".join(answer.recording.frames) + DONE  # byte for byte what the first client got


async def test_a_stream_written_ahead_waits_for_redis_and_stops_waiting_while_redis_is_away(instances, redis_process):
    here, elsewhere = instances
    answer = Answer(here.recorder, write_ahead=True)
    key = here.recorder.key(answer.message_id)
    reader = answer.recording.follow(0, 30, complete)
    answer.send(3)
    first = await anext(reader)
    # What the reader got, Redis already held.
    assert numbers(first, answer.message_id) == [1, 2, 3]
    assert await in_redis(here.client, key)
    redis_process.pause()  # hung: the write times out, and the frames are no longer held for it
    try:
        answer.send(2)
        during = await asyncio.wait_for(anext(reader), 10)
        assert numbers(during, answer.message_id) == [4, 5]
        assert here.logged("Redis unavailable")
    finally:
        redis_process.resume()
    await keep_answering(answer, here, "reachable again")
    answer.finish()
    rest = b"".join([chunk async for chunk in reader if chunk != HEARTBEAT])
    assert numbers(rest, answer.message_id) == list(range(6, answer.n + 1)) and rest.endswith(DONE)
    await until(partial(in_redis, here.client, key, ended=True), "the stream's end reached Redis")
    whole = await replayed(elsewhere.recorder, answer.message_id, 0)
    assert whole == b"".join(answer.recording.frames) + DONE


async def test_a_stream_whose_recording_redis_lost_is_written_again_from_its_start(instances, redis_process):
    here, elsewhere = instances
    answer = Answer(here.recorder)
    key = here.recorder.key(answer.message_id)
    answer.send(4)
    await until(partial(in_redis, here.client, key), "the first frames reached Redis")
    redis_process.stop()
    try:
        answer.send(2)
        await until(lambda: here.logged("Redis unavailable"), "the outage was noticed")
    finally:
        redis_process.start()  # without persistence: what it held is gone
    await keep_answering(answer, here, "reachable again")
    answer.finish()
    await until(partial(in_redis, here.client, key, ended=True), "the stream's end reached Redis")
    whole = await replayed(elsewhere.recorder, answer.message_id, 0)
    assert numbers(whole, answer.message_id) == list(range(1, answer.n + 1))
    assert whole == b"".join(answer.recording.frames) + DONE


async def test_a_stream_whose_first_write_failed_still_gets_its_expiry(instances, redis_process):
    here, _ = instances
    redis_process.pause()
    try:
        answer = Answer(here.recorder)
        answer.send(2)
        await until(lambda: here.logged("Redis unavailable"), "the outage was noticed")
    finally:
        redis_process.resume()
    await keep_answering(answer, here, "reachable again")
    key = here.recorder.key(answer.message_id)
    await until(partial(in_redis, here.client, key), "the frames reached Redis")
    assert 0 < await here.client.pttl(key) <= 60_000  # a live stream's key expires too, should it be left
    answer.finish()
    await until(partial(in_redis, here.client, key, ended=True), "the stream's end reached Redis")


def content(message_id: uuid.UUID, first: int, last: int) -> bytes:
    return b"".join(frame(message_id, n, TextDelta(content=f"w{n} ")) for n in range(first, last + 1))


async def test_frames_written_twice_are_replayed_once_and_a_stream_missing_some_is_not_replayed(redis_url):
    prefix = f"rec-{uuid.uuid4().hex[:8]}:"
    reader = Instance(redis_url, prefix)
    try:
        recorder, client = reader.recorder, reader.client
        # A write that timed out but landed, sent again with what came since; then the rest and the end.
        overlapping = uuid.uuid4()
        key = recorder.key(overlapping)
        await client.xadd(key, {"f": 1, "d": content(overlapping, 1, 3)})
        await client.xadd(key, {"f": 1, "d": content(overlapping, 1, 5)})
        await client.xadd(key, {"f": 6, "d": content(overlapping, 6, 7), "e": b"0"})
        for after in (0, 2, 4):
            stream = await replayed(recorder, overlapping, after)
            assert numbers(stream, overlapping)[:-1] == list(range(after + 1, 8))  # and the final event made
        # Frames 4 and 5 are gone: a replay that needs them is refused before anything is sent, a replay
        # after them is whole.
        gapped = uuid.uuid4()
        key = recorder.key(gapped)
        await client.xadd(key, {"f": 1, "d": content(gapped, 1, 3)})
        await client.xadd(key, {"f": 6, "d": content(gapped, 6, 7), "e": b"0"})
        for after in (0, 3, 4):
            with pytest.raises(StreamExpired):
                await recorder.replay(gapped, after, 30, complete)
        assert numbers(await replayed(recorder, gapped, 5), gapped)[:-1] == [6, 7]
    finally:
        async for key in reader.client.scan_iter(match=f"{prefix}*"):
            await reader.client.delete(key)
        await reader.aclose()


async def test_a_reader_following_a_stream_that_loses_frames_ends_it_with_an_error(redis_url):
    prefix = f"rec-{uuid.uuid4().hex[:8]}:"
    reader = Instance(redis_url, prefix)
    message_id = uuid.uuid4()
    key = reader.recorder.key(message_id)
    try:
        await reader.client.xadd(key, {"f": 1, "d": content(message_id, 1, 2)})
        stream = await reader.recorder.replay(message_id, 0, 30, complete)
        assert numbers(await anext(stream), message_id) == [1, 2]
        await reader.client.xadd(key, {"f": 5, "d": content(message_id, 5, 6), "e": b"1"})  # 3 and 4 lost
        rest = [chunk async for chunk in stream if chunk != HEARTBEAT]
        assert rest[-1] == DONE and numbers(rest[0], message_id) == [3]
        assert b"event: error\n" in rest[0] and b'"code":"stream_expired"' in rest[0]
    finally:
        await reader.client.delete(key)
        await reader.aclose()
