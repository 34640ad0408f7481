"""The persona API of CONTRACT section 3: happy paths, ownership, visibility and bad input."""

from __future__ import annotations

import uuid

import pytest

from personas.models import MU_ID
from tests.conftest import persona_body

BASE = "/api/v1/chat/personas"


async def create(client, account, **fields):
    r = await client.post(BASE, json=persona_body(**fields), headers=account.headers)
    assert r.status_code == 201, r.text
    return r.json()["persona"]


async def test_list_shows_mu_and_own_personas_with_seed_shape(client, alice, bob):
    mine = await create(client, alice, visibility="private")
    theirs_private = await create(client, bob, visibility="private")
    theirs_public = await create(client, bob, visibility="public")

    r = await client.get(BASE, headers=alice.headers, params={"limit": 200})
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is True
    assert body["message"] == "Personas retrieved successfully"
    ids = {p["id"] for p in body["personas"]}
    assert str(MU_ID) in ids
    assert mine["id"] in ids and theirs_public["id"] in ids
    assert theirs_private["id"] not in ids
    assert body["total"] >= 3
    shown = {p["id"]: p for p in body["personas"]}
    assert shown[mine["id"]]["system_prompt"] is not None
    assert shown[theirs_public["id"]]["system_prompt"] is None
    assert shown[str(MU_ID)]["system_prompt"] is None  # system-owned: admins only


async def test_list_paginates(client, alice):
    for _ in range(3):
        await create(client, alice)
    first = (await client.get(BASE, headers=alice.headers, params={"limit": 2})).json()
    second = (await client.get(BASE, headers=alice.headers, params={"limit": 2, "offset": 2})).json()
    assert len(first["personas"]) == 2
    assert first["total"] == second["total"] >= 4
    assert not {p["id"] for p in first["personas"]} & {p["id"] for p in second["personas"]}


async def test_list_rejects_bad_paging(client, alice):
    r = await client.get(BASE, headers=alice.headers, params={"limit": 0})
    assert r.status_code == 400
    assert r.json()["error"]["field"] == "limit"


async def test_create_returns_the_full_persona(llm_client, alice):
    body = persona_body(
        "Quill",
        model_settings={
            "provider": "openai",
            "model": "gpt-4o-mini",
            "temperature": 0.3,
            "fallbacks": [{"provider": "anthropic", "model": "claude-x"}],
        },
        tools=[{"name": "lookup", "description": "Find a word", "parameters": {"type": "object"}}],
        visibility="public",
    )
    body["name"] = f"Quill {uuid.uuid4().hex[:6]}"
    r = await llm_client.post(BASE, json=body, headers=alice.headers)
    assert r.status_code == 201
    persona = r.json()["persona"]
    assert persona["name"] == body["name"]
    assert persona["version"] == 1
    assert persona["created_by"] == alice.id
    assert persona["is_default"] is False and persona["is_active"] is True
    assert persona["model_settings"]["temperature"] == 0.3
    assert persona["model_settings"]["fallbacks"] == [{"provider": "anthropic", "model": "claude-x"}]
    assert persona["tools"][0]["name"] == "lookup"
    got = await llm_client.get(f"{BASE}/{persona['id']}", headers=alice.headers)
    assert got.json()["persona"] == persona


async def test_names_are_unique_per_owner_and_among_public_personas_regardless_of_case(client, alice, bob):
    name = f"Echo {uuid.uuid4().hex[:6]}"
    first = await create(client, alice, name=name)
    # The same owner cannot have two of one name, in any case.
    r = await client.post(BASE, json=persona_body(name.upper()), headers=alice.headers)
    assert r.status_code == 409 and r.json()["error"]["field"] == "name"
    # Another user may keep a private persona of that name; nothing tells them someone else has one.
    theirs = await create(client, bob, name=name.lower())
    assert theirs["name"] == name.lower() and theirs["visibility"] == "private"
    # Publishing: the first public one takes the name among public personas.
    r = await client.put(f"{BASE}/{first['id']}", json={"visibility": "public"}, headers=alice.headers)
    assert r.status_code == 200, r.text
    r = await client.put(f"{BASE}/{theirs['id']}", json={"visibility": "public"}, headers=bob.headers)
    assert r.status_code == 409 and r.json()["error"]["field"] == "name"
    assert "public persona" in r.json()["message"]
    r = await client.post(BASE, json=persona_body(name, visibility="public"), headers=bob.headers)
    assert r.status_code == 409
    # Soft delete frees the name.
    assert (await client.delete(f"{BASE}/{first['id']}", headers=alice.headers)).status_code == 200
    r = await client.put(f"{BASE}/{theirs['id']}", json={"visibility": "public"}, headers=bob.headers)
    assert r.status_code == 200, r.text
    await client.delete(f"{BASE}/{theirs['id']}", headers=bob.headers)


