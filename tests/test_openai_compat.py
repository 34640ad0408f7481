"""The official openai client, unchanged, against our /v1: personas as models, streaming, tools."""

from __future__ import annotations

import json

import openai
import pytest

from tests.conftest import persona_body
from tests.fakellm import FakeToolCall


@pytest.fixture
def sdk(llm_app, alice):
    client = openai.AsyncOpenAI(base_url=llm_app.state.base_url + "/v1", api_key=alice.key, max_retries=0)
    return client


async def test_models_lists_the_current_persona_and_every_usable_one(sdk, llm_client, alice, bob):
    mine = (await llm_client.post("/api/v1/chat/personas", json=persona_body(), headers=alice.headers)).json()
    hidden = (await llm_client.post("/api/v1/chat/personas", json=persona_body(), headers=bob.headers)).json()
    ids = [model.id async for model in sdk.models.list()]
    assert ids[0] == "persona"
    assert "persona/Mu" in ids and f"persona/{mine['persona']['name']}" in ids
    assert f"persona/{hidden['persona']['name']}" not in ids


async def test_one_model_by_id(sdk, llm_client, alice, bob):
    mine = (await llm_client.post("/api/v1/chat/personas", json=persona_body(), headers=alice.headers)).json()
    hidden = (await llm_client.post("/api/v1/chat/personas", json=persona_body(), headers=bob.headers)).json()
    name = mine["persona"]["name"]
    model = await sdk.models.retrieve(f"persona/{name}")  # sent as persona%2F...
    assert (model.id, model.object, model.owned_by) == (f"persona/{name}", "model", "persona-runtime")
    assert (await sdk.models.retrieve("persona")).id == "persona"
    assert (await sdk.models.retrieve(f"persona/{name.lower()}")).id == f"persona/{name}"
    plain = await llm_client.get(f"/v1/models/persona/{name}", headers=alice.headers)
    assert plain.status_code == 200 and plain.json()["id"] == f"persona/{name}"

    for missing in (f"persona/{hidden['persona']['name']}", "gpt-4o"):
        with pytest.raises(openai.NotFoundError) as unknown:
            await sdk.models.retrieve(missing)
        assert unknown.value.body["code"] == "not_found" and unknown.value.body["param"] == "model"


