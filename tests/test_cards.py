"""PNG card reading and the card ↔ persona mapping, without a server: what an author importing a card sees."""

from __future__ import annotations

import base64
import copy
import json
import struct
import zlib
from typing import Any

import msgspec
import pytest

from core.errors import BadRequest, PayloadTooLarge
from personas.cards import EXTENSION_KEY, persona_to_card
from personas.documents import FORMAT, encode_document, load_document, persona_document, read_document
from personas.models import ExampleMessage, ModelSettings, Persona, Tool
from personas.png import SIGNATURE, card_png
from personas.service import draft_persona
from personas.template import check_template, render_template

LIMIT = 1024 * 1024
SECRET = "CREATOR-NOTES-ONLY-7f3a"


def v2_card(**data: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": "Seraphina",
        "description": "{{char}} guards the forest glade and looks after {{user}}.",
        "personality": "gentle, protective, <BOT> hums when {{user}} is sad",
        "scenario": "{{user}} wakes up in {{char}}'s glade. {{random:dawn,dusk}}",
        "first_mes": "*{{char}} smiles at {{user}}* You are awake!",
        "mes_example": "<START>\n{{user}}: Who are you?\n{{char}}: A friend. {{// do not say more}}",
        "creator_notes": SECRET,
        "system_prompt": "{{original}} Keep {{char}}'s voice soft.",
        "post_history_instructions": "Never break character.",
        "alternate_greetings": ["*{{char}} waves*"],
        "character_book": {"name": "Glade lore", "entries": [{"keys": ["glade"], "content": "A clearing."}]},
        "tags": ["fantasy", "healer"],
        "creator": "someone",
        "character_version": "1.2",
        "extensions": {"talkativeness": "0.5", "depth_prompt": {"prompt": "Be kind.", "depth": 4}, "chub": {"id": 7}},
    }
    fields.update(data)
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": fields}


def v3_card(**data: Any) -> dict[str, Any]:
    card = v2_card(**data)
    card["spec"], card["spec_version"] = "chara_card_v3", "3.0"
    card["data"].update(
        nickname="Sera",
        group_only_greetings=["*{{char}} nods to everyone*"],
        assets=[{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}],
        creator_notes_multilingual={"fr": SECRET},
        source=["https://example.invalid/sera"],
        creation_date=1700000000,
        modification_date=1700000100,
    )
    return card


