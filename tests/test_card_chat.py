"""A community PNG card, end to end: imported over HTTP, it chats in character through a real provider
protocol, and exports again with everything it came with."""

from __future__ import annotations

import uuid

from personas.png import card_png
from tests.test_cards import SECRET, b64, v2_card

CHAT = "/api/v1/chat"
PERSONAS = "/api/v1/chat/personas"


async def test_png_card_imports_and_chats_in_character(llm_client, fake_llm, alice):
    name = f"Seraphina {uuid.uuid4().hex[:6]}"
    card = v2_card(name=name)
    png = card_png([("chara", b64(card))])
    r = await llm_client.post(
        f"{PERSONAS}/import", files={"file": ("seraphina.png", png, "image/png")}, headers=alice.headers
    )
    assert r.status_code == 201, r.text
    persona = r.json()["persona"]
    assert persona["name"] == name and persona["visibility"] == "private"

    fake_llm.script(chunks=("*", "smiles softly", "*"))
    r = await llm_client.post(CHAT, json={"message": "Where am I?", "persona_id": persona["id"]}, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert r.json()["response"] == "*smiles softly*" and r.json()["persona"]["name"] == name

    messages = fake_llm.last_request.body["messages"]
    system = messages[0]["content"]
    assert messages[0]["role"] == "system"
    # The card's character, with its macros resolved for this persona; the user's name only at the end.
    assert f"{name} guards the forest glade and looks after the user." in system
    assert "gentle, protective" in system and "Never break character." in system
    assert system.index("Alice") > system.index("Never break character.")
    # The scenario follows the persona's prompt, filled for this user.
    assert system.endswith(f"Scenario:\nAlice wakes up in {name}'s glade.")
    # The example dialogue goes as messages before the user's, with both names filled.
    assert messages[1:] == [
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "A friend."},
        {"role": "user", "content": "Where am I?"},
    ]
    # What a card keeps for its readers, greetings (they open conversations) and macros we cannot evaluate
    # never reach the model.
    assert SECRET not in system and "You are awake!" not in system and "waves" not in system
    assert "{{" not in system and "<BOT>" not in system and "Glade lore" not in system

    exported = (
        await llm_client.get(f"{PERSONAS}/{persona['id']}/export", params={"format": "card"}, headers=alice.headers)
    ).json()
    assert exported["spec"] == "chara_card_v2"
    assert exported["data"]["extensions"] == card["data"]["extensions"]
    assert exported["data"]["creator_notes"] == SECRET
    assert exported["data"]["character_book"] == card["data"]["character_book"]
    for field in ("first_mes", "alternate_greetings", "mes_example", "scenario"):
        assert exported["data"][field] == card["data"][field]