async def test_a_model_name_means_the_callers_own_persona_else_the_public_one(client, llm_client, alice, bob):
    name = f"Twin {uuid.uuid4().hex[:6]}"
    public = await create(client, alice, name=name, visibility="public")
    own = await create(client, bob, name=name)
    try:
        for account, expected in ((bob, own), (alice, public)):
            r = await client.post(
                "/v1/chat/completions",
                json={"model": f"persona/{name.upper()}", "messages": [{"role": "user", "content": "hi"}]},
                headers=account.headers,
            )
            assert r.status_code == 200, r.text
            assert r.headers["x-persona-id"] == expected["id"]
    finally:
        await client.delete(f"{BASE}/{own['id']}", headers=bob.headers)
        await client.delete(f"{BASE}/{public['id']}", headers=alice.headers)


async def test_update_bumps_version_and_keeps_unsent_fields(client, alice):
    persona = await create(client, alice, personality_traits={"tone": "dry"})
    r = await client.put(f"{BASE}/{persona['id']}", json={"description": "New words"}, headers=alice.headers)
    assert r.status_code == 200, r.text
    updated = r.json()["persona"]
    assert updated["version"] == 2
    assert updated["description"] == "New words"
    assert updated["personality_traits"] == {"tone": "dry"}
    assert updated["updated_at"] > persona["updated_at"]


async def test_rename_onto_a_taken_name_is_a_conflict_and_changes_nothing(client, alice):
    a = await create(client, alice)
    b = await create(client, alice)
    r = await client.put(f"{BASE}/{b['id']}", json={"name": a["name"], "description": "x"}, headers=alice.headers)
    assert r.status_code == 409
    after = (await client.get(f"{BASE}/{b['id']}", headers=alice.headers)).json()["persona"]
    assert after["name"] == b["name"] and after["description"] == b["description"] and after["version"] == 1


async def test_delete_is_soft_and_hides_the_persona(client, alice, resources):
    persona = await create(client, alice)
    r = await client.delete(f"{BASE}/{persona['id']}", headers=alice.headers)
    assert r.status_code == 200 and r.json()["success"] is True
    assert (await client.get(f"{BASE}/{persona['id']}", headers=alice.headers)).status_code == 404
    row = await resources.pool.fetchrow("SELECT is_active FROM personas WHERE id = $1", uuid.UUID(persona["id"]))
    assert row["is_active"] is False
    assert (await client.delete(f"{BASE}/{persona['id']}", headers=alice.headers)).status_code == 404


async def test_current_is_default_until_a_preference_is_set(client, alice):
    r = await client.get(f"{BASE}/current", headers=alice.headers)
    assert r.status_code == 200
    assert r.json()["source"] == "default"
    assert r.json()["persona"]["name"] == "Mu"

    persona = await create(client, alice)
    r = await client.post(f"{BASE}/set", json={"persona_id": persona["id"]}, headers=alice.headers)
    assert r.status_code == 200
    assert r.json() == {
        "success": True,
        "message": f"Persona set to {persona['name']}",
        "persona_id": persona["id"],
        "persona_name": persona["name"],
    }
    current = (await client.get(f"{BASE}/current", headers=alice.headers)).json()
    assert current["source"] == "preference" and current["persona"]["id"] == persona["id"]


async def test_preference_falls_back_to_default_when_the_persona_goes_away(client, alice, bob):
    shared = await create(client, bob, visibility="public")
    await client.post(f"{BASE}/set", json={"persona_id": shared["id"]}, headers=alice.headers)
    assert (await client.get(f"{BASE}/current", headers=alice.headers)).json()["source"] == "preference"

    # Hidden by its owner: alice may no longer see it, so she is back on the default.
    await client.put(f"{BASE}/{shared['id']}", json={"visibility": "private"}, headers=bob.headers)
    current = (await client.get(f"{BASE}/current", headers=alice.headers)).json()
    assert current["source"] == "default" and current["persona"]["name"] == "Mu"

    own = await create(client, alice)
    await client.post(f"{BASE}/set", json={"persona_id": own["id"]}, headers=alice.headers)
    await client.delete(f"{BASE}/{own['id']}", headers=alice.headers)
    current = (await client.get(f"{BASE}/current", headers=alice.headers)).json()
    assert current["source"] == "default"


async def test_set_refuses_invisible_and_unknown_personas(client, alice, bob):
    private = await create(client, bob, visibility="private")
    for persona_id in (private["id"], str(uuid.uuid4())):
        r = await client.post(f"{BASE}/set", json={"persona_id": persona_id}, headers=alice.headers)
        assert r.status_code == 404
    r = await client.post(f"{BASE}/set", json={"persona_id": "nope"}, headers=alice.headers)
    assert r.status_code == 400 and r.json()["error"]["field"] == "persona_id"


