"""/v1/responses through the official openai SDK (``responses.create`` and ``.stream``) and the openai-agents SDK,
unchanged, against the fake LLM server: input items, instructions after the persona, tools, stored chains."""

from __future__ import annotations

import json

import asyncpg
import openai
import pytest

from tests.fakellm import FakeToolCall

pytestmark = pytest.mark.asyncio

TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": None,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def sdk(llm_app, alice):
    return openai.AsyncOpenAI(base_url=llm_app.state.base_url + "/v1", api_key=alice.key, max_retries=0)


@pytest.fixture
def bob_sdk(llm_app, bob):
    return openai.AsyncOpenAI(base_url=llm_app.state.base_url + "/v1", api_key=bob.key, max_retries=0)


async def test_create_puts_the_persona_first_then_instructions_then_the_inputs_system_text(sdk, fake_llm):
    fake_llm.script(chunks=("Bonjour", "!"), input_tokens=30, output_tokens=2, cached_tokens=12)
    response = await sdk.responses.create(
        model="persona/Mu",
        instructions="Answer in French.",
        input=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "input_text", "text": "Hello"}]},
        ],
        temperature=0.3,
        max_output_tokens=50,
    )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed"
    assert response.output_text == "Bonjour!"
    assert response.output[0].type == "message" and response.output[0].role == "assistant"
    assert response.usage.input_tokens == 30 and response.usage.output_tokens == 2
    assert response.usage.input_tokens_details.cached_tokens == 12
    sent = fake_llm.last_request.body
    system = sent["messages"][0]["content"]
    assert system.startswith("You are Mu")
    assert system.index("Answer in French.") < system.index("Be brief.")
    assert sent["messages"][1:] == [{"role": "user", "content": "Hello"}]
    assert sent["temperature"] == 0.3 and sent["max_tokens"] == 50


async def test_a_string_input_is_one_user_message(sdk, fake_llm):
    fake_llm.script(chunks=("Hi",))
    response = await sdk.responses.create(model="persona", input="Hello there")
    assert response.output_text == "Hi"
    assert fake_llm.last_request.body["messages"][-1] == {"role": "user", "content": "Hello there"}


async def test_stream_sends_openais_events_in_order_and_numbered(sdk, fake_llm):
    fake_llm.script(chunks=("One", " two", " three"), input_tokens=9, output_tokens=3)
    async with sdk.responses.stream(model="persona/Mu", input="Count") as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "One two three"
    assert final.output_text == "One two three" and final.status == "completed"
    assert final.usage.total_tokens == 12
    # The stored response is what the stream ended with.
    assert (await sdk.responses.retrieve(final.id)).output_text == "One two three"


async def test_previous_response_id_continues_the_stored_conversation(sdk, fake_llm):
    fake_llm.script(chunks=("Nice to meet you, Ada.",))
    first = await sdk.responses.create(
        model="persona/Mu", input=[{"role": "system", "content": "Call me Ada."}, {"role": "user", "content": "Hi"}]
    )
    fake_llm.script(chunks=("You are Ada.",))
    second = await sdk.responses.create(model="persona/Mu", input="Who am I?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    sent = fake_llm.last_request.body["messages"]
    assert sent[1:] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Nice to meet you, Ada."},
        {"role": "user", "content": "Who am I?"},
    ]
    # The input's system text is part of the conversation and goes on with it.
    assert "Call me Ada." in sent[0]["content"]
    fake_llm.script(chunks=("Still Ada.",))
    await sdk.responses.create(model="persona/Mu", input="Sure?", previous_response_id=second.id)
    assert len(fake_llm.last_request.body["messages"]) == 6


async def test_instructions_are_not_carried_to_the_next_response(sdk, fake_llm):
    fake_llm.script(chunks=("Oui",))
    first = await sdk.responses.create(model="persona/Mu", instructions="Answer in French.", input="Hi")
    fake_llm.script(chunks=("Yes",))
    await sdk.responses.create(model="persona/Mu", input="Again", previous_response_id=first.id)
    assert "Answer in French." not in fake_llm.last_request.body["messages"][0]["content"]


async def test_another_users_response_is_not_found_anywhere(sdk, bob_sdk, fake_llm):
    fake_llm.script(chunks=("Mine",))
    mine = await sdk.responses.create(model="persona/Mu", input="Hi")
    for attempt in (
        bob_sdk.responses.create(model="persona/Mu", input="Hi", previous_response_id=mine.id),
        bob_sdk.responses.retrieve(mine.id),
        bob_sdk.responses.delete(mine.id),
    ):
        with pytest.raises(openai.NotFoundError):
            await attempt
    assert (await sdk.responses.retrieve(mine.id)).output_text == "Mine"


async def test_store_false_keeps_nothing(sdk, fake_llm):
    fake_llm.script(chunks=("Forgotten",))
    response = await sdk.responses.create(model="persona/Mu", input="Hi", store=False)
    assert response.output_text == "Forgotten" and response.store is False
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError) as missing:
        await sdk.responses.create(model="persona/Mu", input="And?", previous_response_id=response.id)
    assert missing.value.body["param"] == "previous_response_id"


async def test_delete_then_the_response_is_gone(sdk, fake_llm):
    fake_llm.script(chunks=("Soon gone",))
    response = await sdk.responses.create(model="persona/Mu", input="Hi")
    await sdk.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.delete(response.id)


async def test_an_expired_response_reads_as_absent(sdk, fake_llm, database_url):
    fake_llm.script(chunks=("Old",))
    response = await sdk.responses.create(model="persona/Mu", input="Hi")
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE responses SET expires_at = now() - interval '1 second' WHERE id = $1", response.id)
    finally:
        await conn.close()
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.create(model="persona/Mu", input="And?", previous_response_id=response.id)


