"""A rolling restart behind HAProxy loses nothing: three instances under steady load (streamed and JSON chat
turns, persona reads) are stopped with SIGTERM and started again one at a time. No request fails, no stream
is cut, and every stored answer is complete and is what its client received."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import asyncpg
import httpx

from tests.cluster import ScaleOut, ServeInstance
from tests.fakellm import Script
from tests.sse import parse_sse
from tests.waiting import eventually

CHAT = "/api/v1/chat"
PERSONAS = "/api/v1/chat/personas"
WORDS = tuple(f"w{n} " for n in range(12))
# An answer streams for about 0.6 s, well inside the cluster's SHUTDOWN_GRACE_SECONDS: some are always in
# flight when an instance stops, and each may end on the instance that began it.
CHUNK_DELAY = 0.05
STREAM_CLIENTS, JSON_CLIENTS, READ_CLIENTS = 4, 2, 2


@dataclass
class Load:
    """What the clients did and saw; ``answers`` maps each answer's message id to the text its client got."""

    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    streams: int = 0
    json_turns: int = 0
    reads: int = 0
    failures: list[str] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)
    conversations: set[str] = field(default_factory=set)

    @property
    def requests(self) -> int:
        return self.streams + self.json_turns + self.reads + len(self.failures)


async def stream_turns(http: httpx.AsyncClient, load: Load, client: int) -> None:
    while not load.stopping.is_set():
        body = {"message": f"stream from client {client}", "stream": True}
        text = ""
        try:
            async with http.stream("POST", CHAT, json=body) as response:
                async for chunk in response.aiter_text():
                    text += chunk
        except httpx.HTTPError as exc:
            load.failures.append(f"stream: {exc!r} after {text[-200:]!r}")
            continue
        if response.status_code != 200:
            load.failures.append(f"stream: {response.status_code} {text[:200]}")
            continue
        events, _ = parse_sse(text)
        names = [e.event for e in events]
        if len(events) < 3 or names[0] != "start" or names[-2] != "done" or events[-1].data != "[DONE]":
            load.failures.append(f"stream cut: {names}, ending {text[-200:]!r}")
            continue
        start = events[0].json
        load.answers[start["message_id"]] = "".join(e.json["content"] for e in events if e.event == "content")
        load.conversations.add(start["conversation_id"])
        load.streams += 1


async def json_turns(http: httpx.AsyncClient, load: Load, client: int) -> None:
    while not load.stopping.is_set():
        try:
            response = await http.post(CHAT, json={"message": f"json from client {client}"})
        except httpx.HTTPError as exc:
            load.failures.append(f"json turn: {exc!r}")
            continue
        if response.status_code != 200:
            load.failures.append(f"json turn: {response.status_code} {response.text[:200]}")
            continue
        turn = response.json()
        load.answers[turn["message_id"]] = turn["response"]
        load.conversations.add(turn["conversation_id"])
        load.json_turns += 1


async def persona_reads(http: httpx.AsyncClient, load: Load) -> None:
    while not load.stopping.is_set():
        try:
            response = await http.get(PERSONAS)
        except httpx.HTTPError as exc:
            load.failures.append(f"read: {exc!r}")
            continue
        if response.status_code != 200:
            load.failures.append(f"read: {response.status_code} {response.text[:200]}")
            continue
        load.reads += 1
        await asyncio.sleep(0.02)


def streams_in_flight(instance: ServeInstance, within: float = 5.0) -> float:
    """The streams ``instance`` is sending, waiting up to ``within`` seconds for it to have one."""
    deadline = time.monotonic() + within
    while True:
        count = instance.metric("persona_runtime_streams_in_flight")
        if count > 0 or time.monotonic() > deadline:
            return count
        time.sleep(0.02)


def restart(scale_out: ScaleOut, instance: ServeInstance) -> float:
    """SIGTERM, wait for the process to end, start it again and wait for HAProxy to have it back; seconds
    from the signal to the end of the old process."""
    signalled = time.monotonic()
    instance.stop()
    drained = time.monotonic() - signalled
    assert instance.process is not None and instance.process.returncode == 0, instance.log()
    instance.start()
    instance.wait_ready()
    scale_out.balancer.wait_for_states({instance.name: "UP"})
    return drained


