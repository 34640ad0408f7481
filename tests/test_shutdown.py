"""SIGTERM while answers stream: they run on for the grace, then end with `shutting_down`, kept as incomplete."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time

import asyncpg
import httpx
import pytest

from tests.conftest import llm_env
from tests.services import free_port
from tests.sse import parse_sse
from tests.test_cli import start_serve, wait_until_up

KEY = "prk_shutdown_test_admin_key_0123456789"


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigterm_ends_a_long_stream_after_the_grace_and_keeps_its_partial_answer(
    create_database, fake_llm, workers
):
    database_url = await create_database()
    env = {
        **llm_env(fake_llm),
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": database_url,
        "BOOTSTRAP_ADMIN_KEY": KEY,
        "SHUTDOWN_GRACE_SECONDS": "1",
        "LOG_LEVEL": "INFO",
    }
    port = free_port()
    server = start_serve(port, env, "--workers", workers)
    base = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_until_up, base, 90)
        fake_llm.script(chunks=tuple(f"w{i} " for i in range(60)), chunk_delay=0.1)  # about 6 s of answer
        body = {"message": "a long one", "stream": True}
        seen: list[str] = []
        async with (
            httpx.AsyncClient(base_url=base, timeout=30) as http,
            http.stream("POST", "/api/v1/chat", json=body, headers={"X-API-Key": KEY}) as r,
        ):
            signalled = False
            async for line in r.aiter_lines():
                seen.append(line)
                if not signalled and line.startswith("event: content") and len(seen) > 8:
                    server.send_signal(signal.SIGTERM)  # while the answer is still streaming
                    signalled = True
        events, _ = parse_sse("\n".join(seen) + "\n\n")
        assert events[-2].event == "error" and events[-2].json["code"] == "shutting_down"
        assert events[-1].data == "[DONE]"
        said = "".join(e.json["content"] for e in events if e.event == "content")
        assert 0 < len(said.split()) < 60  # it ran on for the grace, then stopped before the end
        _, err = await asyncio.to_thread(server.communicate, timeout=60)
        assert server.returncode == 0, err
        assert "Traceback" not in err
    finally:
        # The whole process group: killing only the master of `--workers 2` would leave its workers behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchrow(
            "SELECT status, content, error FROM messages WHERE role = 'assistant' ORDER BY seq DESC LIMIT 1"
        )
    finally:
        await conn.close()
    assert stored["status"] == "incomplete" and stored["content"] == said
    assert json.loads(stored["error"])["code"] == "shutting_down"


async def test_ready_says_503_from_the_moment_shutdown_begins(database_url, redis_url):
    from api.app import create_app
    from tests.conftest import make_settings, running

    app = create_app(make_settings(database_url, redis_url, shutdown_grace_seconds=0.01))
    async with running(app) as http:
        assert (await http.get("/ready")).status_code == 200
        app.state.resources.begin_shutdown()
        r = await http.get("/ready")
        assert r.status_code == 503 and r.json()["checks"]["server"] == "shutting_down"
        assert r.json()["checks"]["database"] == "ok"


def connect_outcome(base: str) -> tuple[str, float]:
    """What a new connection to ``base`` gets (its ``/health`` status, or the error's name) and how fast."""
    began = time.monotonic()
    try:
        outcome = str(httpx.get(base + "/health", timeout=3).status_code)
    except httpx.HTTPError as exc:
        outcome = type(exc).__name__
    return outcome, time.monotonic() - began


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_after_sigterm_a_new_connection_is_refused_at_once_while_streams_run_on(
    create_database, fake_llm, workers
):
    """A balancer sends a request the stopping instance refuses to another one at once; a connection taken into
    a backlog that nobody accepts from would hang until the process ends, then be reset."""
    database_url = await create_database()
    env = {
        **llm_env(fake_llm),
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": database_url,
        "BOOTSTRAP_ADMIN_KEY": KEY,
        "SHUTDOWN_GRACE_SECONDS": "10",
    }
    port = free_port()
    server = start_serve(port, env, "--workers", workers)
    base = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_until_up, base, 90)
        fake_llm.script(chunks=tuple(f"w{i} " for i in range(30)), chunk_delay=0.1)  # about 3 s of answer
        body = {"message": "a long one", "stream": True}
        seen: list[str] = []
        outcomes: list[tuple[str, float]] = []
        async with (
            httpx.AsyncClient(base_url=base, timeout=30) as http,
            http.stream("POST", "/api/v1/chat", json=body, headers={"X-API-Key": KEY}) as r,
        ):
            async for line in r.aiter_lines():
                seen.append(line)
                if len(seen) == 8:
                    server.send_signal(signal.SIGTERM)  # to the server (the supervisor of its workers) alone
                    await asyncio.sleep(1.0)  # the supervisor looks at its signals every half second
                    outcomes.append(await asyncio.to_thread(connect_outcome, base))
        events, _ = parse_sse("\n".join(seen) + "\n\n")
        assert events[-2].event == "done" and events[-1].data == "[DONE]"  # the stream ran on to its end
        [(outcome, seconds)] = outcomes
        assert outcome == "ConnectError" and seconds < 0.5, (outcome, seconds)
        await asyncio.to_thread(server.communicate, timeout=60)
        assert server.returncode == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
