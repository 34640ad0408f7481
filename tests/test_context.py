"""Contract section 13: turns within the model's token budget, overflow refused before any provider call, one
retry when a provider still finds the request too long, rolling summaries, and render's account."""

from __future__ import annotations

import asyncio
from uuid import UUID

import bpe_openai
import httpx
import pytest

from runtime.chat.context import SUMMARY_HEADING
from runtime.chat.conversations import ConversationStore
from tests.conftest import llm_env, make_settings, persona_body, running
from tests.waiting import eventually, settled

CHAT = "/api/v1/chat"
PERSONAS = "/api/v1/chat/personas"


async def make_persona(http, account, **fields):
    r = await http.post(PERSONAS, json=persona_body(**fields), headers=account.headers)
    assert r.status_code == 201, r.text
    return r.json()["persona"]


async def conversation(http, account, conversation_id):
    r = await http.get(f"{CHAT}/conversations/{conversation_id}", headers=account.headers)
    assert r.status_code == 200, r.text
    return r.json()


async def ask_elsewhere(store: ConversationStore, user_id: UUID, conversation_id: UUID, text: str) -> UUID:
    """A question stored by another instance's ``store``, as a turn there stores it; its pending answer's id."""
    conversation = await store.get(user_id, conversation_id)
    _, answer_id = await store.begin_turn(
        user_id=user_id,
        conversation=conversation,
        message=text,
        persona_id=conversation.persona_id,
        persona_version=conversation.persona_version or 1,
        persona_source="conversation",
        provider="echo",
        model="echo",
        tokens=30,
    )
    return answer_id


async def finish_elsewhere(
    store: ConversationStore, answer_id: UUID, text: str, status: str = "complete", token_ratio: float | None = None
) -> None:
    """The answer saved by that instance (with its conversation's correction of estimated counts, if any)."""
    await store.finish_answer(
        answer_id,
        content=text,
        status=status,  # type: ignore[arg-type]
        provider="echo",
        model="echo",
        usage=None,
        latency_ms=1,
        finish_reason="stop",
        tool_calls=None,
        error=None,
        tokens=30,
        token_ratio=token_ratio,
    )


async def test_a_long_conversation_keeps_its_latest_turns_and_a_summary_within_the_window(
    database_url, redis_url, fake_llm, make_user
):
    from api.app import create_app

    settings = make_settings(database_url, redis_url, env=llm_env(fake_llm), summary_provider="echo")
    app = create_app(settings)
    async with running(app) as http:
        alice = await make_user("alice")
        persona = await make_persona(
            http, alice, model_settings={"provider": "local", "context_window": 1400, "max_tokens": 200}
        )
        conversation_id = None
        for n in range(12):
            fake_llm.script(chunks=(f"answer {n}",))
            body = {"message": f"question {n}: " + "tell me more about the harbour " * 20, "persona_id": persona["id"]}
            if conversation_id:
                body["conversation_id"] = conversation_id
            r = await http.post(CHAT, json=body, headers=alice.headers)
            assert r.status_code == 200, r.text
            conversation_id = r.json()["conversation_id"]
            await settled(app.state.resources)  # the turn's summary, when one was due, lands before the next

        sent = [r.body for r in fake_llm.chat_requests() if "question 11" in r.body["messages"][-1]["content"]][-1]
        said = [m["content"] for m in sent["messages"] if m["role"] != "system"]
        # The latest question, then the turn before it, were kept whole; the first turns were not.
        assert said[-1].startswith("question 11") and said[-2] == "answer 10" and said[-3].startswith("question 10")
        assert not any(text.startswith("question 0:") for text in said)

        for _ in range(100):
            shown = await conversation(http, alice, conversation_id)
            if shown["conversation"]["summary"]:
                break
            await asyncio.sleep(0.05)
        summary = shown["conversation"]["summary"]
        assert summary is not None, "no summary was written for the turns that fell out"
        assert "question 0" in summary["content"]
        ids = [m["id"] for m in shown["messages"]]
        assert summary["covers_until_message_id"] in ids
        # Every stored answer keeps its account, within the budget.
        answers = [m for m in shown["messages"] if m["role"] == "assistant"]
        assert all(m["context"]["used"] <= m["context"]["budget"] == 1200 for m in answers)
        assert answers[-1]["context"]["dropped_turns"] > 0
        # The list still answers once a conversation has a summary, and shows it on the conversation's GET only.
        listed = await http.get("/api/v1/chat/conversations", headers=alice.headers)
        assert listed.status_code == 200, listed.text
        (row,) = [c for c in listed.json()["conversations"] if c["id"] == conversation_id]
        assert "summary" not in row and row["title"] and row["persona_id"] == persona["id"]

        # The next turn is sent the summary as a system section after the persona's prompt.
        fake_llm.script(chunks=("fine",))
        r = await http.post(
            CHAT, json={"message": "and now?", "conversation_id": conversation_id}, headers=alice.headers
        )
        assert r.status_code == 200, r.text
        system = fake_llm.chat_requests()[-1].body["messages"][0]["content"]
        assert system.startswith(f"You are {persona['name']}")
        assert SUMMARY_HEADING in system and summary["content"].splitlines()[0] in system

        rendered = await http.post(
            f"{PERSONAS}/{persona['id']}/render",
            json={"message": "and now?", "conversation_id": conversation_id},
            headers=alice.headers,
        )
        context = rendered.json()["context"]
        kinds = [s["kind"] for s in context["sections"]]
        assert kinds[0] == "system" and "summary" in kinds and "history" in kinds and kinds[-1] == "message"
        assert context["used"] == sum(s["tokens"] for s in context["sections"]) <= context["budget"]


