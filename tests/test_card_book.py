"""Contract section 14, cards in full: a card's character book, greetings, example dialogue and scenario as
persona fields, and back into a card with every field the card had."""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import pytest

from core.errors import BadRequest
from personas.card_book import CARD_DECORATORS, CARD_FIELDS
from personas.cards import parse_examples, persona_to_card
from personas.documents import read_document
from personas.models import ExampleMessage, Lorebook, LoreEntry, Persona
from personas.service import draft_persona
from tests.test_cards import v2_card, v3_card


def persona_of(card: dict[str, Any]) -> Persona:
    return draft_persona(read_document(card).draft, None)


def st_extensions(**fields: Any) -> dict[str, Any]:
    """An entry's ``extensions`` as SillyTavern exports them."""
    return {
        "position": 0,
        "exclude_recursion": False,
        "display_index": 0,
        "probability": 100,
        "useProbability": True,
        "depth": 4,
        "selectiveLogic": 0,
        "group": "",
        "group_override": False,
        "group_weight": 100,
        "prevent_recursion": False,
        "delay_until_recursion": False,
        "scan_depth": None,
        "match_whole_words": None,
        "use_group_scoring": False,
        "case_sensitive": None,
        "automation_id": "",
        "role": 0,
        "vectorized": False,
        "sticky": 0,
        "cooldown": 0,
        "delay": 0,
        **fields,
    }


def st_entry(entry_id: int, keys: list[str], content: str, **fields: Any) -> dict[str, Any]:
    extensions = fields.pop("extensions", {})
    return {
        "id": entry_id,
        "keys": keys,
        "secondary_keys": [],
        "comment": f"entry {entry_id}",
        "content": content,
        "constant": False,
        "selective": True,
        "insertion_order": 100,
        "enabled": True,
        "position": "before_char",
        "use_regex": True,
        "extensions": st_extensions(**extensions),
        **fields,
    }


def st_book() -> dict[str, Any]:
    """A character book as SillyTavern writes one into a V2 card."""
    return {
        "name": "Glade lore",
        "description": "What the forest knows.",
        "scan_depth": 3,
        "token_budget": 600,
        "recursive_scanning": True,
        "extensions": {"world_source": "glade.json"},
        "entries": [
            st_entry(0, ["glade", "clearing"], "The glade is a clearing of silver birches."),
            st_entry(
                1,
                ["wolves"],
                "Shadow wolves hunt at night.",
                secondary_keys=["night", "dark"],
                insertion_order=250,
                position="after_char",
                extensions={
                    "position": 4,
                    "depth": 2,
                    "role": 1,
                    "selectiveLogic": 3,
                    "probability": 40,
                    "group": "danger",
                    "sticky": 2,
                    "cooldown": 3,
                    "delay": 1,
                    "match_whole_words": False,
                    "case_sensitive": True,
                    "scan_depth": 5,
                },
            ),
            st_entry(2, ["/ama(ra|ryllis)/i"], "Amaryllis blooms only here.", priority=7, constant=True),
            st_entry(
                3,
                ["seraphina"],
                "Her wings are hidden.",
                secondary_keys=["wings"],
                selective=False,
                enabled=False,
                extensions={"probability": 10, "useProbability": False, "position": 2},
            ),
        ],
    }


def v3_book() -> dict[str, Any]:
    """A V3 book: decorators in the content, ``use_regex``, string ids, fields we do not know."""
    return {
        "name": "Sky lore",
        "entries": [
            {
                "id": "storm",
                "keys": ["storm", "Dr. Thunder"],
                "content": "@@depth 1\n@@role assistant\n@@activate_only_after 3\n@@scan_depth 6\nThunder rolls in.",
                "extensions": {},
                "enabled": True,
                "insertion_order": 10,
                "use_regex": False,
                "name": "Storms",
            },
            {
                "keys": ["moon"],
                "content": "@@constant\n@@@depth 2\nThe moon is full tonight.",
                "extensions": {"x_custom": {"a": 1}},
                "enabled": True,
                "insertion_order": 20,
                "use_regex": True,
                "made_up_field": [1, 2],
            },
            {
                "keys": ["secret"],
                "content": "@@dont_activate\nNever said aloud.",
                "extensions": {},
                "enabled": True,
                "insertion_order": 30,
            },
        ],
    }


# Import --------------------------------------------------------------------------------------------------


