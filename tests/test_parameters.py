"""No parameter dropped: every body parameter of /v1/chat/completions and /v1/messages reaches the persona's provider
(as sent on an OpenAI-compatible one, as its equivalent on Anthropic) or gets a 400 that names it."""

from __future__ import annotations

import json

import anthropic
import openai
import pydantic
import pytest
from langchain_openai import ChatOpenAI

from tests.conftest import persona_body

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOL = {
    "type": "function",
    # null: what a client sends for a function without a docstring
    "function": {"name": "lookup", "description": None, "parameters": {"type": "object", "properties": {}}},
}

# Every parameter an OpenAI-compatible provider gets as it was sent, beyond sampling and the conversation.
AS_SENT = {
    "response_format": {"type": "json_schema", "json_schema": {"name": "trip", "schema": SCHEMA, "strict": True}},
    "tool_choice": {"type": "function", "function": {"name": "lookup"}},
    "parallel_tool_calls": False,
    "stop": ["END", "STOP"],
    "seed": 7,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "logit_bias": {"50256": -100},
    "user": "user-42",
    "max_completion_tokens": 64,
    "reasoning_effort": "low",
    "service_tier": "default",
    "metadata": {"team": "travel"},
    "store": False,
    "prediction": {"type": "content", "content": "Paris"},
    "verbosity": "low",
    "safety_identifier": "hashed-42",
    "prompt_cache_key": "trips",
}

# What no provider is asked for, since the answer has nowhere to put it.
REFUSED = {
    "n": 2,
    "logprobs": True,
    "top_logprobs": 3,
    "modalities": ["text", "audio"],
    "audio": {"voice": "alloy", "format": "wav"},
    "web_search_options": {},
    "functions": [{"name": "lookup", "parameters": {"type": "object"}}],
    "function_call": "auto",
    "top_k": 5,  # not OpenAI's: an unknown field
}

QUESTION = [{"role": "user", "content": "Plan a trip."}]


class Trip(pydantic.BaseModel):
    city: str
    days: int = pydantic.Field(ge=1)


async def _persona(llm_client, account, provider: str) -> str:
    body = persona_body(model_settings={"provider": provider})
    created = await llm_client.post("/api/v1/chat/personas", json=body, headers=account.headers)
    assert created.status_code == 201, created.text
    return f"persona/{created.json()['persona']['name']}"


async def _complete(llm_client, account, **body):
    return await llm_client.post("/v1/chat/completions", json={"messages": QUESTION, **body}, headers=account.headers)


async def test_every_parameter_reaches_an_openai_compatible_provider_as_sent(llm_client, fake_llm, alice):
    answer = await _complete(llm_client, alice, model="persona", tools=[TOOL], **AS_SENT)
    assert answer.status_code == 200, answer.text
    sent = fake_llm.last_request.body
    assert {name: sent.get(name) for name in AS_SENT} == AS_SENT
    assert "max_tokens" not in sent  # named as the client named it
    assert sent["tools"][0]["function"]["name"] == "lookup"
    # The fake honours the schema, and the answer comes back as it was.
    assert json.loads(answer.json()["choices"][0]["message"]["content"]) == {"city": "fake", "days": 1}

    string_stop = await _complete(llm_client, alice, model="persona", stop="END", max_tokens=9)
    assert string_stop.status_code == 200
    assert (fake_llm.last_request.body["stop"], fake_llm.last_request.body["max_tokens"]) == ("END", 9)


@pytest.mark.parametrize("name", list(REFUSED))
async def test_a_parameter_no_provider_takes_is_a_400_naming_it(llm_client, fake_llm, alice, name):
    refused = await _complete(llm_client, alice, model="persona", **{name: REFUSED[name]})
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["param"] == name and f"`{name}`" in error["message"]
    assert fake_llm.chat_requests() == []


async def test_no_op_values_are_accepted(llm_client, fake_llm, alice):
    answer = await _complete(llm_client, alice, model="persona", n=1, logprobs=False, modalities=["text"])
    assert answer.status_code == 200, answer.text
    sent = fake_llm.last_request.body
    assert not {"n", "logprobs", "modalities"} & set(sent)


