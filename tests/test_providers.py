"""The OpenAI and Anthropic adapters, through the real SDKs, against the fake LLM server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator

import pytest

from providers import (
    ChatMessage,
    Finish,
    Provider,
    ProviderConfig,
    ProviderEvent,
    ProviderRegistry,
    ProviderRequest,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    Usage,
    assemble_tool_calls,
)
from runtime.errors import (
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from tests.fakellm import FakeLLM, FakeToolCall

pytest_plugins = ["tests.fakellm_plugin"]

SECRET = "sk-test-0123456789-secret"
SYSTEM = "You are Mu, a cheerful robot companion."
WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather for a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def make_provider(fake_llm: FakeLLM, kind: str, **config: float) -> Provider:
    url = fake_llm.openai_base_url if kind == "openai" else fake_llm.anthropic_base_url
    settings = ProviderConfig(name=f"fake-{kind}", kind=kind, api_key=SECRET, base_url=url, **config)
    return ProviderRegistry.with_builtins(plugins=False).create(settings)


@pytest.fixture(params=["openai", "anthropic"])
async def provider(request: pytest.FixtureRequest, fake_llm: FakeLLM) -> AsyncIterator[Provider]:
    p = make_provider(fake_llm, request.param)
    yield p
    await p.aclose()


@pytest.fixture
async def openai_provider(fake_llm: FakeLLM) -> AsyncIterator[Provider]:
    p = make_provider(fake_llm, "openai")
    yield p
    await p.aclose()


@pytest.fixture
async def anthropic_provider(fake_llm: FakeLLM) -> AsyncIterator[Provider]:
    p = make_provider(fake_llm, "anthropic")
    yield p
    await p.aclose()


def ask(text: str = "What's the weather in Paris?", **fields: object) -> ProviderRequest:
    return ProviderRequest(
        model="test-model", system=SYSTEM, messages=(ChatMessage(role="user", content=text),), **fields
    )  # type: ignore[arg-type]


async def collect(provider: Provider, request: ProviderRequest) -> list[ProviderEvent]:
    return [event async for event in provider.stream(request)]


async def collect_until_error(provider: Provider, request: ProviderRequest) -> tuple[list, ProviderError]:
    events: list[ProviderEvent] = []
    with pytest.raises(ProviderError) as caught:
        async for event in provider.stream(request):
            events.append(event)
    return events, caught.value


def tool_round_trip(first: ProviderRequest, calls: tuple[ToolCall, ...]) -> ProviderRequest:
    """The follow-up request a runtime sends after running the tools."""
    results = tuple(
        ChatMessage(role="tool", tool_call_id=call.id, content=f"sunny, 2{i} C")
        for i, call in enumerate(calls)
    )
    assistant = ChatMessage(role="assistant", content=None, tool_calls=calls)
    return ProviderRequest(
        model=first.model,
        system=first.system,
        messages=(*first.messages, assistant, *results),
        tools=first.tools,
    )


# -- what arrives upstream ---------------------------------------------------------------


async def test_openai_puts_the_system_prompt_first_also_after_a_tool_result(
    fake_llm: FakeLLM, openai_provider: Provider
) -> None:
    calls = (FakeToolCall(id="call_a", name="get_weather", arguments='{"city": "Paris"}'),
             FakeToolCall(id="call_b", name="get_weather", arguments='{"city": "Oslo"}'))  # fmt: skip
    fake_llm.script(chunks=(), tool_calls=calls)
    first = ask(tools=(WEATHER,))
    assembled = assemble_tool_calls(await collect(openai_provider, first))
    await collect(openai_provider, tool_round_trip(first, assembled))

    bodies = [r.body for r in fake_llm.chat_requests()]
    assert len(bodies) == 2
    for body in bodies:
        assert body["messages"][0] == {"role": "system", "content": SYSTEM}
        assert [m["role"] for m in body["messages"]].count("system") == 1
    follow_up = bodies[1]["messages"]
    assert [m["role"] for m in follow_up] == ["system", "user", "assistant", "tool", "tool"]
    assert follow_up[2]["tool_calls"] == [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {
            "id": "call_b",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
        },
    ]
    assert follow_up[3] == {"role": "tool", "tool_call_id": "call_a", "content": "sunny, 20 C"}
    assert follow_up[4] == {"role": "tool", "tool_call_id": "call_b", "content": "sunny, 21 C"}


async def test_anthropic_sends_the_system_parameter_also_after_a_tool_result(
    fake_llm: FakeLLM, anthropic_provider: Provider
) -> None:
    calls = (FakeToolCall(id="toolu_a", name="get_weather", arguments='{"city": "Paris"}'),
             FakeToolCall(id="toolu_b", name="get_weather", arguments='{"city": "Oslo"}'))  # fmt: skip
    fake_llm.script(chunks=("Let me look.",), tool_calls=calls)
    first = ask(tools=(WEATHER,))
    events = await collect(anthropic_provider, first)
    assembled = assemble_tool_calls(events)
    follow = tool_round_trip(first, assembled)
    await collect(anthropic_provider, follow)

    bodies = [r.body for r in fake_llm.chat_requests()]
    assert [b["system"] for b in bodies] == [SYSTEM, SYSTEM]
    for body in bodies:
        assert all(m["role"] in ("user", "assistant") for m in body["messages"])
    follow_up = bodies[1]["messages"]
    assert follow_up[1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {"city": "Oslo"}},
        ],
    }
    # both results of that turn travel in one user message
    assert follow_up[2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_a", "content": "sunny, 20 C"},
            {"type": "tool_result", "tool_use_id": "toolu_b", "content": "sunny, 21 C"},
        ],
    }
    assert len(follow_up) == 3


async def test_tools_are_sent_as_each_vendors_function_tools(fake_llm: FakeLLM, provider: Provider) -> None:
    await collect(provider, ask(tools=(WEATHER,)))
    tools = fake_llm.last_request.body["tools"]
    if provider.kind == "openai":
        assert tools == [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Current weather for a city.",
                    "parameters": WEATHER.parameters,
                },
            }
        ]
    else:
        assert tools == [
            {
                "name": "get_weather",
                "description": "Current weather for a city.",
                "input_schema": WEATHER.parameters,
            }
        ]


async def test_no_tools_key_when_the_persona_has_no_tools(fake_llm: FakeLLM, provider: Provider) -> None:
    await collect(provider, ask())
    assert "tools" not in fake_llm.last_request.body


async def test_sampling_parameters_are_sent_only_when_set(fake_llm: FakeLLM, provider: Provider) -> None:
    await collect(provider, ask())
    await collect(provider, ask(temperature=0.2, top_p=0.9, max_tokens=300))
    unset, chosen = (r.body for r in fake_llm.chat_requests())

    assert "temperature" not in unset and "top_p" not in unset
    assert (chosen["temperature"], chosen["top_p"], chosen["max_tokens"]) == (0.2, 0.9, 300)
    if provider.kind == "openai":
        assert "max_tokens" not in unset
        assert unset["stream_options"] == {"include_usage": True}
    else:
        assert unset["max_tokens"] == 1024  # required by Anthropic


async def test_model_falls_back_to_the_providers_default(fake_llm: FakeLLM, provider: Provider) -> None:
    await collect(
        provider, ProviderRequest(model="", system=None, messages=(ChatMessage(role="user", content="hi"),))
    )
    body = fake_llm.last_request.body
    assert body["model"] == provider.default_model
    assert (
        provider.default_model == {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5"}[provider.kind]
    )
    # no system prompt: nothing is invented
    assert "system" not in body and body["messages"][0]["role"] == "user"


async def test_build_body_is_exactly_what_goes_upstream(fake_llm: FakeLLM, provider: Provider) -> None:
    history = (
        ChatMessage(role="user", content="hi"),
        ChatMessage(role="assistant", content="Hello!"),
        ChatMessage(role="user", content="and now?"),
    )
    request = ProviderRequest(
        model="m-1", system=SYSTEM, messages=history, tools=(WEATHER,), temperature=0.7, max_tokens=50
    )
    await collect(provider, request)
    assert fake_llm.last_request.body == provider.build_body(request)


async def test_the_api_key_goes_in_the_auth_header_and_env_variables_do_not_override_config(
    fake_llm: FakeLLM, provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-from-env")
    await collect(provider, ask())
    headers = fake_llm.last_request.headers
    # anthropic 2.x sends the key as a bearer token, like openai does
    assert headers.get("authorization") == f"Bearer {SECRET}" or headers.get("x-api-key") == SECRET
    assert "sk-from-env" not in json.dumps(headers)


# -- what comes back ---------------------------------------------------------------------


async def test_text_streams_in_order_then_usage_then_finish(fake_llm: FakeLLM, provider: Provider) -> None:
    fake_llm.script(chunks=("Bonjour", ", ", "le ", "monde"), input_tokens=42, output_tokens=9)
    events = await collect(provider, ask())
    assert events == [
        TextDelta(content="Bonjour"),
        TextDelta(content=", "),
        TextDelta(content="le "),
        TextDelta(content="monde"),
        Usage(input_tokens=42, output_tokens=9),
        Finish(finish_reason="stop"),
    ]


async def test_tool_call_deltas_reassemble_into_calls(fake_llm: FakeLLM, provider: Provider) -> None:
    calls = (FakeToolCall(id="c1", name="get_weather", arguments='{"city": "Paris", "unit": "C"}', pieces=4),
             FakeToolCall(id="c2", name="lookup", arguments='{"q": "rain"}', pieces=3))  # fmt: skip
    fake_llm.script(chunks=(), tool_calls=calls)
    events = await collect(provider, ask(tools=(WEATHER,)))

    assert all(isinstance(e, ToolCallDelta) for e in events[:-2])
    assert len(events) > 2 + len(calls)  # arguments really came in pieces
    assert assemble_tool_calls(events) == (
        ToolCall(id="c1", name="get_weather", arguments='{"city": "Paris", "unit": "C"}'),
        ToolCall(id="c2", name="lookup", arguments='{"q": "rain"}'),
    )
    assert events[-1] == Finish(finish_reason="tool_calls")


@pytest.mark.parametrize(
    ("kind", "vendor_reason", "finish"),
    [
        ("openai", "length", "length"),
        ("openai", "content_filter", "content_filter"),
        ("anthropic", "max_tokens", "length"),
        ("anthropic", "refusal", "content_filter"),
        ("anthropic", "stop_sequence", "stop"),
    ],
)
async def test_finish_reasons_are_normalised(
    fake_llm: FakeLLM, kind: str, vendor_reason: str, finish: str
) -> None:
    provider = make_provider(fake_llm, kind)
    fake_llm.script(finish_reason=vendor_reason)
    events = await collect(provider, ask())
    await provider.aclose()
    assert events[-1] == Finish(finish_reason=finish)


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (500, ProviderUnavailable),
        (503, ProviderUnavailable),
        (529, ProviderUnavailable),
        (401, ProviderRejected),
        (400, ProviderRejected),
        (404, ProviderRejected),
    ],
)
async def test_http_errors_map_to_the_error_tree_without_retries(
    fake_llm: FakeLLM, provider: Provider, status: int, error_class: type[ProviderError]
) -> None:
    fake_llm.script(status=status)
    events, error = await collect_until_error(provider, ask())
    assert type(error) is error_class
    assert events == []
    assert error.provider == provider.name and provider.name in str(error)
    assert str(status) in str(error)
    # max_retries=0: exactly one upstream request, whatever the status
    assert len(fake_llm.chat_requests()) == 1


async def test_rate_limit_carries_retry_after(fake_llm: FakeLLM, provider: Provider) -> None:
    fake_llm.script(status=429, headers={"retry-after": "7"})
    _, error = await collect_until_error(provider, ask())
    assert isinstance(error, ProviderRateLimited)
    assert error.retry_after == 7.0
    assert error.status == 429
    assert len(fake_llm.chat_requests()) == 1


async def test_error_messages_never_contain_the_api_key(fake_llm: FakeLLM, provider: Provider) -> None:
    echoed = {"error": {"message": f"Incorrect API key provided: {SECRET}", "type": "invalid_request_error"}}
    fake_llm.script(status=401, error_body=echoed)
    _, error = await collect_until_error(provider, ask())
    assert isinstance(error, ProviderRejected)
    assert "Incorrect API key provided" in str(error)
    assert SECRET not in str(error) and SECRET not in repr(error.details)


async def test_timeout_before_the_first_byte(fake_llm: FakeLLM) -> None:
    for kind in ("openai", "anthropic"):
        provider = make_provider(fake_llm, kind, timeout=0.3)
        fake_llm.script(first_byte_delay=30)
        events, error = await collect_until_error(provider, ask())
        await provider.aclose()
        assert isinstance(error, ProviderTimeout), kind
        assert events == []
        assert await fake_llm.last_request.wait_disconnected(5)


async def test_timeout_in_the_middle_of_the_stream(fake_llm: FakeLLM) -> None:
    for kind in ("openai", "anthropic"):
        provider = make_provider(fake_llm, kind, timeout=0.3)
        fake_llm.script(chunks=("one", "two", "three"), hang_after=1)
        events, error = await collect_until_error(provider, ask())
        await provider.aclose()
        assert isinstance(error, ProviderTimeout), kind
        assert events == [TextDelta(content="one")]


async def test_connection_dropped_mid_stream(fake_llm: FakeLLM, provider: Provider) -> None:
    fake_llm.script(chunks=("one", "two", "three"), drop_after=2)
    events, error = await collect_until_error(provider, ask())
    assert type(error) is ProviderUnavailable
    assert events == [TextDelta(content="one"), TextDelta(content="two")]


async def test_in_stream_error_event(fake_llm: FakeLLM, provider: Provider) -> None:
    fake_llm.script(chunks=("one", "two"), error_after=1)
    events, error = await collect_until_error(provider, ask())
    assert type(error) is ProviderUnavailable
    assert events == [TextDelta(content="one")]
    if provider.kind == "anthropic":
        assert "overloaded_error" in str(error)


async def test_malformed_chunk(fake_llm: FakeLLM, provider: Provider) -> None:
    fake_llm.script(chunks=("one", "two"), garbage_after=1)
    events, error = await collect_until_error(provider, ask())
    assert type(error) is ProviderUnavailable
    assert events == [TextDelta(content="one")]


async def test_connection_refused(provider: Provider) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = "/v1" if provider.kind == "openai" else ""
    config = ProviderConfig(
        name="nowhere", kind=provider.kind, api_key=SECRET, base_url=f"http://127.0.0.1:{port}{path}"
    )
    unreachable = ProviderRegistry.with_builtins(plugins=False).create(config)
    _, error = await collect_until_error(unreachable, ask())
    await unreachable.aclose()
    assert type(error) is ProviderUnavailable
    assert "nowhere" in str(error) and SECRET not in str(error)


# -- cancellation ------------------------------------------------------------------------


async def test_closing_the_stream_early_cancels_the_upstream_request(
    fake_llm: FakeLLM, provider: Provider
) -> None:
    fake_llm.script(chunks=("one", "two"), hang_after=1)
    async with contextlib.aclosing(provider.stream(ask())) as stream:
        assert await anext(stream) == TextDelta(content="one")
    record = fake_llm.last_request
    assert await record.wait_disconnected(1.0)
    assert not record.completed


async def test_cancelling_the_consuming_task_cancels_the_upstream_request(
    fake_llm: FakeLLM, provider: Provider
) -> None:
    fake_llm.script(chunks=("one", "two"), hang_after=1)
    first = asyncio.Event()

    async def consume() -> None:
        async for _event in provider.stream(ask()):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await fake_llm.last_request.wait_disconnected(1.0)