async def test_a_summary_is_written_once_per_quarter_window_and_every_turn_is_sent_or_summarized(
    database_url, redis_url, fake_llm, make_user
):
    from api.app import create_app

    settings = make_settings(database_url, redis_url, env=llm_env(fake_llm), summary_provider="echo")
    app = create_app(settings)
    async with running(app) as http:
        pipeline = app.state.resources.chat
        alice = await make_user("alice")
        persona = await make_persona(
            http, alice, model_settings={"provider": "local", "context_window": 1500, "max_tokens": 100}
        )
        conversation_id = None
        turns = 50
        for n in range(turns):
            fake_llm.script(chunks=(f"answer {n}",))
            body = {"message": f"question {n}: " + "tell me about the harbour " * 7, "persona_id": persona["id"]}
            if conversation_id:
                body["conversation_id"] = conversation_id
            r = await http.post(CHAT, json=body, headers=alice.headers)
            assert r.status_code == 200, r.text
            conversation_id = r.json()["conversation_id"]
            while pipeline._background:  # the answer's saving, then the summary it asked for
                await asyncio.wait(list(pipeline._background))

        requests = [r.body for r in fake_llm.chat_requests()][-turns:]
        summaries = []
        for n, sent in enumerate(requests):
            system = sent["messages"][0]["content"]
            asked = [m["content"].split(":")[0] for m in sent["messages"][1:] if m["role"] == "user"]
            assert asked[-1] == f"question {n}"
            oldest = int(asked[0].split()[1])
            if oldest == 0:
                assert SUMMARY_HEADING not in system
                continue
            # What is not sent is in the summary: it runs to the turn just before the oldest one sent.
            summary = system.split(SUMMARY_HEADING)[1]
            assert f"The user said: question {oldest - 1}:" in summary, (n, oldest)
            summaries.append(summary)
        overflowing = len(summaries)
        assert overflowing >= 15
        # Not a new summary after every turn: one per quarter of the history's room (a few turns here).
        assert len(set(summaries)) <= overflowing // 2, (len(set(summaries)), overflowing)


