"""Contract section 14: lorebooks. The engine's rules one by one, then lore in real turns over PostgreSQL and the
real SDKs: where it is placed, that the persona's cached prefix never moves with it, its timed effects across
stored turns, render's explanation, regex keys under a time budget, and test suites' lore expectations."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import msgspec
import openai
import pytest

from personas.lore import LoreResult, activate, index_for
from personas.models import Lorebook
from tests.conftest import persona_body

CHAT = "/api/v1/chat"
PERSONAS = "/api/v1/chat/personas"
_keys = itertools.count()


def book(*entries: dict[str, Any], **settings: Any) -> Lorebook:
    numbered = [{"id": f"e{n}", **entry} for n, entry in enumerate(entries)]
    return msgspec.convert({"entries": numbered, **settings}, Lorebook)


async def decide(lorebook: Lorebook, *texts: str, **options: Any) -> LoreResult:
    """What ``lorebook`` gives a turn whose latest message is ``texts[0]`` (the ones before it follow)."""
    options = {"turn": 1, "seed": "seed", "budget": 10_000, **options}
    index = index_for(("test", next(_keys), None), lorebook)
    return await activate(index, list(texts), count=lambda text: len(text.split()), tokenizer="words", **options)


def reasons(result: LoreResult) -> dict[str, tuple[bool, str]]:
    return {d.id: (d.activated, d.reason) for d in result.decisions}


# The engine -------------------------------------------------------------------------------------------


async def test_keys_match_as_whole_words_regardless_of_case_unless_the_entry_says_otherwise():
    lore = book(
        {"keys": ["dragon"], "content": "Dragons breathe fire."},
        {"keys": ["Castle"], "case_sensitive": True, "content": "The castle."},
        {"keys": ["fly"], "content": "Flight."},
        {"keys": ["fly"], "whole_words": False, "content": "Anything flying."},
        {"keys": ["sea serpent"], "content": "Serpents."},
    )
    result = await decide(lore, "A DRAGON over the castle, and a dragonfly; a Sea  Serpent? a sea serpent!")
    assert reasons(result) == {"e0": (True, "key"), "e3": (True, "key"), "e4": (True, "key")}
    assert result.ids == ["e0", "e3", "e4"]
    assert result.system == "Dragons breathe fire.\n\nAnything flying.\n\nSerpents."
    assert (await decide(lore, "The Castle gate")).ids == ["e1"]


@pytest.mark.parametrize(
    ("logic", "said", "activated"),
    [
        ("and_any", "dragon and gold", True),
        ("and_any", "dragon alone", False),
        ("and_all", "dragon, gold and silver", True),
        ("and_all", "dragon and gold", False),
        ("not_any", "dragon alone", True),
        ("not_any", "dragon and silver", False),
        ("not_all", "dragon and gold", True),
        ("not_all", "dragon, gold and silver", False),
    ],
)
async def test_secondary_keys_follow_the_four_logics(logic, said, activated):
    lore = book({"keys": ["dragon"], "secondary_keys": ["gold", "silver"], "selective_logic": logic, "content": "x"})
    result = await decide(lore, said)
    assert reasons(result) == {"e0": (activated, "key" if activated else "secondary_logic")}


async def test_the_scan_reaches_back_scan_depth_messages_and_an_entry_may_reach_further():
    lore = book(
        {"keys": ["harbour"], "content": "The harbour."},
        {"keys": ["harbour"], "content": "Deep harbour.", "extensions": {"scan_depth": 3}},
        scan_depth=1,
    )
    # The key is in the third message back: beyond the book's depth of 1, within the second entry's 3.
    result = await decide(lore, "latest", "one back", "the harbour, two back", "three back")
    assert result.ids == ["e1"]
    assert (await decide(lore, "latest", "the harbour, one back")).ids == ["e0", "e1"]
    assert (await decide(book({"keys": ["harbour"], "content": "x"}, scan_depth=0), "hi", "harbour")).ids == []


async def test_recursion_scans_activated_content_three_passes_at_most():
    chain = [{"keys": [f"k{n}"], "content": f"leads to k{n + 1}"} for n in range(6)]
    flat = await decide(book(*chain), "k0")
    assert flat.ids == ["e0"]
    deep = await decide(book(*chain, recursive=True), "k0")
    assert reasons(deep) == {
        "e0": (True, "key"),
        "e1": (True, "recursion"),
        "e2": (True, "recursion"),
        "e3": (True, "recursion"),
    }


async def test_probability_rolls_the_same_for_the_same_seed_and_differs_across_seeds():
    lore = book({"keys": ["coin"], "probability": 50, "content": "heads"})
    first = [bool((await decide(lore, "coin", seed=f"turn {n}")).ids) for n in range(200)]
    again = [bool((await decide(lore, "coin", seed=f"turn {n}")).ids) for n in range(200)]
    assert first == again
    assert 60 < sum(first) < 140  # a fair coin over 200 turns
    missed = next(n for n, hit in enumerate(first) if not hit)
    assert reasons(await decide(lore, "coin", seed=f"turn {missed}")) == {"e0": (False, "probability")}
    never = book({"keys": ["coin"], "probability": 0, "content": "never"})
    assert not any([(await decide(never, "coin", seed=str(n))).ids for n in range(20)])


async def test_of_a_group_the_highest_insertion_order_stays_then_the_lowest_id():
    lore = book(
        {"keys": ["weather"], "group": "sky", "insertion_order": 10, "content": "rain"},
        {"keys": ["weather"], "group": "sky", "insertion_order": 20, "content": "sun"},
        {"keys": ["weather"], "group": "sky", "insertion_order": 20, "content": "snow"},
        {"keys": ["weather"], "group": "ground", "content": "mud"},
    )
    result = await decide(lore, "what weather today?")
    assert reasons(result) == {
        "e0": (False, "group"),
        "e1": (True, "key"),
        "e2": (False, "group"),
        "e3": (True, "key"),
    }


async def test_the_budget_takes_constant_entries_first_then_the_highest_insertion_order_and_sends_ascending():
    lore = book(
        {"constant": True, "insertion_order": 1, "content": "always here, four words"},
        {"keys": ["map"], "insertion_order": 50, "content": "three words here"},
        {"keys": ["map"], "insertion_order": 90, "content": "two words"},
        {"keys": ["map"], "insertion_order": 70, "content": "this one does not fit"},
    )
    result = await decide(lore, "show me the map", budget=10)
    assert reasons(result) == {
        "e0": (True, "constant"),
        "e1": (False, "budget"),
        "e2": (True, "key"),
        "e3": (False, "budget"),
    }
    assert result.ids == ["e0", "e2"] and result.tokens == 6
    assert [d.tokens for d in result.decisions] == [4, 3, 2, 5]


async def test_entries_at_a_depth_are_messages_of_their_role():
    lore = book(
        {"keys": ["oath"], "position": "at_depth", "depth": 2, "role": "assistant", "content": "I remember the oath."},
        {"keys": ["oath"], "content": "Oaths bind."},
    )
    result = await decide(lore, "the oath")
    assert result.system == "Oaths bind." and result.messages == [(2, "assistant", "I remember the oath.")]
    assert result.tokens == 2 + 4 + 4  # the message's own overhead counts


async def test_sticky_cooldown_and_delay_count_user_turns_with_state_carried_between_them():
    lore = book(
        {"keys": ["storm"], "sticky": 2, "cooldown": 1, "content": "A storm rages."},
        {"keys": ["storm"], "delay": 3, "content": "Late lore."},
    )
    said = ["storm", "calm", "calm", "storm", "storm", "calm"]
    seen = []
    state: dict[str, list[int]] | None = {}
    for turn, text in enumerate(said, start=1):
        result = await decide(lore, text, turn=turn, state=state)
        seen.append(reasons(result))
        state = result.state
    assert [s.get("e0") for s in seen] == [
        (True, "key"),  # turn 1: the key; sticky for 2 more turns
        (True, "sticky"),
        (True, "sticky"),
        (False, "cooldown"),  # turn 4: the key again, but it cools down for 1 turn after its effect ended
        (True, "key"),
        (True, "sticky"),
    ]
    assert [s.get("e1") for s in seen] == [(False, "delay"), None, None, (True, "key"), (True, "key"), None]


async def test_an_entry_without_an_id_keeps_its_timed_effects_by_its_number():
    # A book handed to the engine with entries without ids (routes give every entry one first): they are named
    # by their number, and their sticky and cooldown are read back by the same name they were written under.
    lore = msgspec.convert(
        {
            "entries": [
                {"keys": ["ash"], "content": "Ash."},
                {"keys": ["storm"], "sticky": 1, "cooldown": 1, "content": "A storm."},
            ]
        },
        Lorebook,
    )
    index = index_for(("test", next(_keys), None), lore)
    state: dict[str, list[int]] | None = {}
    seen = []
    for turn, text in enumerate(["storm", "calm", "storm"], start=1):
        result = await activate(
            index,
            [text],
            count=lambda t: len(t.split()),
            tokenizer="words",
            turn=turn,
            seed="s",
            budget=100,
            state=state,
        )
        seen.append(reasons(result).get("1"))
        state = result.state
    assert seen == [(True, "key"), (True, "sticky"), (False, "cooldown")]


async def test_a_regex_key_matches_with_its_flags_and_one_that_runs_too_long_is_a_warning():
    lore = book(
        {"keys": ["/sw(o|a)rds?/"], "content": "Blades."},
        {"keys": ["blue+"], "use_regex": True, "case_sensitive": True, "content": "Blue."},
        {"keys": ["/(a|aa)+$/"], "content": "Never."},
    )
    result = await decide(lore, "SWORDS and bluee")
    assert result.ids == ["e0", "e1"] and not result.warnings
    slow = await decide(lore, "a" * 40 + "!")
    assert slow.ids == [] and len(slow.warnings) == 1
    assert "'/(a|aa)+$/'" in slow.warnings[0] and "took more than" in slow.warnings[0]


async def test_one_automaton_pass_serves_many_entries():
    entries = [{"keys": [f"word{n}", f"other{n}"], "content": f"lore {n}"} for n in range(500)]
    lore = book(*entries)
    text = " ".join(f"word{n}" for n in range(0, 500, 5))
    result = await decide(lore, text)
    # Sent in insertion order (all equal here), then by id.
    assert result.ids == sorted(f"e{n}" for n in range(0, 500, 5))


# In real turns ----------------------------------------------------------------------------------------


async def make_persona(http, account, **fields):
    r = await http.post(PERSONAS, json=persona_body(**fields), headers=account.headers)
    assert r.status_code == 201, r.text
    return r.json()["persona"]


LOREBOOK = {
    "scan_depth": 2,
    "entries": [
        {"id": "river", "name": "The river", "keys": ["river"], "content": "The river Ash runs black at night."},
        {"id": "world", "constant": True, "content": "This world is called Aria."},
        {
            "id": "whisper",
            "keys": ["secret"],
            "position": "at_depth",
            "depth": 1,
            "role": "assistant",
            "content": "(I once told {{user}} a secret.)",
        },
    ],
}


async def test_lore_joins_the_turn_after_the_personas_prompt_whose_prefix_never_moves(llm_client, fake_llm, alice):
    persona = await make_persona(
        llm_client,
        alice,
        model_settings={"provider": "openai"},
        lorebook=LOREBOOK,
        personality_traits={},
        capabilities={},
    )
    fake_llm.script(chunks=("ok",))
    r = await llm_client.post(CHAT, json={"message": "hello", "persona_id": persona["id"]}, headers=alice.headers)
    assert r.status_code == 200, r.text
    plain = fake_llm.chat_requests()[-1].body["messages"]
    fake_llm.script(chunks=("ok",))
    body = {"message": "Tell me the river's secret.", "persona_id": persona["id"]}
    r = await llm_client.post(CHAT, json=body, headers=alice.headers)
    assert r.status_code == 200, r.text
    lored = fake_llm.chat_requests()[-1].body["messages"]

    prompt = f"You are {persona['name']}, talking with Alice."
    # Without a key: the persona's prompt, then the constant entry as one section after it.
    assert plain[0] == {"role": "system", "content": prompt + "\n\nThis world is called Aria."}
    # With keys: the same prompt, byte for byte, then the entries in insertion order; the at-depth entry one
    # message before the latest, its template filled.
    assert lored[0]["content"].startswith(prompt + "\n\n")
    assert lored[0]["content"] == prompt + "\n\nThe river Ash runs black at night.\n\nThis world is called Aria."
    assert lored[-2:] == [
        {"role": "assistant", "content": "(I once told Alice a secret.)"},
        {"role": "user", "content": "Tell me the river's secret."},
    ]
    # The stored answer keeps what it was given.
    shown = await llm_client.get(f"{CHAT}/conversations/{r.json()['conversation_id']}", headers=alice.headers)
    answer = shown.json()["messages"][-1]
    assert sorted(answer["context"]["lore_ids"]) == ["river", "whisper", "world"]
    lore = [s for s in answer["context"]["sections"] if s["kind"] == "lore"]
    assert len(lore) == 1 and lore[0]["items"] == 3 and lore[0]["tokens"] > 0


async def test_timed_effects_hold_across_a_stored_conversations_turns(llm_client, fake_llm, alice):
    lorebook = {
        "scan_depth": 0,  # the latest message only, so an earlier mention does not set it off again
        "entries": [
            {"id": "storm", "keys": ["storm"], "sticky": 1, "cooldown": 1, "content": "A storm rages."},
            {"id": "late", "constant": True, "delay": 3, "content": "Night has fallen."},
        ],
    }
    persona = await make_persona(llm_client, alice, model_settings={"provider": "openai"}, lorebook=lorebook)
    conversation_id = None
    systems = []
    for text in ("a storm comes", "quiet now", "storm again", "storm, still", "quiet"):
        fake_llm.script(chunks=("ok",))
        body: dict[str, Any] = {"message": text, "persona_id": persona["id"]}
        if conversation_id:
            body["conversation_id"] = conversation_id
        r = await llm_client.post(CHAT, json=body, headers=alice.headers)
        assert r.status_code == 200, r.text
        conversation_id = r.json()["conversation_id"]
        systems.append(fake_llm.chat_requests()[-1].body["messages"][0]["content"])
    storm = ["A storm rages." in s for s in systems]
    late = ["Night has fallen." in s for s in systems]
    # Turn 1 the key, turn 2 sticky, turn 3 cooling down despite the key, turn 4 the key, turn 5 sticky.
    assert storm == [True, True, False, True, True]
    assert late == [False, False, True, True, True]

    # Render of the next turn explains it the way the turn will decide.
    r = await llm_client.post(
        f"{PERSONAS}/{persona['id']}/render",
        json={"message": "storm?", "conversation_id": conversation_id},
        headers=alice.headers,
    )
    assert r.status_code == 200, r.text
    decisions = {d["id"]: (d["activated"], d["reason"]) for d in r.json()["lore"]}
    assert decisions == {"storm": (False, "cooldown"), "late": (True, "constant")}


async def test_a_draft_rendered_twice_decides_the_same_way_though_its_new_entries_have_no_ids(llm_client, alice):
    # The playground sends a new entry without an id until it is saved: the probability rolls of a draft's
    # render must not change from one render of the same message to the next.
    entries = [{"keys": ["coin"], "probability": 50, "content": f"Side {n}."} for n in range(24)]
    draft = persona_body(lorebook={"entries": entries})
    seen = []
    for _ in range(2):
        r = await llm_client.post(
            f"{PERSONAS}/render", json={"persona": draft, "message": "I flip a coin."}, headers=alice.headers
        )
        assert r.status_code == 200, r.text
        seen.append([(d["id"], d["activated"], d["reason"]) for d in r.json()["lore"]])
    assert seen[0] == seen[1]
    assert {reason for _, _, reason in seen[0]} == {"key", "probability"}  # both ways, so the roll was made


async def test_render_explains_every_entry_considered_and_names_a_slow_regex(llm_client, alice):
    lorebook = {
        "token_budget": 12,
        "entries": [
            {"id": "a", "name": "Apples", "keys": ["apple"], "content": "Apples grow on the hill."},
            {"id": "b", "keys": ["apple"], "secondary_keys": ["pear"], "selective_logic": "and_all", "content": "x"},
            {"id": "c", "keys": ["apple"], "insertion_order": 1, "content": "word " * 40},
            {"id": "slow", "keys": ["/(x|xx)+$/"], "content": "never"},
            {"id": "quiet", "keys": ["banana"], "content": "not considered"},
        ],
    }
    persona = await make_persona(llm_client, alice, model_settings={"provider": "echo"}, lorebook=lorebook)
    r = await llm_client.post(
        f"{PERSONAS}/{persona['id']}/render", json={"message": "apple " + "x" * 40 + "!"}, headers=alice.headers
    )
    assert r.status_code == 200, r.text
    rendered = r.json()
    lore = {d["id"]: d for d in rendered["lore"]}
    assert set(lore) == {"a", "b", "c"}
    assert lore["a"] == {
        "id": "a",
        "name": "Apples",
        "activated": True,
        "reason": "key",
        "matched": ["apple"],
        "tokens": lore["a"]["tokens"],
    }
    assert 0 < lore["a"]["tokens"] <= 12
    assert (lore["b"]["activated"], lore["b"]["reason"]) == (False, "secondary_logic")
    assert (lore["c"]["activated"], lore["c"]["reason"]) == (False, "budget")
    assert any("'/(x|xx)+$/'" in w for w in rendered["warnings"])
    assert "Apples grow on the hill." in rendered["system_prompt"]
    assert rendered["context"]["lore_ids"] == ["a"]


async def test_a_regex_key_that_cannot_be_used_is_refused_when_saved(llm_client, alice):
    lorebook = {"entries": [{"keys": ["fine", "/(unclosed/"], "content": "x"}]}
    r = await llm_client.post(PERSONAS, json=persona_body(lorebook=lorebook), headers=alice.headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == "lorebook.entries[0].keys[1]"
    persona = await make_persona(llm_client, alice)
    big = {"entries": [{"keys": ["x"], "secondary_keys": ["/a{5000}/"], "use_regex": True, "content": "x"}]}
    r = await llm_client.put(f"{PERSONAS}/{persona['id']}", json={"lorebook": big}, headers=alice.headers)
    assert r.status_code == 400 and r.json()["error"]["field"] == "lorebook.entries[0].secondary_keys[0]", r.text
    r = await llm_client.get(f"{PERSONAS}/{persona['id']}", headers=alice.headers)
    assert r.json()["persona"]["lorebook"] is None


async def test_a_v1_turn_scans_the_messages_the_client_sent(llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice, model_settings={"provider": "openai"}, lorebook=LOREBOOK)
    sdk = openai.AsyncOpenAI(base_url=str(llm_client.base_url) + "/v1", api_key=alice.key, max_retries=0)
    fake_llm.script(chunks=("ok",))
    messages: list[Any] = [
        {"role": "user", "content": "Where does the river go?"},
        {"role": "assistant", "content": "North."},
        {"role": "user", "content": "And then?"},
    ]
    answer = await sdk.chat.completions.create(model=f"persona/{persona['name']}", messages=messages)
    assert answer.choices[0].message.content == "ok"
    system = fake_llm.chat_requests()[-1].body["messages"][0]["content"]
    assert system.endswith("The river Ash runs black at night.\n\nThis world is called Aria.")


async def test_suites_expect_lore_to_be_activated_or_not(llm_client, alice):
    persona = await make_persona(llm_client, alice, model_settings={"provider": "echo"}, lorebook=LOREBOOK)
    tests = [
        {"name": "river lore", "message": "the river", "expect": {"lore_activated": ["The river", "world"]}},
        {"name": "no whisper", "message": "the river", "expect": {"lore_not_activated": ["whisper"]}},
        {"name": "wrong", "message": "hello", "expect": {"lore_activated": ["river"], "lore_not_activated": ["world"]}},
    ]
    for test in tests:
        r = await llm_client.post(f"{PERSONAS}/{persona['id']}/tests", json=test, headers=alice.headers)
        assert r.status_code == 201, r.text
    r = await llm_client.post(f"{PERSONAS}/{persona['id']}/tests/run", json={}, headers=alice.headers)
    assert r.status_code == 200, r.text
    results = {t["name"]: t for t in r.json()["results"]}
    assert results["river lore"]["passed"] and results["no whisper"]["passed"]
    assert results["wrong"]["failures"] == [
        "expected lore entry 'river' to be activated; no key of it occurred",
        "expected lore entry 'world' not to be activated; it was (constant)",
    ]
    await asyncio.sleep(0)


async def test_entries_decided_by_their_keys_alone_are_decided_as_the_full_rules_decide_them():
    """The short path for entries without secondary keys, probability, delay, timed effects or constancy gives
    what the full rules give, on random books, chats and timed-effect states."""
    import dataclasses
    import random

    rng = random.Random(11)
    words = ["harbour", "dawn", "gull", "net", "boat", "tide", "pilot", "lamp"]
    compared = short_path = 0
    for round_ in range(60):
        entries = []
        for n in range(rng.randrange(1, 25)):
            entry: dict[str, Any] = {"id": f"e{n}", "keys": rng.sample(words, rng.randrange(1, 3)), "content": f"c{n}"}
            if rng.random() < 0.4:
                feature = rng.choice(["secondary", "probability", "delay", "sticky", "cooldown", "constant", "off"])
                entry |= {
                    "secondary": {"secondary_keys": [rng.choice(words)]},
                    "probability": {"probability": rng.randrange(0, 100)},
                    "delay": {"delay": rng.randrange(1, 4)},
                    "sticky": {"sticky": 2},
                    "cooldown": {"cooldown": 2},
                    "constant": {"constant": True},
                    "off": {"enabled": False},
                }[feature]
            entry["group"] = rng.choice([None, None, "g"])
            if rng.random() < 0.3:  # its own scan depth
                entry["extensions"] = {"scan_depth": rng.randrange(0, 3)}
            entries.append(entry)
        book = msgspec.convert(
            {"entries": entries, "scan_depth": rng.randrange(0, 3), "recursive": rng.random() < 0.3}, Lorebook
        )
        index = index_for(("differential", round_), book)
        full = dataclasses.replace(index, plain=frozenset())
        short_path += len(index.plain)
        state = {f"e{n}": [rng.randrange(0, 6), rng.randrange(0, 8)] for n in rng.sample(range(30), 3)}
        for turn in range(1, 6):
            texts = [" ".join(rng.choices(words + ["x"] * 8, k=6)) for _ in range(3)]
            args = {"turn": turn, "seed": f"s{turn}", "budget": 40, "count": len, "tokenizer": "chars"}
            for given in (None, state):
                short = await activate(index, texts, state=given, **args)
                whole = await activate(full, texts, state=given, **args)
                assert (short.ids, short.system, short.state, short.decisions) == (
                    whole.ids,
                    whole.system,
                    whole.state,
                    whole.decisions,
                )
                compared += bool(short.ids)
    assert compared > 100 and short_path > 300  # most entries here are on the short path
