"""Feedback on turns (contract section 16): by the turn's own user only, the last one stands, and it can be removed;
for /api/v1/chat and /v1 turns alike, right after the answer."""

from __future__ import annotations

import uuid

import openai

from tests.conftest import persona_body

PERSONAS = "/api/v1/chat/personas"


async def chat_turn(http, fake_llm, account) -> str:
    r = await http.post(PERSONAS, json=persona_body(model_settings={"provider": "openai"}), headers=account.headers)
    assert r.status_code == 201, r.text
    fake_llm.script(chunks=("fine",))
    r = await http.post(
        "/api/v1/chat", json={"message": "hi", "persona_id": r.json()["persona"]["id"]}, headers=account.headers
    )
    assert r.status_code == 200, r.text
    return r.headers["x-persona-turn-id"]


def feedback_of(turn_id: str) -> str:
    return f"/api/v1/turns/{turn_id}/feedback"


async def stored(llm_app, turn_id: str):
    return await llm_app.state.resources.pool.fetchrow(
        "SELECT rating, comment FROM turn_feedback WHERE turn_id = $1", uuid.UUID(turn_id)
    )


async def test_the_turns_user_gives_feedback_and_the_last_one_stands(llm_app, llm_client, fake_llm, alice):
    turn_id = await chat_turn(llm_client, fake_llm, alice)
    # Right after the answer, before the record's periodic write.
    r = await llm_client.post(feedback_of(turn_id), json={"rating": 1}, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert r.json()["feedback"]["rating"] == 1 and r.json()["feedback"]["turn_id"] == turn_id
    r = await llm_client.post(feedback_of(turn_id), json={"rating": -1, "comment": "too short"}, headers=alice.headers)
    assert r.status_code == 200, r.text
    row = await stored(llm_app, turn_id)
    assert (row["rating"], row["comment"]) == (-1, "too short")


async def test_feedback_on_another_users_turn_or_an_unknown_one_is_a_404(llm_app, llm_client, fake_llm, alice, bob):
    turn_id = await chat_turn(llm_client, fake_llm, alice)
    r = await llm_client.post(feedback_of(turn_id), json={"rating": 1}, headers=bob.headers)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "not_found"
    r = await llm_client.delete(feedback_of(turn_id), headers=bob.headers)
    assert r.status_code == 404, r.text
    r = await llm_client.post(feedback_of(str(uuid.uuid4())), json={"rating": 1}, headers=alice.headers)
    assert r.status_code == 404, r.text
    assert await stored(llm_app, turn_id) is None


async def test_deleting_feedback_removes_it(llm_app, llm_client, fake_llm, alice):
    turn_id = await chat_turn(llm_client, fake_llm, alice)
    r = await llm_client.post(feedback_of(turn_id), json={"rating": 1, "comment": "good"}, headers=alice.headers)
    assert r.status_code == 200, r.text
    r = await llm_client.delete(feedback_of(turn_id), headers=alice.headers)
    assert r.status_code == 200, r.text
    assert await stored(llm_app, turn_id) is None
    r = await llm_client.delete(feedback_of(turn_id), headers=alice.headers)
    assert r.status_code == 200 and r.json()["message"] == "The turn had no feedback"


async def test_feedback_on_a_v1_turn(llm_app, llm_client, fake_llm, alice):
    sdk = openai.AsyncOpenAI(base_url=llm_app.state.base_url + "/v1", api_key=alice.key, max_retries=0)
    fake_llm.script(chunks=("yes",))
    raw = await sdk.chat.completions.with_raw_response.create(
        model="persona", messages=[{"role": "user", "content": "hello"}]
    )
    turn_id = raw.headers["x-persona-turn-id"]
    r = await llm_client.post(feedback_of(turn_id), json={"rating": -1}, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert (await stored(llm_app, turn_id))["rating"] == -1


async def test_a_rating_other_than_up_or_down_is_a_400_naming_it(llm_client, fake_llm, alice):
    turn_id = await chat_turn(llm_client, fake_llm, alice)
    refused = [
        ({"rating": 2}, "rating"),
        ({"rating": "up"}, "rating"),
        ({}, "rating"),
        ({"rating": 1, "score": 3}, "score"),
        ({"rating": 1, "comment": "x" * 2001}, "comment"),
    ]
    for body, named in refused:
        r = await llm_client.post(feedback_of(turn_id), json=body, headers=alice.headers)
        assert r.status_code == 400, (body, r.text)
        assert named in r.json()["message"], (body, r.text)
