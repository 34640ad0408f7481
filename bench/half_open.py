"""``/health`` while thousands of clients hold half-sent requests, and what the guard does with oversized heads.

``python -m bench.half_open`` starts the runtime (``serve --workers 2``) on a scratch database, opens
``--connections`` connections that each send a request line and one header and then nothing more (a
slowloris), and meanwhile asks ``/health`` every 20 ms on fresh connections: their latency (median, p99,
max) and failures are the figures. Then it sends heads of 1 MB and of 10,000 headers and reports the status
each got and how fast, and waits for the half-open connections to be answered 408 after
``HEADER_TIMEOUT_SECONDS`` (set short here). This machine's open-file limit (both processes) bounds
``--connections``. Figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from bench.fake_provider import StreamShape
from bench.services import fake_provider, runtime_server, scratch_database
from runtime.server.serving import raise_open_file_limit

__all__ = ["main"]


async def _probe(host: str, port: int) -> float:
    began = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    if b" 200 " not in answer.split(b"\r\n", 1)[0]:
        raise RuntimeError(answer[:60])
    return (time.perf_counter() - began) * 1000


async def _status(host: str, port: int, data: bytes) -> tuple[str, float]:
    began = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return answer.split(b"\r\n", 1)[0].decode(errors="replace"), (time.perf_counter() - began) * 1000


async def measure(url: str, connections: int, header_timeout: float) -> None:
    host, port = url.removeprefix("http://").split(":")
    port_number = int(port)
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    latencies: list[float] = []
    failures = 0
    stop = asyncio.Event()

    async def poll() -> None:
        nonlocal failures
        while not stop.is_set():
            try:
                latencies.append(await _probe(host, port_number))
            except Exception:
                failures += 1
            await asyncio.sleep(0.02)

    poller = asyncio.create_task(poll())
    began = time.monotonic()
    for _ in range(connections):
        reader, writer = await asyncio.open_connection(host, port_number)
        writer.write(b"GET /health HTTP/1.1\r\nHost: bench\r\n")
        held.append((reader, writer))
    opened = time.monotonic() - began
    await asyncio.sleep(2)
    stop.set()
    await poller
    ordered = sorted(latencies)
    print(
        f"{connections} half-open connections opened in {opened:.1f} s; /health meanwhile: {len(latencies)} answers, "
        f"{failures} failed, median {statistics.median(ordered):.1f} ms, "
        f"p99 {ordered[int(len(ordered) * 0.99) - 1]:.1f} ms, max {ordered[-1]:.1f} ms"
    )
    big = b"GET /health HTTP/1.1\r\nHost: bench\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"
    many = b"GET /health HTTP/1.1\r\nHost: bench\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(10_000)) + b"\r\n"
    for name, data in (("a 1 MB header", big), ("10,000 headers", many)):
        status, ms = await _status(host, port_number, data)
        print(f"{name}: {status} in {ms:.1f} ms")
    waited = time.monotonic()
    answered = 0
    for reader, writer in held:
        with contextlib.suppress(Exception):
            first = await asyncio.wait_for(reader.read(64), max(header_timeout + 5 - (time.monotonic() - waited), 0.1))
            answered += first.startswith(b"HTTP/1.1 408 ")
        writer.close()
    print(f"answered 408 after HEADER_TIMEOUT_SECONDS={header_timeout:g}: {answered} of {connections}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.half_open", description=__doc__)
    soft = raise_open_file_limit()
    room = soft - 500  # this process's own files: the scratch database, the provider, the probes
    parser.add_argument("--connections", type=int, default=min(20_000, room))
    parser.add_argument("--header-timeout", type=float, default=30.0)
    args = parser.parse_args()
    if args.connections > room:
        parser.error(
            f"--connections {args.connections} leaves no room under this process's open-file limit ({soft}): "
            f"give at most {room}, or raise the hard limit (ulimit -Hn)"
        )
    print(f"open-file limit: {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}")
    server = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

    async def run() -> None:
        workdir = Path(tempfile.mkdtemp(prefix="bench-half-open-"))
        with fake_provider(StreamShape()) as provider:
            async with scratch_database(server, workdir) as dsn:
                env = {"HEADER_TIMEOUT_SECONDS": str(args.header_timeout), "MAX_CONNECTIONS": "50000"}
                async with runtime_server(
                    dsn, None, provider.url, log_level="WARNING", workdir=workdir, workers=2, extra_env=env
                ) as runtime:
                    await measure(runtime.url, args.connections, args.header_timeout)

    asyncio.run(run())


if __name__ == "__main__":
    main()
