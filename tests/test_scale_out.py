"""Three `serve` processes behind HAProxy on one PostgreSQL and one Redis: what a client of the balancer sees."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.cluster import ScaleOut
from tests.conftest import persona_body
from tests.sse import parse_sse
from tests.waiting import eventually

BASE = "/api/v1/chat/personas"
REQUESTS = "persona_runtime_http_requests_total"

# Another instance's write shows within PERSONA_LOCAL_CACHE_SECONDS (1 s) and a revocation within the key
# cache's second; the polls below allow one more second for requests on a machine shared with other tests.
SEEN_WITHIN = 2.0


def answered(scale_out: ScaleOut, route: str) -> list[float]:
    """How many GETs of ``route`` each instance has answered with 200, from its own /metrics."""
    return [i.metric(REQUESTS, route=route, method="GET", status="200") for i in scale_out.instances]


async def test_requests_through_the_balancer_are_spread_over_every_instance(scale_out):
    before = await asyncio.to_thread(answered, scale_out, BASE)
    # One client, one kept-alive connection: HAProxy still balances each request on its own.
    async with httpx.AsyncClient(base_url=scale_out.url, headers=scale_out.admin_headers, timeout=10) as http:
        for _ in range(30):
            assert (await http.get(BASE)).status_code == 200
    after = await asyncio.to_thread(answered, scale_out, BASE)
    served = [b - a for a, b in zip(before, after, strict=True)]
    assert sum(served) == 30
    assert all(n > 0 for n in served), served


async def test_a_persona_edited_through_the_balancer_is_seen_at_its_new_version_by_every_instance(scale_out):
    async with httpx.AsyncClient(base_url=scale_out.url, headers=scale_out.admin_headers, timeout=10) as http:
        created = await http.post(BASE, json=persona_body(visibility="public"))
        assert created.status_code == 201, created.text
        url = f"{BASE}/{created.json()['persona']['id']}"
        directs = [
            httpx.AsyncClient(base_url=i.url, headers=scale_out.admin_headers, timeout=10) for i in scale_out.instances
        ]
        try:
            # Every instance reads it first, so each holds version 1 in its caches when the edit lands.
            for direct in directs:
                assert (await direct.get(url)).json()["persona"]["version"] == 1
            edited = await http.put(url, json={"description": "edited through the balancer"})
            assert edited.status_code == 200 and edited.json()["persona"]["version"] == 2

            async def everywhere_at_version_2() -> bool:
                seen = [(await direct.get(url)).json()["persona"] for direct in directs]
                return all(p["version"] == 2 and p["description"] == "edited through the balancer" for p in seen)

            assert await eventually(everywhere_at_version_2, within=SEEN_WITHIN)
        finally:
            for direct in directs:
                await direct.aclose()


async def test_a_key_revoked_through_the_balancer_is_refused_by_every_instance(scale_out):
    async with httpx.AsyncClient(base_url=scale_out.url, timeout=10) as http:
        user = await http.post("/api/v1/admin/users", json={"name": "revokee"}, headers=scale_out.admin_headers)
        if user.status_code == 409:  # a rerun against the same session's database
            user = await http.post(
                "/api/v1/admin/users", json={"name": f"revokee-{time.time_ns()}"}, headers=scale_out.admin_headers
            )
        assert user.status_code == 201, user.text
        made = await http.post(
            f"/api/v1/admin/users/{user.json()['user']['id']}/keys",
            json={"name": "soon revoked"},
            headers=scale_out.admin_headers,
        )
        assert made.status_code == 201, made.text
        headers = {"X-API-Key": made.json()["key"]}
        directs = [httpx.AsyncClient(base_url=i.url, headers=headers, timeout=10) for i in scale_out.instances]
        try:
            for direct in directs:  # each instance has the key in its lookup cache
                assert (await direct.get("/api/v1/keys")).status_code == 200
            revoked = await http.delete(f"/api/v1/keys/{made.json()['api_key']['id']}", headers=headers)
            assert revoked.status_code == 200, revoked.text

            async def refused_everywhere() -> bool:
                return all([(await direct.get("/api/v1/keys")).status_code == 401 for direct in directs])

            assert await eventually(refused_everywhere, within=SEEN_WITHIN)
            assert (await http.get("/api/v1/keys", headers=headers)).status_code == 401
        finally:
            for direct in directs:
                await direct.aclose()


async def test_a_stream_through_the_balancer_arrives_event_by_event(scale_out, fake_llm):
    # The fake model sends one piece and then nothing until the client leaves: an answer buffered anywhere
    # on the way (HAProxy, the runtime) would never show that piece.
    fake_llm.script(chunks=("first piece", " never sent"), hang_after=1)
    body = {"message": "stream through the balancer", "stream": True}
    lines: list[str] = []
    async with (
        httpx.AsyncClient(base_url=scale_out.url, headers=scale_out.admin_headers, timeout=30) as http,
        http.stream("POST", "/api/v1/chat", json=body) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            lines.append(line)
            if line.startswith("data:") and '"content"' in line:
                break
    events, _ = parse_sse("\n".join(lines) + "\n\n")
    assert [e.event for e in events] == ["start", "content"]
    assert events[1].json["content"] == "first piece"
    start = events[0].json

    # The client's hang-up went through HAProxy to the instance, which dropped the provider call and kept
    # the partial answer; any instance shows it.
    assert await fake_llm.last_request.wait_disconnected(10)
    async with httpx.AsyncClient(base_url=scale_out.url, headers=scale_out.admin_headers, timeout=10) as http:

        async def kept_incomplete() -> bool:
            r = await http.get(f"/api/v1/chat/conversations/{start['conversation_id']}")
            answer = [m for m in r.json()["messages"] if m["id"] == start["message_id"]]
            return bool(answer) and answer[0]["status"] == "incomplete" and answer[0]["content"] == "first piece"

        assert await eventually(kept_incomplete, within=10)


async def test_a_chat_turn_answered_by_one_instance_is_in_the_conversation_on_every_other(scale_out, fake_llm):
    fake_llm.script(chunks=("Hello", " from behind", " the balancer."))
    async with httpx.AsyncClient(base_url=scale_out.url, headers=scale_out.admin_headers, timeout=30) as http:
        turn = await http.post("/api/v1/chat", json={"message": "hi"})
        assert turn.status_code == 200, turn.text
        assert turn.json()["response"] == "Hello from behind the balancer."
    for instance in scale_out.instances:
        async with httpx.AsyncClient(base_url=instance.url, headers=scale_out.admin_headers, timeout=10) as direct:
            r = await direct.get(f"/api/v1/chat/conversations/{turn.json()['conversation_id']}")
            assert [m["content"] for m in r.json()["messages"]] == ["hi", "Hello from behind the balancer."]


async def test_an_instance_killed_leaves_the_others_answering_and_rejoins_when_restarted(scale_out):
    victim = scale_out.instances[0]
    await asyncio.to_thread(victim.kill)
    async with httpx.AsyncClient(base_url=scale_out.url, headers=scale_out.admin_headers, timeout=10) as http:
        # Requests HAProxy sends the dead instance before its health check notices are sent to another.
        for _ in range(12):
            assert (await http.get(BASE)).status_code == 200
        await asyncio.to_thread(scale_out.balancer.wait_for_states, {victim.name: "DOWN"})
        for _ in range(6):
            assert (await http.get(BASE)).status_code == 200

        await asyncio.to_thread(victim.restart)
        await asyncio.to_thread(scale_out.balancer.wait_for_states, {victim.name: "UP"})
        for _ in range(9):
            assert (await http.get(BASE)).status_code == 200
    # A fresh process: every request it counted came after the restart, through the balancer.
    assert await asyncio.to_thread(victim.metric, REQUESTS, route=BASE, method="GET", status="200") > 0
