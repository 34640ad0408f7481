"""The fake LLM server answers in shapes the official SDKs' own parsers accept."""

from __future__ import annotations

import anthropic
import openai
import pytest

from tests.fakellm import FakeLLM, FakeToolCall

pytest_plugins = ["tests.fakellm_plugin"]


async def test_openai_sdk_parses_the_fake_stream_and_completion(fake_llm: FakeLLM) -> None:
    client = openai.AsyncOpenAI(api_key="k", base_url=fake_llm.openai_base_url, max_retries=0)
    fake_llm.script(chunks=("a", "b"), tool_calls=(FakeToolCall(name="f", arguments='{"x": 1}'),))
    stream = await client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "q"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ab"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 11

    completion = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}])
    assert completion.choices[0].message.content == "Hello from the fake model."
    assert [m.id async for m in client.models.list()] == ["fake-model"]
    await client.close()


async def test_anthropic_sdk_parses_the_fake_stream_and_message(fake_llm: FakeLLM) -> None:
    client = anthropic.AsyncAnthropic(api_key="k", base_url=fake_llm.anthropic_base_url, max_retries=0)
    fake_llm.script(chunks=("a", "b"), tool_calls=(FakeToolCall(name="f", arguments='{"x": 1}', pieces=3),))
    async with client.messages.stream(model="m", max_tokens=10, messages=[{"role": "user", "content": "q"}]) as stream:
        final = await stream.get_final_message()
    assert [block.type for block in final.content] == ["text", "tool_use"]
    assert final.content[1].input == {"x": 1}  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use" and final.usage.output_tokens == 7

    message = await client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "q"}])
    assert message.content[0].text == "Hello from the fake model."  # type: ignore[union-attr]
    await client.close()


async def test_scripts_are_used_in_order_then_the_default(fake_llm: FakeLLM) -> None:
    client = openai.AsyncOpenAI(api_key="k", base_url=fake_llm.openai_base_url, max_retries=0)
    fake_llm.script(status=500)
    fake_llm.script(chunks=("second",))
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(**body)  # type: ignore[call-overload]
    second = await client.chat.completions.create(**body)  # type: ignore[call-overload]
    third = await client.chat.completions.create(**body)  # type: ignore[call-overload]
    assert second.choices[0].message.content == "second"
    assert third.choices[0].message.content == "Hello from the fake model."
    assert [r.body for r in fake_llm.chat_requests()] == [body, body, body]
    await client.close()
