"""Hostile request bodies and numbers: each is a 400 in the route's own error shape that names the problem."""

from __future__ import annotations

import base64

import pytest

from core.json_guard import MAX_JSON_DEPTH
from personas.png import card_png
from tests.conftest import persona_body

PERSONAS = "/api/v1/chat/personas"
JSON = {"content-type": "application/json"}


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def error_of(path: str, body: dict) -> tuple[str, str | None]:
    """The message and the named field of an error body in the shape of ``path``'s prefix."""
    if path == "/v1/messages":
        assert body["type"] == "error"
        return body["error"]["message"], None
    if path.startswith("/v1/"):
        return body["error"]["message"], body["error"]["param"]
    assert body["success"] is False
    return body["message"], body["error"].get("field")


# Every JSON route, with a body that is valid but for the value put in at {}.
BODIES = {
    PERSONAS: b'{"name": "N", "description": "d", "system_prompt": "s", "personality_traits": {"k": %s}}',
    "/api/v1/chat": b'{"message": "hi", "persona_id": null, "conversation_id": %s}',
    "/v1/chat/completions": b'{"model": "persona", "messages": %s}',
    "/v1/messages": b'{"model": "persona", "max_tokens": 5, "messages": %s}',
    f"{PERSONAS}/render": b'{"message": "hi", "persona": %s}',
    f"{PERSONAS}/import": b'{"format": "persona-runtime/v1", "persona": %s}',
}


@pytest.mark.parametrize("path", list(BODIES))
async def test_json_nested_ten_thousand_deep_is_a_400_naming_the_limit(client, alice, path):
    r = await client.post(path, content=BODIES[path] % nested(10_000), headers={**alice.headers, **JSON})
    assert r.status_code == 400, r.text
    message, _ = error_of(path, r.json())
    assert f"more than {MAX_JSON_DEPTH} deep" in message


async def test_a_persona_trait_nested_990_deep_is_refused_and_one_at_the_limit_is_kept(client, alice):
    headers = {**alice.headers, **JSON}
    r = await client.post(PERSONAS, content=BODIES[PERSONAS] % nested(990), headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["details"] == {"max_depth": MAX_JSON_DEPTH}
    # The body itself is one level; the trait may use the rest.
    body = persona_body(personality_traits={"k": []})
    body["personality_traits"]["k"] = current = []
    for _ in range(MAX_JSON_DEPTH - 3):
        current.append([])
        current = current[0]
    r = await client.post(PERSONAS, json=body, headers=alice.headers)
    assert r.status_code == 201, r.text


async def test_brackets_inside_strings_do_not_count_as_nesting(client, alice):
    prompt = "Answer in JSON like " + "[" * 500 + "{{persona_name}}" + "]" * 500
    r = await client.post(PERSONAS, json=persona_body(system_prompt=prompt), headers=alice.headers)
    assert r.status_code == 201, r.text
    assert r.json()["persona"]["system_prompt"] == prompt


async def test_a_png_card_with_deeply_nested_json_is_a_400(client, alice):
    card = b'{"spec": "chara_card_v2", "data": {"name": "Deep", "extensions": {"x": %s}}}' % nested(5000)
    png = card_png([("chara", base64.b64encode(card).decode())])
    r = await client.post(f"{PERSONAS}/import", content=png, headers={**alice.headers, "content-type": "image/png"})
    assert r.status_code == 400, r.text
    assert r.json()["message"].startswith("The PNG card's JSON nests")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (PERSONAS, b'{"name": "a\\u0000b", "description": "d", "system_prompt": "s"}', "name"),
        (PERSONAS, b'{"name": "N", "description": "d", "system_prompt": "s", "capabilities": {"k": ["\\u0000"]}}',
         "capabilities.k[0]"),
        ("/api/v1/chat", b'{"message": "hi\\u0000"}', "message"),
        (f"{PERSONAS}/render", b'{"message": "hi", "persona": {"name": "\\u0000", "description": "", '
         b'"system_prompt": "s"}}', "persona.name"),
        ("/v1/chat/completions", b'{"model": "persona", "messages": [{"role": "user", "content": "\\u0000"}]}',
         "messages[0].content"),
        ("/v1/messages", b'{"model": "persona", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], '
         b'"system": "\\u0000"}', None),
        (f"{PERSONAS}/import", b'{"format": "persona-runtime/v1", "persona": {"name": "N", "description": "d", '
         b'"system_prompt": "\\u0000"}}', "persona.system_prompt"),
    ],
)  # fmt: skip
async def test_a_nul_character_is_a_400_naming_the_field(client, alice, path, body, field):
    r = await client.post(path, content=body, headers={**alice.headers, **JSON})
    assert r.status_code == 400, r.text
    message, named = error_of(path, r.json())
    assert "NUL character" in message
    if field is not None:
        assert named == field and f"`{field}`" in message
    else:  # Anthropic's error shape has no field of its own: the message names it.
        assert "`system`" in message


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (PERSONAS, b'{"name": "a\\ud800b", "description": "d", "system_prompt": "s"}', "name"),
        (PERSONAS, b'{"name": "N", "description": "d", "system_prompt": "s\\udc00"}', "system_prompt"),
        ("/api/v1/chat", b'{"message": "\\ud800"}', "message"),
        ("/v1/chat/completions", b'{"model": "persona", "messages": [{"role": "user", "content": "\\ud800\\ud800"}]}',
         "messages[0].content"),
        (f"{PERSONAS}/render", b'{"message": "hi", "persona": {"name": "\\udfff", "description": "", '
         b'"system_prompt": "s"}}', "persona.name"),
    ],
)  # fmt: skip
async def test_a_lone_surrogate_is_a_400_naming_the_field(client, alice, path, body, field):
    r = await client.post(path, content=body, headers={**alice.headers, **JSON})
    assert r.status_code == 400, r.text
    message, named = error_of(path, r.json())
    assert "lone UTF-16 surrogate" in message
    assert named == field and f"`{field}`" in message


