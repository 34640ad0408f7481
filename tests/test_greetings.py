"""Conversations a persona opens with its greeting (CONTRACT section 14), and the turns that follow them."""

from __future__ import annotations

import uuid

from providers.anthropic import OPENING_TURN
from runtime.chat.tokens import ESTIMATE, MESSAGE_OVERHEAD
from tests.conftest import persona_body

CONVERSATIONS = "/api/v1/chat/conversations"
PERSONAS = "/api/v1/chat/personas"
GREETINGS = ["*{{char}} looks up* Hello, {{user}}!", "Back again, {{user_name}}? {{persona_name}} missed you."]


async def create(client, account, **fields):
    r = await client.post(PERSONAS, json=persona_body(**fields), headers=account.headers)
    assert r.status_code == 201, r.text
    return r.json()["persona"]


async def conversations_of(resources, account) -> int:
    return int(await resources.pool.fetchval("SELECT count(*) FROM conversations WHERE user_id = $1", account.user.id))


async def test_a_conversation_opens_with_the_first_greeting_as_the_personas_message(client, alice, resources):
    persona = await create(client, alice, greetings=GREETINGS)
    r = await client.post(CONVERSATIONS, json={"persona_id": persona["id"]}, headers=alice.headers)
    assert r.status_code == 201, r.text
    started = r.json()
    # The answer is the conversation as GET shows it.
    shown = await client.get(f"{CONVERSATIONS}/{started['conversation']['id']}", headers=alice.headers)
    assert shown.json() == started
    assert started["conversation"]["persona_id"] == persona["id"]
    assert started["conversation"]["title"] == persona["name"]
    (greeting,) = started["messages"]
    assert greeting["content"] == f"*{persona['name']} looks up* Hello, Alice!"
    assert greeting["role"] == "assistant" and greeting["status"] == "complete"
    assert greeting["persona_id"] == persona["id"] and greeting["persona_version"] == persona["version"]
    assert greeting["persona_source"] == "request" and greeting["provider"] is None
    # Counted once, when stored, as every message is (the echo provider's model counts by estimate).
    tokens = await resources.pool.fetchval("SELECT tokens FROM messages WHERE id = $1", uuid.UUID(greeting["id"]))
    assert tokens == ESTIMATE.count(greeting["content"]) + MESSAGE_OVERHEAD

    r = await client.post(CONVERSATIONS, json={"persona_id": persona["id"], "greeting": 1}, headers=alice.headers)
    assert r.status_code == 201, r.text
    assert [m["content"] for m in r.json()["messages"]] == [f"Back again, Alice? {persona['name']} missed you."]


async def test_without_greetings_or_a_persona_the_conversation_is_empty_and_resolved_as_chat(client, alice):
    plain = await create(client, alice)
    r = await client.post(CONVERSATIONS, json={"persona_id": plain["id"]}, headers=alice.headers)
    assert r.status_code == 201 and r.json()["messages"] == []

    # No persona named: the caller's preferred one, as a chat turn would have.
    greeter = await create(client, alice, greetings=["Hi {{user}}."])
    r = await client.post(f"{PERSONAS}/set", json={"persona_id": greeter["id"]}, headers=alice.headers)
    assert r.status_code == 200
    r = await client.post(CONVERSATIONS, headers=alice.headers)  # no body at all
    assert r.status_code == 201, r.text
    assert r.json()["conversation"]["persona_id"] == greeter["id"]
    assert [(m["content"], m["persona_source"]) for m in r.json()["messages"]] == [("Hi Alice.", "preference")]


async def test_a_greeting_that_is_not_there_is_refused_naming_it(client, alice, bob, resources):
    persona = await create(client, alice, greetings=GREETINGS)
    plain = await create(client, alice)
    before = await conversations_of(resources, alice)
    for body, words in (
        ({"persona_id": persona["id"], "greeting": 2}, "has 2 greetings: pick 0 to 1"),
        ({"persona_id": plain["id"], "greeting": 0}, "has no greetings"),
        ({"persona_id": persona["id"], "greeting": -1}, "greeting"),
        ({"persona_id": persona["id"], "greeting": "first"}, "greeting"),
    ):
        r = await client.post(CONVERSATIONS, json=body, headers=alice.headers)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["field"] == "greeting" and words in r.json()["message"], r.text
    r = await client.post(CONVERSATIONS, json={"persona_id": persona["id"], "title": "x"}, headers=alice.headers)
    assert r.status_code == 400 and r.json()["error"]["field"] == "title"
    # Someone else's private persona is not there for them.
    r = await client.post(CONVERSATIONS, json={"persona_id": persona["id"]}, headers=bob.headers)
    assert r.status_code == 404 and r.json()["error"]["field"] == "persona_id"
    assert await conversations_of(resources, alice) == before


async def test_the_next_turn_sends_the_greeting_as_the_first_assistant_message(llm_client, fake_llm, alice):
    persona = await create(llm_client, alice, greetings=GREETINGS)
    r = await llm_client.post(CONVERSATIONS, json={"persona_id": persona["id"]}, headers=alice.headers)
    conversation_id = r.json()["conversation"]["id"]
    fake_llm.script(chunks=("Glad ", "to be here."))
    r = await llm_client.post(
        "/api/v1/chat", json={"message": "Where am I?", "conversation_id": conversation_id}, headers=alice.headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["conversation_id"] == conversation_id and r.json()["persona"]["id"] == persona["id"]
    sent = fake_llm.last_request.body["messages"]
    assert sent[0]["role"] == "system"
    assert sent[1:] == [
        {"role": "assistant", "content": f"*{persona['name']} looks up* Hello, Alice!"},
        {"role": "user", "content": "Where am I?"},
    ]
    stored = (await llm_client.get(f"{CONVERSATIONS}/{conversation_id}", headers=alice.headers)).json()["messages"]
    assert [m["role"] for m in stored] == ["assistant", "user", "assistant"]


async def test_anthropic_is_sent_a_user_turn_before_the_greeting(llm_client, fake_llm, alice):
    persona = await create(
        llm_client, alice, greetings=GREETINGS, model_settings={"provider": "anthropic", "model": "claude-test"}
    )
    r = await llm_client.post(CONVERSATIONS, json={"persona_id": persona["id"]}, headers=alice.headers)
    conversation_id = r.json()["conversation"]["id"]
    fake_llm.script(chunks=("Hello.",))
    r = await llm_client.post(
        "/api/v1/chat", json={"message": "Who are you?", "conversation_id": conversation_id}, headers=alice.headers
    )
    assert r.status_code == 200, r.text
    request = fake_llm.last_request
    assert request.path.endswith("/messages")
    # The Messages API takes a user message first: the opening greeting follows a minimal one.
    assert request.body["messages"] == [
        {"role": "user", "content": OPENING_TURN},
        {"role": "assistant", "content": f"*{persona['name']} looks up* Hello, Alice!"},
        {"role": "user", "content": "Who are you?"},
    ]
    assert "system" in request.body
