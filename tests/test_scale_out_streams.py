"""Streams across instances behind HAProxy: resumed on another instance, cancelled from another, and what
an instance killed mid-answer leaves behind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx

from runtime.access.counters import MINUTE
from tests.cluster import ScaleOut
from tests.sse import Event, parse_sse
from tests.test_scale_out import REQUESTS, SEEN_WITHIN
from tests.waiting import eventually

CHAT = "/api/v1/chat"
WORDS = tuple(f"part{n} " for n in range(16))


def running_answer(scale_out: ScaleOut) -> int:
    """The instance generating the one answer under way (from each instance's streams-in-flight gauge)."""
    busy = [n for n, i in enumerate(scale_out.instances) if i.metric("persona_runtime_streams_in_flight") > 0]
    assert len(busy) == 1, busy
    return busy[0]


def counts(scale_out: ScaleOut, route: str, method: str) -> list[float]:
    return [i.metric(REQUESTS, route=route, method=method, status="200") for i in scale_out.instances]


async def answered_by(scale_out: ScaleOut, route: str, method: str, before: list[float]) -> int:
    """The instance that answered one more ``method route`` since ``before`` (counted once its answer ended)."""
    changed: list[int] = []

    async def one_more() -> bool:
        after = await asyncio.to_thread(counts, scale_out, route, method)
        changed[:] = [n for n, (a, b) in enumerate(zip(before, after, strict=True)) if b != a]
        return len(changed) == 1

    assert await eventually(one_more, within=SEEN_WITHIN), changed
    return changed[0]


async def first_events(chunks: AsyncIterator[str], count: int) -> list[Event]:
    text = ""
    async for chunk in chunks:
        text += chunk
        events, _ = parse_sse(text)
        if len(events) >= count:
            return events[:count]
    raise AssertionError("the stream ended early")


def text_of(events: list[Event]) -> str:
    return "".join(e.json["content"] for e in events if e.event == "content")


async def stored(http: httpx.AsyncClient, start: dict, status: str, within: float) -> dict:
    found: dict = {}

    async def has_status() -> bool:
        r = await http.get(f"{CHAT}/conversations/{start['conversation_id']}")
        found.update(next(m for m in r.json()["messages"] if m["id"] == start["message_id"]))
        return found["status"] == status

    assert await eventually(has_status, within=within), found
    return found


async def test_a_stream_cut_and_resumed_through_the_balancer_lands_elsewhere_and_misses_nothing(scale_out, fake_llm):
    fake_llm.script(chunks=WORDS, chunk_delay=0.1)
    body = {"message": "resume me elsewhere", "stream": True, "resumable": True}
    async with httpx.AsyncClient(base_url=scale_out.url, headers=scale_out.admin_headers, timeout=30) as http:
        async with http.stream("POST", CHAT, json=body) as response:
            seen = await first_events(response.aiter_text(), 4)  # then the client's connection drops
        runner = await asyncio.to_thread(running_answer, scale_out)
        start = seen[0].json
        route = CHAT + "/messages/{message_id}/events"
        # Reads and writes rotate over the instances separately (docs/haproxy.cfg), so the resume may first land
        # on the stream's own instance: a resume is a replay, so ask again until another instance answers, which
        # one round of the rotation guarantees.
        for _ in scale_out.instances:
            before = await asyncio.to_thread(counts, scale_out, route, "GET")
            resumed = await http.get(
                f"{CHAT}/messages/{start['message_id']}/events", headers={"Last-Event-ID": seen[-1].id}
            )
            resumer = await answered_by(scale_out, route, "GET", before)
            if resumer != runner:
                break
        assert resumer != runner, "the resume was answered by another instance than the stream's"
        rest, _ = parse_sse(resumed.text)
        assert rest[0].id == f"{start['message_id']}:5"
        assert [e.event for e in rest][-2:] == ["done", None]
        answer = await stored(http, start, "complete", within=5)
    assert text_of(seen) + text_of(rest) == answer["content"] == "".join(WORDS)


async def test_a_cancel_through_the_balancer_stops_the_answer_on_the_instance_running_it(scale_out, fake_llm):
    fake_llm.script(chunks=WORDS, chunk_delay=0.25)
    body = {"message": "stop me from elsewhere", "stream": True, "resumable": True}
    async with httpx.AsyncClient(base_url=scale_out.url, headers=scale_out.admin_headers, timeout=30) as http:
        async with http.stream("POST", CHAT, json=body) as response:
            chunks = response.aiter_text()
            seen = await first_events(chunks, 2)
            runner = await asyncio.to_thread(running_answer, scale_out)
            start = seen[0].json
            route = CHAT + "/messages/{message_id}/cancel"
            before = await asyncio.to_thread(counts, scale_out, route, "POST")
            cancelled = await http.post(f"{CHAT}/messages/{start['message_id']}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["status"] == "incomplete"
            canceller = await answered_by(scale_out, route, "POST", before)
            assert canceller != runner, "the cancel was sent to another instance than the answer's"
            rest = "".join([chunk async for chunk in chunks])
        tail, _ = parse_sse(rest)
        assert tail[-2].event == "error" and tail[-2].json["code"] == "cancelled"
        assert await fake_llm.last_request.wait_disconnected(within=1.0)
        answer = await stored(http, start, "incomplete", within=2)
    assert len(answer["content"].split()) < len(WORDS)


async def test_an_instance_killed_mid_answer_leaves_it_incomplete_and_its_stream_ends_with_an_error(
    scale_out, fake_llm
):
    fake_llm.script(chunks=WORDS, chunk_delay=0.3)
    body = {"message": "I will lose my instance", "stream": True, "resumable": True}
    async with httpx.AsyncClient(base_url=scale_out.url, headers=scale_out.admin_headers, timeout=30) as http:
        async with http.stream("POST", CHAT, json=body) as response:
            seen = await first_events(response.aiter_text(), 3)
            runner = scale_out.instances[await asyncio.to_thread(running_answer, scale_out)]
            start = seen[0].json
            # The events seen are in the shared recording once another instance can replay them from it.
            other = next(i for i in scale_out.instances if i is not runner)
            async with (
                httpx.AsyncClient(base_url=other.url, headers=scale_out.admin_headers, timeout=30) as elsewhere,
                elsewhere.stream("GET", f"{CHAT}/messages/{start['message_id']}/events") as replay,
            ):
                assert text_of(await first_events(replay.aiter_text(), 3)) == text_of(seen)
            await asyncio.to_thread(runner.kill)
        # Nobody renews its lease (1.5 s here): another instance marks it incomplete, with what was said.
        answer = await stored(http, start, "incomplete", within=10)
        assert answer["content"].startswith(text_of(seen)) and "".join(WORDS).startswith(answer["content"])
        resumed = await http.get(f"{CHAT}/messages/{start['message_id']}/events")
    events, _ = parse_sse(resumed.text)
    assert events[0].event == "start"
    assert text_of(events) == answer["content"]  # the recording holds what was kept
    assert events[-2].event == "error" and events[-2].json["code"] == "interrupted"
    assert events[-1].data == "[DONE]"


async def four_requests_on_three_a_minute(
    http: httpx.AsyncClient, scale_out: ScaleOut, fake_llm
) -> tuple[list[httpx.Response], httpx.Response, list[float]]:
    """A new key allowed three requests a minute, asked four times through the balancer: the first three
    answers, the fourth, and how many of the three each instance answered."""
    user = await http.post("/api/v1/admin/users", json={"name": f"limited-{time.time_ns()}"})
    assert user.status_code == 201, user.text
    made = await http.post(
        f"/api/v1/admin/users/{user.json()['user']['id']}/keys",
        json={"name": "three a minute", "limits": {"requests_per_minute": 3}},
    )
    assert made.status_code == 201, made.text
    headers = {"X-API-Key": made.json()["key"]}
    before = await asyncio.to_thread(counts, scale_out, CHAT, "POST")
    answers = []
    for _ in range(3):
        fake_llm.script(chunks=("ok",))
        answers.append(await http.post(CHAT, json={"message": "count me"}, headers=headers))
    fourth = await http.post(CHAT, json={"message": "one too many"}, headers=headers)
    served: list[float] = []

    async def all_counted() -> bool:  # an answer is counted once it has ended
        after = await asyncio.to_thread(counts, scale_out, CHAT, "POST")
        served[:] = [b - a for a, b in zip(before, after, strict=True)]
        return sum(served) == 3

    assert await eventually(all_counted, within=SEEN_WITHIN), served
    return answers, fourth, served


async def test_a_keys_rate_limit_holds_across_instances_behind_the_balancer(scale_out, fake_llm):
    # The instances count in wall-clock minutes (processes of their own: no clock of the test's to read). A
    # minute that ended among the four starts afresh, as it should: then the four are asked once more, at the
    # start of the next minute, where they all fit.
    async with httpx.AsyncClient(base_url=scale_out.url, headers=scale_out.admin_headers, timeout=30) as http:
        for _ in range(2):
            began = time.time() // MINUTE
            answers, refused, served = await four_requests_on_three_a_minute(http, scale_out, fake_llm)
            if time.time() // MINUTE == began:
                break
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert served == [1, 1, 1], "each instance answered one of the three"
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