async def test_anthropic_gets_the_equivalents(llm_client, fake_llm, alice):
    model = await _persona(llm_client, alice, "anthropic")
    asked = {
        "stop": ["END"],
        "user": "user-42",
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "response_format": {"type": "json_schema", "json_schema": {"name": "trip", "schema": SCHEMA}},
    }
    answer = await _complete(llm_client, alice, model=model, tools=[TOOL], **asked)
    assert answer.status_code == 200, answer.text
    sent = fake_llm.last_request.body
    assert fake_llm.last_request.path == "/v1/messages"
    assert sent["stop_sequences"] == ["END"]
    assert sent["metadata"] == {"user_id": "user-42"}
    assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert sent["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
    assert sent["tools"] == [{"name": "lookup", "input_schema": {"type": "object", "properties": {}}}]
    assert not {"stop", "user", "response_format", "parallel_tool_calls"} & set(sent)
    assert json.loads(answer.json()["choices"][0]["message"]["content"]) == {"city": "fake", "days": 1}

    named = await _complete(
        llm_client, alice, model=model, tools=[TOOL], stop="END", tool_choice=AS_SENT["tool_choice"]
    )
    assert named.status_code == 200, named.text
    assert fake_llm.last_request.body["tool_choice"] == {"type": "tool", "name": "lookup"}
    assert fake_llm.last_request.body["stop_sequences"] == ["END"]
    assert (await _complete(llm_client, alice, model=model, tool_choice="none")).status_code == 200
    assert fake_llm.last_request.body["tool_choice"] == {"type": "none"}


@pytest.mark.parametrize(
    "name,value",
    [
        ("seed", 7),
        ("presence_penalty", 0.5),
        ("frequency_penalty", 0.5),
        ("logit_bias", {"50256": -100}),
        ("response_format", {"type": "json_object"}),
        ("reasoning_effort", "low"),
        ("metadata", {"team": "travel"}),
    ],
)
async def test_what_anthropic_has_no_equivalent_for_is_a_400_naming_it(llm_client, fake_llm, alice, name, value):
    model = await _persona(llm_client, alice, "anthropic")
    refused = await _complete(llm_client, alice, model=model, **{name: value})
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["param"] == name and f"`{name}`" in error["message"] and "'anthropic'" in error["message"]
    assert fake_llm.chat_requests() == []


async def test_a_forced_tool_must_be_offered(llm_client, fake_llm, alice):
    for choice in ("required", {"type": "function", "function": {"name": "nowhere"}}):
        refused = await _complete(
            llm_client, alice, model="persona", tools=[] if choice == "required" else [TOOL], tool_choice=choice
        )
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "tool_choice"
    assert fake_llm.chat_requests() == []


async def test_messages_route_passes_its_parameters_on_to_either_provider(llm_app, fake_llm, alice, llm_client):
    sdk = anthropic.AsyncAnthropic(base_url=llm_app.state.base_url, api_key=alice.key, max_retries=0)
    tool = {"name": "lookup", "description": None, "input_schema": {"type": "object", "properties": {}}}
    asked = {
        "tools": [tool],
        "tool_choice": {"type": "tool", "name": "lookup", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
        "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}},
    }
    claude = await _persona(llm_client, alice, "anthropic")
    message = await sdk.messages.create(model=claude, max_tokens=50, messages=QUESTION, **asked)
    sent = fake_llm.last_request.body
    assert sent["tool_choice"] == asked["tool_choice"]
    assert (sent["stop_sequences"], sent["metadata"], sent["output_config"]) == (
        ["END"],
        {"user_id": "user-42"},
        asked["output_config"],
    )
    assert json.loads(message.content[0].text) == {"city": "fake", "days": 1}

    await sdk.messages.create(model="persona", max_tokens=50, messages=QUESTION, **asked)
    sent = fake_llm.last_request.body
    assert fake_llm.last_request.path == "/v1/chat/completions"
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert (sent["parallel_tool_calls"], sent["stop"], sent["user"]) == (False, ["END"], "user-42")
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA}}
    assert sent["tools"][0]["function"]["description"] == ""

    await sdk.messages.create(
        model="persona", max_tokens=50, messages=QUESTION, tools=[tool], tool_choice={"type": "any"}
    )
    assert fake_llm.last_request.body["tool_choice"] == "required"


