"""Labels (contract section 16): production follows the latest save until pinned, custom labels, versions picked
by `persona/<name>@<label|n>` on /v1 and `persona_version` on /api/v1/chat, who may do what, and cross-instance
invalidation."""

from __future__ import annotations

import openai
import pytest

from api.app import create_app
from runtime.server.settings import Settings
from tests.conftest import make_settings, persona_body, running
from tests.waiting import eventually

PERSONAS = "/api/v1/chat/personas"
CHAT = "/api/v1/chat"


async def saved_twice(http, account, **fields):
    """A persona at version 2, whose versions say which one they are in their system prompt."""
    r = await http.post(
        PERSONAS, json=persona_body(system_prompt="You are version one.", **fields), headers=account.headers
    )
    assert r.status_code == 201, r.text
    persona = r.json()["persona"]
    r = await http.put(
        f"{PERSONAS}/{persona['id']}", json={"system_prompt": "You are version two."}, headers=account.headers
    )
    assert r.status_code == 200 and r.json()["persona"]["version"] == 2
    return r.json()["persona"]


def system_sent(fake_llm) -> str:
    return fake_llm.last_request.body["messages"][0]["content"]


async def chat(http, account, persona_id, **more):
    r = await http.post(CHAT, json={"message": "hi", "persona_id": persona_id, **more}, headers=account.headers)
    return r


