"""Rate limits and token budgets of keys and personas, on every route that calls a provider (section 9)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx
import msgspec
import openai
import pytest
import redis.asyncio as aioredis

from api.app import create_app
from core.errors import RateLimited
from personas.models import Caller, Limits, ModelSettings, Persona
from runtime.access.counters import DAY, MINUTE
from runtime.access.limits import Limiter
from runtime.chat.tokens import ANSWER_RESERVE
from tests.conftest import Account, make_settings, persona_body, running
from tests.waiting import eventually

CHAT = "/api/v1/chat"
PERSONAS = "/api/v1/chat/personas"
LIMIT_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
TOKEN_HEADERS = ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")


# Counters are per minute: each test runs with the limits' clock stopped a second into one, so no window ends
# under it unless the test moves the clock on.
pytestmark = pytest.mark.usefixtures("minute")


async def limited_key(http: httpx.AsyncClient, admin: Account, user: Account, **limits: Any) -> dict[str, str]:
    """A new key of ``user``'s with ``limits``, made by an admin; the headers that carry it."""
    r = await http.post(
        f"/api/v1/admin/users/{user.id}/keys", json={"name": "limited", "limits": limits}, headers=admin.headers
    )
    assert r.status_code == 201, r.text
    assert r.json()["api_key"]["limits"] == {
        "requests_per_minute": None,
        "tokens_per_minute": None,
        "tokens_per_day": None,
        **limits,
    }
    return {"X-API-Key": r.json()["key"]}


async def chat(http: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> httpx.Response:
    return await http.post(CHAT, json={"message": "Hello", **body}, headers=headers)


async def key_usage(http: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    r = await http.get("/api/v1/keys", headers=headers)
    assert r.status_code == 200
    mine = [k for k in r.json()["keys"] if headers["X-API-Key"].startswith(k["prefix"])]
    return mine[0]


def assert_refused(r: httpx.Response, scope: str = "key") -> None:
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) >= 1
    body = r.json()
    assert body["success"] is False and body["error"]["code"] == "rate_limited"
    assert body["error"]["details"]["scope"] == scope
    assert "Try again in" in body["message"]


# Validation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"requests_per_minute": 0}, "limits.requests_per_minute"),
        ({"tokens_per_minute": -5}, "limits.tokens_per_minute"),
        ({"tokens_per_day": "many"}, "limits.tokens_per_day"),
        ({"tokens_per_day": 1.5}, "limits.tokens_per_day"),
        ({"requests_per_hour": 5}, "limits.requests_per_hour"),
    ],
)
async def test_bad_limits_are_a_400_naming_the_field(client, alice, admin, limits, field):
    for path, body, who in (
        ("/api/v1/keys", {"name": "k", "limits": limits}, alice),
        (f"/api/v1/admin/users/{alice.id}/keys", {"name": "k", "limits": limits}, admin),
        (PERSONAS, persona_body(limits=limits), alice),
    ):
        r = await client.post(path, json=body, headers=who.headers)
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"]["field"] == field, (path, r.json())
    r = await client.patch(f"/api/v1/admin/keys/{alice.key_id}", json={"limits": limits}, headers=admin.headers)
    assert r.status_code == 400 and r.json()["error"]["field"] == field


async def test_only_admins_change_a_keys_limits(client, alice, admin):
    url = f"/api/v1/admin/keys/{alice.key_id}"
    assert (await client.patch(url, json={"limits": {}}, headers=alice.headers)).status_code == 403
    missing = await client.patch(
        "/api/v1/admin/keys/00000000-0000-4000-8000-000000000001", json={"limits": {}}, headers=admin.headers
    )
    assert missing.status_code == 404
    r = await client.patch(url, json={"limits": {"tokens_per_day": 5000}}, headers=admin.headers)
    assert r.status_code == 200
    assert r.json()["api_key"]["limits"]["tokens_per_day"] == 5000


