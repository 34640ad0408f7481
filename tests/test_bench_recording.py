"""bench.recording measures what it says: the codec with and without a recording, in memory and in Redis."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis

from bench.recording import _run, _spawn
from runtime.chat.recordings import StreamRecorder


async def test_each_kind_of_recording_runs_and_the_streams_land_in_redis(redis_url):
    tasks: set = set()
    prefix = f"bench-rec-test-{uuid.uuid4().hex[:8]}:"
    client = aioredis.from_url(redis_url)
    try:
        recorder = StreamRecorder(client, writer=client, prefix=prefix, retention=60, spawn=_spawn(tasks))
        for kind in (None, StreamRecorder(None, prefix=prefix, retention=60, spawn=_spawn(tasks)), recorder):
            assert await _run(kind, 20, 5, 8) > 0
        keys = [key async for key in client.scan_iter(match=f"{prefix}stream:*")]
        assert len(keys) == 20
        entries = await client.xrange(keys[0])
        assert entries[-1][1][b"e"] == b"1" and int(entries[0][1][b"f"]) == 1
    finally:
        async for key in client.scan_iter(match=f"{prefix}*"):
            await client.delete(key)
        await client.aclose()
