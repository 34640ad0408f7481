"""Input hygiene: persona names, template braces, text PostgreSQL cannot store, and API key prefixes."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from personas.png import card_png
from runtime.server.cli import main as cli_main
from tests.conftest import persona_body

PERSONAS = "/api/v1/chat/personas"


async def create(http, account, **fields):
    return await http.post(PERSONAS, json=persona_body(**fields), headers=account.headers)


# Names ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("disguise", ["\u200b{}", "{}\u200c", "\u200d{}\u2060", "\ufeff{}", "  {}  ", "\uff2d{}"])
async def test_a_name_that_differs_only_in_invisible_characters_is_a_duplicate(client, alice, disguise):
    first = await create(client, alice, name="Mira Hygiene")
    assert first.status_code == 201, first.text
    base = "Mira Hygiene"
    name = disguise.format(base[1:]) if disguise.startswith("\uff2d") else disguise.format(base)
    r = await create(client, alice, name=name)
    assert r.status_code == 409, r.text
    assert r.json()["error"]["field"] == "name"
    # A rename to the disguised name collides too; the persona keeps its own.
    other = (await create(client, alice)).json()["persona"]
    r = await client.put(f"{PERSONAS}/{other['id']}", json={"name": name}, headers=alice.headers)
    assert r.status_code == 409, r.text
    await client.delete(f"{PERSONAS}/{first.json()['persona']['id']}", headers=alice.headers)


async def test_names_are_stored_normalised(client, alice):
    r = await create(client, alice, name="  \u200bZo\u00e9 Norm\u200d  ")
    assert r.status_code == 201, r.text
    assert r.json()["persona"]["name"] == "Zo\u00e9 Norm"


@pytest.mark.parametrize("name", ["two\nlines", "tab\there", "\u200b", "   "])
async def test_names_with_control_characters_or_nothing_visible_are_refused(client, alice, name):
    r = await create(client, alice, name=name)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == "name"


# Template braces --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "position"),
    [
        ("Hi }}{{", 3),
        ("Hi {{ user_name", 3),
        ("Hi {{user_name}} and }}", 21),
        ("Hi {{a{{user_name}}", 3),
    ],
)
async def test_stray_or_unclosed_braces_are_refused_with_their_position(client, alice, prompt, position):
    r = await create(client, alice, system_prompt=prompt)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["field"] == "system_prompt" and error["details"]["position"] == position
    assert f"position {position}" in r.json()["message"]


@pytest.mark.parametrize(
    "prompt",
    [
        "You are {{ persona_name }}, with {{user_name}}.",
        'Answer as JSON: {"reply": {"text": "..."}}',
        "{{{user_name}}}",
    ],
)
async def test_spaces_inside_placeholders_and_json_braces_are_fine(client, alice, prompt):
    r = await create(client, alice, system_prompt=prompt)
    assert r.status_code == 201, r.text


async def test_a_long_unclosed_placeholder_is_refused(client, alice):
    """Placeholders are found in one pass: spaces inside an open ``{{`` once took time cubic in their number
    (seconds for these 3000, hours for a 100 000-character prompt), and the prompt was then accepted."""
    prompt = "{{" + " " * 3000
    r = await create(client, alice, system_prompt=prompt)
    assert r.status_code == 400 and r.json()["error"]["details"]["position"] == 0
    # A card whose text does the same is refused just as quickly.
    card = {"spec": "chara_card_v2", "data": {"name": "Spacey", "description": prompt}}
    r = await client.post(f"{PERSONAS}/import", json=card, headers=alice.headers)
    assert r.status_code == 400, r.text


# Text PostgreSQL cannot store -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "Nul\u0000Bot"}, "name"),
        ({"description": "a\u0000b"}, "description"),
        ({"system_prompt": "You are\u0000 {{persona_name}}"}, "system_prompt"),
        ({"personality_traits": {"tone": ["dry", "x\u0000"]}}, "personality_traits.tone[1]"),
        ({"capabilities": {"k\u0000": 1}}, "capabilities"),
        ({"tools": [{"name": "t", "description": "\u0000"}]}, "tools[0].description"),
        ({"model_settings": {"model": "gpt\u0000"}}, "model_settings.model"),
    ],
)
async def test_nul_characters_are_a_400_naming_the_field(client, alice, resources, fields, field):
    before = await resources.pool.fetchval("SELECT count(*) FROM personas")
    r = await create(client, alice, **fields)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == field
    assert await resources.pool.fetchval("SELECT count(*) FROM personas") == before


async def test_a_card_carrying_a_nul_is_refused_by_field(client, alice):
    card = {"spec": "chara_card_v2", "data": {"name": "Nully", "description": "hi", "extensions": {"x": "\u0000"}}}
    png = card_png([("chara", base64.b64encode(json.dumps(card).encode()).decode())])
    r = await client.post(f"{PERSONAS}/import", files={"file": ("card.png", png, "image/png")}, headers=alice.headers)
    assert r.status_code == 400, r.text
    # Named by its place in the card the author uploaded.
    assert r.json()["error"]["field"] == "data.extensions.x"


async def test_persona_tests_refuse_nul_by_field(client, alice):
    persona = (await create(client, alice)).json()["persona"]
    body = {"name": "t", "message": "m\u0000", "expect": {"contains": ["ok"]}}
    r = await client.post(f"{PERSONAS}/{persona['id']}/tests", json=body, headers=alice.headers)
    assert r.status_code == 400 and r.json()["error"]["field"] == "message", r.text


def test_lone_surrogates_are_refused_by_field():
    """JSON bodies cannot carry them (the decoder refuses), but files, cards and Python callers can."""
    from core.errors import BadRequest
    from personas.models import PersonaDraft
    from personas.service import draft_persona

    for fields, field in [
        ({"name": "Sur\ud800"}, "name"),
        ({"system_prompt": "x\udfff"}, "system_prompt"),
        ({"extensions": {"card": {"data": ["\ud83d"]}}}, "extensions.card.data[0]"),
    ]:
        draft = PersonaDraft(**{"name": "S", "description": "d", "system_prompt": "p", **fields})
        with pytest.raises(BadRequest) as caught:
            draft_persona(draft, None)
        assert caught.value.field == field


# API key prefixes -------------------------------------------------------------------------------------


async def test_a_short_chosen_key_shows_little_of_itself(resources, make_user, monkeypatch, capsys, database_url):
    user = await make_user("keys")
    short = "prk_chosen-dev-key-1"  # 20 characters, the shortest allowed
    _, record = await resources.accounts.create_key(user.user.id, name="chosen", key=short)
    assert short.startswith(record.prefix) and record.prefix == "prk_chos"
    plain = "my-operators-own-key-24c"  # no marker
    _, other = await resources.accounts.create_key(user.user.id, name="plain", key=plain)
    assert plain.startswith(other.prefix) and len(other.prefix) <= len(plain) // 4
    generated, made = await resources.accounts.create_key(user.user.id, name="random")
    assert made.prefix == generated[:12]

    # The CLI still finds a key by the prefix it showed.
    monkeypatch.setenv("DATABASE_URL", database_url)
    code = await asyncio.to_thread(cli_main, ["keys", "revoke", record.prefix])
    assert code == 0, capsys.readouterr().err
    assert (await resources.accounts.get_key(record.id)).revoked_at is not None
