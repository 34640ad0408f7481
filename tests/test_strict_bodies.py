"""Request bodies are read with JSON's own types: ``0`` is no boolean and ``"5"`` no integer, on every route."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import persona_body

PERSONAS = "/api/v1/chat/personas"


async def test_is_admin_zero_is_a_400_naming_the_field_and_no_user_is_made(client, admin, resources):
    name = f"strict-{uuid.uuid4().hex[:8]}"
    r = await client.post("/api/v1/admin/users", json={"name": name, "is_admin": 0}, headers=admin.headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == "is_admin"
    assert "bool" in r.json()["message"]
    assert await resources.pool.fetchval("SELECT count(*) FROM users WHERE name = $1", name) == 0
    r = await client.post("/api/v1/admin/users", json={"name": name, "is_admin": False}, headers=admin.headers)
    assert r.status_code == 201, r.text
    assert r.json()["user"]["is_admin"] is False


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/chat", {"message": "hi", "stream": 0}, "stream"),
        ("/api/v1/chat", {"message": "hi", "stream": "false"}, "stream"),
        (
            "/v1/chat/completions",
            {"model": "persona", "messages": [{"role": "user", "content": "hi"}], "stream": 1},
            "stream",
        ),
        (PERSONAS, persona_body(capabilities={"math": True}, visibility="public", is_default=0), "is_default"),
    ],
)
async def test_loose_types_are_refused_in_bodies(client, alice, path, body, field):
    r = await client.post(path, json=body, headers=alice.headers)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error.get("field", error.get("param")) == field, r.text


async def test_a_number_given_as_a_string_is_refused(client, alice):
    r = await client.post(PERSONAS, json=persona_body(), headers=alice.headers)
    persona = r.json()["persona"]
    test = {"name": "t", "message": "m", "expect": {"max_chars": "5"}}
    r = await client.post(f"{PERSONAS}/{persona['id']}/tests", json=test, headers=alice.headers)
    assert r.status_code == 400 and r.json()["error"]["field"] == "expect.max_chars", r.text
    test["expect"]["max_chars"] = 5
    r = await client.post(f"{PERSONAS}/{persona['id']}/tests", json=test, headers=alice.headers)
    assert r.status_code == 201, r.text