async def test_persona_limits_are_written_shown_versioned_and_exported(client, alice):
    r = await client.post(PERSONAS, json=persona_body(limits={"requests_per_minute": 30}), headers=alice.headers)
    persona = r.json()["persona"]
    assert persona["limits"] == {"requests_per_minute": 30, "tokens_per_minute": None, "tokens_per_day": None}
    url = f"{PERSONAS}/{persona['id']}"
    r = await client.put(url, json={"limits": {"tokens_per_day": 100_000}}, headers=alice.headers)
    assert r.json()["persona"]["limits"]["tokens_per_day"] == 100_000
    assert r.json()["persona"]["limits"]["requests_per_minute"] is None
    old = await client.get(f"{url}/versions/1", headers=alice.headers)
    assert old.json()["persona"]["limits"]["requests_per_minute"] == 30
    cleared = await client.put(url, json={"limits": None}, headers=alice.headers)
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["persona"]["limits"] == {
        "requests_per_minute": None,
        "tokens_per_minute": None,
        "tokens_per_day": None,
    }
    restored = await client.post(f"{url}/versions/2/restore", headers=alice.headers)
    assert restored.json()["persona"]["limits"]["tokens_per_day"] == 100_000

    document = (await client.get(f"{url}/export", headers=alice.headers)).json()
    assert document["persona"]["limits"]["tokens_per_day"] == 100_000
    document["persona"]["name"] += " copy"
    imported = await client.post(f"{PERSONAS}/import", json=document, headers=alice.headers)
    assert imported.status_code == 201, imported.text
    assert imported.json()["persona"]["limits"]["tokens_per_day"] == 100_000


# Refusals on each route ----------------------------------------------------------------------------------


async def test_key_requests_per_minute_on_chat(llm_client, fake_llm, admin, alice):
    headers = await limited_key(llm_client, admin, alice, requests_per_minute=2)
    before = (await llm_client.get("/api/v1/chat/conversations", headers=headers)).json()["total"]
    for remaining in ("1", "0"):
        r = await chat(llm_client, headers)
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-limit-requests"] == "2"
        assert r.headers["x-ratelimit-remaining-requests"] == remaining
        assert r.headers["x-ratelimit-reset-requests"].endswith("s")
        assert not any(h in r.headers for h in TOKEN_HEADERS)  # no token limit applies
    asked = len(fake_llm.chat_requests())

    refused = await chat(llm_client, headers)
    assert_refused(refused)
    assert all(refused.headers[h] for h in LIMIT_HEADERS)
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(fake_llm.chat_requests()) == asked  # no provider call
    after = (await llm_client.get("/api/v1/chat/conversations", headers=headers)).json()["total"]
    assert after == before + 2  # the refused question was not stored

    # A stream is refused before it starts; the user's other key is not limited by this one.
    streamed = await chat(llm_client, headers, stream=True)
    assert_refused(streamed)
    assert (await chat(llm_client, alice.headers)).status_code == 200


