"""Hostile test regexes against a served persona-runtime: how fast they are refused, what the accepted ones cost.

``python -m bench.patterns`` starts the runtime under uvicorn on a scratch database (``BENCH_DATABASE_URL``,
default the local PostgreSQL), then, while a poller asks ``/health`` every 10 ms, saves the probes that
took main down and 25 heavy patterns within the bounds, runs the suite, deletes the persona, and reports the
answers' latency, the slowest ``/health`` and the server's resident memory at each step. Figures only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil

from bench.services import ServerProcess, create_account, runtime_server, scratch_database

PERSONAS = "/api/v1/chat/personas"
PROBES = ["a{2147483647}", "(?:a{1000}){1000}b", "(?:a{2000}){2000}"]
HEAVY = 25


def _rss_mb(server: ServerProcess) -> float:
    total = 0
    for process in server.tree.processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total / 1e6


class HealthPoller:
    """Asks ``/health`` every 10 ms and keeps the slowest answer since the last ``reset``."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.slowest = 0.0
        self.answers = 0

    def reset(self) -> None:
        self.slowest, self.answers = 0.0, 0

    async def run(self) -> None:
        while True:
            began = time.perf_counter()
            r = await self.client.get("/health")
            r.raise_for_status()
            self.slowest = max(self.slowest, time.perf_counter() - began)
            self.answers += 1
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def polling(client: httpx.AsyncClient) -> AsyncIterator[HealthPoller]:
    poller = HealthPoller(client)
    task = asyncio.create_task(poller.run())
    try:
        yield poller
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def main() -> None:
    server_url = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    with tempfile.TemporaryDirectory(prefix="bench-patterns-") as tmp:
        workdir = Path(tmp)
        async with scratch_database(server_url, workdir) as database_url:
            account = await create_account(database_url)
            # No provider is called but echo; the URL only has to be well formed.
            async with runtime_server(
                database_url, None, "http://127.0.0.1:9", log_level="WARNING", workdir=workdir
            ) as (server):
                await measure(server, account.headers)


async def measure(server: ServerProcess, headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60) as client:
        body = {"name": "Bench patterns", "description": "d", "system_prompt": "You are {{persona_name}}."}
        r = await client.post(PERSONAS, json={**body, "model_settings": {"provider": "echo"}})
        r.raise_for_status()
        pid = r.json()["persona"]["id"]
        start = _rss_mb(server)
        print(f"server RSS at start: {start:.1f} MB")
        async with polling(httpx.AsyncClient(base_url=server.url, timeout=60)) as poller:
            for probe in PROBES:
                poller.reset()
                began = time.perf_counter()
                r = await client.post(f"{PERSONAS}/{pid}/tests", json=_test(probe, "a"))
                took = (time.perf_counter() - began) * 1000
                print(
                    f"probe {probe!r}: {r.status_code} in {took:.1f} ms, slowest /health {poller.slowest * 1000:.1f} ms"
                )

            poller.reset()
            slowest_save = 0.0
            for n in range(HEAVY):
                # Each close to the expansion bound (9,900 + its tail); distinct, so none comes from the cache.
                pattern = f"(?:[ab]{{100}}){{99}}c{n}"
                began = time.perf_counter()
                r = await client.post(f"{PERSONAS}/{pid}/tests", json=_test(pattern, "ab" * 4950 + f"c{n}", n))
                slowest_save = max(slowest_save, time.perf_counter() - began)
                assert r.status_code == 201, r.text
            saved = _rss_mb(server)
            print(
                f"{HEAVY} heavy patterns saved: slowest save {slowest_save * 1000:.1f} ms, "
                f"slowest /health {poller.slowest * 1000:.1f} ms over {poller.answers} answers, "
                f"RSS {saved:.1f} MB ({saved - start:+.1f})"
            )

            poller.reset()
            began = time.perf_counter()
            r = await client.post(f"{PERSONAS}/{pid}/tests/run")
            took = (time.perf_counter() - began) * 1000
            r.raise_for_status()
            run = r.json()
            ran = _rss_mb(server)
            print(
                f"suite run: {run['passed']} passed, {run['failed']} failed in {took:.0f} ms, "
                f"slowest /health {poller.slowest * 1000:.1f} ms, RSS {ran:.1f} MB ({ran - start:+.1f})"
            )

            # The same run with plain ``contains`` checks: what the turns themselves cost the loop.
            r = await client.post(
                PERSONAS, json={**body, "name": "Bench plain", "model_settings": {"provider": "echo"}}
            )
            r.raise_for_status()
            plain = r.json()["persona"]["id"]
            for n in range(HEAVY):
                test = {"name": f"t{n}", "message": "ab" * 4950 + f"c{n}", "expect": {"contains": [f"c{n}"]}}
                (await client.post(f"{PERSONAS}/{plain}/tests", json=test)).raise_for_status()
            poller.reset()
            began = time.perf_counter()
            r = await client.post(f"{PERSONAS}/{plain}/tests/run")
            took = (time.perf_counter() - began) * 1000
            r.raise_for_status()
            print(f"the same run without regexes: {took:.0f} ms, slowest /health {poller.slowest * 1000:.1f} ms")

            r = await client.delete(f"{PERSONAS}/{pid}")
            r.raise_for_status()
            gone = _rss_mb(server)
            print(f"persona deleted: RSS {gone:.1f} MB ({gone - start:+.1f})")


def _test(pattern: str, message: str, n: int = 0) -> dict[str, object]:
    return {"name": f"t{n}", "message": message, "expect": {"regex": pattern}}


if __name__ == "__main__":
    asyncio.run(main())
