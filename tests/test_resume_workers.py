"""Resuming streams on `serve --workers 2` without Redis: whichever worker takes the replay, it is whole."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import llm_env
from tests.fakellm import FakeLLM, Script
from tests.services import free_port
from tests.sse import Event, parse_sse
from tests.test_cli import start_serve, wait_until_up
from tests.waiting import eventually

KEY = "prk_resume_workers_test_key_0123456789"
HEADERS = {"X-API-Key": KEY}
CHAT = "/api/v1/chat"
RETENTION = 8


@pytest.fixture(scope="module")
def workers(create_database, fake_llm_server: FakeLLM) -> Iterator[str]:
    """`serve --workers 2` on a fresh database, no REDIS_URL, streams kept RETENTION seconds; its base URL."""
    database_url = asyncio.run(create_database())
    env = {
        **llm_env(fake_llm_server),
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": database_url,
        "BOOTSTRAP_ADMIN_KEY": KEY,
        "STREAM_RETENTION_SECONDS": str(RETENTION),
        "LOG_LEVEL": "WARNING",
    }
    port = free_port()
    server = start_serve(port, env, "--workers", "2")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base, 90)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except Exception:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        assert "Traceback" not in (server.stderr.read() if server.stderr else "")


async def fresh(base: str, method: str, path: str, **kwargs) -> httpx.Response:
    """One request on a connection of its own, so that any worker may take it."""
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as http:
        return await http.request(method, path, headers={**HEADERS, **kwargs.pop("headers", {})}, **kwargs)


def shown(events: list[Event]) -> list[tuple[str | None, str | None, str]]:
    return [(e.event, e.id, e.data) for e in events]


async def test_every_stream_is_resumed_whole_by_whichever_worker_takes_the_replay(workers, fake_llm):
    fake_llm.default = Script(chunks=("one ", "two ", "three"))
    resumed = 0
    for n in range(20):
        r = await fresh(workers, "POST", CHAT, json={"message": f"stream {n}", "stream": True})
        assert r.status_code == 200, r.text
        sent, _ = parse_sse(r.text)
        message_id = sent[0].json["message_id"]
        events = f"{CHAT}/messages/{message_id}/events"
        whole = await fresh(workers, "GET", events)
        after_two = await fresh(workers, "GET", events, headers={"Last-Event-ID": f"{message_id}:2"})
        assert whole.status_code == 200, whole.text
        assert after_two.status_code == 200, after_two.text
        assert shown(parse_sse(whole.text)[0]) == shown(sent)
        assert shown(parse_sse(after_two.text)[0]) == shown(sent[2:])
        resumed += 1
    assert resumed == 20


async def test_a_running_answer_is_followed_live_from_the_other_worker(workers, fake_llm):
    fake_llm.default = Script(chunks=tuple(f"w{i} " for i in range(15)), chunk_delay=0.1)

    async def cut_and_resume(n: int) -> tuple[str, str]:
        body = {"message": f"long {n}", "stream": True, "resumable": True}
        async with (
            httpx.AsyncClient(base_url=workers, timeout=30) as http,
            http.stream("POST", CHAT, json=body, headers=HEADERS) as r,
        ):
            text = ""
            async for chunk in r.aiter_text():
                text += chunk
                if len(parse_sse(text)[0]) >= 3:
                    break  # the client hangs up after three events
        first = parse_sse(text)[0][:3]
        message_id = first[0].json["message_id"]
        rest = await fresh(
            workers, "GET", f"{CHAT}/messages/{message_id}/events", headers={"Last-Event-ID": first[-1].id}
        )
        assert rest.status_code == 200, rest.text
        tail = parse_sse(rest.text)[0]
        assert [e.id for e in tail][:1] == [f"{message_id}:4"]
        assert tail[-2].event == "done" and tail[-1].data == "[DONE]"
        said = "".join(e.json["content"] for e in first + tail if e.event == "content")
        return said, "".join(f"w{i} " for i in range(15))

    for said, meant in await asyncio.gather(*(cut_and_resume(n) for n in range(4))):
        assert said == meant


async def test_a_message_answered_without_a_stream_says_so_rather_than_expired(workers, fake_llm):
    fake_llm.default = Script(chunks=("whole",))
    r = await fresh(workers, "POST", CHAT, json={"message": "no stream", "stream": False})
    assert r.status_code == 200, r.text
    message_id = r.json()["message_id"]
    for _ in range(4):  # whichever worker answers
        replay = await fresh(workers, "GET", f"{CHAT}/messages/{message_id}/events")
        assert replay.status_code == 404, replay.text
        assert replay.json()["error"]["code"] == "not_streamed"
        assert "answered without a stream" in replay.json()["message"]


async def test_a_stream_is_said_expired_only_once_its_retention_is_over(workers, fake_llm):
    fake_llm.default = Script(chunks=("brief",))
    r = await fresh(workers, "POST", CHAT, json={"message": "short-lived", "stream": True})
    message_id = parse_sse(r.text)[0][0].json["message_id"]
    url = f"{CHAT}/messages/{message_id}/events"
    assert (await fresh(workers, "GET", url)).status_code == 200

    async def gone() -> bool:
        return (await fresh(workers, "GET", url)).status_code != 200

    assert await eventually(gone, within=RETENTION + 10, interval=0.5)
    for _ in range(4):  # every worker says the same
        expired = await fresh(workers, "GET", url)
        assert expired.status_code == 410, expired.text
        assert expired.json()["error"]["code"] == "stream_expired"
        assert f"are kept {RETENTION} s after they end" in expired.json()["message"]