async def test_initialize_default_is_idempotent(client, alice):
    r = await client.post(f"{BASE}/initialize-default", headers=alice.headers)
    assert r.status_code == 200
    body = r.json()
    assert body["was_created"] is False
    assert body["persona"]["name"] == "Mu" and body["persona"]["is_default"] is True


async def test_mu_is_the_seeded_default(client, admin):
    mu = (await client.get(f"{BASE}/{MU_ID}", headers=admin.headers)).json()["persona"]
    assert mu["visibility"] == "public" and mu["is_default"] and mu["created_by"] is None
    assert "{{user_name}}" in mu["system_prompt"]
    assert mu["personality_traits"] and mu["capabilities"]


# Authorisation matrix -------------------------------------------------------------------------------


@pytest.mark.parametrize("visibility", ["public", "private"])
@pytest.mark.parametrize("who", ["owner", "other", "admin"])
async def test_authorisation_matrix(client, alice, bob, admin, who, visibility):
    persona = await create(client, alice, visibility=visibility)
    url = f"{BASE}/{persona['id']}"
    account = {"owner": alice, "other": bob, "admin": admin}[who]
    may_see = who in ("owner", "admin") or visibility == "public"
    may_change = who in ("owner", "admin")
    hidden = 404
    refused = 403 if may_see else hidden

    got = await client.get(url, headers=account.headers)
    assert got.status_code == (200 if may_see else hidden)
    if may_see:
        shown_prompt = got.json()["persona"]["system_prompt"]
        assert (shown_prompt is not None) is may_change

    chosen = await client.post(f"{BASE}/set", json={"persona_id": persona["id"]}, headers=account.headers)
    assert chosen.status_code == (200 if may_see else hidden)

    updated = await client.put(url, json={"description": f"by {who}"}, headers=account.headers)
    assert updated.status_code == (200 if may_change else refused)

    deleted = await client.delete(url, headers=account.headers)
    assert deleted.status_code == (200 if may_change else refused)

    still = await client.get(url, headers=alice.headers)
    assert still.status_code == (404 if may_change else 200)
    if not may_change:
        assert still.json()["persona"]["description"] == persona["description"]


async def test_only_admins_change_system_personas(client, alice, admin):
    r = await client.put(f"{BASE}/{MU_ID}", json={"description": "hijacked"}, headers=alice.headers)
    assert r.status_code == 403
    r = await client.delete(f"{BASE}/{MU_ID}", headers=alice.headers)
    assert r.status_code == 403


async def test_admin_moves_the_default_atomically(client, admin, alice, resources):
    persona = await create(client, admin, visibility="public")
    try:
        r = await client.put(f"{BASE}/{persona['id']}", json={"is_default": True}, headers=admin.headers)
        assert r.status_code == 200 and r.json()["persona"]["is_default"] is True
        defaults = await resources.pool.fetch("SELECT id FROM personas WHERE is_default")
        assert [str(r["id"]) for r in defaults] == [persona["id"]]
        current = (await client.get(f"{BASE}/current", headers=alice.headers)).json()
        assert current["persona"]["id"] == persona["id"]
        r = await client.put(f"{BASE}/{persona['id']}", json={"is_default": False}, headers=admin.headers)
        assert r.status_code == 400 and r.json()["error"]["field"] == "is_default"
    finally:
        await client.put(f"{BASE}/{MU_ID}", json={"is_default": True}, headers=admin.headers)
    assert (await client.get(f"{BASE}/current", headers=alice.headers)).json()["persona"]["name"] == "Mu"


async def test_deleted_mu_is_restored_by_initialize_default(client, admin, alice):
    assert (await client.delete(f"{BASE}/{MU_ID}", headers=admin.headers)).status_code == 200
    try:
        # Resolution never leaves a user without a persona: the default comes back on first need.
        current = (await client.get(f"{BASE}/current", headers=alice.headers)).json()
        assert current["persona"]["name"] == "Mu"
    finally:
        r = await client.post(f"{BASE}/initialize-default", headers=alice.headers)
    assert r.status_code == 200 and r.json()["persona"]["is_active"] is True
    assert (await client.get(f"{BASE}/{MU_ID}", headers=alice.headers)).status_code == 200


