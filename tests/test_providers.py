"""The OpenAI and Anthropic adapters, through the real SDKs, against the fake LLM server."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest

from core.errors import (
    BadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from providers import (
    ENTRY_POINT_GROUP,
    ChatMessage,
    EchoProvider,
    Finish,
    Image,
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
    configs_from_env,
    default_provider,
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


def make_provider(fake_llm: FakeLLM, kind: str, **config: Any) -> Provider:
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


def ask(text: str = "What's the weather in Paris?", **fields: Any) -> ProviderRequest:
    return ProviderRequest(
        model="test-model", system=SYSTEM, messages=(ChatMessage(role="user", content=text),), **fields
    )


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
        ChatMessage(role="tool", tool_call_id=call.id, content=f"sunny, 2{i} C") for i, call in enumerate(calls)
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
    await collect(provider, ProviderRequest(model="", system=None, messages=(ChatMessage(role="user", content="hi"),)))
    body = fake_llm.last_request.body
    assert body["model"] == provider.default_model
    assert provider.default_model == {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5"}[provider.kind]
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


async def test_the_body_sent_is_the_built_body_encoded_byte_for_byte_also_with_history_written_once(
    fake_llm: FakeLLM,
) -> None:
    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
    history = (
        ChatMessage(role="assistant", content='Welcome aboard! \u2603 "quoted" \\ and\nlines'),
        ChatMessage(
            role="user", content="Look:", images=(Image(url="https://example.test/a.png", at=5, detail="low"),)
        ),
        ChatMessage(role="assistant", content=None, tool_calls=(call,)),
        ChatMessage(role="tool", tool_call_id="call_1", content="sunny"),
        ChatMessage(role="assistant", content=""),
        ChatMessage(role="user", content="and now? \U0001f600"),
    )
    for kind in ("openai", "anthropic"):
        provider = cast(Any, make_provider(fake_llm, kind))
        for system in (SYSTEM, None):
            request = ProviderRequest(
                model="m-1", system=system, messages=history, tools=(WEATHER,), cached_system_chars=10, cached_tools=1
            )
            # Twice: the second time the plain messages' JSON is the kept one; and with an equal copy of each.
            twin = ProviderRequest(
                model="m-1", system=system, messages=tuple(msgspec.structs.replace(m) for m in history)
            )
            for sent in (request, request, twin):
                assert provider.encode_body(sent) == msgspec.json.encode(provider.build_body(sent))
        await provider.aclose()


async def test_the_api_key_goes_in_the_auth_header_and_env_variables_do_not_override_config(
    fake_llm: FakeLLM, provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-from-env")
    await collect(provider, ask())
    headers = fake_llm.last_request.headers
    # Both SDKs send the key as a bearer token (anthropic's since 2.x), and the lean client sends their headers.
    assert headers.get("authorization") == f"Bearer {SECRET}"
    assert "sk-from-env" not in json.dumps(headers)


# Headers the SDKs set per request (retry count, timeouts) or for their own HTTP stack, which ours is not.
_PER_REQUEST = {
    "accept",
    "accept-encoding",
    "connection",
    "content-length",
    "host",
    "x-stainless-retry-count",
    "x-stainless-read-timeout",
    "x-stainless-timeout",
}


async def test_requests_carry_the_headers_the_official_sdk_sends(fake_llm: FakeLLM, provider: Provider) -> None:
    import anthropic
    import openai

    if provider.kind == "openai":
        sdk_openai = openai.AsyncOpenAI(api_key=SECRET, base_url=fake_llm.openai_base_url, max_retries=0)
        async with sdk_openai:
            messages: Any = [{"role": "user", "content": "hi"}]
            async for _ in await sdk_openai.chat.completions.create(model="m", messages=messages, stream=True):
                pass
    else:
        sdk_anthropic = anthropic.AsyncAnthropic(api_key=SECRET, base_url=fake_llm.anthropic_base_url, max_retries=0)
        async with sdk_anthropic:
            messages = [{"role": "user", "content": "hi"}]
            async for _ in await sdk_anthropic.messages.create(model="m", max_tokens=5, messages=messages, stream=True):
                pass
    sdk_request = fake_llm.last_request
    await collect(provider, ask())
    ours = fake_llm.last_request
    assert ours.path == sdk_request.path
    sent = {k: v for k, v in ours.headers.items() if k not in _PER_REQUEST}
    assert sent == {k: v for k, v in sdk_request.headers.items() if k not in _PER_REQUEST}
    assert sent["user-agent"].startswith("AsyncOpenAI/" if provider.kind == "openai" else "AsyncAnthropic/")
    assert ours.headers["accept"] == "text/event-stream"
    if provider.kind == "anthropic":
        assert sent["anthropic-version"] == anthropic._constants.ANTHROPIC_API_VERSION


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
async def test_finish_reasons_are_normalised(fake_llm: FakeLLM, kind: str, vendor_reason: str, finish: str) -> None:
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


async def test_closing_the_stream_early_cancels_the_upstream_request(fake_llm: FakeLLM, provider: Provider) -> None:
    fake_llm.script(chunks=("one", "two"), hang_after=1)
    # providers are async generators; the protocol promises only an async iterator
    stream = cast(AsyncGenerator[ProviderEvent, None], provider.stream(ask()))
    async with contextlib.aclosing(stream):
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


async def test_retry_after_as_an_http_date_or_in_milliseconds(fake_llm: FakeLLM, openai_provider: Provider) -> None:
    in_30s = email.utils.formatdate(time.time() + 30, usegmt=True)
    fake_llm.script(status=429, headers={"retry-after": in_30s})
    fake_llm.script(status=429, headers={"retry-after-ms": "1500"})
    _, by_date = await collect_until_error(openai_provider, ask())
    _, by_ms = await collect_until_error(openai_provider, ask())
    assert isinstance(by_date, ProviderRateLimited) and isinstance(by_ms, ProviderRateLimited)
    assert by_date.retry_after is not None and 20 < by_date.retry_after <= 30
    assert by_ms.retry_after == 1.5


# -- echo --------------------------------------------------------------------------------


async def test_echo_repeats_the_last_user_message_word_by_word() -> None:
    echo = EchoProvider()
    request = ProviderRequest(
        model="",
        system="Be brief.",
        messages=(
            ChatMessage(role="user", content="first question"),
            ChatMessage(role="assistant", content="first answer"),
            ChatMessage(role="user", content="how are you today?"),
        ),
    )
    events = await collect(echo, request)
    texts = [e.content for e in events if isinstance(e, TextDelta)]
    assert "".join(texts) == "[echo] how are you today?"
    assert len(texts) == 5  # one piece per word
    # words in: 2 (system) + 2 + 2 + 4; words out: "[echo]" and the 4 echoed
    assert events[-2:] == [Usage(input_tokens=10, output_tokens=5), Finish(finish_reason="stop")]
    assert await collect(echo, request) == events  # deterministic
    assert await collect(EchoProvider(delay=0.001), request) == events


async def test_echo_calls_a_tool_on_request() -> None:
    echo = EchoProvider()
    command = '/tool get_weather {"city": "Paris"}'
    events = await collect(echo, ask(command, tools=(WEATHER,)))
    (call,) = assemble_tool_calls(events)
    assert (call.name, call.arguments) == ("get_weather", '{"city": "Paris"}')
    assert call.id.startswith("call_echo_")
    assert events[-1] == Finish(finish_reason="tool_calls")
    # every call has an id of its own, so a client can tell the results of two apart
    (again,) = assemble_tool_calls(await collect(echo, ask(command, tools=(WEATHER,))))
    assert again.id != call.id
    # without that tool on offer, the command is only text
    plain = await collect(echo, ask(command))
    assert "".join(e.content for e in plain if isinstance(e, TextDelta)) == "[echo] " + command
    assert plain[-1] == Finish(finish_reason="stop")


async def test_echo_answers_a_tool_result_in_text_which_ends_the_loop() -> None:
    echo = EchoProvider()
    command = '/tool get_weather {"city": "Paris"}'
    (call,) = assemble_tool_calls(await collect(echo, ask(command, tools=(WEATHER,))))
    request = ProviderRequest(
        model="",
        system=SYSTEM,
        tools=(WEATHER,),
        messages=(
            ChatMessage(role="user", content=command),
            ChatMessage(role="assistant", content=None, tool_calls=(call,)),
            ChatMessage(role="tool", content='{"sky": "clear"}', tool_call_id=call.id),
        ),
    )
    events = await collect(echo, request)
    assert assemble_tool_calls(events) == ()
    answer = "".join(e.content for e in events if isinstance(e, TextDelta))
    assert answer == '[echo] tool get_weather said: {"sky": "clear"}'
    assert events[-1] == Finish(finish_reason="stop")


async def test_echo_names_each_tool_whose_result_it_answers() -> None:
    calls = (
        ToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo"}'),
        ToolCall(id="call_2", name="get_time", arguments="{}"),
    )
    time_tool = ToolSpec(name="get_time", description="The time", parameters={"type": "object"})
    conversation = (
        ChatMessage(role="user", content="/tool get_weather {}"),
        ChatMessage(role="assistant", content=None, tool_calls=calls),
        ChatMessage(role="tool", content="snow", tool_call_id="call_1"),
        ChatMessage(role="tool", content="12:00", tool_call_id="call_2"),
    )
    request = ProviderRequest(model="", system=SYSTEM, tools=(WEATHER, time_tool), messages=conversation)
    events = await collect(EchoProvider(), request)
    assert assemble_tool_calls(events) == ()
    answer = "".join(e.content for e in events if isinstance(e, TextDelta))
    assert answer == "[echo] tool get_weather said: snow; tool get_time said: 12:00"
    # A new question after the answer asks for a tool again: the loop goes on only when the user asks.
    asked = (ChatMessage(role="assistant", content=answer), ChatMessage(role="user", content="/tool get_time"))
    request = ProviderRequest(model="", system=SYSTEM, tools=(WEATHER, time_tool), messages=(*conversation, *asked))
    (call,) = assemble_tool_calls(await collect(EchoProvider(), request))
    assert (call.name, call.arguments) == ("get_time", "{}") and call.id not in {"call_1", "call_2"}


def test_echo_build_body_shows_the_request() -> None:
    body = EchoProvider().build_body(ask("hi", tools=(WEATHER,), temperature=0.3))
    assert body == {
        "model": "test-model",
        "system": SYSTEM,
        "messages": [{"role": "user", "content": "hi", "tool_calls": [], "tool_call_id": None}],
        "tools": [
            {
                "name": "get_weather",
                "description": "Current weather for a city.",
                "parameters": WEATHER.parameters,
            }
        ],
        "temperature": 0.3,
    }


# -- configuration and registry ----------------------------------------------------------


def test_with_no_keys_only_echo_is_configured_and_default() -> None:
    configs = configs_from_env({"OPENAI_API_KEY": "", "HOME": "/root"})
    assert [(c.name, c.kind, c.default_model) for c in configs] == [("echo", "echo", "echo-1")]
    assert default_provider(configs, {}) == "echo"


def test_openai_and_anthropic_from_their_variables() -> None:
    env = {"OPENAI_API_KEY": "sk-o", "ANTHROPIC_API_KEY": "sk-a", "ANTHROPIC_BASE_URL": "http://proxy:1"}
    configs = {c.name: c for c in configs_from_env(env)}
    assert set(configs) == {"openai", "anthropic", "echo"}
    assert (configs["openai"].api_key, configs["openai"].base_url) == ("sk-o", None)
    assert (configs["anthropic"].api_key, configs["anthropic"].base_url) == ("sk-a", "http://proxy:1")
    assert configs["openai"].default_model == "gpt-4o-mini"
    assert configs["anthropic"].default_model == "claude-sonnet-4-5"
    assert default_provider(configs.values(), env) == "openai"


def test_a_base_url_alone_configures_openai_with_a_placeholder_key() -> None:
    configs = configs_from_env({"OPENAI_BASE_URL": "http://localhost:11434/v1"})
    openai_config = next(c for c in configs if c.name == "openai")
    assert openai_config.api_key == "unused"
    assert openai_config.base_url == "http://localhost:11434/v1"


def test_default_provider_and_model_from_the_environment() -> None:
    env = {
        "OPENAI_API_KEY": "sk-o",
        "ANTHROPIC_API_KEY": "sk-a",
        "DEFAULT_PROVIDER": "anthropic",
        "DEFAULT_MODEL": "claude-haiku-4-5",
    }
    configs = {c.name: c for c in configs_from_env(env)}
    assert default_provider(configs.values(), env) == "anthropic"
    assert configs["anthropic"].default_model == "claude-haiku-4-5"
    assert configs["openai"].default_model == "gpt-4o-mini"  # DEFAULT_MODEL is for the default provider only

    only_anthropic = configs_from_env({"ANTHROPIC_API_KEY": "sk-a"})
    assert default_provider(only_anthropic, {}) == "anthropic"


def test_an_unconfigured_default_provider_is_refused() -> None:
    env = {"OPENAI_API_KEY": "sk-o", "DEFAULT_PROVIDER": "mistral"}
    with pytest.raises(BadRequest) as caught:
        configs_from_env({**env, "DEFAULT_MODEL": "x"})
    assert caught.value.field == "DEFAULT_PROVIDER"
    assert "mistral" in str(caught.value) and "openai, echo" in str(caught.value)
    with pytest.raises(BadRequest):
        default_provider(configs_from_env({"OPENAI_API_KEY": "sk-o"}), env)


def test_extra_openai_compatible_endpoints_are_configuration() -> None:
    env = {
        "PROVIDER_LOCAL_LLAMA_BASE_URL": "http://127.0.0.1:8080/v1",
        "PROVIDER_LOCAL_LLAMA_MODEL": "llama-3.1-8b",
        "PROVIDER_ROUTER_BASE_URL": "https://openrouter.example/api/v1",
        "PROVIDER_ROUTER_API_KEY": "sk-or",
        "PROVIDER_CLAUDE_PROXY_BASE_URL": "http://proxy:9000",
        "PROVIDER_CLAUDE_PROXY_KIND": "anthropic",
    }
    configs = {c.name: c for c in configs_from_env(env)}
    assert set(configs) == {"local_llama", "router", "claude_proxy", "echo"}
    assert configs["local_llama"] == ProviderConfig(
        name="local_llama",
        kind="openai",
        api_key="unused",
        base_url="http://127.0.0.1:8080/v1",
        default_model="llama-3.1-8b",
    )
    assert (configs["router"].api_key, configs["router"].kind) == ("sk-or", "openai")
    assert configs["claude_proxy"].kind == "anthropic"
    assert default_provider(configs.values(), env) == "echo"


def test_an_extra_endpoint_needs_a_base_url() -> None:
    with pytest.raises(BadRequest) as caught:
        configs_from_env({"PROVIDER_GROQ_API_KEY": "gsk"})
    assert caught.value.field == "PROVIDER_GROQ_BASE_URL"


async def test_an_extra_endpoint_streams_from_its_server(fake_llm: FakeLLM) -> None:
    env = {"PROVIDER_LOCAL_BASE_URL": fake_llm.openai_base_url, "PROVIDER_LOCAL_MODEL": "qwen2.5"}
    providers = ProviderRegistry.with_builtins(plugins=False).build(configs_from_env(env))
    local = providers.get("local")
    request = ProviderRequest(model="", system=None, messages=(ChatMessage(role="user", content="hi"),))
    events = await collect(local, request)
    await providers.aclose()
    assert events[-1] == Finish(finish_reason="stop")
    recorded = fake_llm.last_request
    assert recorded.body["model"] == "qwen2.5"
    assert recorded.headers["authorization"] == "Bearer unused"


async def test_unknown_provider_names_the_field_and_the_configured_ones() -> None:
    providers = ProviderRegistry.with_builtins(plugins=False).build(configs_from_env({"OPENAI_API_KEY": "sk"}))
    assert providers.names() == ["openai", "echo"]
    assert isinstance(providers.get("echo"), EchoProvider)
    with pytest.raises(BadRequest) as caught:
        providers.get("gemini")
    await providers.aclose()
    assert caught.value.field == "provider"
    assert "gemini" in str(caught.value) and "openai, echo" in str(caught.value)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(BadRequest) as caught:
        ProviderRegistry.with_builtins(plugins=False).create(ProviderConfig(name="x", kind="cohere"))
    assert caught.value.field == "kind" and "cohere" in str(caught.value)


def test_built_in_providers_satisfy_the_protocol() -> None:
    registry = ProviderRegistry.with_builtins(plugins=False)
    for kind in ("openai", "anthropic", "echo"):
        provider = registry.create(ProviderConfig(name=kind, kind=kind, api_key="k", base_url="http://127.0.0.1:9"))
        assert isinstance(provider, Provider)
        assert provider.kind == kind and provider.name == kind


PLUGIN = """
from providers import EchoProvider

