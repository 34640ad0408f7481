"""The OpenAPI document at /schema/openapi.json tells the truth about bodies and errors."""

from __future__ import annotations

import pytest

PERSONAS = "/api/v1/chat/personas"


@pytest.fixture
async def openapi(client):
    r = await client.get("/schema/openapi.json")
    assert r.status_code == 200
    return r.json()


async def test_request_bodies_refuse_unknown_fields(openapi):
    schemas = openapi["components"]["schemas"]
    for name in ("PersonaDraft", "PersonaPatch", "ChatRequest", "MessagesRequest", "PreviewRequest", "CompareRequest",
                 "RunTestsRequest", "CreateKeyRequest", "ModelSettings", "Tool", "CompletionRequest"):  # fmt: skip
        assert schemas[name]["additionalProperties"] is False, name


async def test_preview_and_compare_take_persona_id_or_persona(openapi):
    schemas = openapi["components"]["schemas"]
    for name in ("PreviewRequest", "PersonaChoice"):
        branches = schemas[name]["oneOf"]
        assert [b["required"] for b in branches] == [["persona_id"], ["persona"]]
        assert branches[0]["properties"]["persona"] == {"type": "null"}
        assert branches[1]["properties"]["persona_id"] == {"type": "null"}


async def test_a_test_run_body_is_optional_in_the_schema_as_on_the_wire(openapi, client, alice):
    op = openapi["paths"][f"{PERSONAS}/{{persona_id}}/tests/run"]["post"]
    assert op["requestBody"]["required"] is False
    r = await client.post(PERSONAS, json={"name": f"Run {alice.id[:8]}", "description": "d", "system_prompt": "s"},
                          headers=alice.headers)  # fmt: skip
    r = await client.post(f"{PERSONAS}/{r.json()['persona']['id']}/tests/run", headers=alice.headers)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("path", "method", "component"),
    [
        (PERSONAS, "post", "ErrorBody"),
        ("/api/v1/chat", "post", "ErrorBody"),
        ("/v1/chat/completions", "post", "OpenAIErrorBody"),
        ("/v1/models/{model_id}", "get", "OpenAIErrorBody"),
        ("/v1/messages", "post", "AnthropicErrorBody"),
        ("/v1/messages/count_tokens", "post", "AnthropicErrorBody"),
    ],
)
async def test_errors_are_documented_in_each_prefix_shape(openapi, path, method, component):
    responses = openapi["paths"][path][method]["responses"]
    for status in ("400", "401", "500"):
        assert responses[status]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{component}"
        }, status
    if path in ("/api/v1/chat", "/v1/chat/completions", "/v1/messages"):
        assert {"429", "502", "504"} <= set(responses)
    if path == "/v1/messages/count_tokens":  # an unknown persona; no provider is called, so none of its statuses
        assert "404" in responses and not {"429", "502", "504"} & set(responses)