def test_a_sillytavern_book_becomes_a_lorebook():
    book = persona_of(v2_card(character_book=st_book())).lorebook
    assert book is not None
    assert (book.scan_depth, book.token_budget, book.recursive) == (3, 600, True)
    glade, wolves, flower, wings = book.entries
    assert [e.id for e in book.entries] == ["0", "1", "2", "3"]

    assert glade.keys == ["glade", "clearing"] and glade.comment == "entry 0"
    assert (glade.position, glade.role, glade.probability, glade.group) == ("system", "system", 100, None)
    assert glade.whole_words is True and glade.case_sensitive is False  # ST's null: our defaults
    assert glade.content == "The glade is a clearing of silver birches."

    assert wolves.secondary_keys == ["night", "dark"] and wolves.selective_logic == "and_all"
    assert (wolves.position, wolves.depth, wolves.role) == ("at_depth", 2, "user")
    assert (wolves.probability, wolves.group, wolves.insertion_order) == (40, "danger", 250)
    assert (wolves.sticky, wolves.cooldown, wolves.delay) == (2, 3, 1)
    assert wolves.whole_words is False and wolves.case_sensitive is True
    # What has no field of ours stays with the entry.
    assert wolves.extensions["scan_depth"] == 5
    assert wolves.extensions[CARD_FIELDS]["position"] == "after_char"

    assert flower.use_regex is True and flower.keys == ["/ama(ra|ryllis)/i"] and flower.constant is True
    assert flower.extensions[CARD_FIELDS]["priority"] == 7

    # `selective: false` turns the secondary keys off; probability without useProbability is not rolled.
    assert wings.secondary_keys == [] and wings.enabled is False and wings.probability == 100
    assert wings.extensions[CARD_FIELDS]["secondary_keys"] == ["wings"]


def test_v3_decorators_set_fields_and_leave_the_content():
    book = persona_of(v3_card(character_book=v3_book())).lorebook
    assert book is not None
    storm, moon, secret = book.entries
    assert storm.id == "storm" and storm.name == "Storms"
    assert (storm.position, storm.depth, storm.role, storm.delay) == ("at_depth", 1, "assistant", 3)
    assert storm.content == "Thunder rolls in."
    assert storm.extensions[CARD_DECORATORS][-1] == "@@scan_depth 6"
    assert storm.use_regex is False and storm.keys == ["storm", "Dr. Thunder"]

    assert moon.constant is True and moon.content == "The moon is full tonight."
    assert moon.position == "system"  # `@@@` is a fallback for readers without the decorator before it
    assert moon.extensions["x_custom"] == {"a": 1}
    assert moon.extensions[CARD_FIELDS]["made_up_field"] == [1, 2]
    assert moon.id not in ("storm", None) and moon.use_regex is True

    assert secret.enabled is False and secret.content == "Never said aloud."


def test_a_slashed_key_makes_the_entry_regex_and_keeps_plain_keys_literal():
    entry = {"keys": ["/drag(on|in)s?/i", "Dr. Who"], "content": "c", "extensions": {}, "enabled": True}
    book = persona_of(v2_card(character_book={"entries": [entry]})).lorebook
    assert book is not None
    (mapped,) = book.entries
    assert mapped.use_regex is True
    assert mapped.keys == ["/drag(on|in)s?/i", r"Dr\.\ Who"]


# Round trips ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "book"), [(v2_card, st_book), (v3_card, v3_book)])
def test_card_persona_card_gives_back_every_entry_and_field(make, book):
    card = make(character_book=book())
    original = copy.deepcopy(card["data"]["character_book"])
    exported = persona_to_card(persona_of(card))["data"]["character_book"]
    assert {k: v for k, v in exported.items() if k != "entries"} == {
        k: v for k, v in original.items() if k != "entries"
    }
    assert len(exported["entries"]) == len(original["entries"])
    for back, before in zip(exported["entries"], original["entries"], strict=True):
        assert back == before


