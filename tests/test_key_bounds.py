"""Keys a user makes cannot escape their limits: never looser than the key that made them or the defaults, and
at most MAX_KEYS_PER_USER of them live at once."""

from __future__ import annotations

import asyncio

from api.app import create_app
from tests.conftest import make_settings, running

KEYS = "/api/v1/keys"
NONE = {"requests_per_minute": None, "tokens_per_minute": None, "tokens_per_day": None}


async def limited(client, admin, user, **limits) -> dict[str, str]:
    r = await client.post(
        f"/api/v1/admin/users/{user.id}/keys", json={"name": "limited", "limits": limits}, headers=admin.headers
    )
    assert r.status_code == 201, r.text
    return {"X-API-Key": r.json()["key"]}


async def test_a_limited_key_cannot_mint_a_looser_one(client, admin, alice):
    headers = await limited(client, admin, alice, requests_per_minute=3, tokens_per_day=500)
    # The probe: a key limited to 3 a minute asks for a million.
    r = await client.post(KEYS, json={"name": "escape", "limits": {"requests_per_minute": 1_000_000}}, headers=headers)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["field"] == "limits.requests_per_minute"
    assert "the key you are using" in r.json()["message"] and "3" in r.json()["message"]

    # Left out, a limit is the using key's; tighter ones are kept as asked.
    r = await client.post(KEYS, json={"name": "child", "limits": {"tokens_per_day": 100}}, headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["api_key"]["limits"] == {**NONE, "requests_per_minute": 3, "tokens_per_day": 100}
    child = {"X-API-Key": r.json()["key"]}
    r = await client.post(KEYS, json={"name": "grandchild"}, headers=child)
    assert r.status_code == 201 and r.json()["api_key"]["limits"] == {
        **NONE,
        "requests_per_minute": 3,
        "tokens_per_day": 100,
    }
    # The limits bite: the new key answers with the inherited limit.
    chat = await client.post("/api/v1/chat", json={"message": "hi"}, headers={"X-API-Key": r.json()["key"]})
    assert chat.status_code == 200 and chat.headers["x-ratelimit-limit-requests"] == "3"


async def test_an_unlimited_key_makes_keys_as_asked_and_admins_choose_freely(client, admin, alice):
    r = await client.post(KEYS, json={"name": "free"}, headers=alice.headers)
    assert r.status_code == 201 and r.json()["api_key"]["limits"] == NONE
    headers = await limited(client, admin, admin, requests_per_minute=2)
    r = await client.post(KEYS, json={"name": "x", "limits": {"requests_per_minute": 50}}, headers=headers)
    assert r.status_code == 201 and r.json()["api_key"]["limits"]["requests_per_minute"] == 50


async def test_keys_are_never_looser_than_the_defaults(database_url, redis_url, make_user):
    settings = make_settings(database_url, redis_url, key_requests_per_minute=10)
    async with running(create_app(settings)) as api:
        user = await make_user("dora")
        r = await api.post(KEYS, json={"name": "x", "limits": {"requests_per_minute": 11}}, headers=user.headers)
        assert r.status_code == 403 and "this server's default" in r.json()["message"]
        r = await api.post(KEYS, json={"name": "x", "limits": {"requests_per_minute": 10}}, headers=user.headers)
        assert r.status_code == 201


async def test_a_user_holds_at_most_max_keys_per_user_live_keys(database_url, redis_url, make_user, admin):
    settings = make_settings(database_url, redis_url, max_keys_per_user=4)
    async with running(create_app(settings)) as api:
        user = await make_user("many")  # holds one key already
        made = await asyncio.gather(*(api.post(KEYS, json={"name": f"k{i}"}, headers=user.headers) for i in range(8)))
        assert sorted(r.status_code for r in made) == [201] * 3 + [409] * 5  # never past the bound, even at once
        refused = next(r for r in made if r.status_code == 409)
        assert "revoke one" in refused.json()["message"]
        # Admins making keys for the user are bound too; a revoked key frees its place.
        r = await api.post(f"/api/v1/admin/users/{user.id}/keys", json={"name": "x"}, headers=admin.headers)
        assert r.status_code == 409
        one = next(r for r in made if r.status_code == 201).json()["api_key"]["id"]
        assert (await api.delete(f"{KEYS}/{one}", headers=user.headers)).status_code == 200
        assert (await api.post(KEYS, json={"name": "again"}, headers=user.headers)).status_code == 201