async def test_count_tokens_documents_its_body_and_answer(openapi):
    op = openapi["paths"]["/v1/messages/count_tokens"]["post"]
    body = openapi["components"]["schemas"][
        op["requestBody"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    ]
    assert sorted(body["required"]) == ["messages", "model"] and body["additionalProperties"] is False
    assert "max_tokens" not in body["properties"]
    answer = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    assert openapi["components"]["schemas"][answer]["properties"] == {"input_tokens": {"type": "integer"}}


async def test_the_import_route_documents_its_three_kinds_of_body(openapi):
    body = openapi["paths"][f"{PERSONAS}/import"]["post"]["requestBody"]
    assert set(body["content"]) == {"application/json", "image/png", "multipart/form-data"}


STREAMING = [
    ("/api/v1/chat", "post"),
    (f"{PERSONAS}/preview", "post"),
    (f"{PERSONAS}/compare", "post"),
    ("/api/v1/chat/messages/{message_id}/events", "get"),
    ("/v1/chat/completions", "post"),
    ("/v1/messages", "post"),
]


@pytest.mark.parametrize(("path", "method"), STREAMING)
async def test_each_streamed_event_documents_its_data_as_a_json_object(openapi, path, method):
    event = openapi["paths"][path][method]["responses"]["200"]["content"]["text/event-stream"]["schema"]
    carrying = [frame for frame in event["oneOf"] if frame["properties"]["data"].get("const") != "[DONE]"]
    assert carrying
    for frame in carrying:
        data = frame["properties"]["data"]
        assert data["contentMediaType"] == "application/json"
        assert data["contentSchema"]["type"] == "object"
    if path.startswith("/api/"):  # ours: one frame per event name, its data the event's fields
        names = [frame["properties"]["event"]["const"] for frame in carrying]
        assert names == ["start", "content", "usage", "done", "error"]
        start = carrying[0]["properties"]["data"]["contentSchema"]
        assert {"persona", "provider", "model"} <= set(start["required"])
        assert ("candidate" in start["required"]) == path.endswith("/compare")


@pytest.mark.parametrize(
    ("path", "method"),
    [
        (f"{PERSONAS}/current", "get"),
        (f"{PERSONAS}/initialize-default", "post"),
        (PERSONAS, "post"),
        (f"{PERSONAS}/{{persona_id}}", "put"),
        (f"{PERSONAS}/import", "post"),
        (f"{PERSONAS}/{{persona_id}}/versions/{{version}}/restore", "post"),
        ("/api/v1/admin/users", "post"),
        ("/api/v1/chat/messages/{message_id}/cancel", "post"),
        ("/api/v1/chat", "post"),
    ],
)
async def test_every_route_that_can_answer_409_documents_it(openapi, path, method):
    assert "409" in openapi["paths"][path][method]["responses"]


async def test_restoring_the_default_documents_its_409_and_a_private_mu_no_longer_causes_it(create_database):
    """Restoring Mu can conflict only with data written before its name was reserved (an old backup, say); the
    document keeps the 409, and a user's private persona named Mu no longer blocks either route."""
    from api.app import create_app
    from personas.models import MU_ID
    from runtime.server.migrate import apply_migrations
    from tests.conftest import make_settings, persona_body, running

    url = await create_database()
    await apply_migrations(url)
    app = create_app(make_settings(url, None))
    async with running(app) as http:
        accounts = app.state.resources.accounts
        user = await accounts.create_user("mu-fan", display_name="Fan")
        key, _ = await accounts.create_key(user.id, name="t")
        headers = {"X-API-Key": key}
        pool = app.state.resources.pool
        await pool.execute("UPDATE personas SET is_active = false, is_default = false WHERE id = $1", MU_ID)
        r = await http.post(PERSONAS, json=persona_body("Mu"), headers=headers)
        assert r.status_code == 201, r.text
        document = (await http.get("/schema/openapi.json")).json()
        for method, path in (("GET", "/current"), ("POST", "/initialize-default")):
            r = await http.request(method, f"{PERSONAS}{path}", headers=headers)
            assert r.status_code == 200, r.text
            assert r.json()["persona"]["id"] == str(MU_ID)
            assert "409" in document["paths"][f"{PERSONAS}{path}"][method.lower()]["responses"]


async def test_the_avatar_routes_document_their_images_and_refusals(openapi):
    route = openapi["paths"][f"{PERSONAS}/{{persona_id}}/avatar"]
    images = {"image/png", "image/jpeg", "image/webp"}
    assert set(route["put"]["requestBody"]["content"]) == images
    assert {"400", "403", "404", "413", "415"} <= set(route["put"]["responses"])
    assert set(route["get"]["responses"]["200"]["content"]) == images
    assert {"304", "404"} <= set(route["get"]["responses"]) and "403" not in route["get"]["responses"]
    assert "415" in route["put"]["responses"] and "415" not in route["delete"]["responses"]
    assert route["put"]["responses"]["415"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    export = openapi["paths"][f"{PERSONAS}/{{persona_id}}/export"]["get"]
    assert {"application/json", "image/png"} <= set(export["responses"]["200"]["content"])


async def test_opening_a_conversation_documents_its_optional_body_and_errors(openapi):
    op = openapi["paths"]["/api/v1/chat/conversations"]["post"]
    assert op["requestBody"]["required"] is False
    assert {"201", "400", "404"} <= set(op["responses"])
