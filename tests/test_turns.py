"""Turn records (contract section 16): one for every turn on every route, without text, under the id the answer
carries (`x-persona-turn-id`, `turn_id` in `start` and `done`), written within a second, at shutdown too, and
pruned after the retention."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from typing import Any

import anthropic
import asyncpg
import httpx
import openai
import pytest

from runtime.turns import TurnLog
from tests.conftest import llm_env, persona_body
from tests.services import free_port
from tests.sse import parse_sse
from tests.test_cli import start_serve, wait_until_up
from tests.waiting import eventually

PERSONAS = "/api/v1/chat/personas"
# The record's fields, as the contract lists them: nothing else, and no text.
FIELDS = {
    "id",
    "created_at",
    "user_id",
    "key_id",
    "persona_id",
    "persona_version",
    "variant",
    "route",
    "provider",
    "model",
    "outcome",
    "ttft_ms",
    "duration_ms",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
}
SECRET = "a question about the lighthouse keeper"


async def make_persona(http: httpx.AsyncClient, account: Any, provider: str = "openai", **fields: Any) -> dict:
    body = persona_body(model_settings={"provider": provider}, **fields)
    r = await http.post(PERSONAS, json=body, headers=account.headers)
    assert r.status_code == 201, r.text
    return r.json()["persona"]


async def record_of(app: Any, turn_id: str | uuid.UUID, within: float = 5.0) -> dict[str, Any]:
    """The turn's record, once the background writer has written it (no flush asked for)."""
    pool = app.state.resources.pool
    found: dict[str, Any] = {}

    async def written() -> bool:
        row = await pool.fetchrow("SELECT * FROM turns WHERE id = $1", uuid.UUID(str(turn_id)))
        if row is not None:
            found.update(dict(row))
        return row is not None

    assert await eventually(written, within), f"no record of turn {turn_id}"
    return found


def row(turn_id: uuid.UUID, at: float, user_id: uuid.UUID, persona_id: uuid.UUID) -> tuple[Any, ...]:
    """A record as a turn's end adds it: the record's columns in order, its time a Unix time."""
    return (
        turn_id,
        at,
        user_id,
        None,
        persona_id,
        1,
        "production",
        "chat",
        "echo",
        "echo",
        "complete",
        1.0,
        2.0,
        1,
        1,
        0,
    )


def assert_without_text(record: dict[str, Any], *texts: str) -> None:
    assert set(record) == FIELDS
    for value in record.values():
        for text in texts:
            assert text not in str(value)