async def test_what_cannot_be_dropped_and_does_not_fit_is_refused_before_any_provider_call(
    llm_client, llm_app, fake_llm, alice
):
    persona = await make_persona(
        llm_client, alice, model_settings={"provider": "openai", "context_window": 300, "max_tokens": 50}
    )
    name, long = persona["name"], "word " * 390
    before = len(fake_llm.chat_requests())

    r = await llm_client.post(CHAT, json={"message": long, "persona_id": persona["id"]}, headers=alice.headers)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "context_overflow" and error["field"] == "message"
    assert error["details"]["part"] == "message" and error["details"]["budget"] == 250
    # 390 words counted with o200k (the persona's model is OpenAI's default), over a budget of 250.
    assert error["details"]["tokens"] > error["details"]["overshoot"] > 100

    v1 = {"model": f"persona/{name}", "messages": [{"role": "user", "content": long}]}
    r = await llm_client.post("/v1/chat/completions", json=v1, headers=alice.headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    assert r.json()["error"]["param"] == "messages"

    anthropic = {"model": f"persona/{name}", "max_tokens": 50, "messages": [{"role": "user", "content": long}]}
    r = await llm_client.post("/v1/messages", json=anthropic, headers=alice.headers)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
    assert "`messages`" in r.json()["error"]["message"] and "context_window" in r.json()["error"]["message"]

    r = await llm_client.post("/v1/responses", json={"model": f"persona/{name}", "input": long}, headers=alice.headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text

    # max_tokens that leaves no room at all names max_tokens.
    v1 = {"model": f"persona/{name}", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 400}
    r = await llm_client.post("/v1/chat/completions", json=v1, headers=alice.headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens", r.text
    assert len(fake_llm.chat_requests()) == before


async def test_a_provider_that_still_finds_the_request_too_long_gets_it_once_more_shorter(llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice, model_settings={"provider": "openai", "context_window": 8000})
    conversation_id = None
    for n in range(4):
        fake_llm.script(chunks=(f"answer {n}",))
        body = {"message": f"question {n} " + "about the sea " * 40, "persona_id": persona["id"]}
        if conversation_id:
            body["conversation_id"] = conversation_id
        r = await llm_client.post(CHAT, json=body, headers=alice.headers)
        conversation_id = r.json()["conversation_id"]
    too_long = {
        "error": {
            "message": "This model's maximum context length is 600 tokens. However, your messages resulted in "
            "900 tokens. Please reduce the length of the messages.",
            "type": "invalid_request_error",
            "code": "context_length_exceeded",
        }
    }
    fake_llm.script(status=400, error_body=too_long)
    fake_llm.script(chunks=("shorter, then",))
    before = len(fake_llm.chat_requests())
    r = await llm_client.post(
        CHAT, json={"message": "last one", "conversation_id": conversation_id}, headers=alice.headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["response"] == "shorter, then"
    first, second = (q.body["messages"] for q in fake_llm.chat_requests()[before:])
    assert len(second) < len(first) and second[-1]["content"] == first[-1]["content"] == "last one"
    stored = (await conversation(llm_client, alice, conversation_id))["messages"]
    assert [m["status"] for m in stored[-2:]] == ["complete", "complete"]

    # A second refusal reaches the client as the provider's, with nothing retried a third time.
    fake_llm.script(status=400, error_body=too_long)
    fake_llm.script(status=400, error_body=too_long)
    fake_llm.script(chunks=("never asked",))
    before = len(fake_llm.chat_requests())
    r = await llm_client.post(
        CHAT, json={"message": "again", "conversation_id": conversation_id}, headers=alice.headers
    )
    assert r.status_code == 502 and r.json()["error"]["code"] == "provider_context_exceeded", r.text
    assert len(fake_llm.chat_requests()) - before == 2
    fake_llm.reset()


async def test_render_counts_with_the_models_own_tokenizer_and_window(client, alice):
    persona = await make_persona(client, alice, model_settings={"provider": "echo", "model": "gpt-4o-mini"})
    message = "Tokenize this sentence, exactly, with o200k: naïve café ☕."
    r = await client.post(f"{PERSONAS}/{persona['id']}/render", json={"message": message}, headers=alice.headers)
    assert r.status_code == 200, r.text
    context = r.json()["context"]
    assert context["window"] == 128_000 and context["budget"] == 128_000 - 1024
    assert context["tokenizer"] == "o200k_base"
    encoding = bpe_openai.get_encoding("o200k_base")
    sections = {s["kind"]: s for s in context["sections"]}
    assert sections["message"]["tokens"] == len(encoding.encode_ordinary(message)) + 4
    assert sections["system"]["tokens"] == len(encoding.encode_ordinary(r.json()["system_prompt"]))

    unknown = await make_persona(client, alice, model_settings={"provider": "echo", "model": "house-model"})
    r = await client.post(f"{PERSONAS}/{unknown['id']}/render", json={"message": message}, headers=alice.headers)
    context = r.json()["context"]
    assert context["window"] == 32_768 and context["tokenizer"] == "estimate"


async def test_a_first_turn_sent_uncounted_leaves_its_message_to_be_counted_by_size(client, resources, alice):
    # A conversation's first turn fits without being tokenized; its message is not stored as costing 0 tokens,
    # which would let later turns send it for free whatever its size.
    message = "a long first message " * 400
    r = await client.post(CHAT, json={"message": message, "stream": False}, headers=alice.headers)
    assert r.status_code == 200, r.text
    conversation_id = UUID(r.json()["conversation_id"])
    stored = await resources.pool.fetchval(
        "SELECT tokens FROM messages WHERE conversation_id = $1 AND role = 'user'", conversation_id
    )
    assert stored is None
    rows, _ = await resources.conversations.window(conversation_id, after_seq=0, budget=10**6, limit=9)
    assert next(row.tokens for row in rows if row.role == "user") >= len(message.encode()) / 3.5


async def test_history_is_read_only_as_far_as_the_budget_reaches(client, resources, alice):
    r = await client.post(CHAT, json={"message": "start"}, headers=alice.headers)
    conversation_id = r.json()["conversation_id"]
    async with resources.pool.acquire() as connection:
        await connection.execute(
            """INSERT INTO messages (conversation_id, role, content, status, tokens)
               SELECT $1, CASE WHEN n % 2 = 0 THEN 'user' ELSE 'assistant' END, 'message ' || n, 'complete', 10
               FROM generate_series(1, 3000) n""",
            conversation_id,
        )
    rows, more = await resources.conversations.window(conversation_id, after_seq=0, budget=95, limit=1000)
    # Ten messages of ten tokens reach the budget; the walk reads one more to know, and no further.
    assert len(rows) == 10 and more
    assert [r.content for r in rows[:2]] == ["message 3000", "message 2999"]
    rows, more = await resources.conversations.window(conversation_id, after_seq=0, budget=10**9, limit=40)
    assert len(rows) == 40 and more


async def test_a_window_kept_by_one_instance_sees_what_any_instance_stored_or_finished_since(client, resources, alice):
    r = await client.post(CHAT, json={"message": "start"}, headers=alice.headers)
    conversation_id = r.json()["conversation_id"]
    # Two instances' stores over one database, and the SQL read every time as the reference.
    here, there = ConversationStore(resources.pool), ConversationStore(resources.pool)
    truth = ConversationStore(resources.pool, cached_windows=0)

    reads = 0

    async def same(after_seq: int = 0, budget: int = 400, limit: int = 1000) -> list[str]:
        nonlocal reads
        args = {"after_seq": after_seq, "budget": budget, "limit": limit}
        reads += 1
        if reads % 2:  # as a turn reads it: the conversation, with what was stored since the kept window
            await here.get(alice.user.id, conversation_id, for_turn=True)
        rows, more = await here.window(conversation_id, **args)
        expected, expected_more = await truth.window(conversation_id, **args)
        seen = [(r.seq, r.role, r.content, r.tokens, r.message.content) for r in rows]
        assert seen == [(r.seq, r.role, r.content, r.tokens, r.content) for r in expected] and more == expected_more
        return [r.content for r in rows]

    async def ask(text: str) -> UUID:
        return await ask_elsewhere(there, alice.user.id, conversation_id, text)

    async def finish(answer_id: UUID, text: str, status: str = "complete") -> None:
        await finish_elsewhere(there, answer_id, text, status)

    assert (await same())[0] != "first question"
    first = await ask("first question")
    second = await ask("second question")  # asked while the first answer is still being written
    await finish(second, "second answer")
    assert (await same())[:3] == ["second answer", "second question", "first question"]
    # The first answer, finished later behind newer messages, is seen by the instance that kept the window.
    await finish(first, "first answer")
    assert (await same())[:4] == ["second answer", "second question", "first answer", "first question"]
    failed = await ask("third question")
    await finish(failed, "", status="error")
    assert (await same())[0] == "third question"
    for n in range(40):
        await finish(await ask(f"question {n}"), f"answer {n}")
        if n % 7 == 0:
            await same(budget=100 + 20 * n)
    # A summary that moved on, a larger budget than any read so far, a smaller limit: all as the SQL says.
    rows, _ = await truth.window(conversation_id, after_seq=0, budget=10**6, limit=1000)
    await same(after_seq=rows[30].seq, budget=200)
    await same(after_seq=rows[30].seq, budget=10**6)
    await same(after_seq=rows[10].seq, budget=10**6, limit=5)
    for n in range(80):  # more stored since than one catch-up reads
        await finish(await ask(f"later question {n}"), f"later answer {n}")
    assert (await same(after_seq=rows[10].seq))[0] == "later answer 79"
    # What the copies hold is what they count, for the bound on all of them.
    assert here._chars == sum(len(r.content) for w in here._windows.values() for r in w.rows)


async def test_an_answer_swept_as_incomplete_is_not_overwritten_by_its_late_finish(client, resources, alice):
    r = await client.post(CHAT, json={"message": "start"}, headers=alice.headers)
    conversation_id = r.json()["conversation_id"]
    # The instance that runs the answer, with a lease that runs out at once (as when its loop stalls past it).
    slow = ConversationStore(resources.pool, lease_seconds=0.0)
    here = ConversationStore(resources.pool)
    stored = await slow.get(alice.user.id, conversation_id)
    answer_id = await ask_elsewhere(slow, alice.user.id, conversation_id, "a question")
    # Another instance's sweep finds the lease run out and keeps what the stream's recording held.
    assert await here.mark_abandoned(answer_id, "what was said")
    await here.get(alice.user.id, conversation_id, for_turn=True)
    rows, _ = await here.window(conversation_id, after_seq=0, budget=10**6, limit=1000)
    assert rows[0].content == "what was said"
    await finish_elsewhere(slow, answer_id, "the whole answer, too late", token_ratio=1.5)
    # The answer stays as the sweep left it: the user was told it is incomplete, and every instance's copy of
    # the window still holds what is stored.
    shown = await conversation(client, alice, conversation_id)
    last = shown["messages"][-1]
    assert (last["status"], last["content"]) == ("incomplete", "what was said")
    truth = ConversationStore(resources.pool, cached_windows=0)
    expected, _ = await truth.window(conversation_id, after_seq=0, budget=10**6, limit=1000)
    await here.get(alice.user.id, conversation_id, for_turn=True)
    rows, _ = await here.window(conversation_id, after_seq=0, budget=10**6, limit=1000)
    assert [r.content for r in rows] == [r.content for r in expected]
    assert (await truth.get(alice.user.id, conversation_id)).token_ratio == stored.token_ratio


async def test_a_summary_is_saved_only_over_the_one_it_folded(client, resources, alice):
    r = await client.post(CHAT, json={"message": "hello"}, headers=alice.headers)
    conversation_id = r.json()["conversation_id"]
    message_id = r.json()["message_id"]
    store = resources.conversations
    assert await store.save_summary(
        conversation_id, summary="first", tokens=2, covers_seq=10, covers_message_id=message_id, folded_seq=None
    )
    # A writer that folded nothing (it read before "first" was saved) does not replace it.
    assert not await store.save_summary(
        conversation_id, summary="stale", tokens=2, covers_seq=5, covers_message_id=message_id, folded_seq=None
    )
    shown = await conversation(client, alice, conversation_id)
    assert shown["conversation"]["summary"]["content"] == "first"
    assert shown["conversation"]["summary"]["covers_until_message_id"] == message_id


@pytest.mark.parametrize(
    ("message", "overshoot"),
    [
        ("This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.", 808),
        ("prompt is too long: 210000 tokens > 200000 maximum", 10000),
        (
            "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens (4000 in the "
            "messages, 1000 in the completion).",
            904,
        ),
        ("Input is too long for this model.", None),
    ],
)
def test_providers_length_refusals_are_recognised_with_their_overshoot(message, overshoot):
    from core.errors import ProviderContextExceeded
    from providers._upstream import error_for_status

    error = error_for_status("openai", 400, httpx.Headers(), {"error": {"message": message}}, None)
    assert isinstance(error, ProviderContextExceeded) and error.overshoot == overshoot
    assert not isinstance(
        error_for_status("openai", 400, httpx.Headers(), {"error": {"message": "bad model"}}, None),
        ProviderContextExceeded,
    )


async def test_a_turn_starts_from_this_instances_copy_of_its_conversation_and_misses_nothing_stored_elsewhere(
    database_url, redis_url, fake_llm, make_user
):
    from api.app import create_app

    app = create_app(make_settings(database_url, redis_url, env=llm_env(fake_llm)))
    async with running(app) as http:
        resources = app.state.resources
        store: ConversationStore = resources.conversations
        alice = await make_user("alice")
        persona = await make_persona(http, alice, model_settings={"provider": "local", "context_window": 16000})
        copied: list[bool] = []
        read = store.get

        async def get(*args, **kwargs):  # what each turn started from: this instance's copy, or a read
            found = await read(*args, **kwargs)
            if kwargs.get("for_turn"):
                copied.append(found.copied)
            return found

        store.get = get  # type: ignore[method-assign]

        async def turn(text: str, conversation_id: str | None = None) -> httpx.Response:
            fake_llm.script(chunks=(f"answer to {text}",))
            body = {"message": text, "persona_id": persona["id"]}
            if conversation_id:
                body["conversation_id"] = conversation_id
            return await http.post(CHAT, json=body, headers=alice.headers)

        def sent() -> list[str]:
            return [m["content"] for m in fake_llm.chat_requests()[-1].body["messages"] if m["role"] != "system"]

        conversation_id = (await turn("one")).json()["conversation_id"]
        for text in ("two", "three"):
            assert (await turn(text, conversation_id)).status_code == 200
        # The first turn on the conversation read it; the next ones started from what the turn before left here.
        assert copied == [False, True]
        assert sent() == ["one", "answer to one", "two", "answer to two", "three"]

        truth = ConversationStore(resources.pool, cached_windows=0)

        async def summarizer_sees_the_truth() -> None:
            """The summarizer's state from the copy, for every point a summary could end, is the database's."""
            seqs = [
                r["seq"]
                for r in await resources.pool.fetch(
                    "SELECT seq FROM messages WHERE conversation_id = $1 ORDER BY seq", UUID(conversation_id)
                )
            ]
            for before in [*seqs, seqs[-1] + 1]:
                kept = store._summary_kept(UUID(conversation_id), before, 200)
                assert kept is not None
                assert kept == await truth.summary_state(UUID(conversation_id), before_seq=before, limit=200)

        # A summary saved here leaves the copy as good as it was, and the next turn is sent it.
        shown = await conversation(http, alice, conversation_id)
        first = shown["messages"][1]
        await store.save_summary(
            UUID(conversation_id),
            summary="They said one.",
            tokens=5,
            covers_seq=await resources.pool.fetchval("SELECT seq FROM messages WHERE id = $1", UUID(first["id"])),
            covers_message_id=UUID(first["id"]),
            folded_seq=None,
        )
        await summarizer_sees_the_truth()  # the copy's summary is the new one; its window still reaches before it
        assert (await turn("four", conversation_id)).status_code == 200
        await summarizer_sees_the_truth()
        assert copied[-1] is True
        assert SUMMARY_HEADING in fake_llm.chat_requests()[-1].body["messages"][0]["content"]
        assert sent()[:2] == ["two", "answer to two"] and sent()[-1] == "four"

        # Another instance stores a turn: the turn planned here from the copy is planned again from a read, and
        # sent what the other instance stored, which is kept once and in order.
        there = ConversationStore(resources.pool)
        await finish_elsewhere(
            there,
            await ask_elsewhere(there, alice.user.id, UUID(conversation_id), "asked elsewhere"),
            "answered elsewhere",
        )
        before = len(copied)
        r = await turn("five", conversation_id)
        assert r.status_code == 200, r.text
        assert copied[before:] == [True, False]
        assert sent()[-5:] == [
            "four",
            "answer to four",
            "asked elsewhere",
            "answered elsewhere",
            "five",
        ]
        stored = [m["content"] for m in (await conversation(http, alice, conversation_id))["messages"]]
        assert stored[-4:] == ["asked elsewhere", "answered elsewhere", "five", "answer to five"]
        assert stored.count("five") == 1
        # Changed elsewhere once, the conversation is read before each of its turns here from now on.
        assert (await turn("six", conversation_id)).status_code == 200
        assert copied[-1] is False

        # Two turns at once here: the second is read while the first answer is still being written, and neither
        # leaves a copy that would lack the other's answer.
        fresh = (await turn("a start")).json()["conversation_id"]
        fake_llm.script(chunks=("slow", " answer"), chunk_delay=0.3)
        slow = asyncio.create_task(
            http.post(CHAT, json={"message": "slow question", "conversation_id": fresh}, headers=alice.headers)
        )

        def slow_asked() -> bool:  # its question stored and its answer on its way
            return any(r.body["messages"][-1]["content"] == "slow question" for r in fake_llm.chat_requests())

        assert await eventually(slow_asked)
        assert (await turn("quick question", fresh)).status_code == 200
        assert (await slow).status_code == 200
        assert (await turn("after both", fresh)).status_code == 200
        assert sent()[-5:] == [
            "slow question",
            "slow answer",
            "quick question",
            "answer to quick question",
            "after both",
        ]

        # A conversation deleted elsewhere: the turn planned from the copy stores nothing and is a 404.
        other = (await turn("first words")).json()["conversation_id"]
        assert (await turn("second words", other)).status_code == 200
        await there.delete(alice.user.id, UUID(other))
        r = await turn("into the void", other)
        assert r.status_code == 404 and r.json()["error"]["field"] == "conversation_id", r.text
        # The second turn read the conversation, the third started from the copy; its read again found nothing.
        assert copied[-2:] == [False, True]
        left = await resources.pool.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1", UUID(other))
        assert left == 0
        assert store._chars == sum(len(r.content) for w in store._windows.values() for r in w.rows)