async def test_escaped_pairs_and_escaped_backslashes_pass(client, alice):
    # A surrogate pair is one character (what json.dumps sends for an emoji); "\\u0000" is six characters of text.
    body = b'{"message": "\\ud83d\\ude00 and \\\\u0000 and \\\\ud800"}'
    r = await client.post("/api/v1/chat", content=body, headers={**alice.headers, **JSON})
    assert r.status_code == 200, r.text
    assert r.json()["response"].endswith("\U0001f600 and \\u0000 and \\ud800")


@pytest.mark.parametrize("path", ["/api/v1/chat", "/v1/chat/completions", "/v1/messages"])
async def test_a_body_that_is_not_utf8_is_a_400_naming_the_body(client, alice, path):
    body = b'{"message": "caf\xe9"}' if path == "/api/v1/chat" else b'{"model": "persona\xff"}'
    r = await client.post(path, content=body, headers={**alice.headers, **JSON})
    assert r.status_code == 400, r.text
    message, _ = error_of(path, r.json())
    assert message.startswith("The request body is not valid UTF-8")


@pytest.mark.parametrize(
    "path", [PERSONAS, "/api/v1/chat/conversations", f"{PERSONAS}/00000000-0000-4000-8000-00000000006d/versions"]
)
async def test_an_offset_past_bigint_is_a_400_naming_it(client, admin, path):
    r = await client.get(path, params={"offset": 2**63}, headers=admin.headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == "offset"
    r = await client.get(path, params={"offset": 2**63 - 1}, headers=admin.headers)
    assert r.status_code == 200, r.text


async def test_a_version_past_integer_is_a_400_naming_it(client, alice):
    r = await client.post(PERSONAS, json=persona_body(), headers=alice.headers)
    pid = r.json()["persona"]["id"]
    for method, url, body in [
        ("GET", f"{PERSONAS}/{pid}/versions/{2**31}", None),
        ("POST", f"{PERSONAS}/{pid}/versions/{2**31}/restore", None),
        ("POST", f"{PERSONAS}/{pid}/render", {"message": "hi", "version": 2**31}),
        ("POST", f"{PERSONAS}/{pid}/tests/run", {"version": 2**31}),
        ("POST", f"{PERSONAS}/preview", {"message": "hi", "persona_id": pid, "version": 2**31}),
    ]:
        r = await client.request(method, url, json=body, headers=alice.headers)
        assert r.status_code == 400, (url, r.text)
        assert r.json()["error"]["field"] == "version", r.text
    r = await client.get(f"{PERSONAS}/{pid}/versions/{2**31 - 1}", headers=alice.headers)
    assert r.status_code == 404, r.text


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        (nested(MAX_JSON_DEPTH), False),
        (nested(MAX_JSON_DEPTH + 1), True),
        (b"[{" * 32 + b"}]" * 32, False),
        (b"[{" * 33 + b"}]" * 33, True),
        (b"[" * 10_000, True),  # unbalanced too: the decoder would recurse just the same
        (b'{"a": [1, 2}', False),  # malformed, not deep: the decoder says so
        (b'["\\"' + b"[" * 100 + b'", []]', False),  # an escaped quote does not end the string
        (b'["\\\\", ' + nested(MAX_JSON_DEPTH + 5) + b"]", True),  # an escaped backslash does not escape the quote
    ],
)
def test_the_depth_scan_counts_only_brackets_outside_strings(body, refused):
    from core.errors import BadRequest
    from core.json_guard import check_json

    if refused:
        with pytest.raises(BadRequest, match="deep"):
            check_json(body)
    else:
        check_json(body)
