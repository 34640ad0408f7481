"""The official anthropic client, unchanged, against our /v1/messages: any persona, on either provider."""

from __future__ import annotations

import json

import anthropic
import pytest

from tests.conftest import persona_body
from tests.fakellm import FakeToolCall

PROVIDERS = ["openai", "anthropic"]
UPSTREAM_PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
TOOLS = [
    {
        "name": "get_time",
        "description": "Current time in a time zone",
        "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}}},
    }
]


@pytest.fixture
def sdk(llm_app, alice):
    return anthropic.AsyncAnthropic(base_url=llm_app.state.base_url, api_key=alice.key, max_retries=0)


@pytest.fixture
def make_persona(llm_client, alice):
    async def make(provider: str, **fields):
        body = persona_body(model_settings={"provider": provider}, **fields)
        answer = await llm_client.post("/api/v1/chat/personas", json=body, headers=alice.headers)
        assert answer.status_code == 201, answer.text
        return answer.json()["persona"]

    return make


def upstream_system(request) -> str:
    """The system prompt the provider was sent, wherever its API wants it."""
    body = request.body
    if request.path == UPSTREAM_PATHS["anthropic"]:
        system = body["system"]
        # Text blocks when the persona's part is marked for the prompt cache (the client's follows it).
        return system if isinstance(system, str) else "\n\n".join(block["text"] for block in system)
    assert body["messages"][0]["role"] == "system"
    return body["messages"][0]["content"]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_message_comes_back_with_the_clients_system_after_the_personas(sdk, fake_llm, make_persona, provider):
    persona = await make_persona(provider)
    fake_llm.script(chunks=("Bonjour", " !"), input_tokens=20, output_tokens=2)
    message = await sdk.messages.create(
        model=f"persona/{persona['name']}",
        max_tokens=200,
        system="Answer in French.",
        messages=[{"role": "user", "content": "Hi"}],
        extra_body={"temperature": 0.4},  # a Messages field this SDK release has no argument for
    )
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.model == f"persona/{persona['name']}"
    assert [(block.type, block.text) for block in message.content] == [("text", "Bonjour !")]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (20, 2)

    sent = fake_llm.last_request
    assert sent.path == UPSTREAM_PATHS[provider]
    system = upstream_system(sent)
    assert system.startswith(f"You are {persona['name']}") and system.endswith("Answer in French.")
    assert sent.body["max_tokens"] == 200 and sent.body["temperature"] == 0.4


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_streamed_message_through_the_sdks_stream_helper(sdk, fake_llm, make_persona, provider):
    persona = await make_persona(provider)
    fake_llm.script(chunks=("a", "b", "c"), input_tokens=9, output_tokens=3)
    async with sdk.messages.stream(
        model=f"persona/{persona['name']}",
        max_tokens=100,
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "A note: abc", "cache_control": {"type": "ephemeral"}},
                    {"type": "text", "text": "Spell it."},
                ],
            }
        ],
    ) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert pieces == ["a", "b", "c"]
    assert [(block.type, block.text) for block in final.content] == [("text", "abc")]
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (9, 3)
    sent = fake_llm.last_request
    assert upstream_system(sent).endswith("Be brief.\n\nBe kind.")
    assert sent.body["messages"][-1] == {"role": "user", "content": "A note: abc\n\nSpell it."}


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_stream_true_gives_anthropics_events_in_order(sdk, fake_llm, make_persona, provider):
    persona = await make_persona(provider)
    fake_llm.script(chunks=("one", " two"))
    stream = await sdk.messages.create(
        model=f"persona/{persona['name']}", max_tokens=50, messages=[{"role": "user", "content": "count"}], stream=True
    )
    events = [event async for event in stream]
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0].message.role == "assistant" and events[0].message.content == []
    assert events[1].index == 0 and events[1].content_block.type == "text"
    assert [e.delta.text for e in events[2:4]] == ["one", " two"]
    assert events[5].delta.stop_reason == "end_turn" and events[5].usage.output_tokens == 7


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_tool_round_trip_keeps_the_persona_on_the_second_call(sdk, fake_llm, make_persona, provider):
    persona = await make_persona(provider)
    model = f"persona/{persona['name']}"
    question = {"role": "user", "content": "What time is it in UTC?"}
    fake_llm.script(
        chunks=("Let me look.",),
        tool_calls=(FakeToolCall(name="get_time", arguments='{"zone": "UTC"}', id="toolu_7", pieces=3),),
    )
    async with sdk.messages.stream(model=model, max_tokens=100, tools=TOOLS, messages=[question]) as stream:
        asked = await stream.get_final_message()
    assert asked.stop_reason == "tool_use"
    assert [block.type for block in asked.content] == ["text", "tool_use"]
    call = asked.content[1]
    assert (call.id, call.name, call.input) == ("toolu_7", "get_time", {"zone": "UTC"})
    first = fake_llm.last_request.body
    offered = first["tools"][0]
    assert (offered["function"]["name"] if provider == "openai" else offered["name"]) == "get_time"

    fake_llm.script(chunks=("It is noon.",))
    result = {"type": "tool_result", "tool_use_id": "toolu_7", "content": json.dumps({"time": "12:00"})}
    answer = await sdk.messages.create(
        model=model,
        max_tokens=100,
        tools=TOOLS,
        messages=[
            question,
            {"role": "assistant", "content": asked.content},
            {"role": "user", "content": [result]},
        ],
    )
    assert answer.content[0].text == "It is noon."
    sent = fake_llm.last_request
    assert sent.path == UPSTREAM_PATHS[provider]
    assert upstream_system(sent).startswith(f"You are {persona['name']}")
    if provider == "openai":
        assistant, tool = sent.body["messages"][2:]
        assert assistant["content"] == "Let me look."
        assert assistant["tool_calls"][0]["id"] == "toolu_7"
        assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"zone": "UTC"}
        assert tool == {"role": "tool", "tool_call_id": "toolu_7", "content": '{"time": "12:00"}'}
    else:
        assistant, tool = sent.body["messages"][1:]
        assert assistant["content"] == [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_7", "name": "get_time", "input": {"zone": "UTC"}},
        ]
        assert tool == {"role": "user", "content": [result]}


