"""Memories in turns (contract section 15): what reaches a turn and whose, each opt-out, the budget's choice,
and extraction after a turn, through real PostgreSQL, Redis and the real SDKs against the fake LLM."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import asyncpg
import openai

from runtime.memory import Extractor
from runtime.memory.recall import MEMORY_HEADING
from tests.conftest import persona_body
from tests.waiting import settled

CHAT = "/api/v1/chat"
MEMORIES = "/api/v1/memories"
PERSONAS = "/api/v1/chat/personas"
REMEMBERS = {"enabled": True}


async def make_persona(http, account, *, memory: dict[str, Any] | None = None, provider: str = "openai", **fields):
    settings = {"provider": provider, "memory": REMEMBERS if memory is None else memory}
    body = persona_body(model_settings=settings, personality_traits={}, capabilities={}, **fields)
    r = await http.post(PERSONAS, json=body, headers=account.headers)
    assert r.status_code == 201, r.text
    return r.json()["persona"]


async def remember(http, account, content, persona_id=None):
    body: dict[str, Any] = {"content": content}
    if persona_id is not None:
        body["persona_id"] = persona_id
    r = await http.post(MEMORIES, json=body, headers=account.headers)
    assert r.status_code == 201, r.text
    return r.json()["memory"]


async def system_of_turn(http, fake_llm, account, persona_id, message="hello", **body):
    fake_llm.script(chunks=("ok",))
    r = await http.post(CHAT, json={"message": message, "persona_id": persona_id, **body}, headers=account.headers)
    assert r.status_code == 200, r.text
    return fake_llm.chat_requests()[-1].body["messages"][0]["content"], r.json()


async def memories_of(http, account, persona_id=None):
    params = {"persona_id": persona_id} if persona_id else {}
    r = await http.get(MEMORIES, params=params, headers=account.headers)
    assert r.status_code == 200, r.text
    return r.json()["memories"]


async def test_a_memory_reaches_the_next_conversation_with_its_persona_and_only_its_users(
    llm_client, fake_llm, alice, bob
):
    persona = await make_persona(llm_client, alice, visibility="public")
    other = await make_persona(llm_client, alice)
    own = await remember(llm_client, alice, "Alice plays the cello.", persona["id"])
    wide = await remember(llm_client, alice, "Alice is vegetarian.")

    system, answer = await system_of_turn(llm_client, fake_llm, alice, persona["id"])
    prompt = f"You are {persona['name']}, talking with Alice."
    heading = MEMORY_HEADING.format(user="Alice")
    # After the persona's own prompt, unchanged: one section, oldest first.
    assert system == f"{prompt}\n\n{heading}\n- Alice plays the cello.\n- Alice is vegetarian."
    shown = await llm_client.get(f"{CHAT}/conversations/{answer['conversation_id']}", headers=alice.headers)
    assert sorted(shown.json()["messages"][-1]["context"]["memory_ids"]) == sorted([own["id"], wide["id"]])

    # Another persona of hers gets only the persona-wide memory.
    system, _ = await system_of_turn(llm_client, fake_llm, alice, other["id"])
    assert "Alice is vegetarian." in system and "cello" not in system
    # Another user of the same persona gets none of hers.
    system, _ = await system_of_turn(llm_client, fake_llm, bob, persona["id"])
    assert system == f"You are {persona['name']}, talking with Bob." and "Alice" not in system.split("Bob")[1]


async def test_each_opt_out_keeps_memories_out(llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice)
    quiet = await make_persona(llm_client, alice, memory={"enabled": False})
    await remember(llm_client, alice, "Alice lives in Lisbon.")

    assert "Lisbon" in (await system_of_turn(llm_client, fake_llm, alice, persona["id"]))[0]
    # The chat body's opt-out.
    assert "Lisbon" not in (await system_of_turn(llm_client, fake_llm, alice, persona["id"], memory=False))[0]
    # A persona that does not remember.
    assert "Lisbon" not in (await system_of_turn(llm_client, fake_llm, alice, quiet["id"]))[0]

    # The /v1 header, through the SDK.
    sdk = openai.AsyncOpenAI(base_url=str(llm_client.base_url) + "/v1", api_key=alice.key, max_retries=0)
    for header, present in ((None, True), ("off", False), ("ON", True)):
        fake_llm.script(chunks=("ok",))
        extra = {"x-persona-memory": header} if header else None
        await sdk.chat.completions.create(
            model=f"persona/{persona['name']}", messages=[{"role": "user", "content": "hi"}], extra_headers=extra
        )
        assert ("Lisbon" in fake_llm.chat_requests()[-1].body["messages"][0]["content"]) is present, header
    r = await llm_client.post(
        "/v1/chat/completions",
        json={"model": f"persona/{persona['name']}", "messages": [{"role": "user", "content": "hi"}]},
        headers={**alice.headers, "x-persona-memory": "maybe"},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-persona-memory", r.text

    # The user's own switch.
    r = await llm_client.put(f"{MEMORIES}/settings", json={"enabled": False}, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert "Lisbon" not in (await system_of_turn(llm_client, fake_llm, alice, persona["id"]))[0]
    await llm_client.put(f"{MEMORIES}/settings", json={"enabled": True}, headers=alice.headers)


async def test_past_the_budget_the_most_relevant_then_the_newest_are_given(llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice, memory={"enabled": True, "token_budget": 40})
    for n in range(12):
        await remember(llm_client, alice, f"Weather fact {n}: rain expected.", persona["id"])
    harbour = await remember(llm_client, alice, "Alice keeps a sailing boat in the harbour.", persona["id"])
    newest = await remember(llm_client, alice, "Alice started a new job.", persona["id"])

    r = await llm_client.post(
        f"{PERSONAS}/{persona['id']}/render", json={"message": "Is my boat safe at the harbour?"}, headers=alice.headers
    )
    assert r.status_code == 200, r.text
    decisions = {d["id"]: d for d in r.json()["memories"]}
    assert len(decisions) == 14
    assert (decisions[harbour["id"]]["used"], decisions[harbour["id"]]["reason"]) == (True, "relevant")
    # Then, among those the message does not name, the newest; the older ones did not fit.
    assert (decisions[newest["id"]]["used"], decisions[newest["id"]]["reason"]) == (True, "newest")
    used = [d for d in decisions.values() if d["used"]]
    assert len(used) == 2 and all(d["reason"] == "budget" for d in decisions.values() if not d["used"])
    system = r.json()["system_prompt"]
    assert "sailing boat" in system
    section = next(s for s in r.json()["context"]["sections"] if s["kind"] == "memory")
    assert section["items"] == len(used) and section["tokens"] <= 40


_ORDER = """
SELECT coalesce(array_agg(id ORDER BY rank DESC, created_at DESC, id), '{}') FROM (
    SELECT id, created_at, ts_rank(to_tsvector('simple', content), terms) AS rank
    FROM memories, (SELECT nullif(replace(plainto_tsquery('simple', $2)::text, ' & ', ' | '), '')::tsquery) q(terms)
    WHERE id = ANY($1::uuid[]) AND to_tsvector('simple', content) @@ terms) ranked
