"""The persona fields a long conversation draws on (contract section 14): lorebook, greetings, example
messages and scenario: stored, versioned, validated by name, and hidden from those who may not see prompts."""

from __future__ import annotations

import pytest

from tests.conftest import persona_body

BASE = "/api/v1/chat/personas"

BOOK = {
    "scan_depth": 3,
    "token_budget": 600,
    "entries": [
        {"keys": ["dragon", "wyrm"], "content": "Dragons sleep under the northern hills.", "insertion_order": 5},
        {"id": "tavern", "keys": ["tavern"], "content": "The Crooked Flagon serves cider.", "group": "places"},
        {"constant": True, "content": "It is the year of the long winter.", "position": "at_depth", "depth": 2},
    ],
}
CARD_FIELDS = {
    "lorebook": BOOK,
    "greetings": ["Welcome, traveller.", "Oh, it's you again."],
    "example_messages": [
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "Only a keeper of old stories."},
    ],
    "scenario": "A snowed-in inn at the edge of the world.",
}


async def create(client, account, **fields):
    r = await client.post(BASE, json=persona_body(**fields), headers=account.headers)
    assert r.status_code == 201, r.text
    return r.json()["persona"]


async def test_the_fields_are_stored_and_every_entry_gets_an_id(client, alice):
    persona = await create(client, alice, visibility="public", **CARD_FIELDS)
    entries = persona["lorebook"]["entries"]
    ids = [e["id"] for e in entries]
    assert ids[1] == "tavern" and all(ids) and len(set(ids)) == 3
    assert entries[0]["whole_words"] is True and entries[0]["selective_logic"] == "and_any"  # defaults filled
    assert entries[2]["position"] == "at_depth" and entries[2]["depth"] == 2
    assert persona["lorebook"]["scan_depth"] == 3 and persona["lorebook"]["recursive"] is False

    again = (await client.get(f"{BASE}/{persona['id']}", headers=alice.headers)).json()["persona"]
    assert again["lorebook"] == persona["lorebook"]
    assert again["greetings"] == CARD_FIELDS["greetings"]
    assert again["example_messages"] == CARD_FIELDS["example_messages"]
    assert again["scenario"] == CARD_FIELDS["scenario"]

    # An edit that keeps the ids keeps them; the entry added without one gets its own.
    book = {**again["lorebook"], "entries": [*again["lorebook"]["entries"], {"keys": ["moon"], "content": "x"}]}
    r = await client.put(f"{BASE}/{persona['id']}", json={"lorebook": book}, headers=alice.headers)
    assert r.status_code == 200, r.text
    edited = r.json()["persona"]["lorebook"]["entries"]
    assert [e["id"] for e in edited[:3]] == ids and edited[3]["id"] not in ids


async def test_others_see_greetings_but_not_what_goes_unseen_into_the_prompt(client, alice, bob, admin):
    persona = await create(client, alice, visibility="public", **CARD_FIELDS)
    seen = (await client.get(f"{BASE}/{persona['id']}", headers=bob.headers)).json()["persona"]
    assert seen["system_prompt"] is None and seen["lorebook"] is None
    assert seen["example_messages"] == [] and seen["scenario"] is None
    assert seen["greetings"] == CARD_FIELDS["greetings"]
    listed = (await client.get(BASE, headers=bob.headers, params={"limit": 200})).json()["personas"]
    assert next(p for p in listed if p["id"] == persona["id"])["lorebook"] is None
    as_admin = (await client.get(f"{BASE}/{persona['id']}", headers=admin.headers)).json()["persona"]
    assert as_admin["lorebook"]["entries"][1]["id"] == "tavern"


async def test_a_restore_brings_the_lorebook_and_card_fields_back(client, alice):
    persona = await create(client, alice, **CARD_FIELDS)
    r = await client.put(
        f"{BASE}/{persona['id']}",
        json={"lorebook": None, "greetings": [], "example_messages": [], "scenario": None},
        headers=alice.headers,
    )
    assert r.status_code == 200 and r.json()["persona"]["lorebook"] is None
    r = await client.post(f"{BASE}/{persona['id']}/versions/1/restore", headers=alice.headers)
    assert r.status_code == 200, r.text
    restored = r.json()["persona"]
    assert restored["lorebook"] == persona["lorebook"]
    assert restored["greetings"] == persona["greetings"]
    assert restored["example_messages"] == persona["example_messages"]
    assert restored["scenario"] == persona["scenario"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        (
            {"lorebook": {"entries": [{"id": "a", "content": "x"}, {"id": "a", "content": "y"}]}},
            "lorebook.entries[1].id",
        ),
        ({"lorebook": {"entries": [{"content": "x", "selective_logic": "or"}]}}, "lorebook.entries[0].selective_logic"),
        ({"lorebook": {"entries": [{"content": "x", "keys": ["k"] * 101}]}}, "lorebook.entries[0].keys"),
        ({"lorebook": {"entries": [{"content": "x" * 20_001}]}}, "lorebook.entries[0].content"),
        ({"lorebook": {"entries": [{"content": "x", "probability": 101}]}}, "lorebook.entries[0].probability"),
        ({"lorebook": {"entries": [{"content": "x", "colour": "red"}]}}, "lorebook.entries[0].colour"),
        ({"lorebook": {"entries": [{"content": "x\u0000"}]}}, "lorebook.entries[0].content"),
        ({"greetings": [""]}, "greetings[0]"),
        ({"example_messages": [{"role": "narrator", "content": "x"}]}, "example_messages[0].role"),
        ({"scenario": "x" * 20_001}, "scenario"),
    ],
)
async def test_bad_card_fields_name_the_field_and_store_nothing(client, alice, resources, fields, field):
    before = await resources.pool.fetchval("SELECT count(*) FROM personas")
    r = await client.post(BASE, json=persona_body(**fields), headers=alice.headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == field
    assert await resources.pool.fetchval("SELECT count(*) FROM personas") == before


async def test_too_many_entries_is_a_400(client, alice):
    book = {"entries": [{"content": "x"} for _ in range(2001)]}
    r = await client.post(BASE, json=persona_body(lorebook=book), headers=alice.headers)
    assert r.status_code == 400 and r.json()["error"]["field"] == "lorebook.entries"