async def test_openai_sdk_parse_with_a_pydantic_model(llm_app, fake_llm, alice):
    sdk = openai.AsyncOpenAI(base_url=llm_app.state.base_url + "/v1", api_key=alice.key, max_retries=0)
    completion = await sdk.chat.completions.parse(model="persona", messages=QUESTION, response_format=Trip)
    assert completion.choices[0].message.parsed == Trip(city="fake", days=1)
    sent = fake_llm.last_request.body["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "Trip"
    assert sent["json_schema"]["strict"] is True

    beta = await sdk.beta.chat.completions.parse(model="persona", messages=QUESTION, response_format=Trip)
    assert beta.choices[0].message.parsed == Trip(city="fake", days=1)


async def test_langchain_with_structured_output(llm_app, fake_llm, alice):
    model = ChatOpenAI(
        base_url=llm_app.state.base_url + "/v1", api_key=alice.key, model="persona", max_retries=0, timeout=10
    )
    trip = await model.with_structured_output(Trip).ainvoke("Plan a trip.")
    assert trip == Trip(city="fake", days=1)
    assert fake_llm.last_request.body["response_format"]["json_schema"]["name"] == "Trip"


async def test_echo_honours_the_parameters_that_shape_its_answer(llm_client, alice):
    model = await _persona(llm_client, alice, "echo")
    schema = {"name": "trip", "schema": SCHEMA}
    shaped = await _complete(
        llm_client, alice, model=model, response_format={"type": "json_schema", "json_schema": schema}
    )
    assert json.loads(shaped.json()["choices"][0]["message"]["content"]) == {"city": "[echo] Plan a trip.", "days": 1}
    loose = await _complete(llm_client, alice, model=model, response_format={"type": "json_object"}, seed=1)
    assert json.loads(loose.json()["choices"][0]["message"]["content"]) == {"echo": "[echo] Plan a trip."}
    cut = await _complete(llm_client, alice, model=model, stop=[" trip"])
    assert cut.json()["choices"][0]["message"]["content"] == "[echo] Plan a"
    forced = await _complete(llm_client, alice, model=model, tools=[TOOL], tool_choice="required")
    choice = forced.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "lookup", "arguments": "{}"}
    held = await _complete(
        llm_client,
        alice,
        model=model,
        tools=[TOOL],
        tool_choice="none",
        messages=[{"role": "user", "content": "/tool lookup {}"}],
    )
    assert held.json()["choices"][0]["message"]["content"] == "[echo] /tool lookup {}"


async def test_a_fallback_that_cannot_take_a_parameter_is_skipped(llm_client, fake_llm, alice):
    body = persona_body(model_settings={"provider": "openai", "fallbacks": [{"provider": "anthropic"}]})
    created = await llm_client.post("/api/v1/chat/personas", json=body, headers=alice.headers)
    model = f"persona/{created.json()['persona']['name']}"

    fake_llm.script(status=503)
    rescued = await _complete(llm_client, alice, model=model, stop=["END"])
    assert rescued.status_code == 200, rescued.text
    assert [r.path for r in fake_llm.chat_requests()] == ["/v1/chat/completions", "/v1/messages"]
    assert fake_llm.last_request.body["stop_sequences"] == ["END"]

    fake_llm.reset()
    fake_llm.script(status=503)
    unrescued = await _complete(llm_client, alice, model=model, seed=7)  # Anthropic takes no seed
    assert unrescued.status_code == 502, unrescued.text
    assert [r.path for r in fake_llm.chat_requests()] == ["/v1/chat/completions"]


async def test_the_clients_limit_wins_over_the_personas_under_the_name_it_used(llm_client, fake_llm, alice):
    body = persona_body(model_settings={"provider": "openai", "max_tokens": 100, "temperature": 0.2})
    created = await llm_client.post("/api/v1/chat/personas", json=body, headers=alice.headers)
    model = f"persona/{created.json()['persona']['name']}"

    assert (await _complete(llm_client, alice, model=model, max_completion_tokens=50, seed=1)).status_code == 200
    sent = fake_llm.last_request.body
    assert (sent["max_completion_tokens"], sent["temperature"], sent["seed"]) == (50, 0.2, 1)
    assert "max_tokens" not in sent
    assert (await _complete(llm_client, alice, model=model, seed=1)).status_code == 200
    sent = fake_llm.last_request.body
    assert (sent["max_tokens"], sent["seed"]) == (100, 1) and "max_completion_tokens" not in sent
    both = await _complete(llm_client, alice, model=model, max_tokens=10, max_completion_tokens=20)
    assert both.status_code == 400 and both.json()["error"]["param"] == "max_completion_tokens"
