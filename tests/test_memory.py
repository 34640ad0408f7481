"""Memories (contract section 15): the API, who reaches a memory, and what deleting a user does."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import persona_body

MEMORIES = "/api/v1/memories"
PERSONAS = "/api/v1/chat/personas"


async def make_persona(http, account, **fields):
    r = await http.post(PERSONAS, json=persona_body(**fields), headers=account.headers)
    assert r.status_code == 201, r.text
    return r.json()["persona"]


async def remember(http, account, content, persona_id=None):
    body = {"content": content} if persona_id is None else {"content": content, "persona_id": persona_id}
    r = await http.post(MEMORIES, json=body, headers=account.headers)
    assert r.status_code == 201, r.text
    return r.json()["memory"]


async def test_a_memory_is_made_listed_rewritten_and_forgotten(client, alice):
    persona = await make_persona(client, alice)
    wide = await remember(client, alice, "Alice is vegetarian.")
    assert wide["persona_id"] is None and wide["source"] == "user" and wide["source_message_id"] is None
    own = await remember(client, alice, "  Alice plays the cello.  ", persona["id"])
    assert own["content"] == "Alice plays the cello." and own["persona_id"] == persona["id"]

    r = await client.get(MEMORIES, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 2 and [m["id"] for m in r.json()["memories"]] == [own["id"], wide["id"]]
    r = await client.get(MEMORIES, params={"persona_id": persona["id"]}, headers=alice.headers)
    assert [m["id"] for m in r.json()["memories"]] == [own["id"]] and r.json()["total"] == 1
    r = await client.get(MEMORIES, params={"limit": 1, "offset": 1}, headers=alice.headers)
    assert [m["id"] for m in r.json()["memories"]] == [wide["id"]] and r.json()["total"] == 2

    r = await client.patch(f"{MEMORIES}/{own['id']}", json={"content": "Alice plays the viola."}, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert r.json()["memory"]["content"] == "Alice plays the viola."
    assert r.json()["memory"]["updated_at"] > own["updated_at"]

    r = await client.delete(f"{MEMORIES}/{own['id']}", headers=alice.headers)
    assert r.status_code == 200, r.text
    r = await client.delete(f"{MEMORIES}/{own['id']}", headers=alice.headers)
    assert r.status_code == 404
    r = await client.delete(MEMORIES, headers=alice.headers)
    assert r.json() == {"success": True, "deleted": 1}
    r = await client.get(MEMORIES, headers=alice.headers)
    assert r.json()["memories"] == [] and r.json()["total"] == 0


async def test_forgetting_one_persona_keeps_the_others(client, alice):
    one, two = await make_persona(client, alice), await make_persona(client, alice)
    await remember(client, alice, "For one.", one["id"])
    await remember(client, alice, "For one again.", one["id"])
    await remember(client, alice, "For two.", two["id"])
    await remember(client, alice, "For all.")
    r = await client.delete(MEMORIES, params={"persona_id": one["id"]}, headers=alice.headers)
    assert r.status_code == 200 and r.json()["deleted"] == 2
    r = await client.get(MEMORIES, headers=alice.headers)
    assert sorted(m["content"] for m in r.json()["memories"]) == ["For all.", "For two."]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"content": ""}, "content"),
        ({"content": "   "}, "content"),
        ({"content": "x" * 1001}, "content"),
        ({"content": 5}, "content"),
        ({}, "content"),
        ({"content": "ok", "persona_id": "not-a-uuid"}, "persona_id"),
        ({"content": "ok", "extra": 1}, "extra"),
    ],
)
async def test_bad_memories_are_400s_naming_the_field(client, alice, body, field):
    r = await client.post(MEMORIES, json=body, headers=alice.headers)
    assert r.status_code == 400, r.text
    assert field in r.text
    r = await client.get(MEMORIES, headers=alice.headers)
    assert r.json()["total"] == 0


async def test_a_memory_for_a_persona_one_cannot_see_is_refused(client, alice, bob):
    private = await make_persona(client, bob, visibility="private")
    r = await client.post(MEMORIES, json={"content": "x", "persona_id": private["id"]}, headers=alice.headers)
    assert r.status_code == 404 and "persona_id" in r.text
    r = await client.post(MEMORIES, json={"content": "x", "persona_id": str(uuid.uuid4())}, headers=alice.headers)
    assert r.status_code == 404


async def test_the_switch_is_the_callers_own_and_on_by_default(client, alice, bob):
    r = await client.get(f"{MEMORIES}/settings", headers=alice.headers)
    assert r.status_code == 200 and r.json()["enabled"] is True
    r = await client.put(f"{MEMORIES}/settings", json={"enabled": False}, headers=alice.headers)
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert (await client.get(f"{MEMORIES}/settings", headers=alice.headers)).json()["enabled"] is False
    assert (await client.get(f"{MEMORIES}/settings", headers=bob.headers)).json()["enabled"] is True
    r = await client.put(f"{MEMORIES}/settings", json={"enabled": "no"}, headers=alice.headers)
    assert r.status_code == 400 and "enabled" in r.text
    r = await client.put(f"{MEMORIES}/settings", json={"enabled": True}, headers=alice.headers)
    assert r.json()["enabled"] is True


@pytest.mark.parametrize("who", ["stranger", "persona_owner", "admin"])
async def test_only_the_user_reaches_their_memory(client, make_user, alice, who):
    """Over every route: someone else's memory id is a 404 and their lists and bulk deletes never see it."""
    other = await make_user(who, admin=who == "admin")
    owned_by = other if who == "persona_owner" else alice
    persona = await make_persona(client, owned_by, visibility="public")
    memory = await remember(client, alice, "Alice's secret.", persona["id"])
    wide = await remember(client, alice, "Alice's other secret.")

    for m in (memory, wide):
        r = await client.patch(f"{MEMORIES}/{m['id']}", json={"content": "taken"}, headers=other.headers)
        assert r.status_code == 404, r.text
        r = await client.delete(f"{MEMORIES}/{m['id']}", headers=other.headers)
        assert r.status_code == 404, r.text
    r = await client.get(MEMORIES, headers=other.headers)
    assert r.json()["memories"] == [] and r.json()["total"] == 0
    r = await client.get(MEMORIES, params={"persona_id": persona["id"]}, headers=other.headers)
    assert r.json()["memories"] == []
    r = await client.delete(MEMORIES, params={"persona_id": persona["id"]}, headers=other.headers)
    assert r.json()["deleted"] == 0
    r = await client.delete(MEMORIES, headers=other.headers)
    assert r.json()["deleted"] == 0
    r = await client.put(f"{MEMORIES}/settings", json={"enabled": False}, headers=other.headers)
    assert (await client.get(f"{MEMORIES}/settings", headers=alice.headers)).json()["enabled"] is True

    r = await client.get(MEMORIES, headers=alice.headers)
    assert sorted(m["content"] for m in r.json()["memories"]) == ["Alice's other secret.", "Alice's secret."]
    r = await client.get(MEMORIES)
    assert r.status_code == 401


async def test_deleting_a_user_deletes_their_memories(client, resources, make_user):
    carol = await make_user("carol")
    await remember(client, carol, "Carol likes tea.")
    await client.put(f"{MEMORIES}/settings", json={"enabled": False}, headers=carol.headers)
    async with resources.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM memories WHERE user_id = $1", carol.user.id) == 1
        await conn.execute("DELETE FROM users WHERE id = $1", carol.user.id)
        assert await conn.fetchval("SELECT count(*) FROM memories WHERE user_id = $1", carol.user.id) == 0
        assert await conn.fetchval("SELECT count(*) FROM memory_settings WHERE user_id = $1", carol.user.id) == 0