def balancer_figures(scale_out: ScaleOut) -> dict[str, int]:
    rows = scale_out.balancer.stats()
    backends = [r for r in rows if r["svname"] == "BACKEND" and r["pxname"] in ("runtime", "runtime_writes")]
    frontend = next(r for r in rows if r["pxname"] == "public" and r["svname"] == "FRONTEND")
    return {
        "retries": sum(int(r["wretr"] or 0) for r in backends),
        "redispatches": sum(int(r["wredis"] or 0) for r in backends),
        "5xx": int(frontend["hrsp_5xx"] or 0),
    }


async def test_instances_restarted_one_at_a_time_under_load_lose_no_request_stream_or_message(scale_out, fake_llm):
    fake_llm.default = Script(chunks=WORDS, chunk_delay=CHUNK_DELAY)
    load = Load()
    before = await asyncio.to_thread(balancer_figures, scale_out)
    clients = [
        httpx.AsyncClient(base_url=scale_out.url, headers=scale_out.admin_headers, timeout=30)
        for _ in range(STREAM_CLIENTS + JSON_CLIENTS + READ_CLIENTS)
    ]
    began = time.monotonic()
    try:
        workers = [
            *(stream_turns(clients[n], load, n) for n in range(STREAM_CLIENTS)),
            *(json_turns(clients[STREAM_CLIENTS + n], load, n) for n in range(JSON_CLIENTS)),
            *(persona_reads(clients[STREAM_CLIENTS + JSON_CLIENTS + n], load) for n in range(READ_CLIENTS)),
        ]
        running = [asyncio.create_task(w) for w in workers]
        await asyncio.sleep(1.0)  # steady load on all three first
        in_flight, drains = [], []
        for instance in scale_out.instances:
            in_flight.append(await asyncio.to_thread(streams_in_flight, instance))
            drains.append(await asyncio.to_thread(restart, scale_out, instance))
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)
        load.stopping.set()
        await asyncio.gather(*running)
    finally:
        load.stopping.set()
        for client in clients:
            await client.aclose()
    duration = time.monotonic() - began
    after = await asyncio.to_thread(balancer_figures, scale_out)
    balancer = {name: after[name] - before[name] for name in after}
    print(
        f"rolling restart: {len(scale_out.instances)} restarts in {duration:.1f} s, {load.requests} requests "
        f"({load.streams} streams, {load.json_turns} JSON turns, {load.reads} reads), {len(load.failures)} "
        f"failed; streams in flight on each instance at SIGTERM {in_flight}, drained in "
        f"{', '.join(f'{d:.2f}' for d in drains)} s; HAProxy {balancer['retries']} retries, "
        f"{balancer['redispatches']} redispatches, {balancer['5xx']} 5xx"
    )

    assert load.failures == [], scale_out.balancer.log()
    assert balancer["5xx"] == 0, scale_out.balancer.log()
    # The load was real: streams were running on each instance as it was told to stop, and on every instance.
    assert all(n > 0 for n in in_flight), in_flight
    assert load.streams > 0 and load.json_turns > 0 and load.reads > 0
    assert set(load.answers.values()) == {"".join(WORDS)}

    # Stored: one complete assistant message per answer a client got, with the same text. No replayed request
    # left a second turn, and none is incomplete.
    conn = await asyncpg.connect(scale_out.database_url)
    try:
        stored: dict[str, tuple[str, str]] = {}

        async def all_stored() -> bool:
            rows = await conn.fetch(
                "SELECT id::text, status, content FROM messages WHERE role = 'assistant' AND conversation_id = ANY($1)",
                list(load.conversations),
            )
            stored.clear()
            stored.update({r["id"]: (r["status"], r["content"]) for r in rows})
            return all(status != "pending" for status, _ in stored.values())

        assert await eventually(all_stored, within=5)
    finally:
        await conn.close()
    assert stored == {message_id: ("complete", text) for message_id, text in load.answers.items()}
