"""POST /api/v1/chat against the real SDKs and the fake LLM server: assembly, streaming, history, faults."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from tests.conftest import persona_body
from tests.fakellm import FakeToolCall
from tests.sse import parse_sse

CHAT = "/api/v1/chat"
PERSONAS = "/api/v1/chat/personas"


async def make_persona(http, account, **fields):
    r = await http.post(PERSONAS, json=persona_body(**fields), headers=account.headers)
    assert r.status_code == 201, r.text
    return r.json()["persona"]


async def stored_messages(http, account, conversation_id):
    r = await http.get(f"{CHAT}/conversations/{conversation_id}", headers=account.headers)
    assert r.status_code == 200, r.text
    return r.json()["messages"]


async def test_json_chat_assembles_the_persona_for_openai(llm_client, fake_llm, alice):
    fake_llm.script(chunks=("Hi ", "there!"), input_tokens=42, output_tokens=3)
    r = await llm_client.post(CHAT, json={"message": "Hello Mu"}, headers=alice.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True
    assert body["response"] == "Hi there!"
    assert body["persona"]["name"] == "Mu" and body["persona"]["version"] >= 1
    assert body["persona_source"] == "default"
    assert body["provider"] == "openai" and body["model"] == "gpt-4o-mini"
    assert body["usage"] == {"input_tokens": 42, "output_tokens": 3, "cached_input_tokens": 0}

    sent = fake_llm.last_request.body
    assert fake_llm.last_request.path == "/v1/chat/completions"
    assert fake_llm.last_request.headers["authorization"] == "Bearer sk-test-openai-key-4c6f5e1d"
    system = sent["messages"][0]
    assert system["role"] == "system"
    assert "You are Mu" in system["content"]
    assert "Alice" in system["content"]  # {{user_name}} is the caller's display name
    assert datetime.now(UTC).date().isoformat() in system["content"]
    assert "- tone: cheerful and warm" in system["content"]  # traits, placed by {{traits}}
    assert "{{" not in system["content"]
    assert sent["messages"][-1] == {"role": "user", "content": "Hello Mu"}
    assert sent["stream"] is True

    messages = await stored_messages(llm_client, alice, body["conversation_id"])
    assert [(m["role"], m["status"]) for m in messages] == [("user", "complete"), ("assistant", "complete")]
    answer = messages[1]
    assert answer["id"] == body["message_id"] and answer["content"] == "Hi there!"
    assert answer["persona_source"] == "default" and answer["provider"] == "openai"
    assert answer["usage"] == {"input_tokens": 42, "output_tokens": 3, "cached_input_tokens": 0}
    assert answer["persona_version"] == body["persona"]["version"] and answer["latency_ms"] >= 0


async def test_traits_and_capabilities_are_appended_when_the_template_has_no_place_for_them(
    llm_client, fake_llm, alice
):
    persona = await make_persona(
        llm_client,
        alice,
        system_prompt="You are {{persona_name}}.",
        personality_traits={"tone": "dry", "quirks": ["puns", "sighs"]},
        capabilities={"math": True},
    )
    fake_llm.script()
    r = await llm_client.post(CHAT, json={"message": "x", "persona_id": persona["id"]}, headers=alice.headers)
    assert r.status_code == 200
    system = fake_llm.last_request.body["messages"][0]["content"]
    assert system.startswith(f"You are {persona['name']}.")
    assert "## Personality traits\n- tone: dry\n- quirks: puns, sighs" in system
    assert "## Capabilities\n- math: yes" in system


async def test_sse_stream_has_exactly_the_contract_events(llm_client, fake_llm, alice):
    fake_llm.script(chunks=("one ", "two ", "three"))
    r = await llm_client.post(CHAT, json={"message": "count", "stream": True}, headers=alice.headers)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events, _ = parse_sse(r.text)
    names = [e.event for e in events]
    assert names == ["start", "content", "content", "content", "usage", "done", None]
    assert events[-1].data == "[DONE]"
    ids = [e.id for e in events[:-1]]
    assert all(ids) and len(set(ids)) == len(ids)
    for event in events[:-1]:
        assert event.json["type"] == event.event
    start = events[0].json
    assert start["persona"]["name"] == "Mu" and start["persona_source"] == "default"
    assert start["provider"] == "openai" and start["model"] == "gpt-4o-mini"
    assert "".join(e.json["content"] for e in events if e.event == "content") == "one two three"
    assert events[4].json == {"type": "usage", "input_tokens": 11, "output_tokens": 7, "cached_input_tokens": 0}
    done = events[5].json
    assert done["finish_reason"] == "stop" and done["message_id"] == start["message_id"]
    stored = await stored_messages(llm_client, alice, start["conversation_id"])
    assert stored[1]["content"] == "one two three" and stored[1]["status"] == "complete"


async def test_accept_header_asks_for_a_stream(llm_client, fake_llm, alice):
    fake_llm.script()
    r = await llm_client.post(CHAT, json={"message": "hi"}, headers={**alice.headers, "Accept": "text/event-stream"})
    assert r.headers["content-type"].startswith("text/event-stream")
    assert parse_sse(r.text)[0][0].event == "start"


async def test_anthropic_gets_the_system_parameter_tools_and_sampling(llm_client, fake_llm, alice):
    persona = await make_persona(
        llm_client,
        alice,
        model_settings={"provider": "anthropic", "model": "claude-test", "temperature": 0.2, "max_tokens": 300},
        tools=[
            {
                "name": "weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
    )
    fake_llm.script(chunks=("Bonjour",))
    r = await llm_client.post(CHAT, json={"message": "Salut", "persona_id": persona["id"]}, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert r.json()["provider"] == "anthropic" and r.json()["model"] == "claude-test"
    recorded = fake_llm.last_request
    assert recorded.path == "/v1/messages"
    sent = recorded.body
    # The persona's prompt as one text block, marked for Anthropic's prompt cache (contract section 12).
    (block,) = sent["system"]
    assert block["cache_control"] == {"type": "ephemeral"}
    assert block["text"].startswith(f"You are {persona['name']}, talking with Alice.")
    assert all(m["role"] != "system" for m in sent["messages"])
    assert sent["messages"][-1]["role"] == "user"
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 300 and sent["model"] == "claude-test"
    assert sent["tools"] == [
        {
            "name": "weather",
            "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            "cache_control": {"type": "ephemeral"},
        }
    ]


async def test_openai_gets_function_tools_and_only_the_sampling_parameters_that_are_set(llm_client, fake_llm, alice):
    persona = await make_persona(
        llm_client,
        alice,
        model_settings={"top_p": 0.5},
        tools=[{"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}],
    )
    fake_llm.script()
    await llm_client.post(CHAT, json={"message": "x", "persona_id": persona["id"]}, headers=alice.headers)
    sent = fake_llm.last_request.body
    assert sent["top_p"] == 0.5 and "temperature" not in sent and "max_tokens" not in sent
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ]


async def test_tool_calls_from_the_model_are_reported_and_stored(llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice, tools=[{"name": "lookup", "parameters": {"type": "object"}}])
    fake_llm.script(chunks=(), tool_calls=(FakeToolCall(name="lookup", arguments='{"q": "tea"}', id="call_1"),))
    r = await llm_client.post(CHAT, json={"message": "find tea", "persona_id": persona["id"]}, headers=alice.headers)
    body = r.json()
    assert body["finish_reason"] == "tool_calls"
    assert body["tool_calls"] == [{"id": "call_1", "name": "lookup", "arguments": '{"q": "tea"}'}]


async def test_history_goes_upstream_and_the_conversation_keeps_its_persona(llm_client, fake_llm, alice):
    quill = await make_persona(llm_client, alice)
    fake_llm.script(chunks=("First answer",))
    first = (
        await llm_client.post(
            CHAT, json={"message": "First question", "persona_id": quill["id"]}, headers=alice.headers
        )
    ).json()
    assert first["persona_source"] == "request"
    conversation_id = first["conversation_id"]

    # The user now prefers Mu, but the conversation was started with Quill.
    other = await make_persona(llm_client, alice)
    await llm_client.post(f"{PERSONAS}/set", json={"persona_id": other["id"]}, headers=alice.headers)
    fake_llm.script(chunks=("Second answer",))
    second = (
        await llm_client.post(
            CHAT, json={"message": "Second question", "conversation_id": conversation_id}, headers=alice.headers
        )
    ).json()
    assert second["conversation_id"] == conversation_id
    assert second["persona"]["id"] == quill["id"] and second["persona_source"] == "conversation"
    sent = fake_llm.last_request.body["messages"]
    assert [(m["role"], m["content"]) for m in sent[1:]] == [
        ("user", "First question"),
        ("assistant", "First answer"),
        ("user", "Second question"),
    ]
    assert quill["name"] in sent[0]["content"]

    # A new conversation follows the preference.
    fake_llm.script()
    third = (await llm_client.post(CHAT, json={"message": "New topic"}, headers=alice.headers)).json()
    assert third["persona"]["id"] == other["id"] and third["persona_source"] == "preference"

    listed = (await llm_client.get(f"{CHAT}/conversations", headers=alice.headers)).json()
    assert [c["id"] for c in listed["conversations"][:2]] == [third["conversation_id"], conversation_id]
    conversation = (await llm_client.get(f"{CHAT}/conversations/{conversation_id}", headers=alice.headers)).json()
    assert conversation["conversation"]["persona_id"] == quill["id"]
    assert [m["content"] for m in conversation["messages"]] == [
        "First question",
        "First answer",
        "Second question",
        "Second answer",
    ]


async def test_a_deleted_conversation_persona_falls_back_to_the_preference(llm_client, fake_llm, alice):
    persona, preferred = await make_persona(llm_client, alice), await make_persona(llm_client, alice)
    chosen = await llm_client.post(f"{PERSONAS}/set", json={"persona_id": preferred["id"]}, headers=alice.headers)
    assert chosen.status_code == 200, chosen.text
    fake_llm.script()
    first = (
        await llm_client.post(CHAT, json={"message": "a", "persona_id": persona["id"]}, headers=alice.headers)
    ).json()
    await llm_client.delete(f"{PERSONAS}/{persona['id']}", headers=alice.headers)
    fake_llm.script()
    second = (
        await llm_client.post(
            CHAT, json={"message": "b", "conversation_id": first["conversation_id"]}, headers=alice.headers
        )
    ).json()
    assert second["persona_source"] == "preference" and second["persona"]["id"] == preferred["id"]


async def test_history_is_bounded(database_url, redis_url, fake_llm, make_user):
    from api.app import create_app
    from tests.conftest import llm_env, make_settings, running

    app = create_app(make_settings(database_url, redis_url, env=llm_env(fake_llm), history_turns=1))
    async with running(app) as http:
        alice = await make_user("alice")
        conversation_id = None
        for n in range(4):
            fake_llm.script(chunks=(f"answer {n}",))
            body = {"message": f"question {n}"}
            if conversation_id:
                body["conversation_id"] = conversation_id
            conversation_id = (await http.post(CHAT, json=body, headers=alice.headers)).json()["conversation_id"]
        # The chat's own request (a summary of the turns left out may be written beside it).
        asked = [r.body for r in fake_llm.chat_requests() if r.body["messages"][-1]["content"] == "question 3"]
        sent = asked[-1]["messages"]
        # One earlier turn (two messages) plus the new question.
        assert [m["content"] for m in sent[1:]] == ["question 2", "answer 2", "question 3"]


# Choosing the provider -------------------------------------------------------------------------------


async def test_request_may_pick_a_configured_provider_and_model(llm_client, fake_llm, alice):
    fake_llm.script()
    r = await llm_client.post(CHAT, json={"message": "x", "provider": "local"}, headers=alice.headers)
    assert r.status_code == 200
    assert r.json()["provider"] == "local" and r.json()["model"] == "local-model"
    assert fake_llm.last_request.body["model"] == "local-model"
    fake_llm.script()
    r = await llm_client.post(CHAT, json={"message": "x", "provider": "echo", "model": "echo-2"}, headers=alice.headers)
    assert r.json()["provider"] == "echo" and r.json()["response"] == "[echo] x"


async def test_fallback_answers_when_the_first_provider_is_down(llm_client, fake_llm, alice):
    persona = await make_persona(
        llm_client,
        alice,
        model_settings={
            "provider": "openai",
            "model": "gpt-x",
            "fallbacks": [{"provider": "anthropic", "model": "claude-y"}],
        },
    )
    fake_llm.script(status=503)
    fake_llm.script(chunks=("from the fallback",))
    r = await llm_client.post(
        CHAT, json={"message": "x", "persona_id": persona["id"], "stream": True}, headers=alice.headers
    )
    events, _ = parse_sse(r.text)
    assert events[0].json["provider"] == "anthropic" and events[0].json["model"] == "claude-y"
    assert [q.path for q in fake_llm.chat_requests()] == ["/v1/chat/completions", "/v1/messages"]
    stored = await stored_messages(llm_client, alice, events[0].json["conversation_id"])
    assert stored[1]["provider"] == "anthropic" and stored[1]["content"] == "from the fallback"


async def test_no_fallback_when_the_provider_refuses_the_request(llm_client, fake_llm, alice):
    persona = await make_persona(
        llm_client, alice, model_settings={"provider": "openai", "fallbacks": [{"provider": "anthropic"}]}
    )
    fake_llm.script(status=401)
    r = await llm_client.post(CHAT, json={"message": "x", "persona_id": persona["id"]}, headers=alice.headers)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "provider_rejected"
    assert len(fake_llm.chat_requests()) == 1
    assert "sk-test-openai" not in r.text


# Faults ----------------------------------------------------------------------------------------------


async def _last_answer(resources, user_id):
    return await resources.pool.fetchrow(
        "SELECT m.* FROM messages m JOIN conversations c ON c.id = m.conversation_id "
        "WHERE c.user_id = $1 AND m.role = 'assistant' ORDER BY m.seq DESC LIMIT 1",
        user_id,
    )


@pytest.mark.parametrize(
    ("script", "status", "code"),
    [
        ({"status": 500}, 502, "provider_unavailable"),
        ({"status": 429, "headers": {"retry-after": "7"}}, 429, "provider_rate_limited"),
        ({"first_byte_delay": 5}, 504, "provider_timeout"),
    ],
)
async def test_provider_failure_before_the_first_byte_is_an_http_status(
    llm_client, fake_llm, alice, resources, script, status, code
):
    fake_llm.script(**script)
    r = await llm_client.post(CHAT, json={"message": "hello?", "stream": True}, headers=alice.headers)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    if status == 429:
        assert r.headers["retry-after"] == "7"
    answer = await _last_answer(resources, alice.user.id)
    assert answer["status"] == "error" and answer["content"] == ""
    question = await resources.pool.fetchval(
        "SELECT content FROM messages WHERE conversation_id = $1 AND role = 'user'", answer["conversation_id"]
    )
    assert question == "hello?"


async def test_a_stream_broken_upstream_ends_with_an_error_event_and_keeps_the_partial_answer(
    llm_client, fake_llm, alice
):
    fake_llm.script(chunks=("Partial ", "answer ", "lost"), drop_after=2)
    r = await llm_client.post(CHAT, json={"message": "go", "stream": True}, headers=alice.headers)
    assert r.status_code == 200
    events, _ = parse_sse(r.text)
    assert [e.event for e in events] == ["start", "content", "content", "error", None]
    assert events[-1].data == "[DONE]"
    assert events[3].json["code"] == "provider_unavailable"
    stored = await stored_messages(llm_client, alice, events[0].json["conversation_id"])
    assert stored[1]["status"] == "incomplete" and stored[1]["content"] == "Partial answer "


async def test_a_broken_stream_without_streaming_is_a_502_and_keeps_the_partial_answer(
    llm_client, fake_llm, alice, resources
):
    fake_llm.script(chunks=("Half ", "of it"), error_after=1)
    r = await llm_client.post(CHAT, json={"message": "go"}, headers=alice.headers)
    assert r.status_code == 502
    answer = await _last_answer(resources, alice.user.id)
    assert answer["status"] == "incomplete" and answer["content"] == "Half "


async def test_client_hanging_up_cancels_upstream_and_saves_the_partial_answer(llm_client, fake_llm, alice, resources):
    fake_llm.script(chunks=tuple(f"word{n} " for n in range(50)), chunk_delay=0.1)
    async with llm_client.stream("POST", CHAT, json={"message": "long", "stream": True}, headers=alice.headers) as r:
        seen = ""
        async for line in r.aiter_lines():
            seen += line + "\n"
            if seen.count("event: content") >= 3:
                break
    upstream = fake_llm.last_request
    assert await upstream.wait_disconnected(within=1.0), "the upstream request was not cancelled within a second"
    assert not upstream.completed
    for _ in range(50):
        answer = await _last_answer(resources, alice.user.id)
        if answer["status"] != "pending":
            break
        await asyncio.sleep(0.05)
    assert answer["status"] == "incomplete"
    assert answer["content"].startswith("word0 word1 word2")
    assert len(answer["content"].split()) < 50


async def test_heartbeats_keep_a_silent_stream_alive(llm_client, fake_llm, alice):
    fake_llm.script(chunks=("slow", " answer"), chunk_delay=0.8)
    r = await llm_client.post(CHAT, json={"message": "take your time", "stream": True}, headers=alice.headers)
    events, comments = parse_sse(r.text)
    assert "keep-alive" in comments
    assert [e.event for e in events][-2:] == ["done", None]


# Bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"message": ""}, 400, "message"),
        ({"message": "   \n"}, 400, "message"),
        ({"message": "x" * 2001}, 413, "message"),
        ({"message": "hi", "conversation_id": "nope"}, 400, "conversation_id"),
        ({"message": "hi", "persona_id": 5}, 400, "persona_id"),
        ({"message": "hi", "temperature": 1}, 400, "temperature"),
        ({"message": "hi", "provider": "nowhere"}, 400, "provider"),
        ({"message": "hi", "persona_id": str(uuid.uuid4())}, 404, "persona_id"),
        ({"message": "hi", "conversation_id": str(uuid.uuid4())}, 404, "conversation_id"),
        ({}, 400, "message"),
    ],
)
async def test_bad_chat_requests_store_nothing(llm_client, fake_llm, alice, resources, body, status, field):
    before = await resources.pool.fetchval("SELECT count(*) FROM messages")
    r = await llm_client.post(CHAT, json=body, headers=alice.headers)
    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] == field
    assert field in r.json()["message"]
    assert await resources.pool.fetchval("SELECT count(*) FROM messages") == before
    assert fake_llm.chat_requests() == []


async def test_a_persona_with_an_unconfigured_provider_is_a_clear_400(client, alice, resources):
    persona = (await client.post(PERSONAS, json=persona_body(), headers=alice.headers)).json()["persona"]
    # This app has only the offline echo provider.
    for settings, field in [
        ({"provider": "anthropic"}, "model_settings.provider"),
        (
            {"provider": "echo", "fallbacks": [{"provider": "echo"}, {"provider": "openai"}]},
            "model_settings.fallbacks[1].provider",
        ),
    ]:
        r = await client.post(PERSONAS, json=persona_body(model_settings=settings), headers=alice.headers)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["field"] == field
        assert "echo" in r.json()["message"] and r.json()["error"]["details"]["providers"] == ["echo"]
        r = await client.put(f"{PERSONAS}/{persona['id']}", json={"model_settings": settings}, headers=alice.headers)
        assert r.status_code == 400 and r.json()["error"]["field"] == field, r.text
    # A persona saved before its provider went away stays editable, and says so when chatted with.
    await resources.pool.execute(
        """UPDATE personas SET model_settings = '{"provider": "anthropic"}' WHERE id = $1""", uuid.UUID(persona["id"])
    )
    r = await client.put(f"{PERSONAS}/{persona['id']}", json={"description": "still editable"}, headers=alice.headers)
    assert r.status_code == 200, r.text
    r = await client.post(CHAT, json={"message": "hi", "persona_id": persona["id"]}, headers=alice.headers)
    assert r.status_code == 400
    assert "anthropic" in r.json()["message"] and "echo" in r.json()["message"]


async def test_another_users_conversation_is_a_404_everywhere(llm_client, fake_llm, alice, bob, resources):
    fake_llm.script()
    mine = (await llm_client.post(CHAT, json={"message": "private"}, headers=alice.headers)).json()
    url = f"{CHAT}/conversations/{mine['conversation_id']}"
    assert (await llm_client.get(url, headers=bob.headers)).status_code == 404
    assert (await llm_client.delete(url, headers=bob.headers)).status_code == 404
    before = await resources.pool.fetchval("SELECT count(*) FROM messages")
    r = await llm_client.post(
        CHAT, json={"message": "intrude", "conversation_id": mine["conversation_id"]}, headers=bob.headers
    )
    assert r.status_code == 404
    assert await resources.pool.fetchval("SELECT count(*) FROM messages") == before
    assert (await llm_client.get(url, headers=alice.headers)).status_code == 200
    assert (await llm_client.delete(url, headers=alice.headers)).status_code == 200
    assert (await llm_client.get(url, headers=alice.headers)).status_code == 404


async def test_echo_is_the_offline_default(client, alice):
    r = await client.post(CHAT, json={"message": "are you there?"}, headers=alice.headers)
    assert r.status_code == 200
    body = r.json()
    assert body["provider"] == "echo" and body["response"] == "[echo] are you there?"


async def test_provider_keys_never_reach_logs_or_answers(llm_client, fake_llm, alice, caplog):
    import logging

    from tests.conftest import ANTHROPIC_TEST_KEY, OPENAI_TEST_KEY

    caplog.set_level(logging.DEBUG)
    persona = await make_persona(llm_client, alice, model_settings={"provider": "anthropic"})
    answers = []
    fake_llm.script(status=401, error_body={"error": {"message": f"bad key {OPENAI_TEST_KEY}"}})
    answers.append(await llm_client.post(CHAT, json={"message": "x"}, headers=alice.headers))
    fake_llm.script(status=500)
    answers.append(
        await llm_client.post(CHAT, json={"message": "x", "persona_id": persona["id"]}, headers=alice.headers)
    )
    fake_llm.script(chunks=("a", "b"), error_after=1)
    answers.append(await llm_client.post(CHAT, json={"message": "x", "stream": True}, headers=alice.headers))
    assert [a.status_code for a in answers] == [502, 502, 200]
    for secret in (OPENAI_TEST_KEY, ANTHROPIC_TEST_KEY):
        assert all(secret not in a.text for a in answers)
        assert secret not in caplog.text
    assert fake_llm.chat_requests()[0].headers["authorization"].endswith(OPENAI_TEST_KEY)  # it was really used