class Shouty(EchoProvider):
    kind = "shouty"

    async def stream(self, request):
        async for event in super().stream(request):
            if type(event).__name__ == "TextDelta":
                event = type(event)(content=event.content.upper())
            yield event

def make(config):
    return Shouty(config)
"""


def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry_points: str) -> None:
    """A real installed distribution: a module and a dist-info with entry points, on sys.path."""
    (tmp_path / "shouty_llm.py").write_text(PLUGIN)
    dist = tmp_path / "shouty_llm-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shouty-llm\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(entry_points)
    monkeypatch.syspath_prepend(str(tmp_path))


async def test_a_plugin_provider_loads_through_its_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    install_plugin(
        tmp_path,
        monkeypatch,
        f"[{ENTRY_POINT_GROUP}]\n"
        "shouty = shouty_llm:make\n"
        "broken = shouty_llm_missing:make\n"
        "openai = shouty_llm:make\n",
    )
    registry = ProviderRegistry.with_builtins()
    assert {"shouty", "openai", "anthropic", "echo"} <= set(registry.kinds())
    assert "broken" not in registry.kinds()
    assert "shouty_llm_missing" in caplog.text  # a broken plugin is reported, not fatal
    # a plugin cannot take over a built-in kind
    builtin = registry.create(ProviderConfig(name="o", kind="openai", api_key="k", base_url="http://127.0.0.1:9"))
    assert type(builtin).__name__ == "OpenAIProvider"

    providers = registry.build([ProviderConfig(name="loud", kind="shouty")])
    events = await collect(providers.get("loud"), ask("hello there"))
    assert "".join(e.content for e in events if isinstance(e, TextDelta)) == "[ECHO] HELLO THERE"


async def test_provider_set_closes_every_provider_even_if_one_fails() -> None:
    closed: list[str] = []

    class Closing(EchoProvider):
        async def aclose(self) -> None:
            closed.append(self.name)
            if self.name == "a":
                raise RuntimeError("boom")

    registry = ProviderRegistry()
    registry.register("closing", Closing)
    providers = registry.build([ProviderConfig(name=n, kind="closing") for n in ("a", "b", "c")])
    await providers.aclose()
    assert sorted(closed) == ["a", "b", "c"]


def test_config_repr_never_shows_the_api_key() -> None:
    config = ProviderConfig(name="openai", kind="openai", api_key=SECRET, base_url="http://x")
    for text in (repr(config), str(config), f"{config}", repr([config]), repr(config.__rich_repr__())):
        assert SECRET not in text
        assert "openai" in text
    assert "api_key='***'" in repr(config)
    assert "api_key=None" in repr(ProviderConfig(name="echo", kind="echo"))


def test_the_provider_layer_imports_no_web_framework_or_storage_client() -> None:
    code = (
        "import sys, providers, providers.openai, providers.anthropic, providers.echo, providers.registry\n"
        "print(sorted(m for m in ('litestar', 'asyncpg', 'redis') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