def test_an_edited_entry_is_written_from_the_persona_and_the_others_stay_as_they_were():
    card = v2_card(character_book=st_book())
    original = copy.deepcopy(card["data"]["character_book"]["entries"])
    persona = persona_of(card)
    assert persona.lorebook is not None
    entries = list(persona.lorebook.entries)
    entries[1] = msgspec.structs.replace(entries[1], depth=6, role="assistant", probability=70, content="Fewer wolves.")
    persona = msgspec.structs.replace(persona, lorebook=msgspec.structs.replace(persona.lorebook, entries=entries))
    written = persona_to_card(persona)["data"]["character_book"]
    assert [written["entries"][i] for i in (0, 2, 3)] == [original[i] for i in (0, 2, 3)]

    wolves = written["entries"][1]
    assert wolves["content"] == "Fewer wolves." and wolves["id"] == 1
    assert wolves["extensions"]["depth"] == 6 and wolves["extensions"]["role"] == 2
    assert wolves["extensions"]["probability"] == 70 and wolves["extensions"]["position"] == 4
    # What the card had and we have no field for comes back with it.
    assert wolves["extensions"]["scan_depth"] == 5 and wolves["extensions"]["group_weight"] == 100
    assert wolves["position"] == "after_char" and wolves["comment"] == "entry 1"
    assert CARD_FIELDS not in wolves["extensions"]

    # Read again, the edited entry is what the persona said.
    again = persona_of(msgspec.json.decode(msgspec.json.encode(persona_to_card(persona))))
    assert again.lorebook is not None
    assert again.lorebook.entries[1].depth == 6 and again.lorebook.entries[1].role == "assistant"
    assert again.lorebook.entries[1].content == "Fewer wolves."


def test_edited_decorated_entry_keeps_its_decorators_in_step():
    card = v3_card(character_book=v3_book())
    persona = persona_of(card)
    assert persona.lorebook is not None
    storm = msgspec.structs.replace(persona.lorebook.entries[0], depth=9, delay=0, content="Rain.")
    book = msgspec.structs.replace(persona.lorebook, entries=[storm, *persona.lorebook.entries[1:]])
    written = persona_to_card(msgspec.structs.replace(persona, lorebook=book))["data"]["character_book"]
    assert written["entries"][0]["content"] == "@@depth 9\n@@role assistant\n@@scan_depth 6\nRain."
    assert written["entries"][0]["id"] == "storm" and written["entries"][0]["use_regex"] is False


def test_a_lorebook_of_our_own_goes_through_a_card_and_back():
    book = Lorebook(
        scan_depth=5,
        token_budget=300,
        recursive=True,
        entries=[
            LoreEntry(id="a", keys=["harbour"], content="Ships dock at dawn.", group="sea", sticky=1),
            LoreEntry(
                id="b",
                name="Lighthouse",
                keys=["light(house)?"],
                use_regex=True,
                secondary_keys=["night"],
                selective_logic="not_any",
                position="at_depth",
                depth=0,
                role="user",
                probability=55,
                whole_words=False,
                content="The lamp turns.",
            ),
        ],
    )
    persona = msgspec.structs.replace(persona_of(v2_card()), lorebook=book, extensions={})
    card = msgspec.json.decode(msgspec.json.encode(persona_to_card(persona)))
    assert card["data"]["character_book"]["entries"][1]["keys"] == ["/light(house)?/i"]
    back = persona_of(card).lorebook
    assert back is not None
    assert (back.scan_depth, back.token_budget, back.recursive) == (5, 300, True)
    for ours, again in zip(book.entries, back.entries, strict=True):
        fields = ("id", "name", "selective_logic", "content", "group", "sticky", "position")
        fields += ("depth", "role", "probability", "whole_words", "use_regex", "case_sensitive", "enabled")
        assert {f: getattr(again, f) for f in fields} == {f: getattr(ours, f) for f in fields}
    # The same patterns, written as V2 readers (SillyTavern) take a key for one.
    assert back.entries[0].keys == ["harbour"]
    assert (back.entries[1].keys, back.entries[1].secondary_keys) == (["/light(house)?/i"], ["/night/i"])


def test_a_persona_without_its_lorebook_exports_no_book():
    persona = msgspec.structs.replace(persona_of(v2_card(character_book=st_book())), lorebook=None)
    assert "character_book" not in persona_to_card(persona)["data"]


def test_an_oversized_book_is_refused_naming_the_field():
    entries = [{"keys": ["k"], "content": "c"}] * 2001
    with pytest.raises(BadRequest) as caught:
        persona_of(v2_card(character_book={"entries": entries}))
    assert caught.value.field == "lorebook.entries"
    with pytest.raises(BadRequest) as caught:
        persona_of(v2_card(character_book={"entries": ["not an entry"]}))
    assert caught.value.field == "data.character_book.entries[0]"