async def test_completion_injects_the_persona_before_the_clients_own_system_message(sdk, fake_llm):
    fake_llm.script(chunks=("Hello", " back"), input_tokens=20, output_tokens=2)
    completion = await sdk.chat.completions.create(
        model="persona/Mu",
        messages=[{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"}],
        temperature=0.4,
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Hello back"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens == 20 and completion.usage.total_tokens == 22
    sent = fake_llm.last_request.body
    system = sent["messages"][0]
    assert system["role"] == "system"
    assert system["content"].startswith("You are Mu") and system["content"].endswith("Answer in French.")
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert sent["temperature"] == 0.4


async def test_answers_say_which_persona_answered(sdk, fake_llm, llm_client, alice):
    persona = (await llm_client.post("/api/v1/chat/personas", json=persona_body(), headers=alice.headers)).json()
    model = f"persona/{persona['persona']['name']}"
    expected = {"x-persona-id": persona["persona"]["id"], "x-persona-version": "1", "x-persona-source": "request"}
    question = [{"role": "user", "content": "Hi"}]

    completion = await sdk.chat.completions.with_raw_response.create(model=model, messages=question)
    assert {name: completion.headers.get(name) for name in expected} == expected
    streamed = await sdk.chat.completions.with_raw_response.create(model=model, messages=question, stream=True)
    assert {name: streamed.headers.get(name) for name in expected} == expected
    assert "".join([c.choices[0].delta.content or "" async for c in streamed.parse() if c.choices]) != ""


async def test_streaming_completion(sdk, fake_llm):
    fake_llm.script(chunks=("a", "b", "c"))
    stream = await sdk.chat.completions.create(
        model="persona",
        messages=[{"role": "user", "content": "abc"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert "".join(pieces) == "abc" and finish == "stop"
    assert usage is not None and usage.completion_tokens == 7


async def test_tool_calls_pass_through_and_the_persona_survives_the_tool_result(sdk, fake_llm, llm_client, alice):
    persona = (await llm_client.post("/api/v1/chat/personas", json=persona_body(), headers=alice.headers)).json()
    model = f"persona/{persona['persona']['name']}"
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_time",
                "description": "Current time",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]
    fake_llm.script(chunks=(), tool_calls=(FakeToolCall(name="get_time", arguments="{}", id="call_7"),))
    stream = await sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What time is it?"}], tools=tools, stream=True
    )
    calls: dict[int, dict] = {}
    finish = None
    async for chunk in stream:
        if not chunk.choices:
            continue
        for call in chunk.choices[0].delta.tool_calls or ():
            entry = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
            entry["id"] = call.id or entry["id"]
            if call.function and call.function.name:
                entry["name"] = call.function.name
            if call.function and call.function.arguments:
                entry["arguments"] += call.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert calls[0] == {"id": "call_7", "name": "get_time", "arguments": "{}"}
    first = fake_llm.last_request.body
    assert first["tools"][0]["function"]["name"] == "get_time"

    fake_llm.script(chunks=("It is noon.",))
    completion = await sdk.chat.completions.create(
        model=model,
        messages=[
            {"role": "user", "content": "What time is it?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_7", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_7", "content": json.dumps({"time": "12:00"})},
        ],
        tools=tools,
    )
    assert completion.choices[0].message.content == "It is noon."
    second = fake_llm.last_request.body["messages"]
    assert second[0]["role"] == "system" and persona["persona"]["name"] in second[0]["content"]
    assert second[2]["tool_calls"][0]["id"] == "call_7"
    assert second[3] == {"role": "tool", "tool_call_id": "call_7", "content": '{"time": "12:00"}'}


async def test_non_streaming_tool_call(sdk, fake_llm):
    fake_llm.script(chunks=(), tool_calls=(FakeToolCall(name="lookup", arguments='{"q": "x"}', id="call_1"),))
    completion = await sdk.chat.completions.create(
        model="persona",
        messages=[{"role": "user", "content": "look"}],
        tools=[{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
    )
    call = completion.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == ("call_1", "lookup", '{"q": "x"}')
    assert completion.choices[0].finish_reason == "tool_calls"


async def test_errors_come_back_in_openais_shape(sdk, fake_llm, llm_app):
    with pytest.raises(openai.NotFoundError) as missing:
        await sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["code"] == "not_found" and missing.value.body["param"] == "model"

    with pytest.raises(openai.BadRequestError) as bad:
        await sdk.chat.completions.create(model="persona", messages=[{"role": "user", "content": "x"}], n=2)
    assert bad.value.body["param"] == "n"

    with pytest.raises(openai.BadRequestError):
        await sdk.chat.completions.create(model="persona", messages=[])

    fake_llm.script(status=429, headers={"retry-after": "3"})
    with pytest.raises(openai.RateLimitError) as limited:
        await sdk.chat.completions.create(model="persona", messages=[{"role": "user", "content": "x"}])
    assert limited.value.response.headers["retry-after"] == "3"

    stranger = openai.AsyncOpenAI(base_url=llm_app.state.base_url + "/v1", api_key="prk_nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        await stranger.models.list()
    assert denied.value.body["type"] == "authentication_error"


async def test_a_stream_broken_midway_ends_with_an_error_chunk(sdk, fake_llm):
    fake_llm.script(chunks=("one", "two", "three"), drop_after=1)
    stream = await sdk.chat.completions.create(
        model="persona", messages=[{"role": "user", "content": "x"}], stream=True
    )
    received = []
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "one"


@pytest.mark.parametrize("stream", [False, True])
async def test_an_agent_loop_against_an_echo_persona_ends_after_the_tool_result(
    sdk, fake_llm, llm_client, alice, stream
):
    made = await llm_client.post(
        "/api/v1/chat/personas", json=persona_body(model_settings={"provider": "echo"}), headers=alice.headers
    )
    assert made.status_code == 201, made.text
    model = f"persona/{made.json()['persona']['name']}"
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    messages: list[dict] = [{"role": "user", "content": '/tool get_weather {"city": "Paris"}'}]
    answers, ids = [], set()
    for _ in range(5):  # an agent's loop: run what the model calls, until it answers in text
        if stream:
            async with sdk.chat.completions.stream(model=model, messages=messages, tools=tools) as events:
                message = (await events.get_final_completion()).choices[0].message
        else:
            message = (
                (await sdk.chat.completions.create(model=model, messages=messages, tools=tools)).choices[0].message
            )
        if not message.tool_calls:
            answers.append(message.content)
            break
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
            ids.add(call.id)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"})
        if len(ids) == 1:
            # the same question again (as a new user turn) is a new call, with an id of its own
            messages.append({"role": "assistant", "content": "Checking once more."})
            messages.append({"role": "user", "content": '/tool get_weather {"city": "Paris"}'})
    assert answers == ["[echo] tool get_weather said: sunny, 21 C"]
    assert len(ids) == 2
    assert fake_llm.chat_requests() == []