async def test_a_function_call_and_its_output_round_trip(sdk, fake_llm):
    fake_llm.script(
        chunks=(), tool_calls=(FakeToolCall(name="get_weather", arguments='{"city": "Oslo"}', id="call_9"),)
    )
    first = await sdk.responses.create(model="persona/Mu", input="Weather in Oslo?", tools=[TOOL])
    call = first.output[-1]
    assert (call.type, call.call_id, call.name, json.loads(call.arguments)) == (
        "function_call",
        "call_9",
        "get_weather",
        {"city": "Oslo"},
    )
    sent_tools = fake_llm.last_request.body["tools"]
    assert sent_tools[0]["function"]["name"] == "get_weather" and sent_tools[0]["function"]["description"] == ""
    fake_llm.script(chunks=("It is sunny in Oslo.",))
    second = await sdk.responses.create(
        model="persona/Mu",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": "call_9", "output": '{"sky": "sunny"}'}],
        tools=[TOOL],
    )
    assert second.output_text == "It is sunny in Oslo."
    sent = fake_llm.last_request.body["messages"]
    assert sent[2]["role"] == "assistant" and sent[2]["tool_calls"][0]["id"] == "call_9"
    assert sent[3] == {"role": "tool", "tool_call_id": "call_9", "content": '{"sky": "sunny"}'}


async def test_an_item_reference_stands_for_the_stored_output_item_it_names(sdk, bob_sdk, fake_llm):
    fake_llm.script(chunks=("Checking.",), tool_calls=(FakeToolCall(name="get_weather", arguments="{}", id="c7"),))
    first = await sdk.responses.create(model="persona/Mu", input="Weather?", tools=[TOOL])
    said, call = first.output
    fake_llm.script(chunks=("Sunny.",))
    history = [
        {"role": "user", "content": "Weather?"},
        {"type": "item_reference", "id": said.id},
        {"type": "item_reference", "id": call.id},
        {"type": "function_call_output", "call_id": "c7", "output": "sun"},
    ]
    second = await sdk.responses.create(model="persona/Mu", input=history, tools=[TOOL], store=False)
    assert second.output_text == "Sunny."
    sent = fake_llm.last_request.body["messages"]
    assert sent[1:3] == [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [{"id": "c7", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}],
        },
    ]
    assert sent[3] == {"role": "tool", "tool_call_id": "c7", "content": "sun"}

    # Only your own stored items: another's, or one of a response kept nowhere, is a 404 naming it.
    unstored = second.output[0].id
    for client, item_id in ((bob_sdk, said.id), (sdk, unstored)):
        with pytest.raises(openai.NotFoundError) as missing:
            await client.responses.create(
                model="persona/Mu", input=[{"role": "user", "content": "Hi"}, {"type": "item_reference", "id": item_id}]
            )
        assert missing.value.body["param"] == "input[1].id"


async def test_a_streamed_function_call_has_its_argument_events(sdk, fake_llm):
    fake_llm.script(
        chunks=(), tool_calls=(FakeToolCall(name="get_weather", arguments='{"city": "Rome"}', id="call_3"),)
    )
    async with sdk.responses.stream(model="persona/Mu", input="Rome?", tools=[TOOL]) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    kinds = [event.type for event in events]
    assert "response.function_call_arguments.delta" in kinds
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(done.arguments) == {"city": "Rome"} and done.name == "get_weather"
    assert kinds[-2:] == ["response.output_item.done", "response.completed"]
    item = final.output[-1]
    assert item.type == "function_call" and item.call_id == "call_3" and item.status == "completed"


async def test_a_provider_failure_midway_ends_the_stream_with_response_failed(sdk, fake_llm):
    fake_llm.script(chunks=("Half", " an answer"), error_after=1)
    stream = await sdk.responses.create(model="persona/Mu", input="Hi", stream=True)
    events = [event async for event in stream]
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed" and events[-1].response.error.code


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"background": True}, "background"),
        ({"tool_choice": "required"}, "tool_choice"),  # and no tool to call
        ({"include": ["file_search_call.results"]}, "include"),
        ({"truncation": "auto"}, "truncation"),
        ({"input": [{"type": "input_image", "image_url": "x"}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
        ),
    ],
)
async def test_what_is_not_served_is_a_400_naming_it(sdk, fake_llm, extra, param):
    body = {"model": "persona/Mu", "input": "Hi", **extra}
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.responses.create(**body)
    assert param in (refused.value.body.get("param") or "") + refused.value.body["message"]
    assert fake_llm.chat_requests() == []


async def test_the_openai_agents_sdk_runs_a_function_tool_through_a_persona(llm_app, alice, fake_llm):
    import agents

    ran: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        ran.append(city)
        return f"sunny in {city}"

    client = openai.AsyncOpenAI(base_url=llm_app.state.base_url + "/v1", api_key=alice.key, max_retries=0)
    model = agents.OpenAIResponsesModel(model="persona/Mu", openai_client=client)
    agent = agents.Agent(name="Helper", instructions="Use tools.", tools=[get_weather], model=model)
    fake_llm.script(chunks=(), tool_calls=(FakeToolCall(name="get_weather", arguments='{"city": "Lima"}', id="c1"),))
    fake_llm.script(chunks=("It is sunny in Lima.",))
    result = await agents.Runner.run(
        agent, "What is the weather in Lima?", run_config=agents.RunConfig(tracing_disabled=True)
    )
    assert ran == ["Lima"]
    assert result.final_output == "It is sunny in Lima."
    sent = fake_llm.last_request.body["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": "c1", "content": "sunny in Lima"}
    assert "Use tools." in sent[0]["content"] and sent[0]["content"].startswith("You are Mu")