async def test_a_chat_turn_is_recorded_under_its_message_id_without_text(llm_app, llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice)
    fake_llm.script(chunks=("The keeper", " sleeps."), input_tokens=40, cached_tokens=12, output_tokens=5)
    r = await llm_client.post(
        "/api/v1/chat", json={"message": SECRET, "persona_id": persona["id"]}, headers=alice.headers
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["x-persona-turn-id"] == body["message_id"]
    record = await record_of(llm_app, body["message_id"])
    assert_without_text(record, SECRET, "keeper")
    assert record["user_id"] == alice.user.id and record["key_id"] == alice.key_id
    assert record["persona_id"] == uuid.UUID(persona["id"]) and record["persona_version"] == 1
    assert (record["variant"], record["route"], record["outcome"]) == ("production", "chat", "complete")
    assert (record["provider"], record["model"]) == (body["provider"], body["model"])
    assert (record["input_tokens"], record["cached_input_tokens"], record["output_tokens"]) == (40, 12, 5)
    assert 0 < record["ttft_ms"] <= record["duration_ms"]


async def test_a_streamed_chat_says_its_turn_in_start_done_and_the_header(llm_app, llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice)
    fake_llm.script(chunks=("one", " two"))
    body = {"message": SECRET, "persona_id": persona["id"], "stream": True}
    r = await llm_client.post("/api/v1/chat", json=body, headers=alice.headers)
    assert r.status_code == 200, r.text
    events, _ = parse_sse(r.text)
    start = next(e.json for e in events if e.event == "start")
    done = next(e.json for e in events if e.event == "done")
    assert start["turn_id"] == done["turn_id"] == start["message_id"] == r.headers["x-persona-turn-id"]
    record = await record_of(llm_app, start["turn_id"])
    assert record["outcome"] == "complete" and record["route"] == "chat"


async def test_openai_chat_completions_turns_are_recorded_under_a_new_id(llm_app, llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice)
    sdk = openai.AsyncOpenAI(base_url=llm_app.state.base_url + "/v1", api_key=alice.key, max_retries=0)
    fake_llm.script(chunks=("whole",), input_tokens=9, output_tokens=3)
    raw = await sdk.chat.completions.with_raw_response.create(
        model=f"persona/{persona['name']}", messages=[{"role": "user", "content": SECRET}]
    )
    completion = raw.parse()
    turn_id = raw.headers["x-persona-turn-id"]
    assert turn_id != completion.id
    record = await record_of(llm_app, turn_id)
    assert_without_text(record, SECRET, "whole")
    assert (record["route"], record["outcome"], record["input_tokens"], record["output_tokens"]) == (
        "chat_completions",
        "complete",
        9,
        3,
    )
    assert record["key_id"] == alice.key_id and record["persona_id"] == uuid.UUID(persona["id"])

    fake_llm.script(chunks=("streamed", " too"))
    async with sdk.chat.completions.with_streaming_response.create(
        model=f"persona/{persona['name']}", messages=[{"role": "user", "content": SECRET}], stream=True
    ) as streamed:
        streamed_id = streamed.headers["x-persona-turn-id"]
        async for _ in streamed.iter_lines():
            pass
    assert streamed_id != turn_id
    assert (await record_of(llm_app, streamed_id))["route"] == "chat_completions"


async def test_anthropic_messages_turns_are_recorded(llm_app, llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice, provider="anthropic")
    sdk = anthropic.AsyncAnthropic(base_url=llm_app.state.base_url, api_key=alice.key, max_retries=0)
    fake_llm.script(chunks=("hello",), input_tokens=21, cached_tokens=4, output_tokens=2)
    raw = await sdk.messages.with_raw_response.create(
        model=f"persona/{persona['name']}", max_tokens=100, messages=[{"role": "user", "content": SECRET}]
    )
    record = await record_of(llm_app, raw.headers["x-persona-turn-id"])
    assert_without_text(record, SECRET)
    assert (record["route"], record["provider"], record["outcome"]) == ("messages", "anthropic", "complete")
    assert record["cached_input_tokens"] == 4 and record["output_tokens"] == 2


async def test_responses_turns_are_recorded(llm_app, llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice)
    sdk = openai.AsyncOpenAI(base_url=llm_app.state.base_url + "/v1", api_key=alice.key, max_retries=0)
    fake_llm.script(chunks=("fine",))
    raw = await sdk.responses.with_raw_response.create(model=f"persona/{persona['name']}", input=SECRET)
    record = await record_of(llm_app, raw.headers["x-persona-turn-id"])
    assert_without_text(record, SECRET)
    assert (record["route"], record["outcome"]) == ("responses", "complete")


async def test_an_authors_previews_are_recorded_as_pinned_or_draft(llm_app, llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice)
    fake_llm.script(chunks=("tried",))
    r = await llm_client.post(
        f"{PERSONAS}/preview", json={"persona_id": persona["id"], "message": SECRET}, headers=alice.headers
    )
    assert r.status_code == 200, r.text
    record = await record_of(llm_app, r.headers["x-persona-turn-id"])
    assert (record["variant"], record["route"], record["persona_id"]) == ("pinned", "preview", uuid.UUID(persona["id"]))
    fake_llm.script(chunks=("drafted",))
    draft = persona_body(model_settings={"provider": "openai"})
    r = await llm_client.post(f"{PERSONAS}/preview", json={"persona": draft, "message": SECRET}, headers=alice.headers)
    assert r.status_code == 200, r.text
    record = await record_of(llm_app, r.headers["x-persona-turn-id"])
    assert (record["variant"], record["route"], record["persona_version"]) == ("draft", "preview", 0)


async def test_a_turn_whose_provider_fails_is_recorded_as_an_error(llm_app, llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice)
    fake_llm.script(status=500)
    r = await llm_client.post(
        "/api/v1/chat", json={"message": SECRET, "persona_id": persona["id"]}, headers=alice.headers
    )
    assert r.status_code == 502, r.text
    pool = llm_app.state.resources.pool
    rows: list[Any] = []

    async def written() -> bool:
        rows[:] = await pool.fetch("SELECT * FROM turns WHERE persona_id = $1", uuid.UUID(persona["id"]))
        return bool(rows)

    assert await eventually(written)
    (record,) = rows
    message = await pool.fetchrow("SELECT status FROM messages WHERE id = $1", record["id"])
    assert message["status"] == "error"  # the record's id is the stored answer's
    assert record["outcome"] == "error" and record["ttft_ms"] is None and record["output_tokens"] is None


async def test_records_past_the_retention_are_pruned_in_the_background(resources, alice):
    pool = resources.pool
    log = TurnLog(pool, retention_days=1, interval=0.05, prune_interval=0.05)
    old, fresh = uuid.uuid4(), uuid.uuid4()
    persona = uuid.uuid4()
    for turn_id, at in ((old, time.time() - 3 * 86400), (fresh, time.time() - 3600)):
        log.add(row(turn_id, at, alice.user.id, persona))
    log.start()
    try:

        async def pruned() -> bool:
            ids = {r["id"] for r in await pool.fetch("SELECT id FROM turns WHERE persona_id = $1", persona)}
            return ids == {fresh}

        assert await eventually(pruned)
    finally:
        await log.aclose()


async def test_records_wait_for_a_database_that_is_away(proxied, alice):
    proxy, url = proxied
    pool = await asyncpg.create_pool(url, min_size=0, max_size=2)
    log = TurnLog(pool, retention_days=90, interval=3600)
    persona = uuid.uuid4()
    try:
        await proxy.cut()
        log.add(row(uuid.uuid4(), time.time(), alice.user.id, persona))
        assert await log.flush() == 0  # refused: kept
        await proxy.start()
        assert await log.flush() == 1
        assert await pool.fetchval("SELECT count(*) FROM turns WHERE persona_id = $1", persona) == 1
    finally:
        await pool.close()


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigterm_writes_every_turn_record_before_the_process_exits(create_database, fake_llm, workers):
    database_url = await create_database()
    key = "prk_turns_shutdown_admin_key_0123456789"
    env = {
        **llm_env(fake_llm),
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": database_url,
        "BOOTSTRAP_ADMIN_KEY": key,
        "SHUTDOWN_GRACE_SECONDS": "1",
    }
    port = free_port()
    server = start_serve(port, env, "--workers", workers)
    base = f"http://127.0.0.1:{port}"
    turns = 30
    try:
        await asyncio.to_thread(wait_until_up, base, 90)
        async with httpx.AsyncClient(base_url=base, timeout=30, headers={"X-API-Key": key}) as http:
            r = await http.post(PERSONAS, json=persona_body(model_settings={"provider": "echo"}))
            persona_id = r.json()["persona"]["id"]
            fake_llm.script(chunks=tuple(f"w{i} " for i in range(100)), chunk_delay=0.1)  # ten seconds
            body = {"message": "slow", "stream": True, "provider": "openai"}
            ids: list[str] = []
            async with http.stream("POST", "/api/v1/chat", json=body) as slow:
                ids.append(slow.headers["x-persona-turn-id"])
                answers = await asyncio.gather(
                    *(
                        http.post("/api/v1/chat", json={"message": f"m{i}", "persona_id": persona_id})
                        for i in range(turns)
                    )
                )
                ids += [a.headers["x-persona-turn-id"] for a in answers]
                # The quick turns have just ended, the slow one runs on: SIGTERM before the next write. The slow one
                # ends at the grace, as the process closes: only the last write at shutdown can keep its record.
                server.send_signal(signal.SIGTERM)
                said = [line async for line in slow.aiter_lines()]
            assert any("shutting_down" in line for line in said)
        _, err = await asyncio.to_thread(server.communicate, timeout=60)
        assert server.returncode == 0, err
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT id, outcome FROM turns")
    finally:
        await conn.close()
    assert {str(r["id"]) for r in rows} == set(ids)
    assert len(rows) == turns + 1


async def test_each_candidate_of_a_comparison_and_each_test_run_is_recorded(llm_app, llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice)
    pid = uuid.UUID(persona["id"])
    fake_llm.script(chunks=("a",))
    fake_llm.script(chunks=("b",))
    candidates = [{"persona_id": persona["id"]}, {"persona_id": persona["id"], "version": 1}]
    r = await llm_client.post(
        f"{PERSONAS}/compare", json={"message": SECRET, "candidates": candidates}, headers=alice.headers
    )
    assert r.status_code == 200, r.text
    test = {"name": "greets", "message": "hi", "expect": {"contains": ["hello"]}}
    r = await llm_client.post(f"{PERSONAS}/{persona['id']}/tests", json=test, headers=alice.headers)
    assert r.status_code == 201, r.text
    fake_llm.script(chunks=("hello",))
    r = await llm_client.post(f"{PERSONAS}/{persona['id']}/tests/run", headers=alice.headers)
    assert r.status_code == 200, r.text
    pool = llm_app.state.resources.pool
    routes: list[tuple[str, str]] = []

    async def written() -> bool:
        rows = await pool.fetch("SELECT route, variant FROM turns WHERE persona_id = $1 ORDER BY route", pid)
        routes[:] = [(row["route"], row["variant"]) for row in rows]
        return len(routes) == 3

    assert await eventually(written), routes
    assert routes == [("compare", "pinned"), ("compare", "pinned"), ("test_run", "pinned")]
