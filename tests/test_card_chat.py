"""A community PNG card, end to end: imported over HTTP, it chats in character through a real provider
protocol, and exports again with everything it came with."""

from __future__ import annotations

import uuid

import msgspec

from personas.png import card_png
from tests.conftest import persona_body
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


def seraphina_card(name: str) -> dict:
    """A card shaped like SillyTavern's stock Seraphina: a long description that names the user, an empty
    system prompt, a scenario, an example dialogue and a greeting."""
    description = (
        '[{{char}}\'s Personality= "caring", "protective", "compassionate", "healing", "nurturing", '
        '"magical", "watchful", "apologetic", "gentle", "worried", "dedicated", "warm", "attentive", '
        '"resilient", "kind-hearted", "serene", "graceful", "empathetic", "devoted", "strong", '
        '"perceptive", "graceful"]\n'
        '[Seraphina\'s body= "pink hair", "long hair", "amber eyes", "white teeth", "pink lips", '
        '"white skin", "soft skin", "black sundress"]\n'
        '<START>\n{{user}}: "Describe your traits?"\n{{char}}: *Seraphina\'s gentle smile widens as she takes a '
        "moment to consider the question, her eyes sparkling with a mixture of introspection and pride.* "
        '"My greatest strength lies in my healing magic," *she explains, her voice warm.* '
        '"Through my connection with the forest, I can mend wounds and heal those who suffer."\n'
    ) * 5
    return {
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": {
            "name": name,
            "description": description,
            "personality": "[Seraphina is gentle, protective and watches over {{user}} like a guardian.]",
            "scenario": "{{user}} wakes up in {{char}}'s glade after being attacked by shadow beasts.",
            "first_mes": '*You wake with a start.* "You\'re awake, {{user}}. You are safe here."',
            "mes_example": "<START>\n{{user}}: Where am I?\n{{char}}: *She smiles.* In my glade, {{user}}.",
            "system_prompt": "",
            "post_history_instructions": "",
            "alternate_greetings": [],
            "tags": ["fantasy"],
            "creator": "",
            "character_version": "",
            "extensions": {},
        },
    }


async def test_an_imported_card_is_cacheable_up_to_the_users_name(llm_client, alice):
    name = f"Seraphina {uuid.uuid4().hex[:6]}"
    r = await llm_client.post(f"{PERSONAS}/import", json=seraphina_card(name), headers=alice.headers)
    assert r.status_code == 201, r.text
    persona_id = r.json()["persona"]["id"]
    r = await llm_client.post(f"{PERSONAS}/{persona_id}/render", json={"message": "hi"}, headers=alice.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    system, cacheable = body["system_prompt"], body["cacheable_prefix_chars"]
    assert len(system) > 3500
    # Everything before the user's name is the card's own text, the same for every user.
    assert system.index("Alice") == cacheable
    assert "caring" in system[:cacheable] and "healing magic" in system[:cacheable]
    assert cacheable >= 0.9 * len(system), (cacheable, len(system))
    assert not [w for w in body["warnings"] if "prompt caches" in w]
    # The scenario follows the prompt, filled for this user; the examples come as messages.
    assert system.endswith(f"Scenario:\nAlice wakes up in {name}'s glade after being attacked by shadow beasts.")
    kinds = {s["kind"]: s["items"] for s in body["context"]["sections"]}
    assert kinds["examples"] == 2


async def test_example_messages_are_sent_filled_and_dropped_before_the_message_when_short(llm_client, fake_llm, alice):
    examples = [
        {"role": "system", "content": "NARRATION: the glade is quiet."},
        {"role": "user", "content": "Hello {{char}}, I am {{user}}."},
        {"role": "assistant", "content": "Welcome, {{user_name}}; I am {{persona_name}}."},
    ]
    body = persona_body(example_messages=examples, model_settings={"provider": "openai"})
    r = await llm_client.post(PERSONAS, json=body, headers=alice.headers)
    assert r.status_code == 201, r.text
    persona = r.json()["persona"]
    fake_llm.script(chunks=("ok",))
    r = await llm_client.post(CHAT, json={"message": "Hi!", "persona_id": persona["id"]}, headers=alice.headers)
    assert r.status_code == 200, r.text
    sent = fake_llm.last_request.body["messages"]
    # Narration has no place among the messages (providers take system text only in the system prompt).
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert "NARRATION" not in str(sent)
    assert sent[1]["content"] == f"Hello {persona['name']}, I am Alice."
    assert sent[2]["content"] == f"Welcome, Alice; I am {persona['name']}."
    r = await llm_client.post(f"{PERSONAS}/{persona['id']}/render", json={"message": "Hi!"}, headers=alice.headers)
    assert [w for w in r.json()["warnings"] if "`example_messages[0]`" in w and "not sent" in w]

    # Too long for the window: the examples go, the user's message stays.
    long = [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "reply " * 400}]
    small = persona_body(
        example_messages=long, model_settings={"provider": "openai", "context_window": 600, "max_tokens": 100}
    )
    r = await llm_client.post(PERSONAS, json=small, headers=alice.headers)
    assert r.status_code == 201, r.text
    fake_llm.script(chunks=("ok",))
    r = await llm_client.post(
        CHAT, json={"message": "Hi!", "persona_id": r.json()["persona"]["id"]}, headers=alice.headers
    )
    assert r.status_code == 200, r.text
    sent = fake_llm.last_request.body["messages"]
    assert [m["role"] for m in sent] == ["system", "user"] and sent[1]["content"] == "Hi!"