WHERE rank > 0"""


async def test_past_the_budget_each_memory_that_still_fits_is_given_in_its_turn(
    llm_client, fake_llm, alice, database_url
):
    # One too long for what is left is passed over, and a shorter one after it goes: among the relevant and
    # among the newest.
    budget = 40
    persona = await make_persona(llm_client, alice, memory={"enabled": True, "token_budget": budget})
    contents = [
        "Alice likes rain.",  # short, old: the last that fits
        "Alice once said " + "rain and wind, " * 12,
        "Alice rows my boat, she says, " + "cello and tea, " * 12,  # the most relevant (two words), too long
        "Alice has a boat.",  # relevant
        "Alice heard " + "trains and more trains, " * 12,
        "Alice took a train.",  # the newest
    ]
    made = [await remember(llm_client, alice, content, persona["id"]) for content in contents]
    message = "Where is my boat?"
    r = await llm_client.post(f"{PERSONAS}/{persona['id']}/render", json={"message": message}, headers=alice.headers)
    assert r.status_code == 200, r.text
    decisions = r.json()["memories"]
    assert [d["id"] for d in decisions] == [m["id"] for m in reversed(made)]  # newest first
    reasons = [d["reason"] for d in reversed(decisions)]
    assert reasons == ["newest", "budget", "budget", "relevant", "budget", "newest"]

    # The same as PostgreSQL's order and the counted tokens make of it: the most relevant first, then the
    # newest, each one that fits what is left.
    tokens = {d["id"]: d["tokens"] for d in decisions}
    section = next(s for s in r.json()["context"]["sections"] if s["kind"] == "memory")
    spent = section["tokens"] - sum(d["tokens"] for d in decisions if d["used"])  # the heading's
    connection = await asyncpg.connect(database_url)
    try:
        order = [str(i) for i in await connection.fetchval(_ORDER, [uuid.UUID(m["id"]) for m in made], message)]
    finally:
        await connection.close()
    assert order == [made[2]["id"], made[3]["id"]]
    expected = {}
    for memory_id, reason in [*((i, "relevant") for i in order), *((d["id"], "newest") for d in decisions)]:
        if memory_id not in expected and spent + tokens[memory_id] <= budget:
            spent += tokens[memory_id]
            expected[memory_id] = reason
    assert {d["id"]: d["reason"] for d in decisions if d["used"]} == expected

    # A turn, which counts no more than it must, is given the same memories, oldest first.
    system, answer = await system_of_turn(llm_client, fake_llm, alice, persona["id"], message)
    assert system == r.json()["system_prompt"]
    stored = await llm_client.get(f"{CHAT}/conversations/{answer['conversation_id']}", headers=alice.headers)
    assert stored.json()["messages"][-1]["context"]["memory_ids"] == [made[n]["id"] for n in (0, 3, 5)]


async def test_a_message_sent_again_is_ranked_again_after_a_write(llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice, memory={"enabled": True, "token_budget": 40})
    for n in range(12):
        await remember(llm_client, alice, f"Weather fact {n}: rain expected.", persona["id"])
    harbour = await remember(llm_client, alice, "Alice keeps a sailing boat in the harbour.", persona["id"])
    other = await remember(llm_client, alice, "Alice started a new job.", persona["id"])
    message = {"message": "Is my boat safe at the harbour?"}

    async def used() -> dict[str, str]:
        r = await llm_client.post(f"{PERSONAS}/{persona['id']}/render", json=message, headers=alice.headers)
        assert r.status_code == 200, r.text
        return {d["id"]: d["reason"] for d in r.json()["memories"] if d["used"]}

    first = await used()
    assert first[harbour["id"]] == "relevant" and first[other["id"]] == "newest"
    assert await used() == first  # the same message, the same memories
    # Rewritten to name what the message asks about, the memory that was only the newest becomes relevant.
    rewritten = {"content": "Alice moors her boat safe in the harbour."}
    r = await llm_client.patch(f"{MEMORIES}/{other['id']}", json=rewritten, headers=alice.headers)
    assert r.status_code == 200, r.text
    after = await used()
    assert after[other["id"]] == "relevant" and after[harbour["id"]] == "relevant"
    # And a memory forgotten is no longer given, though the message is the same.
    r = await llm_client.delete(f"{MEMORIES}/{harbour['id']}", headers=alice.headers)
    assert r.status_code == 200, r.text
    assert harbour["id"] not in await used()


async def test_a_message_postgresql_reads_its_own_way_is_ranked_by_it(llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice, memory={"enabled": True, "token_budget": 40})
    for n in range(12):
        await remember(llm_client, alice, f"Weather fact {n}: rain expected.", persona["id"])
    mooring = await remember(llm_client, alice, "Alice rents a mooring-buoy near the caf\u00e9.", persona["id"])
    await remember(llm_client, alice, "Alice started a new job.", persona["id"])
    # A compound word and a letter outside ASCII: PostgreSQL's parser has words of its own for them.
    message = {"message": "Is the mooring-buoy by the caf\u00e9 still mine?"}
    for _ in range(2):  # the second time from the ranking kept for the message
        r = await llm_client.post(f"{PERSONAS}/{persona['id']}/render", json=message, headers=alice.headers)
        assert r.status_code == 200, r.text
        decisions = {d["id"]: d for d in r.json()["memories"]}
        assert (decisions[mooring["id"]]["used"], decisions[mooring["id"]]["reason"]) == (True, "relevant")


async def test_a_conversations_first_turn_is_given_the_memories_render_shows(llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice, memory={"enabled": True, "token_budget": 40})
    for n in range(12):
        await remember(llm_client, alice, f"Weather fact {n}: rain expected.", persona["id"])
    await remember(llm_client, alice, "Alice keeps a sailing boat in the harbour.", persona["id"])
    await remember(llm_client, alice, "Alice started a new job.", persona["id"])
    message = "Is my boat safe at the harbour?"
    r = await llm_client.post(f"{PERSONAS}/{persona['id']}/render", json={"message": message}, headers=alice.headers)
    assert r.status_code == 200, r.text
    shown = r.json()
    rendered = {d["id"] for d in shown["memories"] if d["used"]}
    # A first turn is sent without counting every token of it; it is given what render, counting all, shows.
    system, answer = await system_of_turn(llm_client, fake_llm, alice, persona["id"], message)
    assert system == shown["system_prompt"]
    stored = await llm_client.get(f"{CHAT}/conversations/{answer['conversation_id']}", headers=alice.headers)
    context = stored.json()["messages"][-1]["context"]
    assert set(context["memory_ids"]) == rendered and len(rendered) == 2
    memory = next(s for s in context["sections"] if s["kind"] == "memory")
    assert memory == next(s for s in shown["context"]["sections"] if s["kind"] == "memory")


async def poll(predicate, *, within: float = 5.0):
    for _ in range(int(within / 0.05)):
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    return await predicate()


async def test_extraction_adds_rewrites_and_removes_through_the_models_answer(llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice, memory={"enabled": True, "extract": True})
    old = await remember(llm_client, alice, "Alice lives in Porto.", persona["id"])
    gone = await remember(llm_client, alice, "Alice dislikes tea.", persona["id"])
    changes = {
        "add": ["Alice has a dog called Rex."],
        "rewrite": [{"id": old["id"], "content": "Alice lives in Lisbon."}],
        "remove": [gone["id"]],
    }
    fake_llm.script(chunks=("Noted!",))
    fake_llm.script(chunks=(json.dumps(changes),))
    r = await llm_client.post(
        CHAT,
        json={"message": "I moved to Lisbon with my dog Rex, and I like tea now.", "persona_id": persona["id"]},
        headers=alice.headers,
    )
    assert r.status_code == 200 and r.json()["response"] == "Noted!", r.text

    async def applied():
        found = await memories_of(llm_client, alice, persona["id"])
        return found if any(m["content"].startswith("Alice has a dog") for m in found) else None

    found = await poll(applied)
    assert found, "the extraction was not applied"
    by_content = {m["content"]: m for m in found}
    assert set(by_content) == {"Alice has a dog called Rex.", "Alice lives in Lisbon."}
    assert by_content["Alice lives in Lisbon."]["id"] == old["id"]
    added = by_content["Alice has a dog called Rex."]
    assert added["source"] == "extracted" and added["source_message_id"] == r.json()["message_id"]
    # The extraction was asked with the facts known and the exchange.
    asked = fake_llm.chat_requests()[-1].body["messages"][-1]["content"]
    assert old["id"] in asked and "I moved to Lisbon" in asked and "Noted!" in asked


async def test_a_malformed_extraction_answer_changes_nothing(llm_client, llm_app, fake_llm, alice):
    persona = await make_persona(llm_client, alice, memory={"enabled": True, "extract": True})
    kept = await remember(llm_client, alice, "Alice rows on Sundays.", persona["id"])
    for answer in ("I think Alice likes rowing.", json.dumps({"add": [""], "remove": ["not-an-id"]})):
        before = len(fake_llm.chat_requests())
        fake_llm.script(chunks=("Sure.",))
        fake_llm.script(chunks=(answer,))
        r = await llm_client.post(CHAT, json={"message": "Hello", "persona_id": persona["id"]}, headers=alice.headers)
        assert r.status_code == 200, r.text

        async def asked(before: int = before) -> bool:
            return len(fake_llm.chat_requests()) - before >= 2

        assert await poll(asked)
        await settled(llm_app.state.resources)  # the extraction has ended: anything it wrote is there
        assert [m["id"] for m in await memories_of(llm_client, alice, persona["id"])] == [kept["id"]]


async def test_the_echo_provider_extracts_remember_that_sentences_once_per_message(client, resources, alice):
    persona = await make_persona(
        client, alice, provider="echo", memory={"enabled": True, "extract": True, "max_items": 2}
    )
    said = [
        "Please remember that my cat is called Miso.",
        "Also remember that I work nights! Thanks.",
        "And remember that I am learning Welsh.",
    ]
    learnt = ["my cat is called Miso", "I work nights", "I am learning Welsh"]
    answers = []
    for text in said:
        r = await client.post(CHAT, json={"message": text, "persona_id": persona["id"]}, headers=alice.headers)
        assert r.status_code == 200, r.text
        answers.append(r.json())

        expected = learnt[len(answers) - 1]

        async def landed(expected: str = expected) -> list[dict[str, Any]] | None:
            found = await memories_of(client, alice, persona["id"])
            return found if found and found[0]["content"] == expected else None

        assert await poll(landed), text
    found = await memories_of(client, alice, persona["id"])
    # max_items 2: the oldest extracted one went.
    assert [m["content"] for m in found] == ["I am learning Welsh", "I work nights"]
    assert found[0]["source_message_id"] == answers[2]["message_id"]

    # Once per message: a second try (a retry, another instance) changes nothing.
    extractor = resources.chat.extractor
    again = await extractor.extract(
        user_id=uuid.UUID(alice.id),
        persona_id=uuid.UUID(persona["id"]),
        message_id=uuid.UUID(answers[2]["message_id"]),
        question=said[2],
        answer="",
        provider="echo",
        model="echo",
        max_items=2,
    )
    assert again == "done"
    assert len(await memories_of(client, alice, persona["id"])) == 2

    # A later conversation is given what was learnt; "forget that" removes it.
    r = await client.post(
        f"{PERSONAS}/{persona['id']}/render", json={"message": "What do you know?"}, headers=alice.headers
    )
    assert "- I work nights\n- I am learning Welsh" in r.json()["system_prompt"]
    r = await client.post(
        CHAT, json={"message": "Please forget that I work nights.", "persona_id": persona["id"]}, headers=alice.headers
    )

    async def forgotten():
        found = await memories_of(client, alice, persona["id"])
        return found if [m["content"] for m in found] == ["I am learning Welsh"] else None

    assert await poll(forgotten)
    # With the opt-out nothing is extracted.
    r = await client.post(
        CHAT,
        json={"message": "remember that I sing.", "persona_id": persona["id"], "memory": False},
        headers=alice.headers,
    )
    assert r.status_code == 200
    await settled(resources)
    assert [m["content"] for m in await memories_of(client, alice, persona["id"])] == ["I am learning Welsh"]


async def test_a_memory_written_on_another_instance_reaches_this_ones_next_turn(client, second_client, alice):
    persona = await make_persona(client, alice, provider="echo")
    await remember(client, alice, "Alice collects stamps.", persona["id"])

    async def rendered() -> str:
        r = await client.post(f"{PERSONAS}/{persona['id']}/render", json={"message": "hi"}, headers=alice.headers)
        assert r.status_code == 200, r.text
        return r.json()["system_prompt"]

    assert "Alice collects stamps." in await rendered()  # read, and now kept by this instance
    r = await second_client.post(
        MEMORIES, json={"content": "Alice sails.", "persona_id": persona["id"]}, headers=alice.headers
    )
    assert r.status_code == 201, r.text

    async def heard() -> bool:
        return "Alice sails." in await rendered()

    assert await poll(heard), "the other instance's write was not heard"
    r = await second_client.put(f"{MEMORIES}/settings", json={"enabled": False}, headers=alice.headers)

    async def switched_off() -> bool:
        return MEMORY_HEADING.format(user="Alice") not in await rendered()

    assert await poll(switched_off)
    await second_client.put(f"{MEMORIES}/settings", json={"enabled": True}, headers=alice.headers)


async def test_an_extraction_is_a_call_within_the_personas_limits(client, resources, alice, minute):
    said = {"message": "Please remember that I fly kites."}
    # Two requests a minute: the turn takes one and its extraction the other, so a second turn is refused.
    two = await make_persona(
        client, alice, provider="echo", memory={"enabled": True, "extract": True}, limits={"requests_per_minute": 2}
    )
    r = await client.post(CHAT, json={**said, "persona_id": two["id"]}, headers=alice.headers)
    assert r.status_code == 200, r.text

    async def learnt():
        return await memories_of(client, alice, two["id"])

    assert [m["content"] for m in await poll(learnt)] == ["I fly kites"]
    r = await client.post(CHAT, json={"message": "Hello", "persona_id": two["id"]}, headers=alice.headers)
    assert r.status_code == 429, r.text

    # One a minute: the turn takes it, and the extraction after it is not made.
    one = await make_persona(
        client, alice, provider="echo", memory={"enabled": True, "extract": True}, limits={"requests_per_minute": 1}
    )
    r = await client.post(CHAT, json={**said, "persona_id": one["id"]}, headers=alice.headers)
    assert r.status_code == 200, r.text
    await settled(resources)  # what runs after the turn has ended
    assert await memories_of(client, alice, one["id"]) == []


async def test_two_instances_extracting_one_message_add_one_memory(client, resources, alice):
    # The turn itself extracts nothing here: the two instances below are the only ones that try.
    persona = await make_persona(client, alice, provider="echo", memory={"enabled": True, "extract": False})
    r = await client.post(CHAT, json={"message": "Hello", "persona_id": persona["id"]}, headers=alice.headers)
    message_id = uuid.UUID(r.json()["message_id"])
    mine = resources.chat.extractor
    other = Extractor(resources.pool, resources.providers)  # another instance's, on the same database
    asked = {
        "user_id": uuid.UUID(alice.id),
        "persona_id": uuid.UUID(persona["id"]),
        "message_id": message_id,
        "question": "Please remember that I keep bees.",
        "answer": "Noted.",
        "provider": "echo",
        "model": "echo",
        "max_items": 100,
    }
    outcomes = await asyncio.gather(mine.extract(**asked), other.extract(**asked))
    assert sorted(outcomes) == ["applied", "done"]
    assert [m["content"] for m in await memories_of(client, alice, persona["id"])] == ["I keep bees"]


async def test_memory_text_never_reaches_the_logs_or_metrics(llm_client, llm_app, fake_llm, alice, caplog):
    caplog.set_level(logging.DEBUG)
    persona = await make_persona(llm_client, alice, memory={"enabled": True, "extract": True})
    secret = "Alice's locker code is 40-17-33."
    told = await remember(llm_client, alice, secret, persona["id"])
    await llm_client.patch(f"{MEMORIES}/{told['id']}", json={"content": secret + " Still."}, headers=alice.headers)
    fake_llm.script(chunks=("Understood.",))
    fake_llm.script(chunks=(json.dumps({"add": ["Alice's bike lock is 99-12."], "rewrite": [], "remove": []}),))
    r = await llm_client.post(
        CHAT, json={"message": "My bike lock is 99-12.", "persona_id": persona["id"]}, headers=alice.headers
    )
    assert r.status_code == 200, r.text

    async def extracted():
        return any("99-12" in m["content"] for m in await memories_of(llm_client, alice, persona["id"]))

    assert await poll(extracted)
    fake_llm.script(chunks=("not json at all",))
    fake_llm.script(chunks=("ok",))
    await llm_client.post(CHAT, json={"message": "Hi", "persona_id": persona["id"]}, headers=alice.headers)
    await settled(llm_app.state.resources)  # the failed extraction has been logged
    metrics = (await llm_client.get("/metrics")).text
    assert caplog.records, "nothing was logged: the check would prove nothing"
    for text in ("40-17-33", "99-12"):
        assert text not in caplog.text and text not in metrics