async def test_a_tool_call_without_streaming(sdk, fake_llm):
    fake_llm.script(chunks=(), tool_calls=(FakeToolCall(name="get_time", arguments='{"zone": "CET"}', id="call_1"),))
    message = await sdk.messages.create(
        model="persona", max_tokens=100, tools=TOOLS, messages=[{"role": "user", "content": "time?"}]
    )
    assert message.stop_reason == "tool_use"
    assert [(b.type, b.id, b.name, b.input) for b in message.content] == [
        ("tool_use", "call_1", "get_time", {"zone": "CET"})
    ]


async def test_stop_reasons_map_from_the_providers(sdk, fake_llm):
    fake_llm.script(chunks=("cut",), finish_reason="length")
    message = await sdk.messages.create(model="persona", max_tokens=1, messages=[{"role": "user", "content": "x"}])
    assert message.stop_reason == "max_tokens"


async def test_errors_come_back_in_anthropics_shape(sdk, fake_llm, llm_app):
    with pytest.raises(anthropic.NotFoundError) as missing:
        await sdk.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["type"] == "error"
    assert missing.value.body["error"]["type"] == "not_found_error"
    assert "persona/<name>" in missing.value.body["error"]["message"]

    with pytest.raises(anthropic.BadRequestError) as no_limit:
        await sdk.messages.create(
            model="persona", max_tokens=anthropic.omit, messages=[{"role": "user", "content": "x"}], timeout=10
        )
    assert no_limit.value.body["error"] == {
        "type": "invalid_request_error",
        "message": "`max_tokens` is required.",
        "request_id": no_limit.value.response.headers["x-request-id"],
    }

    with pytest.raises(anthropic.BadRequestError) as unknown:
        await sdk.messages.create(
            model="persona", max_tokens=10, messages=[{"role": "user", "content": "x"}], extra_body={"top_k": 5}
        )
    assert "`top_k`" in unknown.value.body["error"]["message"]

    with pytest.raises(anthropic.BadRequestError) as choice:
        await sdk.messages.create(
            model="persona",
            max_tokens=10,
            tools=TOOLS,
            tool_choice={"type": "tool", "name": "not_offered"},
            messages=[{"role": "user", "content": "x"}],
        )
    assert "`tool_choice`" in choice.value.body["error"]["message"]
    assert "'not_offered'" in choice.value.body["error"]["message"]

    stranger = anthropic.AsyncAnthropic(base_url=llm_app.state.base_url, api_key="prk_nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as denied:
        await stranger.messages.create(model="persona", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert denied.value.body["error"]["type"] == "authentication_error"
    assert fake_llm.chat_requests() == []


async def test_provider_failures_before_the_answer_are_statuses(sdk, fake_llm):
    fake_llm.script(status=429, headers={"retry-after": "3"})
    with pytest.raises(anthropic.RateLimitError) as limited:
        await sdk.messages.create(model="persona", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert limited.value.response.headers["retry-after"] == "3"
    assert limited.value.body["error"]["type"] == "rate_limit_error"

    fake_llm.script(status=500)
    with pytest.raises(anthropic.InternalServerError) as broken:
        await sdk.messages.create(model="persona", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert broken.value.status_code == 502 and broken.value.body["error"]["type"] == "api_error"


async def test_a_failure_midway_is_an_error_event(sdk, fake_llm):
    fake_llm.script(chunks=("one", "two", "three"), drop_after=1)
    received = []
    with pytest.raises(anthropic.APIStatusError) as failed:
        async with sdk.messages.stream(
            model="persona", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        ) as stream:
            async for text in stream.text_stream:
                received.append(text)
    assert received == ["one"]
    assert failed.value.body["type"] == "error" and failed.value.body["error"]["type"] == "api_error"


async def test_a_slow_stream_pings_through_its_silences(sdk, fake_llm, llm_client, alice):
    # The server under test pings after 0.3 s of silence.
    fake_llm.script(chunks=("slow", " answer"), chunk_delay=0.8)
    body = {"model": "persona", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    events: list[tuple[str, dict]] = []
    async with llm_client.stream("POST", "/v1/messages", json=body, headers={"x-api-key": alice.key}) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        name = None
        async for line in answer.aiter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    names = [n for n, _ in events]
    assert all(data["type"] == n for n, data in events)
    assert names[0] == "message_start" and names[-1] == "message_stop"
    first, second = (i for i, n in enumerate(names) if n == "content_block_delta")
    assert "ping" in names[first:second]

    fake_llm.script(chunks=("slow", " again"), chunk_delay=0.8)
    async with sdk.messages.stream(model="persona", max_tokens=10, messages=[{"role": "user", "content": "x"}]) as s:
        assert await s.get_final_text() == "slow again"


async def test_answers_say_which_persona_answered(sdk, fake_llm, make_persona):
    persona = await make_persona("anthropic")
    model = f"persona/{persona['name']}"
    expected = {"x-persona-id": persona["id"], "x-persona-version": "1", "x-persona-source": "request"}
    question = [{"role": "user", "content": "Hi"}]

    raw = await sdk.messages.with_raw_response.create(model=model, max_tokens=10, messages=question)
    assert {name: raw.headers.get(name) for name in expected} == expected
    async with sdk.messages.stream(model=model, max_tokens=10, messages=question) as stream:
        assert {name: stream.response.headers.get(name) for name in expected} == expected
        await stream.get_final_message()

    mine = await sdk.messages.with_raw_response.create(model="persona", max_tokens=10, messages=question)
    assert mine.headers["x-persona-source"] == "default"  # alice has chosen no persona


# Token counting: the persona's whole context, counted as the context builder counts it, with no provider call.

LORE = {"entries": [{"id": "river", "keys": ["river"], "content": "The river Ash runs black at night, cold and deep."}]}


async def rendered_tokens(llm_client, account, persona_id: str, message: str) -> int:
    """What render says the same turn uses (``context.used``)."""
    r = await llm_client.post(
        f"/api/v1/chat/personas/{persona_id}/render", json={"message": message}, headers=account.headers
    )
    assert r.status_code == 200, r.text
    return r.json()["context"]["used"]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_count_tokens_counts_the_personas_context_as_render_does(
    sdk, fake_llm, make_persona, llm_client, alice, provider
):
    persona = await make_persona(provider, lorebook=LORE)
    model = f"persona/{persona['name']}"
    for message in ("Hello there", "Tell me about the river"):  # the second sets the lore entry off
        counted = await sdk.messages.count_tokens(model=model, messages=[{"role": "user", "content": message}])
        assert counted.input_tokens == await rendered_tokens(llm_client, alice, persona["id"], message)
    plain = await sdk.messages.count_tokens(model=model, messages=[{"role": "user", "content": "Hello there"}])
    lore = await sdk.messages.count_tokens(model=model, messages=[{"role": "user", "content": "About the river"}])
    assert lore.input_tokens > plain.input_tokens + 10  # the entry's text is counted as a real turn would send it

    # The client's own system text and tools are counted too, after the persona's.
    question = [{"role": "user", "content": "Hello there"}]
    with_system = await sdk.messages.count_tokens(model=model, system="Answer in French, always.", messages=question)
    with_tools = await sdk.messages.count_tokens(model=model, tools=TOOLS, messages=question)
    assert with_system.input_tokens > plain.input_tokens and with_tools.input_tokens > plain.input_tokens
    assert fake_llm.chat_requests() == []


async def test_a_persona_with_a_longer_prompt_counts_more(sdk, fake_llm, make_persona):
    short = await make_persona("openai", system_prompt="You are terse.")
    long = await make_persona("openai", system_prompt="You are terse. " + "Always check every fact twice. " * 40)
    question = [{"role": "user", "content": "Hi"}]
    short_count = await sdk.messages.count_tokens(model=f"persona/{short['name']}", messages=question)
    long_count = await sdk.messages.count_tokens(model=f"persona/{long['name']}", messages=question)
    assert long_count.input_tokens > short_count.input_tokens + 100
    # `persona` is the caller's own (the default here), counted with its own prompt.
    default = await sdk.messages.count_tokens(model="persona", messages=question)
    assert default.input_tokens > 0
    raw = await sdk.messages.with_raw_response.count_tokens(model=f"persona/{long['name']}", messages=question)
    assert raw.headers["x-persona-id"] == long["id"] and raw.headers["x-persona-source"] == "request"
    assert fake_llm.chat_requests() == []


async def test_count_tokens_counts_a_tool_round_trip(sdk, fake_llm):
    asked = [{"role": "user", "content": "What time is it in UTC?"}]
    round_trip = [
        *asked,
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "12:00, sunny"}]},
    ]
    first = await sdk.messages.count_tokens(model="persona", tools=TOOLS, messages=asked)
    second = await sdk.messages.count_tokens(model="persona", tools=TOOLS, messages=round_trip)
    assert second.input_tokens > first.input_tokens
    assert fake_llm.chat_requests() == []


async def test_count_tokens_errors_come_back_in_anthropics_shape(sdk, fake_llm, llm_app, llm_client, alice):
    question = [{"role": "user", "content": "x"}]
    with pytest.raises(anthropic.BadRequestError) as unknown:
        await sdk.messages.count_tokens(model="persona", messages=question, extra_body={"max_tokens": 10})
    assert unknown.value.body["error"]["type"] == "invalid_request_error"
    assert "`max_tokens`" in unknown.value.body["error"]["message"]

    with pytest.raises(anthropic.BadRequestError) as empty:
        await sdk.messages.count_tokens(model="persona", messages=[])
    assert "`messages`" in empty.value.body["error"]["message"]

    with pytest.raises(anthropic.BadRequestError) as blank:
        await sdk.messages.count_tokens(model="persona", messages=[{"role": "user", "content": "  "}])
    assert "`messages[0].content`" in blank.value.body["error"]["message"]

    headers = {"x-api-key": alice.key}
    r = await llm_client.post("/v1/messages/count_tokens", json={"messages": question}, headers=headers)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"] == "`model` is required."

    with pytest.raises(anthropic.NotFoundError) as missing:
        await sdk.messages.count_tokens(model="claude-sonnet-4-5", messages=question)
    assert missing.value.body["error"]["type"] == "not_found_error"

    stranger = anthropic.AsyncAnthropic(base_url=llm_app.state.base_url, api_key="prk_nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        await stranger.messages.count_tokens(model="persona", messages=question)
    assert fake_llm.chat_requests() == []


async def test_count_tokens_counts_the_callers_memories_unless_the_header_leaves_them_out(
    sdk, fake_llm, llm_client, alice
):
    body = persona_body(model_settings={"provider": "openai", "memory": {"enabled": True}})
    made = await llm_client.post("/api/v1/chat/personas", json=body, headers=alice.headers)
    assert made.status_code == 201, made.text
    persona = made.json()["persona"]
    model, question = f"persona/{persona['name']}", [{"role": "user", "content": "Hello there"}]
    before = await sdk.messages.count_tokens(model=model, messages=question)
    r = await llm_client.post(
        "/api/v1/memories", json={"content": "Alice plays the cello in a quartet on Sundays."}, headers=alice.headers
    )
    assert r.status_code == 201, r.text
    remembered = await sdk.messages.count_tokens(model=model, messages=question)
    assert remembered.input_tokens > before.input_tokens
    assert remembered.input_tokens == await rendered_tokens(llm_client, alice, persona["id"], "Hello there")
    off = await sdk.messages.count_tokens(model=model, messages=question, extra_headers={"x-persona-memory": "off"})
    assert off.input_tokens == before.input_tokens
    assert fake_llm.chat_requests() == []