def test_the_scenario_is_part_of_the_persona_text_and_of_its_cached_prefix():
    from datetime import UTC, datetime

    from personas.models import Caller, ModelSettings, Persona
    from runtime.chat.prompt import cache_report, render_system_prompt

    now = datetime.now(UTC)
    persona = Persona(
        id=uuid.uuid4(),
        name="Sera",
        description="",
        system_prompt="You are {{char}}. " + "Speak softly. " * 20,
        personality_traits={"tone": "calm"},
        capabilities={},
        model_settings=ModelSettings(),
        tools=[],
        visibility="private",
        scenario="{{user}} rests by {{persona_name}}'s fire. {{traits}}",
        is_active=True,
        is_default=False,
        version=1,
        created_by=None,
        created_at=now,
        updated_at=now,
    )
    caller = Caller(user_id=uuid.uuid4(), user_name="robin", display_name="Robin", is_admin=False)
    rendered = render_system_prompt(persona, caller, now=now)
    head, _, scenario = rendered.partition("\n\nScenario:\n")
    assert head.endswith("## Personality traits\n- tone: calm")  # sections come once, before the scenario
    assert scenario == "Robin rests by Sera's fire. - tone: calm"
    cacheable, warnings = cache_report(persona, rendered)
    assert rendered[:cacheable] == head + "\n\nScenario:\n"
    assert warnings == []  # the per-user value comes late: nothing to move
    early = msgspec.structs.replace(persona, system_prompt="Hello {{user_name}}. " + "Speak softly. " * 20)
    cacheable, warnings = cache_report(early, render_system_prompt(early, caller, now=now))
    assert cacheable == len("Hello ") and "`{{user_name}}` at character 6" in warnings[0]


def lore_card(name: str) -> dict:
    """A V2 card whose book is written as SillyTavern writes one: V2 fields and its own `extensions`."""
    book = {
        "name": "Glade lore",
        "scan_depth": 2,
        "token_budget": 500,
        "recursive_scanning": False,
        "extensions": {},
        "entries": [
            {
                "id": 0,
                "keys": ["moonwell"],
                "secondary_keys": [],
                "content": "The moonwell heals any wound at midnight.",
                "enabled": True,
                "insertion_order": 100,
                "case_sensitive": False,
                "name": "Moonwell",
                "priority": 10,
                "comment": "Moonwell",
                "selective": False,
                "constant": False,
                "position": "after_char",
                "extensions": {"position": 1, "depth": 4, "probability": 100, "useProbability": True},
            },
            {
                "id": 1,
                "keys": ["shadow"],
                "secondary_keys": ["forest"],
                "content": "Shadow beasts roam the forest's edge.",
                "enabled": True,
                "insertion_order": 90,
                "case_sensitive": False,
                "name": "Shadows",
                "comment": "",
                "selective": True,
                "constant": False,
                "position": "after_char",
                "extensions": {"position": 4, "depth": 1, "role": 1, "selectiveLogic": 0, "probability": 100},
            },
        ],
    }
    return v2_card(name=name, character_book=book)


async def test_a_cards_lorebook_fires_on_its_keywords_json_and_png(llm_client, fake_llm, alice):
    for kind in ("json", "png"):
        name = f"Warden {kind} {uuid.uuid4().hex[:6]}"
        card = lore_card(name)
        if kind == "json":
            upload = ("warden.json", msgspec.json.encode(card), "application/json")
        else:
            upload = ("warden.png", card_png([("chara", b64(card))]), "image/png")
        r = await llm_client.post(f"{PERSONAS}/import", files={"file": upload}, headers=alice.headers)
        assert r.status_code == 201, r.text
        persona = r.json()["persona"]

        async def sent(message: str, persona_id: str = persona["id"]) -> list[dict]:
            fake_llm.script(chunks=("...",))
            r = await llm_client.post(CHAT, json={"message": message, "persona_id": persona_id}, headers=alice.headers)
            assert r.status_code == 200, r.text
            return fake_llm.last_request.body["messages"]

        quiet = await sent("Good morning.")
        assert "moonwell" not in quiet[0]["content"] and all("Shadow beasts" not in m["content"] for m in quiet)
        lit = await sent("Can the Moonwell help me? I saw a shadow in the forest.")
        # The after-char entry joins the system text, after the persona's own prompt, which is unchanged.
        assert lit[0]["content"] == quiet[0]["content"] + "\n\nThe moonwell heals any wound at midnight."
        # The at-depth entry, with its secondary key, is a message one before the latest, in its role (user).
        assert lit[-2:] == [
            {"role": "user", "content": "Shadow beasts roam the forest's edge."},
            {"role": "user", "content": "Can the Moonwell help me? I saw a shadow in the forest."},
        ]
        alone = await sent("A shadow, nothing more.")
        assert all("Shadow beasts" not in m["content"] for m in alone)  # its secondary key was not said

        exported = (
            await llm_client.get(f"{PERSONAS}/{persona['id']}/export", params={"format": "card"}, headers=alice.headers)
        ).json()
        assert exported["data"]["character_book"] == card["data"]["character_book"], kind