async def test_pinned_production_serves_the_old_version_while_the_latest_save_waits(llm_client, fake_llm, alice):
    persona = await saved_twice(llm_client, alice)
    pid, labels = persona["id"], f"{PERSONAS}/{persona['id']}/labels"
    r = await llm_client.get(labels, headers=alice.headers)
    assert r.status_code == 200
    assert r.json() == {"success": True, "labels": {"production": {"version": 2, "pinned": False}}}

    r = await llm_client.put(f"{labels}/production", json={"version": 1}, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == {"production": {"version": 1, "pinned": True}}
    # A save after pinning waits too: production keeps serving version 1.
    r = await llm_client.put(
        f"{PERSONAS}/{pid}", json={"system_prompt": "You are version three."}, headers=alice.headers
    )
    assert r.json()["persona"]["version"] == 3

    r = await chat(llm_client, alice, pid)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["persona"]["version"] == 1 and system_sent(fake_llm).startswith("You are version one.")
    r = await llm_client.get(f"{CHAT}/conversations/{body['conversation_id']}", headers=alice.headers)
    answer = r.json()["messages"][1]
    assert (answer["persona_version"], answer["variant"]) == (1, "production")

    sdk = openai.AsyncOpenAI(base_url=llm_client.base_url.join("/v1").__str__(), api_key=alice.key, max_retries=0)
    raw = await sdk.chat.completions.with_raw_response.create(
        model=f"persona/{persona['name']}", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-persona-version"] == "1" and system_sent(fake_llm).startswith("You are version one.")

    # Unpinned: production follows the latest save again.
    r = await llm_client.delete(f"{labels}/production", headers=alice.headers)
    assert r.status_code == 200 and r.json()["labels"] == {"production": {"version": 3, "pinned": False}}
    r = await chat(llm_client, alice, pid)
    assert r.json()["persona"]["version"] == 3 and system_sent(fake_llm).startswith("You are version three.")


async def test_custom_labels_and_numbers_pick_a_version_on_v1_and_in_chat_bodies(llm_client, fake_llm, alice, bob):
    persona = await saved_twice(llm_client, alice, visibility="public")
    pid, name, labels = persona["id"], persona["name"], f"{PERSONAS}/{persona['id']}/labels"
    assert (await llm_client.put(f"{labels}/beta-1", json={"version": 1}, headers=alice.headers)).status_code == 200
    r = await llm_client.get(labels, headers=bob.headers)  # whoever may use the persona sees its labels
    assert r.json()["labels"] == {"production": {"version": 2, "pinned": False}, "beta-1": {"version": 1}}

    for account in (alice, bob):
        sdk = openai.AsyncOpenAI(base_url=str(llm_client.base_url.join("/v1")), api_key=account.key, max_retries=0)
        raw = await sdk.chat.completions.with_raw_response.create(
            model=f"persona/{name}@beta-1", messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.headers["x-persona-version"] == "1" and system_sent(fake_llm).startswith("You are version one.")
        assert (await sdk.models.retrieve(f"persona/{name}@beta-1")).id == f"persona/{name}@beta-1"

        r = await chat(llm_client, account, pid, persona_version="beta-1")
        assert r.status_code == 200 and r.json()["persona"]["version"] == 1
        r = await chat(llm_client, account, pid, persona_version="production")
        assert r.json()["persona"]["version"] == 2 and system_sent(fake_llm).startswith("You are version two.")

    # The other /v1 routes read the model the same way.
    r = await llm_client.post(
        "/v1/messages",
        json={"model": f"persona/{name}@beta-1", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]},
        headers=bob.headers,
    )
    assert r.status_code == 200 and r.headers["x-persona-version"] == "1", r.text
    r = await llm_client.post(
        "/v1/responses", json={"model": f"persona/{name}@beta-1", "input": "hi", "store": False}, headers=bob.headers
    )
    assert r.status_code == 200 and r.headers["x-persona-version"] == "1", r.text
    assert system_sent(fake_llm).startswith("You are version one.")

    # A number is for the owner and admins: bob may use the persona, but not pick its versions by number.
    owner = openai.AsyncOpenAI(base_url=str(llm_client.base_url.join("/v1")), api_key=alice.key, max_retries=0)
    raw = await owner.chat.completions.with_raw_response.create(
        model=f"persona/{name}@1", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-persona-version"] == "1"
    r = await chat(llm_client, alice, pid, persona_version=1)
    assert r.status_code == 200 and r.json()["persona"]["version"] == 1
    conversation = r.json()["conversation_id"]
    r = await llm_client.get(f"{CHAT}/conversations/{conversation}", headers=alice.headers)
    assert r.json()["messages"][1]["variant"] == "pinned"

    r = await llm_client.post(
        "/v1/chat/completions",
        json={"model": f"persona/{name}@1", "messages": [{"role": "user", "content": "hi"}]},
        headers=bob.headers,
    )
    assert r.status_code == 403 and r.json()["error"]["param"] == "model"
    r = await chat(llm_client, bob, pid, persona_version=1)
    assert r.status_code == 403 and r.json()["error"]["field"] == "persona_version"

    # Unknown labels and versions are 404s naming what was sent.
    r = await llm_client.post(
        "/v1/chat/completions",
        json={"model": f"persona/{name}@nope", "messages": [{"role": "user", "content": "hi"}]},
        headers=bob.headers,
    )
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    for number in ("9", "0", "99999999999999999999"):
        r = await llm_client.post(
            "/v1/chat/completions",
            json={"model": f"persona/{name}@{number}", "messages": [{"role": "user", "content": "hi"}]},
            headers=alice.headers,
        )
        assert r.status_code == 404 and r.json()["error"]["param"] == "model", r.text
    r = await chat(llm_client, alice, pid, persona_version=9)
    assert r.status_code == 404 and r.json()["error"]["field"] == "persona_version"
    r = await chat(llm_client, alice, pid, persona_version="Not A Label")
    assert r.status_code == 400 and "persona_version" in r.json()["message"]


async def test_only_the_owner_or_an_admin_sets_labels_and_labels_are_checked(client, alice, bob, admin):
    persona = await saved_twice(client, alice, visibility="public")
    labels = f"{PERSONAS}/{persona['id']}/labels"
    r = await client.put(f"{labels}/production", json={"version": 1}, headers=bob.headers)
    assert r.status_code == 403
    assert (await client.delete(f"{labels}/production", headers=bob.headers)).status_code == 403
    private = await saved_twice(client, alice)
    r = await client.put(f"{PERSONAS}/{private['id']}/labels/beta", json={"version": 1}, headers=bob.headers)
    assert r.status_code == 404  # invisible: not even its existence is told

    r = await client.put(f"{labels}/staging", json={"version": 1}, headers=admin.headers)
    assert r.status_code == 200 and r.json()["labels"]["staging"] == {"version": 1}

    for bad in ("Beta", "a" * 33, "no.dots"):
        r = await client.put(f"{labels}/{bad}", json={"version": 1}, headers=alice.headers)
        assert r.status_code == 400 and r.json()["error"]["field"] == "label", (bad, r.text)
    r = await client.put(f"{labels}/beta", json={"version": 7}, headers=alice.headers)
    assert r.status_code == 404 and r.json()["error"]["field"] == "version"
    r = await client.put(f"{labels}/beta", json={"version": "one"}, headers=alice.headers)
    assert r.status_code == 400 and "version" in r.json()["message"]
    r = await client.delete(f"{labels}/never-set", headers=alice.headers)
    assert r.status_code == 404 and r.json()["error"]["field"] == "label"
    r = await client.delete(f"{labels}/staging", headers=alice.headers)
    assert r.status_code == 200 and "staging" not in r.json()["labels"]


@pytest.mark.parametrize("with_redis", [True, False], ids=["redis", "no-redis"])
async def test_a_pin_or_rollout_on_one_instance_is_served_by_another_within_a_second(
    database_url, redis_url, make_user, with_redis
):
    # Kept 30 s in each instance's memory: only the announcement can explain the change within a second.
    settings: Settings = make_settings(database_url, redis_url if with_redis else None, persona_local_cache_seconds=30)
    one, two = create_app(settings), create_app(settings)
    async with running(one) as first, running(two) as second:
        alice = await make_user("alice")
        persona = await saved_twice(first, alice)
        pid = persona["id"]
        assert (await chat(second, alice, pid)).json()["persona"]["version"] == 2  # now held by the second

        r = await first.put(f"{PERSONAS}/{pid}/labels/production", json={"version": 1}, headers=alice.headers)
        assert r.status_code == 200

        async def pinned() -> bool:
            return bool((await chat(second, alice, pid)).json()["persona"]["version"] == 1)

        assert await eventually(pinned, within=1.0, interval=0.05)
        r = await second.get(f"{PERSONAS}/{pid}/labels", headers=alice.headers)
        assert r.json()["labels"]["production"] == {"version": 1, "pinned": True}

        # A rollout set on the first instance reaches the second as fast: at 100%, every user is in it.
        r = await first.put(f"{PERSONAS}/{pid}/rollout", json={"version": 2, "percent": 100}, headers=alice.headers)
        assert r.status_code == 200

        async def rolled_out() -> bool:
            return bool((await chat(second, alice, pid)).json()["persona"]["version"] == 2)

        assert await eventually(rolled_out, within=1.0, interval=0.05)
        assert (await first.delete(f"{PERSONAS}/{pid}/rollout", headers=alice.headers)).status_code == 200
        assert await eventually(pinned, within=1.0, interval=0.05)

        assert (await first.delete(f"{PERSONAS}/{pid}/labels/production", headers=alice.headers)).status_code == 200

        async def following() -> bool:
            return bool((await chat(second, alice, pid)).json()["persona"]["version"] == 2)

        assert await eventually(following, within=1.0, interval=0.05)
