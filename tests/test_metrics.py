"""GET /metrics: the contract's series in Prometheus text, added up across workers, with nothing secret in them."""

from __future__ import annotations

import asyncio
import os
import re
import signal

import httpx
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from tests.conftest import make_settings, running
from tests.services import free_port
from tests.test_cli import start_serve, wait_until_up

CHAT = "/api/v1/chat"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_need_no_key_and_count_requests_and_turns(client, alice):
    before = (await client.get("/metrics")).text
    r = await client.post(CHAT, json={"message": "count me please"}, headers=alice.headers)
    assert r.status_code == 200
    after = await client.get("/metrics")
    assert after.status_code == 200 and after.headers["content-type"].startswith("text/plain")
    text = after.text

    def grew(name: str, **labels: str) -> float:
        return value(text, name, **labels) - value(before, name, **labels)

    assert grew("persona_runtime_http_requests_total", route="/api/v1/chat", method="POST", status="200") == 1
    turn = {"route": "chat", "provider": "echo", "model": "echo-1", "persona_source": "default"}
    assert grew("persona_runtime_chat_turns_total", **turn, outcome="complete") == 1
    assert grew("persona_runtime_tokens_total", provider="echo", kind="output") == 4  # "[echo] count me please"
    assert grew("persona_runtime_ttft_seconds_count", provider="echo") == 1
    assert grew("persona_runtime_turn_seconds_count", provider="echo") == 1
    assert value(text, "persona_runtime_streams_in_flight") == 0
    lookups = sum(v for (name, _), v in samples(text).items() if name == "persona_runtime_cache_requests_total")
    assert lookups > 0
    for name in ("persona_runtime_provider_errors_total", "persona_runtime_rate_limited_total"):
        assert f"# TYPE {name} counter" in text
    # No label carries a key, a prompt or message text; unknown paths are not labels either.
    await client.get("/no/such/path/prk_secret")
    text = (await client.get("/metrics")).text
    assert "count me please" not in text and alice.key not in text and "prk_secret" not in text
    assert value(text, "persona_runtime_http_requests_total", route="unmatched", method="GET", status="404") >= 1


async def test_provider_failures_are_counted_by_code(llm_client, fake_llm, alice):
    before = (await llm_client.get("/metrics")).text
    fake_llm.script(status=401)
    r = await llm_client.post(CHAT, json={"message": "hi"}, headers=alice.headers)
    assert r.status_code == 502
    text = (await llm_client.get("/metrics")).text
    name, labels = "persona_runtime_provider_errors_total", {"provider": "openai", "kind": "provider_rejected"}
    assert value(text, name, **labels) - value(before, name, **labels) == 1


async def test_metrics_off_removes_the_route(database_url, redis_url):
    async with running(create_app(make_settings(database_url, redis_url, metrics=False))) as http:
        assert (await http.get("/metrics")).status_code == 404


async def test_with_two_workers_the_figures_cover_both(create_database, tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": await create_database(),
        "BOOTSTRAP_ADMIN_KEY": "prk_metrics_test_admin_key_0123456789",
        # Where the workers write their figures (serve makes a folder of its own when this is unset).
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    port = free_port()
    server = start_serve(port, env, "--workers", "2")
    base = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_until_up, base, 90)
        for _ in range(40):  # a new connection each time, so both workers answer some
            async with httpx.AsyncClient(base_url=base) as http:
                assert (await http.get("/health", headers={"Connection": "close"})).status_code == 200
        async with httpx.AsyncClient(base_url=base) as http:
            text = (await http.get("/metrics")).text
        # Both workers counted requests, and the one that answered /metrics added up both.
        assert len({f.name.rsplit("_", 1)[-1] for f in tmp_path.glob("counter_*.db")}) == 2
        assert value(text, "persona_runtime_http_requests_total", route="/health", method="GET", status="200") == 40
        assert re.search(r"persona_runtime_streams_in_flight(\{\})? 0\.0", text)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        await asyncio.to_thread(server.wait, 60)


async def test_invented_models_share_one_series_and_user_text_never_becomes_a_label(client, alice):
    """Models no one configured are labelled ``other``: 2,000 made-up names add no series at all."""

    async def chat(model: str) -> None:
        r = await client.post(CHAT, json={"message": "hi", "model": model}, headers=alice.headers)
        assert r.status_code == 200, r.text

    await chat("warm-up-model")  # every series this kind of turn makes exists from here on
    before = samples((await client.get("/metrics")).text)
    names = [f"invented-{i}-ignore-previous-instructions" for i in range(2_000)]
    for start in range(0, len(names), 50):
        await asyncio.gather(*(chat(name) for name in names[start : start + 50]))
    text = (await client.get("/metrics")).text
    after = samples(text)

    def labelled(found: dict) -> set:
        """The series of the families labelled by provider or model."""
        families = ("chat_turns", "tokens", "ttft_seconds", "turn_seconds", "provider_errors")
        return {key for key in found if key[0].startswith(tuple(f"persona_runtime_{f}" for f in families))}

    assert labelled(after) == labelled(before)  # the same series, only their values grew
    assert "invented-" not in text and "warm-up-model" not in text
    turn = {"route": "chat", "provider": "echo", "model": "other", "persona_source": "default", "outcome": "complete"}
    grew = value(text, "persona_runtime_chat_turns_total", **turn) - before.get(
        ("persona_runtime_chat_turns_total", tuple(sorted(turn.items()))), 0.0
    )
    assert grew == 2_000
