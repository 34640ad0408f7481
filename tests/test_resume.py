"""Resumable streams: event ids, replay and live follow on any instance, resumable answers, cancel, leases."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from api.app import create_app
from personas.models import MU_ID
from tests.conftest import llm_env, make_settings, serving
from tests.fakellm import FakeLLM
from tests.sse import Event, parse_sse
from tests.waiting import eventually

CHAT = "/api/v1/chat"
WORDS = tuple(f"word{n} " for n in range(12))


def events_url(message_id: str) -> str:
    return f"{CHAT}/messages/{message_id}/events"


@pytest.fixture(scope="session")
async def other_instance(
    database_url: str, redis_url: str, fake_llm_server: FakeLLM
) -> AsyncIterator[httpx.AsyncClient]:
    """A second instance on the same database and Redis, on a port of its own."""
    app = create_app(make_settings(database_url, redis_url, env=llm_env(fake_llm_server), heartbeat_seconds=0.3))
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        yield http


async def read_events(response: httpx.Response | AsyncIterator[str], count: int) -> list[Event]:
    """Read the stream until ``count`` events have arrived (a client that then hangs up)."""
    text = ""
    chunks = response.aiter_text() if isinstance(response, httpx.Response) else response
    async for chunk in chunks:
        text += chunk
        events, _ = parse_sse(text)
        if len(events) >= count:
            return events[:count]
    raise AssertionError(f"the stream ended after {len(parse_sse(text)[0])} events")


async def stored_answer(http: httpx.AsyncClient, account, conversation_id: str, *, settled: bool = True) -> dict:
    for _ in range(100):
        r = await http.get(f"{CHAT}/conversations/{conversation_id}", headers=account.headers)
        assert r.status_code == 200, r.text
        answer = r.json()["messages"][-1]
        if not settled or answer["status"] != "pending":
            return answer
        await asyncio.sleep(0.05)
    raise AssertionError("the answer stayed pending")


def text_of(events: list[Event]) -> str:
    return "".join(e.json["content"] for e in events if e.event == "content")


async def test_event_ids_are_the_message_id_and_a_count(llm_client, fake_llm, alice):
    fake_llm.script(chunks=("one ", "two ", "three"))
    r = await llm_client.post(CHAT, json={"message": "count", "stream": True}, headers=alice.headers)
    events, _ = parse_sse(r.text)
    message_id = events[0].json["message_id"]
    named = [e for e in events if e.event]
    assert [e.id for e in named] == [f"{message_id}:{n}" for n in range(1, len(named) + 1)]
    assert events[-1].data == "[DONE]"


async def test_a_finished_stream_is_replayed_whole_or_after_an_id(llm_client, other_instance, fake_llm, alice):
    fake_llm.script(chunks=("alpha ", "beta ", "gamma"))
    r = await llm_client.post(CHAT, json={"message": "replay me", "stream": True}, headers=alice.headers)
    sent, _ = parse_sse(r.text)
    message_id = sent[0].json["message_id"]
    # From the first event, on another instance (through the shared Redis), byte for byte the same events.
    whole = await other_instance.get(events_url(message_id), headers=alice.headers)
    assert whole.status_code == 200 and whole.headers["content-type"].startswith("text/event-stream")
    assert [(e.event, e.id, e.data) for e in parse_sse(whole.text)[0]] == [(e.event, e.id, e.data) for e in sent]
    # After an id given as Last-Event-ID, or as ?after=, only what follows it.
    cut = sent[2].id
    for asked in ({"headers": {**alice.headers, "Last-Event-ID": cut}}, {"params": {"after": cut}}):
        rest = await other_instance.get(events_url(message_id), **{"headers": alice.headers, **asked})
        assert [e.id for e in parse_sse(rest.text)[0]] == [e.id for e in sent[3:]]


async def test_a_resumable_answer_goes_on_after_a_hang_up_and_resumes_on_another_instance(
    llm_client, other_instance, fake_llm, alice
):
    fake_llm.script(chunks=WORDS, chunk_delay=0.05)
    body = {"message": "long one", "stream": True, "resumable": True}
    async with llm_client.stream("POST", CHAT, json=body, headers=alice.headers) as r:
        first = await read_events(r, 4)  # start and three pieces, then the client leaves
    message_id, conversation_id = first[0].json["message_id"], first[0].json["conversation_id"]
    resumed = await other_instance.get(events_url(message_id), headers={**alice.headers, "Last-Event-ID": first[-1].id})
    rest, _ = parse_sse(resumed.text)
    assert rest[0].id == f"{message_id}:5", "the resumed stream starts right after the last event received"
    assert [e.event for e in rest][-2:] == ["done", None] and rest[-1].data == "[DONE]"
    answer = await stored_answer(llm_client, alice, conversation_id)
    assert answer["status"] == "complete"
    assert text_of(first) + text_of(rest) == answer["content"] == "".join(WORDS)
    assert fake_llm.last_request.completed, "the provider call ran to its end"


async def test_without_resumable_a_hang_up_still_stops_the_answer(llm_client, fake_llm, alice):
    fake_llm.script(chunks=WORDS, chunk_delay=0.1)
    async with llm_client.stream("POST", CHAT, json={"message": "stop", "stream": True}, headers=alice.headers) as r:
        first = await read_events(r, 3)
    assert await fake_llm.last_request.wait_disconnected(within=1.0)
    answer = await stored_answer(llm_client, alice, first[0].json["conversation_id"])
    assert answer["status"] == "incomplete"
    # Its stream can be replayed, and ends with an error rather than hanging: the answer did not finish.
    replay = await llm_client.get(events_url(first[0].json["message_id"]), headers=alice.headers)
    events, _ = parse_sse(replay.text)
    assert events[-2].event == "error" and events[-1].data == "[DONE]"
    assert text_of(events) == answer["content"]


async def test_resuming_is_for_the_owner_and_needs_a_valid_id(llm_client, fake_llm, alice, bob):
    fake_llm.script(chunks=("mine",))
    r = await llm_client.post(CHAT, json={"message": "private", "stream": True}, headers=alice.headers)
    message_id = parse_sse(r.text)[0][0].json["message_id"]
    assert (await llm_client.get(events_url(message_id), headers=bob.headers)).status_code == 404
    assert (await llm_client.get(events_url(str(uuid.uuid4())), headers=alice.headers)).status_code == 404
    for bad in ("nope", f"{uuid.uuid4()}:2", "-1", f"{message_id}:x"):
        answer = await llm_client.get(events_url(message_id), headers={**alice.headers, "Last-Event-ID": bad})
        assert answer.status_code == 400, bad
        assert answer.json()["error"]["field"] == "Last-Event-ID"
    assert (await llm_client.post(f"{CHAT}/messages/{message_id}/cancel", headers=bob.headers)).status_code == 404


async def test_a_stream_past_its_retention_is_gone(database_url, redis_url, fake_llm, alice):
    for shared in (redis_url, None):  # replayed from Redis, and from this process's memory
        settings = make_settings(database_url, shared, env=llm_env(fake_llm), stream_retention_seconds=0.5)
        async with serving(create_app(settings)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            fake_llm.script(chunks=("brief",))
            r = await http.post(CHAT, json={"message": "short-lived", "stream": True}, headers=alice.headers)
            start = parse_sse(r.text)[0][0].json
            assert (await http.get(events_url(start["message_id"]), headers=alice.headers)).status_code == 200
            url = events_url(start["message_id"])

            async def expired(url: str = url, http: httpx.AsyncClient = http) -> bool:  # 0.5 s after its end
                return (await http.get(url, headers=alice.headers)).status_code != 200

            assert await eventually(expired, within=3, interval=0.05)
            gone = await http.get(url, headers=alice.headers)
            assert gone.status_code == 410, gone.text
            assert gone.json()["error"]["code"] == "stream_expired"
            # The message itself is kept.
            assert (await stored_answer(http, alice, start["conversation_id"]))["content"] == "brief"


async def test_a_message_answered_without_a_stream_has_no_events_to_replay(llm_client, fake_llm, alice):
    fake_llm.script(chunks=("whole",))
    r = await llm_client.post(CHAT, json={"message": "no stream please", "stream": False}, headers=alice.headers)
    assert r.status_code == 200, r.text
    replay = await llm_client.get(events_url(r.json()["message_id"]), headers=alice.headers)
    assert replay.status_code == 404, replay.text
    assert replay.json()["error"]["code"] == "not_streamed"
    assert "answered without a stream" in replay.json()["message"]


async def test_a_stream_lost_with_its_instance_is_told_apart_from_one_past_its_retention(database_url, fake_llm, alice):
    settings = make_settings(database_url, None, env=llm_env(fake_llm))
    async with serving(create_app(settings)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        fake_llm.script(chunks=("kept here only",))
        r = await http.post(CHAT, json={"message": "before a restart", "stream": True}, headers=alice.headers)
        message_id = parse_sse(r.text)[0][0].json["message_id"]
    # The instance that held its recording (without Redis) is gone; another one is asked within the retention.
    async with serving(create_app(settings)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        lost = await http.get(events_url(message_id), headers=alice.headers)
        assert lost.status_code == 410, lost.text
        assert lost.json()["error"]["code"] == "stream_expired"
        assert "no longer recorded: the server restarted since it ended" in lost.json()["message"]
        conn = await asyncpg.connect(database_url)
        try:  # as if it had ended an hour ago
            await conn.execute(
                "UPDATE messages SET created_at = created_at - interval '1 hour' WHERE id = $1", message_id
            )
        finally:
            await conn.close()
        expired = await http.get(events_url(message_id), headers=alice.headers)
        assert expired.status_code == 410, expired.text
        assert expired.json()["error"]["code"] == "stream_expired"
        assert (
            "s ago and can no longer be replayed (streams are kept 600 s after they end)" in expired.json()["message"]
        )


async def test_without_redis_an_answer_running_on_another_instance_is_a_conflict_that_says_so(
    database_url, fake_llm, alice
):
    settings = make_settings(database_url, None, env=llm_env(fake_llm))
    async with (
        serving(create_app(settings)) as running_url,
        serving(create_app(settings)) as other_url,
        httpx.AsyncClient(base_url=running_url, timeout=30) as running,
        httpx.AsyncClient(base_url=other_url, timeout=30) as other,
    ):
        fake_llm.script(chunks=WORDS, chunk_delay=0.2)
        body = {"message": "a slow one", "stream": True, "resumable": True}  # runs on when its client leaves
        async with running.stream("POST", CHAT, json=body, headers=alice.headers) as r:
            first = await read_events(r, 2)
            asked = await other.get(events_url(first[0].json["message_id"]), headers=alice.headers)
        assert asked.status_code == 409, asked.text
        assert "being generated by another instance" in asked.json()["message"]
        assert "REDIS_URL" in asked.json()["message"]


async def cancel_mid_answer(
    llm_client: httpx.AsyncClient, canceller: httpx.AsyncClient, fake_llm: FakeLLM, alice, message: str
) -> tuple[list[Event], list[Event]]:
    """A resumable answer on ``llm_client``, cancelled through ``canceller`` after two events: the events
    before the cancel and the rest of the stream."""
    fake_llm.script(chunks=WORDS, chunk_delay=0.2)
    body = {"message": message, "stream": True, "resumable": True}
    async with llm_client.stream("POST", CHAT, json=body, headers=alice.headers) as r:
        chunks = r.aiter_text()
        first = await read_events(chunks, 2)
        message_id = first[0].json["message_id"]
        cancelled = await canceller.post(f"{CHAT}/messages/{message_id}/cancel", headers=alice.headers)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "incomplete"
        rest = "".join([chunk async for chunk in chunks])
    return first, parse_sse(rest)[0]


async def test_cancel_stops_a_running_answer_and_keeps_what_was_said(llm_client, fake_llm, alice):
    first, tail = await cancel_mid_answer(llm_client, llm_client, fake_llm, alice, "go on")
    message_id = first[0].json["message_id"]
    assert tail[-2].event == "error" and tail[-2].json["code"] == "cancelled" and tail[-1].data == "[DONE]"
    assert await fake_llm.last_request.wait_disconnected(within=1.0)
    answer = await stored_answer(llm_client, alice, first[0].json["conversation_id"])
    assert answer["status"] == "incomplete" and len(answer["content"].split()) < len(WORDS)
    again = await llm_client.post(f"{CHAT}/messages/{message_id}/cancel", headers=alice.headers)
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"


async def test_a_resumable_answer_without_streaming_is_finished_after_the_client_leaves(
    llm_client, fake_llm, alice, resources
):
    fake_llm.script(chunks=WORDS[:6], chunk_delay=0.15)
    with pytest.raises(httpx.ReadTimeout):
        await llm_client.post(
            CHAT,
            json={"message": "patience", "resumable": True},
            headers=alice.headers,
            timeout=httpx.Timeout(30, read=0.3),
        )
    for _ in range(60):
        row = await resources.pool.fetchrow(
            "SELECT m.status, m.content FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            "WHERE c.user_id = $1 AND m.role = 'assistant' ORDER BY m.seq DESC LIMIT 1",
            alice.user.id,
        )
        if row["status"] != "pending":
            break
        await asyncio.sleep(0.05)
    assert row["status"] == "complete" and row["content"] == "".join(WORDS[:6])


async def test_an_answer_whose_instance_stopped_renewing_is_swept_and_its_stream_ends(
    llm_client, fake_llm, alice, resources
):
    # An answer left pending by an instance that is gone: nobody holds or renews its lease.
    conversations = resources.conversations
    saved = conversations.lease_seconds
    conversations.lease_seconds = 0.3
    try:
        conversation, message_id = await conversations.begin_turn(
            user_id=alice.user.id,
            conversation=None,
            message="orphan",
            persona_id=MU_ID,
            persona_version=1,
            persona_source="default",
            provider="echo",
            model="echo",
            streamed=True,
        )
    finally:
        conversations.lease_seconds = saved
    # A reader waiting on it is told it ended once the lease runs out and a sweep marks it incomplete.
    reader = asyncio.create_task(llm_client.get(events_url(str(message_id)), headers=alice.headers))

    async def swept() -> bool:  # a sweep after the lease's 0.3 s
        await resources.leases.tick()
        return reader.done()

    assert await eventually(swept, within=10, interval=0.1)
    replay = reader.result()
    events, _ = parse_sse(replay.text)
    assert events[-2].event == "error" and events[-2].json["code"] == "interrupted"
    answer = await stored_answer(llm_client, alice, str(conversation.id))
    assert answer["status"] == "incomplete"


async def test_a_stream_recorded_while_redis_is_down_is_still_replayed_by_its_instance(
    database_url, redis_process, fake_llm, alice
):
    settings = make_settings(database_url, redis_process.url, env=llm_env(fake_llm))
    async with serving(create_app(settings)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        redis_process.stop()
        try:
            fake_llm.script(chunks=("kept ", "here"))
            r = await http.post(CHAT, json={"message": "no redis", "stream": True}, headers=alice.headers)
            assert r.status_code == 200
            sent, _ = parse_sse(r.text)
            assert sent[-2].event == "done"
            replay = await http.get(events_url(sent[0].json["message_id"]), headers=alice.headers)
            assert replay.status_code == 200
            assert [e.data for e in parse_sse(replay.text)[0]] == [e.data for e in sent]
        finally:
            redis_process.start()


async def test_a_cancel_sent_to_another_instance_stops_the_answer_where_it_runs(
    llm_client, other_instance, fake_llm, alice
):
    first, tail = await cancel_mid_answer(llm_client, other_instance, fake_llm, alice, "elsewhere")
    assert tail[-2].event == "error" and tail[-2].json["code"] == "cancelled"
    assert await fake_llm.last_request.wait_disconnected(within=1.0), "the provider call was closed"
    answer = await stored_answer(llm_client, alice, first[0].json["conversation_id"])
    assert answer["status"] == "incomplete" and len(answer["content"].split()) < len(WORDS)


async def test_recording_goes_on_after_redis_forgot_its_script(database_url, redis_process, fake_llm, alice):
    import redis.asyncio as aioredis

    settings = make_settings(database_url, redis_process.url, env=llm_env(fake_llm))
    async with (
        serving(create_app(settings)) as one_url,
        serving(create_app(settings)) as two_url,
        httpx.AsyncClient(base_url=one_url, timeout=30) as one,
        httpx.AsyncClient(base_url=two_url, timeout=30) as two,
    ):
        for n in range(2):
            if n == 1:  # as after a Redis restart: the script the recordings are written with is gone
                client = aioredis.from_url(redis_process.url)
                await client.script_flush()
                await client.aclose()
            fake_llm.script(chunks=(f"take {n} ", "recorded"))
            r = await one.post(CHAT, json={"message": "again", "stream": True}, headers=alice.headers)
            sent, _ = parse_sse(r.text)
            replay = await two.get(events_url(sent[0].json["message_id"]), headers=alice.headers)
            assert replay.status_code == 200, replay.text
            assert [e.data for e in parse_sse(replay.text)[0]] == [e.data for e in sent]


async def _recorded_up_to(client, key: str) -> int:
    """How many frames of a stream Redis holds: each entry has its first number, and frames ending in a blank line."""
    entries = await client.xrange(key)
    return max((int(fields[b"f"]) + fields[b"d"].count(b"\n\n") - 1 for _, fields in entries), default=0)


@pytest.mark.parametrize("resumable", [True, False])
async def test_a_resumable_answer_sends_no_event_before_redis_has_it(
    llm_app, llm_client, fake_llm, alice, redis_url, resumable
):
    import redis.asyncio as aioredis

    fake_llm.script(chunks=WORDS, chunk_delay=0.01)
    streams = llm_app.state.resources.streams
    client = aioredis.Redis.from_url(redis_url)
    ahead: list[bool] = []
    try:
        body = {"message": "long one", "stream": True, "resumable": resumable}
        async with llm_client.stream("POST", CHAT, json=body, headers=alice.headers) as r:
            text = ""
            async for chunk in r.aiter_text():
                text += chunk
                events, _ = parse_sse(text)
                numbered = [e for e in events if e.id]
                if not numbered:
                    continue
                message_id, n = numbered[-1].id.rsplit(":", 1)
                # Checked as each event arrives: was it in Redis before it reached the client?
                ahead.append(await _recorded_up_to(client, streams.key(uuid.UUID(message_id))) >= int(n))
        events, _ = parse_sse(text)
        assert events[-1].data == "[DONE]" and len(ahead) >= len(WORDS) // 2
    finally:
        await client.aclose()
    if resumable:
        assert all(ahead), ahead
    else:  # other streams keep their batched writes, which follow what the client got
        assert not all(ahead), ahead