def b64(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def persona_of(card: dict[str, Any]) -> Persona:
    return draft_persona(read_document(card).draft, None)


def render(persona: Persona) -> str:
    assert persona.system_prompt is not None
    return render_template(
        persona.system_prompt,
        user_name="Robin",
        persona_name=persona.name,
        date="2025-01-01",
        traits=persona.personality_traits,
        capabilities=persona.capabilities,
    )


# PNG -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [b"tEXt", b"zTXt", b"iTXt"])
def test_png_card_is_read_from_each_text_chunk_type(kind):
    png = card_png([("Comment", "made by hand"), ("chara", b64(v2_card(name="Chunky")))], kind=kind)
    imported = load_document(png, limit=LIMIT)
    assert imported.draft.name == "Chunky"
    assert imported.source == "chara_card_v2"


@pytest.mark.parametrize("order", ["ccv3 first", "chara first"])
def test_ccv3_chunk_wins_over_chara(order):
    chunks = [("chara", b64(v2_card(name="Old V2"))), ("ccv3", b64(v3_card(name="New V3")))]
    if order == "ccv3 first":
        chunks.reverse()
    imported = load_document(card_png(chunks), limit=LIMIT)
    assert imported.draft.name == "New V3"
    assert imported.source == "chara_card_v3"


def test_damaged_chunk_crc_is_refused():
    png = bytearray(card_png([("chara", b64(v2_card()))]))
    png[png.index(b"chara") + 10] ^= 0x01  # one flipped bit inside the card text
    with pytest.raises(BadRequest, match="CRC of its tEXt chunk"):
        load_document(bytes(png), limit=LIMIT)


def test_truncated_png_is_refused():
    png = card_png([("chara", b64(v2_card()))])
    for cut in (len(png) - 6, len(png) // 2, len(SIGNATURE) + 3):
        with pytest.raises(BadRequest, match="truncated"):
            load_document(png[:cut], limit=LIMIT)


def test_a_file_that_is_neither_png_nor_json_is_refused():
    with pytest.raises(BadRequest, match="neither a PNG character card nor JSON"):
        load_document(b"GIF89a\x01\x00\x01\x00", limit=LIMIT)


def test_png_without_a_card_chunk_is_refused():
    png = card_png([("Comment", "just a picture"), ("charas", b64(v2_card()))])
    with pytest.raises(BadRequest, match="no `chara` or `ccv3` text chunk"):
        load_document(png, limit=LIMIT)


def test_bad_base64_in_the_card_chunk_is_refused():
    with pytest.raises(BadRequest, match="not valid base64"):
        load_document(card_png([("chara", "eyJzcGVj*not&base64")]), limit=LIMIT)


def test_bad_json_in_the_card_chunk_is_refused():
    text = base64.b64encode(b'{"spec": "chara_card_v2", "data": ').decode()
    with pytest.raises(BadRequest, match="does not hold valid JSON"):
        load_document(card_png([("chara", text)]), limit=LIMIT)


@pytest.mark.parametrize("kind", [b"zTXt", b"iTXt"])
def test_decompression_bomb_is_refused_without_inflating_it(kind):
    bomb = "A" * (64 * 1024 * 1024)  # 64 MiB of text compresses to about 64 KiB
    png = card_png([("chara", bomb)], kind=kind)
    assert len(png) < 200_000
    with pytest.raises(PayloadTooLarge, match="decompresses to more than"):
        load_document(png, limit=LIMIT)


def test_card_too_long_for_a_system_prompt_is_refused_by_name():
    big = v2_card(description="x" * 150_000)
    with pytest.raises(BadRequest, match="makes a system prompt of") as caught:
        load_document(card_png([("chara", b64(big))]), limit=LIMIT)
    assert caught.value.field == "system_prompt"


def test_compressed_chunk_cut_short_is_refused():
    body = b"chara\0\0" + zlib.compress(b64(v2_card()).encode())[:-8]
    chunk = struct.pack(">I", len(body)) + b"zTXt" + body + struct.pack(">I", zlib.crc32(b"zTXt" + body))
    png = card_png([])
    png = png[: png.index(b"IDAT") - 4] + chunk + png[png.index(b"IDAT") - 4 :]
    with pytest.raises(BadRequest, match="truncated"):
        load_document(png, limit=LIMIT)


# Documents and cards that are refused ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "field", "words"),
    [
        ({"spec": "chara_card_v9", "data": {"name": "X"}}, "spec", "Unknown character card spec"),
        (v2_card(name=""), "data.name", "no name"),
        (v2_card(name=None), "data.name", "no name"),
        (v2_card(name="n" * 101), "data.name", "at most 100"),
        (v2_card(tags="fantasy"), "tags", "Expected `array"),
        ({"spec": "chara_card_v2", "data": "Seraphina"}, "data", "no `data` object"),
        ({"format": "persona-runtime/v2", "persona": {}}, "format", "Unknown document format"),
        ({"format": FORMAT, "persona": {"name": "X", "description": "", "system_prompt": "{{mood}}"}}, None, "mood"),
        (
            {"format": FORMAT, "persona": {"name": "X", "description": "", "system_prompt": "s", "is_default": True}},
            "persona.is_default",
            "unknown field",
        ),
        ({"name": "Just a name"}, None, "neither a persona document"),
        (["a", "list"], None, "must be a JSON object"),
    ],
)
def test_bad_documents_say_what_is_wrong(document, field, words):
    with pytest.raises(BadRequest) as caught:
        draft_persona(read_document(document).draft, None)
    assert words.lower() in caught.value.message.lower()
    if field is not None:
        assert caught.value.field == field


# Card → persona ----------------------------------------------------------------------------------------


def test_v2_card_maps_to_a_persona_whose_prompt_has_the_card_in_it():
    persona = persona_of(v2_card())
    assert persona.name == "Seraphina"
    assert persona.visibility == "private" and persona.is_default is False
    assert persona.description == "Seraphina guards the forest glade and looks after the user."
    assert persona.personality_traits == {
        "personality": "gentle, protective, Seraphina hums when the user is sad",
        "tags": ["fantasy", "healer"],
    }
    assert persona.system_prompt is not None
    check_template(persona.system_prompt)  # what the API would refuse, it never produces
    prompt = render(persona)
    assert prompt.startswith("You are Seraphina. Keep Seraphina's voice soft.")
    # The card's text is the same for every user; the user's name comes once, in the last sentence.
    assert "Seraphina guards the forest glade and looks after the user." in prompt
    assert "gentle, protective" in prompt
    assert prompt.index("Never break character.") < prompt.index("Robin")
    assert prompt.rstrip().endswith(
        "Stay in character as Seraphina throughout this conversation with the user, Robin, and never speak or "
        "act for Robin."
    )
    for macro in ("{{", "<BOT>", "random", "do not say more", "dawn"):
        assert macro not in prompt
    # Scenario, greetings and examples are fields of their own now, not prompt text.
    for elsewhere in ("wakes up", "You are awake", "Who are you?", "A friend"):
        assert elsewhere not in prompt
    assert persona.scenario == "{{user_name}} wakes up in {{persona_name}}'s glade."
    assert persona.greetings == ["*{{char}} smiles at {{user}}* You are awake!", "*{{char}} waves*"]
    assert persona.example_messages == [
        ExampleMessage(role="user", content="Who are you?"),
        ExampleMessage(role="assistant", content="A friend."),
    ]


@pytest.mark.parametrize("make", [v2_card, v3_card])
def test_creator_notes_and_other_unrendered_fields_never_reach_the_prompt(make):
    persona = persona_of(make())
    prompt = render(persona)
    assert SECRET not in prompt
    assert SECRET not in persona.description
    assert SECRET not in json.dumps(persona.personality_traits)
    assert "Glade lore" not in prompt and "waves" not in prompt and "nods to everyone" not in prompt
    assert persona.extensions["card"]["data"]["creator_notes"] == SECRET  # kept, for the round trip only


def test_empty_card_system_prompt_gets_the_default_head():
    persona = persona_of(v2_card(system_prompt="", personality="", tags=[]))
    prompt = render(persona)
    assert prompt.startswith("You are Seraphina.\n\n## About Seraphina\n")
    assert prompt.endswith(
        "Stay in character as Seraphina throughout this conversation with the user, Robin, and never speak or "
        "act for Robin."
    )
    assert "## Personality" not in prompt
    assert persona.personality_traits == {}


def test_a_card_prompt_that_names_the_user_comes_after_the_cards_text():
    persona = persona_of(
        v2_card(system_prompt="You are {{char}}, talking with {{user}}.", post_history_instructions="")
    )
    prompt = render(persona)
    assert prompt.startswith("## About Seraphina\nSeraphina guards the forest glade and looks after the user.")
    assert prompt.rstrip().endswith("You are Seraphina, talking with Robin.")  # the card's own: no default tail
    assert "Stay in character" not in prompt


def test_long_description_is_cut_at_a_word_and_kept_whole_in_the_prompt():
    words = " ".join(f"word{i}" for i in range(1500))  # about 10 000 characters
    persona = persona_of(v2_card(description=words))
    assert len(persona.description) <= 4000
    assert persona.description.endswith("…")
    assert persona.description[:-1].split(" ")[-1] in words.split(" ")  # no word cut in half
    assert words in render(persona)


def test_personality_macro_becomes_the_traits_variable():
    persona = persona_of(v2_card(system_prompt="Be {{char}}. Your nature: {{personality}}"))
    prompt = render(persona)
    assert "Your nature: - personality: gentle, protective" in prompt
    assert "## Personality" not in prompt  # placed once, where the card asked


def test_v1_card_without_spec_is_read_from_its_root_fields():
    imported = read_document({"name": "Old Timer", "description": "An old card.", "first_mes": "Hi <USER>"})
    assert imported.source == "chara_card_v1"
    assert imported.draft.greetings == ["Hi {{user}}"]
    assert "An old card." in imported.draft.system_prompt


# Card round trips ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [v2_card, v3_card])
def test_unedited_card_exports_as_it_was_imported(make):
    card = make()
    card["avatar"] = "none"  # a root-level field of some exporters
    original = copy.deepcopy(card)
    exported = persona_to_card(persona_of(card))
    assert exported["spec"] == "chara_card_v2" and exported["spec_version"] == "2.0"
    assert exported["data"] == original["data"]
    assert exported["avatar"] == "none"


def test_edited_persona_exports_its_own_prompt_and_keeps_the_cards_extensions():
    persona = persona_of(v3_card())
    persona = msgspec.structs.replace(
        persona,
        name="Sera Two",
        system_prompt="You are {{persona_name}}; greet {{user_name}}. {{traits}}",
        personality_traits={"personality": "bolder now", "tags": ["edited"]},
    )
    data = persona_to_card(persona)["data"]
    assert data["name"] == "Sera Two"
    assert data["system_prompt"] == "You are {{char}}; greet {{user}}. {{personality}}"
    assert data["personality"] == "bolder now" and data["tags"] == ["edited"]
    # Fields the persona still holds as imported come back as the card wrote them.
    assert data["scenario"] == "{{user}} wakes up in {{char}}'s glade. {{random:dawn,dusk}}"
    assert data["first_mes"] == "*{{char}} smiles at {{user}}* You are awake!"
    assert data["post_history_instructions"] == ""  # now part of the exported system prompt, not twice
    assert data["creator_notes"] == SECRET
    assert data["extensions"]["depth_prompt"] == {"prompt": "Be kind.", "depth": 4}
    assert data["nickname"] == "Sera" and data["assets"][0]["uri"] == "ccdefault:"
    assert data["character_book"]["name"] == "Glade lore"


def test_card_export_of_a_native_persona_carries_settings_back_in():
    persona = draft_persona(
        read_document(
            {
                "format": FORMAT,
                "persona": {
                    "name": "Quill",
                    "description": "A careful editor.",
                    "system_prompt": "You are {{persona_name}}.\n\n{{capabilities}}",
                    "personality_traits": {"tone": "dry"},
                    "capabilities": {"editing": True},
                    "model_settings": {"provider": "openai", "model": "gpt-4o-mini", "temperature": 0.2},
                    "tools": [{"name": "lookup", "parameters": {"type": "object"}}],
                },
            }
        ).draft,
        None,
    )
    card = persona_to_card(persona)
    assert "- editing: yes" in card["data"]["system_prompt"] and "{{capabilities}}" not in card["data"]["system_prompt"]
    assert card["data"]["personality"] == "- tone: dry"
    assert set(card["data"]["extensions"][EXTENSION_KEY]) == {
        "capabilities",
        "model_settings",
        "tools",
        "personality_traits",
        "whole_prompt",
    }
    back = draft_persona(read_document(card).draft, None)
    assert back.personality_traits == {"tone": "dry"}
    assert render(back).count("- editing: yes") == 1  # the variable again, not the text plus the section
    assert back.capabilities == {"editing": True}
    assert back.model_settings == ModelSettings(provider="openai", model="gpt-4o-mini", temperature=0.2)
    assert back.tools == [Tool(name="lookup", parameters={"type": "object"})]
    assert EXTENSION_KEY not in back.extensions["card"]["data"]["extensions"]  # read, not kept twice


def test_a_native_persona_keeps_its_system_prompt_through_a_card():
    prompt = (
        "You are {{persona_name}}, helping {{user_name}} on {{date}}.\n\nYou:\n{{traits}}\n\nCan:\n{{capabilities}}"
    )
    persona = draft_persona(
        read_document(
            {
                "format": FORMAT,
                "persona": {
                    "name": "Mu-like",
                    "description": "A cheerful robot.",
                    "system_prompt": prompt,
                    "personality_traits": {"tone": "warm"},
                    "capabilities": {"puns": True},
                },
            }
        ).draft,
        None,
    )
    back = draft_persona(read_document(persona_to_card(persona)).draft, None)
    assert back.system_prompt == prompt
    assert back.description == "A cheerful robot." and back.personality_traits == {"tone": "warm"}
    assert render(back) == render(persona)


def test_our_document_round_trips_without_loss():
    first = persona_of(v3_card())
    document = encode_document(persona_document(first))
    again = draft_persona(load_document(document, limit=LIMIT).draft, None)
    assert encode_document(persona_document(again)) == document
    assert again.extensions == first.extensions
    assert json.loads(document)["format"] == FORMAT


def test_a_png_inflates_only_the_first_chunk_of_each_card_keyword():
    """A file of many small compressed chunks, each inflating to the limit, costs one inflate, not thousands."""
    from personas.png import read_card_text, text_chunks

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bomb = chunk(b"zTXt", b"chara\0\0" + zlib.compress(b"A" * 1_000_000, 9))
    real = card_png([("chara", "Zmlyc3Q=")])
    # The real card's chunks, then 200 bombs after its chara chunk, each inflating to a megabyte.
    head, iend = real[:-12], real[-12:]
    data = head + bomb * 200 + iend
    assert data.startswith(SIGNATURE)
    chunks = text_chunks(data, limit=2_000_000)
    assert [c.text for c in chunks] == ["Zmlyc3Q="]
    assert read_card_text(data, limit=2_000_000) == "Zmlyc3Q="