async def test_no_one_can_take_mus_name_while_it_is_deleted(client, admin, alice, bob):
    assert (await client.delete(f"{BASE}/{MU_ID}", headers=admin.headers)).status_code == 200
    squatter = None
    try:
        # A private "mu" of one's own is fine, and blocks no one.
        squatter = await create(client, alice, name="mu")
        # Among public personas the name stays Mu's, for admins too.
        for account in (alice, admin):
            r = await client.post(BASE, json=persona_body("MU", visibility="public"), headers=account.headers)
            assert r.status_code == 409 and "reserved for the default persona" in r.json()["message"]
        r = await client.put(f"{BASE}/{squatter['id']}", json={"visibility": "public"}, headers=alice.headers)
        assert r.status_code == 409 and r.json()["error"]["field"] == "name"
        # Everyone still gets the default, which comes back whatever others named their personas.
        for account in (bob, alice):
            current = await client.get(f"{BASE}/current", headers=account.headers)
            assert current.status_code == 200 and current.json()["persona"]["id"] == str(MU_ID)
        chat = await client.post("/api/v1/chat", json={"message": "hello"}, headers=bob.headers)
        assert chat.status_code == 200 and chat.json()["persona"]["name"] == "Mu"
    finally:
        r = await client.post(f"{BASE}/initialize-default", headers=bob.headers)
        if squatter is not None:
            await client.delete(f"{BASE}/{squatter['id']}", headers=alice.headers)
    assert r.status_code == 200 and r.json()["persona"]["id"] == str(MU_ID)


async def test_is_default_is_for_admins_only(client, alice):
    r = await client.post(BASE, json=persona_body(is_default=True), headers=alice.headers)
    assert r.status_code == 403 and r.json()["error"]["field"] == "is_default"
    persona = await create(client, alice)
    r = await client.put(f"{BASE}/{persona['id']}", json={"is_default": True}, headers=alice.headers)
    assert r.status_code == 403 and r.json()["error"]["field"] == "is_default"


# Bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"id": str(uuid.uuid4())}, "id"),
        ({"created_by": str(uuid.uuid4())}, "created_by"),
        ({"version": 7}, "version"),
        ({"colour": "blue"}, "colour"),
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "two\nlines"}, "name"),
        ({"name": 42}, "name"),
        ({"system_prompt": "Hello {{mood}}"}, "system_prompt"),
        ({"visibility": "friends"}, "visibility"),
        ({"personality_traits": ["not", "an", "object"]}, "personality_traits"),
        ({"model_settings": {"temperature": 3}}, "model_settings.temperature"),
        ({"model_settings": {"provider": "Open AI"}}, "model_settings.provider"),
        ({"model_settings": {"seed": 1}}, "model_settings.seed"),
        ({"tools": [{"name": "bad name!"}]}, "tools[0].name"),
        ({"tools": [{"name": "t", "parameters": {"type": "string"}}]}, "tools[0].parameters"),
        ({"tools": [{"name": "t"}, {"name": "t"}]}, "tools[1].name"),
    ],
)
async def test_bad_create_bodies_name_the_field(client, alice, resources, body, field):
    full = persona_body(**body)
    before = await resources.pool.fetchval("SELECT count(*) FROM personas")
    r = await client.post(BASE, json=full, headers=alice.headers)
    assert r.status_code == 400, r.text
    payload = r.json()
    assert payload["success"] is False
    assert payload["error"]["field"] == field
    assert field.split(".")[-1].split("[")[0] in payload["message"]
    assert await resources.pool.fetchval("SELECT count(*) FROM personas") == before


@pytest.mark.parametrize("missing", ["name", "description", "system_prompt"])
async def test_required_fields(client, alice, missing):
    body = persona_body()
    del body[missing]
    r = await client.post(BASE, json=body, headers=alice.headers)
    assert r.status_code == 400
    assert missing in r.json()["message"]


async def test_malformed_json_and_wrong_shapes(client, alice):
    r = await client.post(BASE, content=b'{"name": ', headers={**alice.headers, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json", r.text
    r = await client.post(BASE, json=["a list"], headers=alice.headers)
    assert r.status_code == 400
    r = await client.post(BASE, content=b"", headers={**alice.headers, "content-type": "application/json"})
    assert r.status_code == 400


async def test_bad_update_changes_nothing(client, alice):
    persona = await create(client, alice)
    url = f"{BASE}/{persona['id']}"
    for body in ({"version": 9}, {"system_prompt": "{{nope}}"}, {"name": ""}, {"description": "ok", "id": "x"}):
        r = await client.put(url, json=body, headers=alice.headers)
        assert r.status_code == 400, body
    after = (await client.get(url, headers=alice.headers)).json()["persona"]
    assert after == persona


@pytest.mark.parametrize("method", ["get", "put", "delete"])
async def test_non_uuid_ids_are_400_naming_the_field(client, alice, method):
    kwargs = {"json": {"description": "x"}} if method == "put" else {}
    r = await getattr(client, method)(f"{BASE}/not-a-uuid", headers=alice.headers, **kwargs)
    assert r.status_code == 400
    assert r.json()["error"]["field"] == "persona_id"


async def test_unknown_persona_is_404(client, alice):
    r = await client.get(f"{BASE}/{uuid.uuid4()}", headers=alice.headers)
    assert r.status_code == 404
    assert r.json()["success"] is False and r.json()["error"]["code"] == "not_found"
