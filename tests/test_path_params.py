"""NUL and other control characters in a path parameter are a 400 naming the parameter, on every route."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("method", "path", "parameter"),
    [
        ("GET", "/v1/models/persona/%00", "model_id"),  # a 500 before: the NUL reached PostgreSQL
        ("GET", "/v1/models/persona/Mu%7F", "model_id"),
        ("GET", "/api/v1/chat/personas/%00", "persona_id"),
        ("PUT", "/api/v1/chat/personas/abc%1B", "persona_id"),
        ("GET", "/api/v1/chat/conversations/%01", "conversation_id"),
        ("DELETE", "/api/v1/chat/conversations/x%0Ay", "conversation_id"),
        ("POST", "/api/v1/chat/messages/%00/cancel", "message_id"),
        ("GET", "/api/v1/chat/personas/00000000-0000-0000-0000-000000000000/versions/1%00", "version"),
        ("DELETE", "/api/v1/keys/%09", "key_id"),
    ],
)
async def test_a_control_character_in_a_path_parameter_is_a_400_naming_it(client, alice, method, path, parameter):
    r = await client.request(method, path, headers=alice.headers)
    assert r.status_code == 400, r.text
    body = r.json()
    if path.startswith("/v1/"):  # OpenAI's error shape
        field, message = body["error"]["param"], body["error"]["message"]
    else:
        field, message = body["error"]["field"], body["message"]
    assert field == parameter, body
    assert "control character" in message, body


async def test_the_openai_routes_answer_in_their_own_error_shape(client, alice):
    r = await client.get("/v1/models/persona/%00", headers=alice.headers)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error" and r.json()["error"]["param"] == "model_id"


async def test_ordinary_characters_in_a_path_parameter_still_reach_the_route(client, alice):
    r = await client.get("/v1/models/persona/No%20Such%20Persona%C3%A9", headers=alice.headers)
    assert r.status_code == 404, r.text
    r = await client.get("/api/v1/chat/conversations/not-a-uuid", headers=alice.headers)
    assert r.status_code == 400 and r.json()["error"]["field"] == "conversation_id", r.text