async def test_key_requests_per_minute_on_openai_completions(llm_app, llm_client, fake_llm, admin, alice):
    headers = await limited_key(llm_client, admin, alice, requests_per_minute=2, tokens_per_minute=10_000)
    sdk = openai.AsyncOpenAI(base_url=llm_app.state.base_url + "/v1", api_key=headers["X-API-Key"], max_retries=0)
    answer = await sdk.chat.completions.with_raw_response.create(
        model="persona", messages=[{"role": "user", "content": "Hi"}]
    )
    assert answer.headers["x-ratelimit-remaining-requests"] == "1"
    assert answer.headers["x-ratelimit-limit-tokens"] == "10000"
    assert all(answer.headers.get(h) for h in TOKEN_HEADERS)

    # A streamed answer carries them too, set before its first byte.
    body = {"model": "persona", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    async with llm_client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as streamed:
        assert streamed.status_code == 200
        assert streamed.headers["x-ratelimit-remaining-requests"] == "0"
        assert "data: [DONE]" in "".join([piece async for piece in streamed.aiter_text()])
    asked = len(fake_llm.chat_requests())

    with pytest.raises(openai.RateLimitError) as limited:
        await sdk.chat.completions.create(model="persona", messages=[{"role": "user", "content": "Hi"}])
    error = limited.value.body
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert "Try again in" in error["message"]
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert limited.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(fake_llm.chat_requests()) == asked


async def test_key_requests_per_minute_on_anthropic_messages(llm_app, llm_client, fake_llm, admin, alice):
    headers = await limited_key(llm_client, admin, alice, requests_per_minute=1)
    sdk = anthropic.AsyncAnthropic(base_url=llm_app.state.base_url, api_key=headers["X-API-Key"], max_retries=0)
    answer = await sdk.messages.with_raw_response.create(
        model="persona", max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
    )
    assert answer.headers["x-ratelimit-remaining-requests"] == "0"
    asked = len(fake_llm.chat_requests())

    with pytest.raises(anthropic.RateLimitError) as limited:
        await sdk.messages.create(model="persona", max_tokens=100, messages=[{"role": "user", "content": "Hi"}])
    assert limited.value.body["type"] == "error"
    assert limited.value.body["error"]["type"] == "rate_limit_error"
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert limited.value.response.headers["x-ratelimit-limit-requests"] == "1"
    assert len(fake_llm.chat_requests()) == asked


async def test_a_comparison_counts_each_candidate(llm_client, fake_llm, admin, alice):
    headers = await limited_key(llm_client, admin, alice, requests_per_minute=4)
    drafts = [{"persona": persona_body()} for _ in range(3)]
    r = await llm_client.post(f"{PERSONAS}/compare", json={"message": "Hi", "candidates": drafts}, headers=headers)
    assert r.status_code == 200, r.text
    assert [c["error"] for c in r.json()["results"]] == [None, None, None]
    assert r.headers["x-ratelimit-remaining-requests"] == "1"
    assert (await key_usage(llm_client, headers))["usage"]["requests_this_minute"] == 3
    asked = len(fake_llm.chat_requests())

    # Three more do not fit in the one left: none of them is asked.
    again = await llm_client.post(
        f"{PERSONAS}/compare", json={"message": "Hi", "candidates": drafts, "stream": True}, headers=headers
    )
    assert_refused(again)
    assert len(fake_llm.chat_requests()) == asked
    assert (await chat(llm_client, headers)).status_code == 200  # the one left
    assert_refused(await chat(llm_client, headers))


async def test_previews_and_test_runs_are_counted(llm_client, fake_llm, admin, alice):
    headers = await limited_key(llm_client, admin, alice, requests_per_minute=3)
    persona = (await llm_client.post(PERSONAS, json=persona_body(), headers=alice.headers)).json()["persona"]
    url = f"{PERSONAS}/{persona['id']}"
    for name in ("one", "two"):
        test = {"name": name, "message": "Hi", "expect": {"contains": ["fake"]}}
        assert (await llm_client.post(f"{url}/tests", json=test, headers=alice.headers)).status_code == 201
    run = await llm_client.post(f"{url}/tests/run", headers=headers)
    assert run.status_code == 200 and run.json()["passed"] == 2
    assert run.headers["x-ratelimit-remaining-requests"] == "1"
    preview = await llm_client.post(
        f"{PERSONAS}/preview", json={"persona_id": persona["id"], "message": "Hi"}, headers=headers
    )
    assert preview.status_code == 200 and preview.headers["x-ratelimit-remaining-requests"] == "0"
    asked = len(fake_llm.chat_requests())
    assert_refused(await llm_client.post(f"{url}/tests/run", headers=headers))
    assert_refused(
        await llm_client.post(
            f"{PERSONAS}/preview", json={"persona_id": persona["id"], "message": "Hi"}, headers=headers
        )
    )
    assert len(fake_llm.chat_requests()) == asked


# Budgets ---------------------------------------------------------------------------------------------------


async def test_persona_limits_bound_each_user_separately(llm_client, fake_llm, alice, bob):
    body = persona_body(visibility="public", limits={"requests_per_minute": 1})
    persona = (await llm_client.post(PERSONAS, json=body, headers=alice.headers)).json()["persona"]
    for user in (alice, bob):
        r = await chat(llm_client, user.headers, persona_id=persona["id"])
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
    asked = len(fake_llm.chat_requests())
    for user in (alice, bob):
        assert_refused(await chat(llm_client, user.headers, persona_id=persona["id"]), scope="persona")
    assert len(fake_llm.chat_requests()) == asked
    # Other personas are not bound by it.
    assert (await chat(llm_client, alice.headers)).status_code == 200


async def test_a_spent_daily_token_budget_refuses_the_next_request(llm_client, fake_llm, admin, alice):
    headers = await limited_key(llm_client, admin, alice, tokens_per_day=30)
    fake_llm.script(input_tokens=11, output_tokens=7)
    first = await chat(llm_client, headers)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-tokens"] == "30"
    assert "x-ratelimit-limit-requests" not in first.headers  # no request limit applies
    await until_tokens(llm_client, headers, 18)
    # 12 tokens are left: the next answer is admitted, and may overrun the budget.
    fake_llm.script(input_tokens=20, output_tokens=10)
    second = await chat(llm_client, headers, stream=True)
    assert second.status_code == 200 and second.headers["x-ratelimit-remaining-tokens"] == "12"
    assert "event: done" in second.text
    usage = await until_tokens(llm_client, headers, 48)
    assert usage["tokens_this_minute"] == 48 and usage["requests_this_minute"] == 2
    asked = len(fake_llm.chat_requests())
    refused = await chat(llm_client, headers)
    assert_refused(refused)
    assert "a day" in refused.json()["message"]
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    assert len(fake_llm.chat_requests()) == asked


async def test_parallel_requests_spend_at_most_the_token_budget_and_one_answer(llm_client, fake_llm, admin, alice):
    # Each answer holds its input and 1024 tokens for its answer while it runs: the first of 20 at once takes
    # the minute's 50, so the other 19 are refused before any provider call.
    headers = await limited_key(llm_client, admin, alice, tokens_per_minute=50)
    for _ in range(20):
        fake_llm.script(input_tokens=20, output_tokens=15, chunk_delay=0.05)
    answers = await asyncio.gather(*(chat(llm_client, headers, stream=True) for _ in range(20)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] + [429] * 19
    assert len(fake_llm.chat_requests()) == 1
    refused = next(a for a in answers if a.status_code == 429)
    assert "held by answers in flight" in refused.json()["message"]
    # Once the answer ends its hold settles to what it used; the budget has room again.
    usage = await until_tokens(llm_client, headers, 35)
    assert usage["tokens_this_minute"] == 35 and usage["requests_this_minute"] == 1
    fake_llm.script(input_tokens=20, output_tokens=15)
    again = await chat(llm_client, headers)
    assert again.status_code == 200 and again.headers["x-ratelimit-remaining-tokens"] == "15"
    await until_tokens(llm_client, headers, 70)
    assert_refused(await chat(llm_client, headers))


async def test_a_failed_answer_gives_back_what_it_held(llm_client, fake_llm, admin, alice):
    headers = await limited_key(llm_client, admin, alice, tokens_per_minute=50)
    fake_llm.script(status=500)
    failed = await chat(llm_client, headers)
    assert failed.status_code == 502, failed.text
    await until_tokens(llm_client, headers, 0)
    fake_llm.script(input_tokens=11, output_tokens=7)
    assert (await chat(llm_client, headers)).status_code == 200
    await until_tokens(llm_client, headers, 18)


async def test_a_hold_settles_only_where_it_was_taken(llm_client, fake_llm, admin, alice):
    # The persona's budget holds tokens; the key has only a request limit, so it holds none, and its usage shows
    # exactly the tokens used, never a settlement of a hold it did not take.
    r = await llm_client.post(
        PERSONAS,
        json=persona_body(limits={"tokens_per_minute": 100_000}),
        headers=alice.headers,
    )
    assert r.status_code == 201, r.text
    headers = await limited_key(llm_client, admin, alice, requests_per_minute=100)
    fake_llm.script(input_tokens=11, output_tokens=7)
    assert (await chat(llm_client, headers, persona_id=r.json()["persona"]["id"])).status_code == 200
    await until_tokens(llm_client, headers, 18)


async def until_tokens(
    http: httpx.AsyncClient, headers: dict[str, str], tokens: int, *, at_least: bool = False
) -> dict[str, int]:
    """The key's usage once its tokens are ``tokens`` (or, ``at_least``, that many and no answer's hold, which is
    ANSWER_RESERVE or more): an answer's tokens are held while it runs and settled in the background after it ends."""
    for _ in range(100):
        usage: dict[str, int] = (await key_usage(http, headers))["usage"]
        today = usage["tokens_today"]
        if today == tokens or (at_least and tokens <= today < tokens + ANSWER_RESERVE):
            return usage
        await asyncio.sleep(0.02)
    raise AssertionError(f"the key's tokens never reached {tokens}: {usage}")


async def test_keys_show_their_limits_and_usage(client, admin, alice):
    headers = await limited_key(client, admin, alice, requests_per_minute=10)
    assert (await chat(client, headers)).status_code == 200
    shown = await key_usage(client, headers)
    assert shown["limits"]["requests_per_minute"] == 10
    assert shown["usage"]["requests_this_minute"] == 1
    unlimited = await key_usage(client, alice.headers)
    assert unlimited["usage"] is None  # nothing is counted for a key no limit applies to


async def test_an_admin_changes_a_keys_limits_and_they_bite(client, admin, alice):
    for _ in range(3):
        r = await chat(client, alice.headers)
        assert r.status_code == 200 and "x-ratelimit-limit-requests" not in r.headers
    r = await client.patch(
        f"/api/v1/admin/keys/{alice.key_id}", json={"limits": {"requests_per_minute": 1}}, headers=admin.headers
    )
    assert r.status_code == 200
    assert (await chat(client, alice.headers)).headers["x-ratelimit-remaining-requests"] == "0"
    assert_refused(await chat(client, alice.headers))
    await client.patch(f"/api/v1/admin/keys/{alice.key_id}", json={"limits": {}}, headers=admin.headers)
    assert (await chat(client, alice.headers)).status_code == 200


async def test_a_request_no_limit_applies_to_counts_nothing(client, resources, alice):
    r = await chat(client, alice.headers)
    assert r.status_code == 200 and not any(h in r.headers for h in (*LIMIT_HEADERS, *TOKEN_HEADERS))
    store = aioredis.from_url(resources.settings.redis_url)
    try:
        found = [k async for k in store.scan_iter(match=f"*rl:key:{alice.key_id}*")]
    finally:
        await store.aclose()
    assert found == []


# Windows -------------------------------------------------------------------------------------------------


async def test_the_minute_starts_afresh_when_the_clock_passes_it_and_the_day_when_it_passes_the_day(
    client, admin, alice, minute
):
    minute.set(time.time() // DAY * DAY + DAY / 2 + 1)  # noon UTC, a second into the minute
    headers = await limited_key(client, admin, alice, requests_per_minute=1, tokens_per_day=1_000_000)
    first = await chat(client, headers)
    assert first.status_code == 200 and first.headers["x-ratelimit-reset-requests"] == "59s"
    used = await until_tokens(client, headers, 1, at_least=True)
    assert used["requests_this_minute"] == 1 and used["tokens_this_minute"] == used["tokens_today"] > 0
    refused = await chat(client, headers)
    assert_refused(refused)
    assert refused.headers["retry-after"] == "59"

    minute.advance(MINUTE - 2)  # the minute's last second: still refused, and told to wait that second
    refused = await chat(client, headers)
    assert_refused(refused)
    assert refused.headers["retry-after"] == "1"

    minute.advance(1)  # the next minute: its requests and tokens start from nothing, the day's tokens go on
    assert (await key_usage(client, headers))["usage"] == {
        "requests_this_minute": 0,
        "tokens_this_minute": 0,
        "tokens_today": used["tokens_today"],
    }
    again = await chat(client, headers)
    assert again.status_code == 200, again.text
    assert again.headers["x-ratelimit-remaining-requests"] == "0"
    assert again.headers["x-ratelimit-reset-requests"] == "1m0s"
    today = await until_tokens(client, headers, used["tokens_today"] + 1, at_least=True)
    assert today["requests_this_minute"] == 1 and today["tokens_this_minute"] < today["tokens_today"]

    minute.set(minute() // DAY * DAY + DAY)  # midnight UTC: a new day's budget
    assert (await key_usage(client, headers))["usage"] == {
        "requests_this_minute": 0,
        "tokens_this_minute": 0,
        "tokens_today": 0,
    }
    assert (await chat(client, headers)).status_code == 200


# Defaults, instances, outages -------------------------------------------------------------------------------


async def test_env_defaults_apply_to_keys_without_their_own(database_url, redis_url, make_user, minute):
    settings = make_settings(database_url, redis_url, key_requests_per_minute=1, key_tokens_per_day=1_000_000)
    async with running(create_app(settings, clock=minute)) as api:
        user, admin = await make_user("dora"), await make_user("boss", admin=True)
        first = await chat(api, user.headers)
        assert first.headers["x-ratelimit-limit-requests"] == "1"
        assert first.headers["x-ratelimit-limit-tokens"] == "1000000"
        assert_refused(await chat(api, user.headers))

        # A key's own limit replaces the default; only an admin may set one looser than it.
        loose = await api.post(
            "/api/v1/keys", json={"name": "x", "limits": {"requests_per_minute": 5}}, headers=user.headers
        )
        assert loose.status_code == 403 and loose.json()["error"]["field"] == "limits.requests_per_minute"
        tight = await api.post(
            "/api/v1/keys", json={"name": "x", "limits": {"tokens_per_day": 10}}, headers=user.headers
        )
        assert tight.status_code == 201
        assert (await chat(api, {"X-API-Key": tight.json()["key"]})).headers["x-ratelimit-limit-tokens"] == "10"
        headers = await limited_key(api, admin, user, requests_per_minute=3)
        r = await chat(api, headers)
        assert r.headers["x-ratelimit-limit-requests"] == "3" and r.headers["x-ratelimit-limit-tokens"] == "1000000"


async def test_two_instances_sharing_redis_enforce_one_budget(client, second_client, admin, alice):
    headers = await limited_key(client, admin, alice, requests_per_minute=3)
    assert (await chat(client, headers)).status_code == 200
    assert (await chat(second_client, headers)).status_code == 200
    assert (await chat(client, headers)).headers["x-ratelimit-remaining-requests"] == "0"
    assert_refused(await chat(second_client, headers))
    assert_refused(await chat(client, headers))


async def test_with_redis_gone_each_process_still_limits_and_requests_succeed(
    database_url, redis_process, make_user, caplog, minute
):
    caplog.set_level(logging.WARNING, logger="persona_runtime.limits")
    async with running(create_app(make_settings(database_url, redis_process.url), clock=minute)) as api:
        user, admin = await make_user("erin"), await make_user("boss", admin=True)
        headers = await limited_key(api, admin, user, requests_per_minute=2)
        assert (await chat(api, headers)).status_code == 200

        redis_process.stop()
        # Counted in this process from here: two more, then refused; never an error.
        for _ in range(2):
            assert (await chat(api, headers)).status_code == 200
        assert_refused(await chat(api, headers))
        usage = await key_usage(api, headers)
        assert usage["usage"]["requests_this_minute"] == 2
        outage = [r for r in caplog.records if "Redis unavailable for rate limits" in r.getMessage()]
        assert len(outage) == 1

        redis_process.start()  # empty again: Redis counts afresh once it is tried, a second after the failure

        async def admitted() -> bool:  # refused by this process's count until then, never an error
            r = await chat(api, headers)
            assert r.status_code in (200, 429), r.text
            return r.status_code == 200

        assert await eventually(admitted, within=5, interval=0.1)
        assert "reachable again" in caplog.text


async def test_rate_limited_metric_counts_refusals_by_scope(client, resources, admin, alice):
    before = resources.metrics.rate_limited.labels(scope="key")._value.get()
    headers = await limited_key(client, admin, alice, requests_per_minute=1)
    await chat(client, headers)
    assert_refused(await chat(client, headers))
    assert resources.metrics.rate_limited.labels(scope="key")._value.get() == before + 1
    text = (await client.get("/metrics")).text
    assert 'outcome="rejected"' in text


async def test_the_check_reloads_its_script_after_redis_forgets_it_for_one_scope_and_several(redis_process, minute):
    """EVALSHA, and EVAL when Redis answers NOSCRIPT (a restart, SCRIPT FLUSH), with one scope or two."""
    client = aioredis.from_url(redis_process.url)
    limiter = Limiter(client, prefix="t:", clock=minute)
    now = datetime.now(UTC)
    persona = Persona(
        id=uuid.uuid4(), name="P", description="", system_prompt="x", personality_traits={}, capabilities={},
        model_settings=ModelSettings(), tools=[], visibility="public", limits=Limits(requests_per_minute=3),
        is_active=True, is_default=False, version=1, created_by=None, created_at=now, updated_at=now,
    )  # fmt: skip
    caller = Caller(
        user_id=uuid.uuid4(), user_name="u", display_name=None, is_admin=False, key_id=uuid.uuid4(),
        key_limits=Limits(requests_per_minute=10, tokens_per_day=100),
    )  # fmt: skip
    spawned: list[Any] = []
    try:
        first = await limiter.admit(caller, [persona], spawned.append)
        assert first is not None and first.headers["x-ratelimit-remaining-requests"] == "2"
        await client.script_flush()
        second = await limiter.admit(caller, [persona], spawned.append)
        assert second is not None and second.headers["x-ratelimit-remaining-requests"] == "1"
        second.spend(persona.id, 150)
        await limiter.flush()
        with pytest.raises(RateLimited) as refused:  # the key's day budget is spent
            await limiter.admit(caller, [persona], spawned.append)
        assert refused.value.scope == "key"
        keys = sorted([k.decode() async for k in client.scan_iter(match="t:*")])
        assert keys and all("{rl:" in k for k in keys)  # every counter under its scope's hash tag
        for work in spawned:  # the persona's request, counted by the refused check, is given back
            await work
        persona_only = msgspec.structs.replace(caller, key_limits=None)
        third = await limiter.admit(persona_only, [persona], spawned.append)
        assert third is not None and third.headers["x-ratelimit-remaining-requests"] == "0"
    finally:
        await client.aclose()
