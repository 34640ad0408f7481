"""Prompt caching: the marker Anthropic needs, cached tokens reported end to end, and what render says is cacheable."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import persona_body
from tests.sse import parse_sse

CHAT = "/api/v1/chat"
PERSONAS = "/api/v1/chat/personas"
EPHEMERAL = {"type": "ephemeral"}
TOOL = {"name": "weather", "description": "Weather", "parameters": {"type": "object", "properties": {}}}


async def make_persona(http, account, **fields):
    r = await http.post(PERSONAS, json=persona_body(**fields), headers=account.headers)
    assert r.status_code == 201, r.text
    return r.json()["persona"]


async def test_anthropic_is_asked_to_cache_the_personas_prompt_and_tools(llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice, model_settings={"provider": "anthropic"}, tools=[TOOL])
    fake_llm.script()
    r = await llm_client.post(CHAT, json={"message": "hi", "persona_id": persona["id"]}, headers=alice.headers)
    assert r.status_code == 200, r.text
    sent = fake_llm.last_request.body
    (system,) = sent["system"]
    assert system["cache_control"] == EPHEMERAL and system["text"].startswith(f"You are {persona['name']}")
    assert sent["tools"][-1]["cache_control"] == EPHEMERAL


async def test_the_marker_ends_the_personas_part_and_the_clients_system_text_follows_it(llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice, model_settings={"provider": "anthropic"}, tools=[TOOL])
    sdk = openai.AsyncOpenAI(base_url=f"{llm_client.base_url}/v1", api_key=alice.key, max_retries=0)
    fake_llm.script()
    client_tool = {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}
    await sdk.chat.completions.create(
        model=f"persona/{persona['name']}",
        messages=[{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "hi"}],
        tools=[client_tool],  # type: ignore[list-item]
    )
    sent = fake_llm.last_request.body
    persona_part, client_part = sent["system"]
    assert persona_part["cache_control"] == EPHEMERAL and "Answer in French" not in persona_part["text"]
    assert client_part == {"type": "text", "text": "Answer in French."}
    # The persona's own tool carries the marker; the client's, after it, does not.
    assert [t["name"] for t in sent["tools"]] == ["weather", "search"]
    assert sent["tools"][0]["cache_control"] == EPHEMERAL and "cache_control" not in sent["tools"][1]


async def test_a_persona_can_turn_the_marker_off(llm_client, fake_llm, alice):
    settings = {"provider": "anthropic", "prompt_cache": False}
    persona = await make_persona(llm_client, alice, model_settings=settings, tools=[TOOL])
    assert persona["model_settings"]["prompt_cache"] is False
    fake_llm.script()
    await llm_client.post(CHAT, json={"message": "hi", "persona_id": persona["id"]}, headers=alice.headers)
    sent = fake_llm.last_request.body
    assert isinstance(sent["system"], str) and "cache_control" not in sent["tools"][0]


async def test_openai_needs_no_marker(llm_client, fake_llm, alice):
    fake_llm.script()
    await llm_client.post(CHAT, json={"message": "hi"}, headers=alice.headers)
    sent = fake_llm.last_request.body
    assert "cache_control" not in str(sent)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_cached_tokens_reach_the_stream_the_json_answer_and_the_stored_message(
    llm_client, fake_llm, alice, provider
):
    persona = await make_persona(llm_client, alice, model_settings={"provider": provider})
    body = {"message": "hi", "persona_id": persona["id"]}
    fake_llm.script(input_tokens=900, output_tokens=7, cached_tokens=800)
    streamed = await llm_client.post(CHAT, json={**body, "stream": True}, headers=alice.headers)
    events, _ = parse_sse(streamed.text)
    usage = next(e.json for e in events if e.event == "usage")
    assert usage == {"type": "usage", "input_tokens": 900, "output_tokens": 7, "cached_input_tokens": 800}

    fake_llm.script(input_tokens=900, output_tokens=7, cached_tokens=800)
    answered = (await llm_client.post(CHAT, json=body, headers=alice.headers)).json()
    assert answered["usage"] == {"input_tokens": 900, "output_tokens": 7, "cached_input_tokens": 800}
    r = await llm_client.get(f"{CHAT}/conversations/{answered['conversation_id']}", headers=alice.headers)
    assert r.json()["messages"][-1]["usage"]["cached_input_tokens"] == 800


async def test_cached_tokens_reach_an_openai_client(llm_client, fake_llm, alice):
    sdk = openai.AsyncOpenAI(base_url=f"{llm_client.base_url}/v1", api_key=alice.key, max_retries=0)
    fake_llm.script(input_tokens=500, output_tokens=4, cached_tokens=384)
    completion = await sdk.chat.completions.create(model="persona", messages=[{"role": "user", "content": "hi"}])
    assert completion.usage is not None and completion.usage.prompt_tokens == 500
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 384

    fake_llm.script(input_tokens=500, output_tokens=4, cached_tokens=384)
    stream = await sdk.chat.completions.create(
        model="persona",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    usages = [chunk.usage async for chunk in stream if chunk.usage is not None]
    assert [u.prompt_tokens_details.cached_tokens for u in usages if u.prompt_tokens_details] == [384]


async def test_render_says_how_much_is_cacheable_and_warns_about_an_early_date(llm_client, alice):
    long_rules = "Follow these house rules carefully. " * 40
    early = persona_body(system_prompt="Today is {{date}}. You are {{persona_name}}. " + long_rules)
    r = await llm_client.post(f"{PERSONAS}/render", json={"persona": early, "message": "hi"}, headers=alice.headers)
    body = r.json()
    assert body["cacheable_prefix_chars"] == len("Today is ")
    (warning,) = body["warnings"]
    assert "{{date}}" in warning and "end of the prompt" in warning

    late = persona_body(system_prompt="You are {{persona_name}}. " + long_rules + "Today is {{date}}.")
    r = await llm_client.post(f"{PERSONAS}/render", json={"persona": late, "message": "hi"}, headers=alice.headers)
    body = r.json()
    assert body["system_prompt"][: body["cacheable_prefix_chars"]].endswith("Today is ")
    assert body["warnings"] == []


async def test_a_prompt_with_no_per_user_value_is_cacheable_whole(llm_client, alice):
    fixed = persona_body(system_prompt="You are {{persona_name}}, a helpful guide.")
    r = await llm_client.post(f"{PERSONAS}/render", json={"persona": fixed, "message": "hi"}, headers=alice.headers)
    body = r.json()
    assert body["cacheable_prefix_chars"] == len(body["system_prompt"]) and body["warnings"] == []


async def test_cached_tokens_reach_an_anthropic_client(llm_client, fake_llm, alice):
    import anthropic

    sdk = anthropic.AsyncAnthropic(base_url=str(llm_client.base_url), api_key=alice.key, max_retries=0)
    fake_llm.script(input_tokens=500, output_tokens=4, cached_tokens=384)
    message = await sdk.messages.create(model="persona", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    # Anthropic's own split: input_tokens leaves out what was read from the cache.
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (116, 384)

    fake_llm.script(input_tokens=500, output_tokens=4, cached_tokens=384)
    async with sdk.messages.stream(model="persona", max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as s:
        final = await s.get_final_message()
    assert final.usage.cache_read_input_tokens == 384 and final.usage.output_tokens == 4
