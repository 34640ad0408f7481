"""The fake provider's hold and release."""

from __future__ import annotations

import asyncio

import httpx

from bench.client import STREAMING, completions_target, open_connection
from bench.fake_provider import FakeProvider, StreamShape


async def test_held_streams_wait_for_the_release() -> None:
    fake = FakeProvider(StreamShape(chunks=5))
    server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        target = completions_target("held", url + "/v1/chat/completions", {}, model="m", system=None)
        async with httpx.AsyncClient(base_url=url) as control:
            assert (await control.post("/hold")).json() == {"hold": True}
            connections = [await open_connection(target.host, target.port) for _ in range(3)]
            waiters = [c.send(target, timeout=30) for c in connections]
            for _ in range(200):
                if fake.held == 3 and all(c.state == STREAMING for c in connections):
                    break
                await asyncio.sleep(0.01)
            assert fake.held == 3
            assert all(c.state == STREAMING for c in connections)
            assert not any(w.done() for w in waiters)
            assert (await control.get("/stats")).json()["held"] == 3
            assert (await control.post("/release")).json() == {"released": 3}
            samples = await asyncio.gather(*waiters)
            assert all(s.error is None and s.pieces == 5 for s in samples)
            # Released: the next stream is not held.
            after = await connections[0].send(target, timeout=30)
            assert after.error is None
            assert fake.held == 0
    finally:
        server.close()
