"""API keys: both headers, revocation within a second, expiry, last-used times, and the keys/admin API."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from runtime.access.accounts import KEY_PREFIX, hash_key
from tests.waiting import eventually

PERSONAS = "/api/v1/chat/personas"


async def test_both_header_styles_authenticate(client, alice):
    assert (await client.get(PERSONAS, headers={"X-API-Key": alice.key})).status_code == 200
    assert (await client.get(PERSONAS, headers={"Authorization": f"Bearer {alice.key}"})).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-API-Key": "prk_not-a-real-key-at-all"}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}],
)
async def test_missing_or_unknown_keys_are_401(client, headers):
    r = await client.get(PERSONAS, headers=headers)
    assert r.status_code == 401
    body = r.json()
    assert body["success"] is False and body["error"]["code"] == "unauthorized"


async def test_health_and_ready_need_no_key(client):
    assert (await client.get("/health")).json() == {"status": "ok"}
    # HEAD, as load balancers and uptime checks send it, answers the same status without a body.
    for path in ("/health", "/ready"):
        r = await client.head(path)
        assert r.status_code == 200 and r.content == b""
    ready = await client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "redis": "ok"}


async def test_openapi_schema_is_served(client):
    r = await client.get("/schema/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    assert "/api/v1/chat/personas" in paths and "/api/v1/keys" in paths
    assert (await client.get("/schema")).status_code == 200


async def test_create_list_and_revoke_keys_over_http(client, alice, resources):
    r = await client.post("/api/v1/keys", json={"name": "laptop", "expires_in_days": 30}, headers=alice.headers)
    assert r.status_code == 201
    created = r.json()
    key = created["key"]
    assert key.startswith(KEY_PREFIX) and len(key) >= 40
    info = created["api_key"]
    assert set(info) == {
        "id",
        "name",
        "prefix",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
        "limits",
        "usage",
    }
    assert key.startswith(info["prefix"]) and info["prefix"] != key
    # Stored only as a hash.
    row = await resources.pool.fetchrow("SELECT * FROM api_keys WHERE id = $1::uuid", info["id"])
    assert row["key_hash"] == hash_key(key)
    assert key not in str(dict(row))

    new_headers = {"X-API-Key": key}
    assert (await client.get(PERSONAS, headers=new_headers)).status_code == 200
    listed = (await client.get("/api/v1/keys", headers=alice.headers)).json()["keys"]
    assert info["id"] in {k["id"] for k in listed}
    assert all("key" not in k and "key_hash" not in k for k in listed)

    r = await client.delete(f"/api/v1/keys/{info['id']}", headers=alice.headers)
    assert r.status_code == 200
    assert (await client.get(PERSONAS, headers=new_headers)).status_code == 401


async def test_another_users_key_cannot_be_revoked(client, alice, bob):
    created = (await client.post("/api/v1/keys", json={"name": "x"}, headers=alice.headers)).json()
    r = await client.delete(f"/api/v1/keys/{created['api_key']['id']}", headers=bob.headers)
    assert r.status_code == 404
    assert (await client.get(PERSONAS, headers={"X-API-Key": created["key"]})).status_code == 200


async def test_bad_key_bodies(client, alice):
    for body, field in (
        ({"name": ""}, "name"),
        ({"name": "a", "expires_in_days": 0}, "expires_in_days"),
        ({"name": "a", "key": "mine"}, "key"),
    ):
        r = await client.post("/api/v1/keys", json=body, headers=alice.headers)
        assert r.status_code == 400 and r.json()["error"]["field"] == field
    r = await client.delete("/api/v1/keys/not-a-uuid", headers=alice.headers)
    assert r.status_code == 400 and r.json()["error"]["field"] == "key_id"


async def test_revocation_reaches_another_instance_within_a_second(client, second_client, alice, resources):
    # Both instances have looked the key up, so both hold it in their lookup cache.
    assert (await client.get(PERSONAS, headers=alice.headers)).status_code == 200
    assert (await second_client.get(PERSONAS, headers=alice.headers)).status_code == 200
    await resources.accounts.revoke_key(alice.key_id)  # as `keys revoke` would, from outside

    async def refused_by_both() -> bool:  # within a second at worst (a moment more for the requests)
        statuses = [(await api.get(PERSONAS, headers=alice.headers)).status_code for api in (second_client, client)]
        assert set(statuses) <= {200, 401}, statuses
        return statuses == [401, 401]

    assert await eventually(refused_by_both, within=2)


async def test_expired_key_is_refused(client, alice, resources):
    key, record = await resources.accounts.create_key(alice.user.id, name="short", expires_in_days=1)
    await resources.pool.execute(
        "UPDATE api_keys SET expires_at = $2 WHERE id = $1", record.id, datetime.now(UTC) - timedelta(seconds=1)
    )
    r = await client.get(PERSONAS, headers={"X-API-Key": key})
    assert r.status_code == 401 and "expired" in r.json()["message"]


async def test_last_used_is_recorded_without_a_write_per_request(client, alice, resources):
    for _ in range(5):
        await client.get(PERSONAS, headers=alice.headers)
    await resources.auth.flush()
    used = await resources.pool.fetchval("SELECT last_used_at FROM api_keys WHERE key_hash = $1", hash_key(alice.key))
    assert used is not None and datetime.now(UTC) - used < timedelta(seconds=30)


async def test_admin_creates_users_and_their_keys(client, admin, alice):
    name = f"carol-{datetime.now().timestamp()}"
    r = await client.post("/api/v1/admin/users", json={"name": name, "display_name": "Carol"}, headers=admin.headers)
    assert r.status_code == 201
    user = r.json()["user"]
    assert user["name"] == name and user["is_admin"] is False
    r = await client.post(f"/api/v1/admin/users/{user['id']}/keys", json={"name": "first"}, headers=admin.headers)
    assert r.status_code == 201
    carol = {"X-API-Key": r.json()["key"]}
    assert (await client.get("/api/v1/chat/personas/current", headers=carol)).status_code == 200

    assert (await client.post("/api/v1/admin/users", json={"name": name}, headers=admin.headers)).status_code == 409
    r = await client.post("/api/v1/admin/users", json={"name": "mallory"}, headers=alice.headers)
    assert r.status_code == 403
    r = await client.post(f"/api/v1/admin/users/{alice.id}/keys", json={"name": "x"}, headers=alice.headers)
    assert r.status_code == 403


async def test_admins_page_through_users_and_find_them_by_name(client, admin, alice):
    tag = uuid.uuid4().hex[:8]
    made = []
    for n, display in enumerate(("Dora Explorer", None, "Ezra")):
        body = {"name": f"list-{tag}-{n}", **({"display_name": display} if display else {})}
        made.append((await client.post("/api/v1/admin/users", json=body, headers=admin.headers)).json()["user"])
    r = await client.get("/api/v1/admin/users", params={"q": f"LIST-{tag}"}, headers=admin.headers)
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["success"] is True and page["total"] == 3
    assert [u["name"] for u in page["users"]] == [u["name"] for u in made]  # in name order
    assert page["users"][0] == made[0]
    # By display name, and in pages whose total stays the whole count.
    by_display = await client.get("/api/v1/admin/users", params={"q": "dora exp"}, headers=admin.headers)
    assert made[0]["id"] in [u["id"] for u in by_display.json()["users"]]
    second = await client.get(
        "/api/v1/admin/users", params={"q": f"list-{tag}", "limit": 2, "offset": 2}, headers=admin.headers
    )
    assert [u["name"] for u in second.json()["users"]] == [made[2]["name"]] and second.json()["total"] == 3
    past = await client.get("/api/v1/admin/users", params={"q": f"list-{tag}", "offset": 10}, headers=admin.headers)
    assert past.json() == {"success": True, "users": [], "total": 3}
    # A search with % or _ in it is plain text, not a pattern.
    assert (await client.get("/api/v1/admin/users", params={"q": "%"}, headers=admin.headers)).json()["total"] == 0
    everyone = (await client.get("/api/v1/admin/users", headers=admin.headers)).json()
    assert everyone["total"] >= 4
    # Only admins list users; a bad page size names its field.
    assert (await client.get("/api/v1/admin/users", headers=alice.headers)).status_code == 403
    bad = await client.get("/api/v1/admin/users", params={"limit": 0}, headers=admin.headers)
    assert bad.status_code == 400 and "limit" in bad.text


async def test_no_key_is_ever_logged(client, alice, caplog):
    caplog.set_level(logging.DEBUG)
    await client.get(PERSONAS, headers=alice.headers)
    created = (await client.post("/api/v1/keys", json={"name": "log"}, headers=alice.headers)).json()
    await client.get(PERSONAS, headers={"X-API-Key": "prk_wrong-key-that-should-not-be-logged"})
    await client.post(PERSONAS, json={"name": 1}, headers={"Authorization": f"Bearer {created['key']}"})
    text = caplog.text
    assert alice.key not in text and created["key"] not in text
    assert "prk_wrong-key-that-should-not-be-logged" not in text