# Greetings, examples, scenario -----------------------------------------------------------------------------


def test_example_dialogue_is_parsed_as_sillytavern_writes_it():
    text = (
        "A quiet morning.\n"
        "<START>\n{{user}}: Hello?\n<BOT>: *looks up*\nOh! A visitor.\n{{char}}: Sit, please.\n"
        "<START>\r\n<USER>: Who made you?\r\nSeraphina: The forest did.\r\nLong ago. {{// note}}"
    )
    assert parse_examples(text, "Seraphina") == [
        {"role": "system", "content": "A quiet morning."},
        {"role": "user", "content": "Hello?"},
        {"role": "assistant", "content": "*looks up*\nOh! A visitor."},
        {"role": "assistant", "content": "Sit, please."},
        {"role": "user", "content": "Who made you?"},
        {"role": "assistant", "content": "The forest did.\nLong ago."},
    ]
    assert parse_examples("", "Seraphina") == []


def test_edited_greetings_examples_and_scenario_are_written_from_the_persona():
    persona = msgspec.structs.replace(
        persona_of(v2_card()),
        greetings=["Hello, {{user_name}}.", "*{{char}} bows*"],
        example_messages=[
            ExampleMessage(role="user", content="Tea?"),
            ExampleMessage(role="assistant", content="Gladly, {{user}}."),
        ],
        scenario="{{user_name}} visits {{persona_name}} at dusk.",
    )
    data = persona_to_card(persona)["data"]
    assert data["first_mes"] == "Hello, {{user}}." and data["alternate_greetings"] == ["*{{char}} bows*"]
    assert data["mes_example"] == "<START>\n{{user}}: Tea?\n{{char}}: Gladly, {{user}}."
    assert data["scenario"] == "{{user}} visits {{char}} at dusk."
    again = persona_of(persona_to_card(persona))
    assert again.greetings == ["Hello, {{user}}.", "*{{char}} bows*"]
    assert again.example_messages == persona.example_messages
    assert again.scenario == persona.scenario


def test_a_card_without_a_first_message_greets_with_its_alternates():
    persona = persona_of(v2_card(first_mes="", alternate_greetings=["", "*{{char}} waves*"], mes_example=""))
    assert persona.greetings == ["*{{char}} waves*"] and persona.example_messages == []


def test_sillytavern_plain_keys_stay_literal_under_its_use_regex():
    """SillyTavern writes `use_regex: true` on every entry; only its slashed keys are patterns."""
    book = persona_of(v2_card(character_book=st_book())).lorebook
    assert book is not None
    glade, _, flower, _ = book.entries
    assert glade.use_regex is False and glade.keys == ["glade", "clearing"]
    assert flower.use_regex is True
    # A V3 card's own `use_regex` makes every key a pattern, slashes or not.
    v3 = persona_of(v3_card(character_book=v3_book())).lorebook
    assert v3 is not None
    assert v3.entries[1].use_regex is True and v3.entries[1].keys == ["moon"]


def test_an_edited_regex_entry_is_written_as_its_reader_takes_patterns():
    card = v2_card(character_book=st_book())
    persona = persona_of(card)
    assert persona.lorebook is not None
    glade = msgspec.structs.replace(persona.lorebook.entries[0], use_regex=True, keys=["glade(s)?"])
    book = msgspec.structs.replace(persona.lorebook, entries=[glade, *persona.lorebook.entries[1:]])
    written = persona_to_card(msgspec.structs.replace(persona, lorebook=book))["data"]["character_book"]
    assert written["entries"][0]["keys"] == ["/glade(s)?/i"]  # SillyTavern: slashes make a pattern
    assert written["entries"][0]["use_regex"] is True  # as SillyTavern wrote it

    persona = persona_of(v3_card(character_book=v3_book()))
    assert persona.lorebook is not None
    storm = msgspec.structs.replace(persona.lorebook.entries[0], use_regex=True, keys=["storms?"])
    book = msgspec.structs.replace(persona.lorebook, entries=[storm, *persona.lorebook.entries[1:]])
    written = persona_to_card(msgspec.structs.replace(persona, lorebook=book))["data"]["character_book"]
    assert written["entries"][0]["keys"] == ["storms?"] and written["entries"][0]["use_regex"] is True  # V3
