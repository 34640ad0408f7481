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
                 "RunTestsRequest", "CreateKeyRequest", "ModelSettings", "Tool"):  # fmt: skip
        assert schemas[name]["additionalProperties"] is False, name
    # OpenAI's body accepts and ignores fields the runtime does not use, and says so.
    assert schemas["CompletionRequest"].get("additionalProperties") is not False


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


async def test_the_import_route_documents_its_three_kinds_of_body(openapi):
    body = openapi["paths"][f"{PERSONAS}/import"]["post"]["requestBody"]
    assert set(body["content"]) == {"application/json", "image/png", "multipart/form-data"}
