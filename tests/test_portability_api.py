"""Import and export over HTTP (CONTRACT section 8): formats, uploads, ownership and refusals."""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from personas.png import card_png
from personas.porter import PersonaPorter
from tests.conftest import persona_body
from tests.test_cards import SECRET, v2_card, v3_card

BASE = "/api/v1/chat/personas"
IMPORT = f"{BASE}/import"


def unique(prefix: str) -> str:
    return f"{prefix} {uuid.uuid4().hex[:8]}"


async def create(client, account, **fields):
    r = await client.post(BASE, json=persona_body(**fields), headers=account.headers)
    assert r.status_code == 201, r.text
    return r.json()["persona"]


async def count(resources) -> int:
    return int(await resources.pool.fetchval("SELECT count(*) FROM personas"))


def png_of(card) -> bytes:
    return card_png([("chara", base64.b64encode(json.dumps(card).encode()).decode())])


# Export ------------------------------------------------------------------------------------------------


async def test_export_gives_our_document_as_a_file(client, alice):
    persona = await create(
        client, alice, model_settings={"provider": "echo", "temperature": 0.4}, tools=[{"name": "lookup"}]
    )
    r = await client.get(f"{BASE}/{persona['id']}/export", headers=alice.headers)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["content-disposition"].startswith('attachment; filename="persona-')
    document = r.json()
    assert document["format"] == "persona-runtime/v1"
    assert set(document["persona"]) == {
        "name",
        "description",
        "system_prompt",
        "personality_traits",
        "lorebook",
        "greetings",
        "example_messages",
        "scenario",
        "capabilities",
        "model_settings",
        "tools",
        "visibility",
        "limits",
    }
    assert document["persona"]["system_prompt"] == persona["system_prompt"]
    assert document["persona"]["model_settings"]["temperature"] == 0.4
    assert document["persona"]["tools"][0]["name"] == "lookup"


async def test_export_import_export_loses_nothing(client, alice):
    persona = await create(client, alice, visibility="public", extensions={"team": {"owner": "docs"}})
    first = await client.get(f"{BASE}/{persona['id']}/export", headers=alice.headers)
    # Deleting frees the name, so the same document imports again as it is.
    assert (await client.delete(f"{BASE}/{persona['id']}", headers=alice.headers)).status_code == 200
    r = await client.post(IMPORT, content=first.content, headers={**alice.headers, "content-type": "application/json"})
    assert r.status_code == 201, r.text
    again = r.json()["persona"]
    assert again["id"] != persona["id"] and again["visibility"] == "public"
    second = await client.get(f"{BASE}/{again['id']}/export", headers=alice.headers)
    assert second.content == first.content


async def test_card_export_is_a_v2_card(client, alice):
    persona = await create(client, alice, system_prompt="You are {{persona_name}} with {{user_name}}.")
    r = await client.get(f"{BASE}/{persona['id']}/export", params={"format": "card"}, headers=alice.headers)
    assert r.status_code == 200
    card = r.json()
    assert card["spec"] == "chara_card_v2" and card["spec_version"] == "2.0"
    assert card["data"]["name"] == persona["name"]
    assert card["data"]["system_prompt"].startswith("You are {{char}} with {{user}}.")
    assert r.headers["content-disposition"].endswith('.card.json"')


async def test_unknown_export_format_is_400_naming_it(client, alice):
    persona = await create(client, alice)
    r = await client.get(f"{BASE}/{persona['id']}/export", params={"format": "xml"}, headers=alice.headers)
    assert r.status_code == 400 and r.json()["error"]["field"] == "format"


@pytest.mark.parametrize("visibility", ["public", "private"])
@pytest.mark.parametrize("who", ["owner", "other", "admin"])
async def test_export_is_for_owner_and_admins(client, alice, bob, admin, who, visibility):
    persona = await create(client, alice, visibility=visibility)
    account = {"owner": alice, "other": bob, "admin": admin}[who]
    expected = 200 if who != "other" else (403 if visibility == "public" else 404)
    for fmt in ("json", "card"):
        r = await client.get(f"{BASE}/{persona['id']}/export", params={"format": fmt}, headers=account.headers)
        assert r.status_code == expected, (fmt, r.text)
        if expected == 200 and fmt == "json":
            assert r.json()["persona"]["system_prompt"] == persona["system_prompt"]
        if expected == 200 and fmt == "card":
            assert r.json()["data"]["system_prompt"].startswith("You are {{char}}, talking with {{user}}.")


async def test_export_needs_a_key_and_a_known_persona(client, alice):
    persona = await create(client, alice)
    assert (await client.get(f"{BASE}/{persona['id']}/export")).status_code == 401
    assert (await client.get(f"{BASE}/{uuid.uuid4()}/export", headers=alice.headers)).status_code == 404


# Import --------------------------------------------------------------------------------------------------


async def test_import_card_json_creates_a_private_persona_of_the_caller(client, alice, resources):
    name = unique("Seraphina")
    r = await client.post(IMPORT, json=v2_card(name=name), headers=alice.headers)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["success"] is True and body["message"] == f"Persona {name} imported from a Character Card V2"
    persona = body["persona"]
    assert persona["name"] == name and persona["created_by"] == alice.id
    assert persona["visibility"] == "private" and persona["is_default"] is False and persona["version"] == 1
    assert "{{user_name}}" in persona["system_prompt"] and "{{char}}" not in persona["system_prompt"]
    assert SECRET not in persona["system_prompt"]
    got = await client.get(f"{BASE}/{persona['id']}", headers=alice.headers)
    assert got.json()["persona"] == persona
    # The version history snapshots the kept card too.
    kept = await resources.pool.fetchval(
        "SELECT extensions FROM persona_versions WHERE persona_id = $1 AND version = 1", uuid.UUID(persona["id"])
    )
    assert kept["card"]["data"]["creator_notes"] == SECRET


async def test_card_extensions_survive_import_then_export(client, alice):
    card = v3_card(name=unique("Sera"))
    r = await client.post(IMPORT, json=card, headers=alice.headers)
    assert r.status_code == 201, r.text
    persona = r.json()["persona"]
    assert r.json()["message"].endswith("a Character Card V3")
    exported = (
        await client.get(f"{BASE}/{persona['id']}/export", params={"format": "card"}, headers=alice.headers)
    ).json()
    assert exported["data"] == card["data"]
    # Edited afterwards: the card takes the new prompt, and still carries what it came with.
    await client.put(f"{BASE}/{persona['id']}", json={"system_prompt": "Be {{persona_name}}."}, headers=alice.headers)
    exported = (
        await client.get(f"{BASE}/{persona['id']}/export", params={"format": "card"}, headers=alice.headers)
    ).json()
    assert exported["data"]["system_prompt"] == "Be {{char}}."
    ours = exported["data"]["extensions"].pop("persona_runtime")
    assert ours == {"whole_prompt": True}  # so that importing this card takes the prompt as it is
    assert exported["data"]["extensions"] == card["data"]["extensions"]
    assert exported["data"]["group_only_greetings"] == card["data"]["group_only_greetings"]


async def test_others_do_not_see_the_kept_card(client, alice, bob):
    r = await client.post(IMPORT, json=v2_card(name=unique("Shared")), headers=alice.headers)
    persona = r.json()["persona"]
    await client.put(f"{BASE}/{persona['id']}", json={"visibility": "public"}, headers=alice.headers)
    seen = (await client.get(f"{BASE}/{persona['id']}", headers=bob.headers)).json()["persona"]
    assert seen["system_prompt"] is None and seen["extensions"] == {}
    assert SECRET not in json.dumps(seen)


async def test_import_our_document_keeps_its_visibility_but_never_is_default(client, alice):
    document = {
        "format": "persona-runtime/v1",
        "persona": {"name": unique("Doc"), "description": "d", "system_prompt": "Hi", "visibility": "public"},
    }
    r = await client.post(IMPORT, json=document, headers=alice.headers)
    assert r.status_code == 201, r.text
    assert r.json()["persona"]["visibility"] == "public" and r.json()["persona"]["is_default"] is False
    document["persona"] = {**document["persona"], "name": unique("Doc"), "is_default": True}
    r = await client.post(IMPORT, json=document, headers=alice.headers)
    assert r.status_code == 400 and r.json()["error"]["field"] == "persona.is_default"


@pytest.mark.parametrize("field", ["file", "card"])
async def test_multipart_png_upload(client, alice, field):
    name = unique("Png")
    files = {field: ("sera.png", png_of(v2_card(name=name)), "image/png")}
    r = await client.post(IMPORT, files=files, data={"note": "a text field is ignored"}, headers=alice.headers)
    assert r.status_code == 201, r.text
    assert r.json()["persona"]["name"] == name


async def test_raw_png_body_is_accepted_too(client, alice):
    name = unique("Raw")
    r = await client.post(
        IMPORT, content=png_of(v3_card(name=name)), headers={**alice.headers, "content-type": "image/png"}
    )
    assert r.status_code == 201, r.text
    assert r.json()["persona"]["name"] == name


async def test_multipart_needs_exactly_one_file(client, alice, resources):
    before = await count(resources)
    png = png_of(v2_card(name=unique("Two")))
    r = await client.post(IMPORT, files=[("file", ("a.png", png)), ("file", ("b.png", png))], headers=alice.headers)
    assert r.status_code == 400 and "exactly one file" in r.json()["message"]
    r = await client.post(IMPORT, files={"note": (None, "only a text field")}, headers=alice.headers)
    assert r.status_code == 400 and "got 0" in r.json()["message"]
    assert await count(resources) == before


async def test_name_collision_is_409_and_creates_nothing(client, alice, bob, resources):
    taken = await create(client, alice)
    before = await count(resources)
    r = await client.post(IMPORT, json=v2_card(name=taken["name"].upper()), headers=alice.headers)
    assert r.status_code == 409
    assert r.json()["error"]["field"] == "name"
    assert "Rename the persona" in r.json()["message"] and "nothing was imported" in r.json()["message"]
    r = await client.post(IMPORT, files={"file": ("x.png", png_of(v2_card(name=taken["name"])))}, headers=alice.headers)
    assert r.status_code == 409
    assert await count(resources) == before
    # Another user's private persona of that name is no collision: names are unique per owner.
    r = await client.post(IMPORT, json=v2_card(name=taken["name"]), headers=bob.headers)
    assert r.status_code == 201, r.text
    assert await count(resources) == before + 1


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"GIF89a\x00", "neither a PNG"),
        (b'{"spec": "chara_card_v2", "data": {', "not valid JSON"),
        (b'{"spec": "chara_card_v7", "data": {}}', "Unknown character card spec"),
        (b'{"spec": "chara_card_v2", "data": {"name": ""}}', "no name"),
        (card_png([("Comment", "no card")]), "no `chara` or `ccv3`"),
        (card_png([("chara", "%%%")]), "not valid base64"),
        (card_png([("chara", base64.b64encode(b"[1,").decode())]), "does not hold valid JSON"),
        (png_of(v2_card())[:-20], "truncated"),
    ],
)
async def test_bad_uploads_say_what_is_wrong_and_create_nothing(client, alice, resources, content, words):
    before = await count(resources)
    r = await client.post(IMPORT, files={"file": ("upload", content)}, headers=alice.headers)
    assert r.status_code == 400, r.text
    assert words in r.json()["message"]
    assert r.json()["success"] is False
    assert await count(resources) == before


async def test_oversize_upload_is_413(client, alice, resources):
    porter = resources.porter
    # As IMPORT_MAX_BYTES=4096 would.
    resources.porter = PersonaPorter(resources.personas, porter.avatars, max_bytes=4096)
    try:
        png = png_of(v2_card(name=unique("Big"), description="x" * 10_000))
        r = await client.post(IMPORT, files={"file": ("big.png", png)}, headers=alice.headers)
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        r = await client.post(IMPORT, content=png, headers={**alice.headers, "content-type": "image/png"})
        assert r.status_code == 413
        small = await client.post(IMPORT, json=v2_card(name=unique("Small"), description="s"), headers=alice.headers)
        assert small.status_code == 201, small.text
    finally:
        resources.porter = porter


async def test_decompression_bomb_upload_is_413(client, alice, resources):
    before = await count(resources)
    bomb = card_png([("chara", "A" * (16 * 1024 * 1024))], kind=b"zTXt")
    r = await client.post(IMPORT, files={"file": ("bomb.png", bomb)}, headers=alice.headers)
    assert r.status_code == 413 and "decompresses to more than" in r.json()["message"]
    assert await count(resources) == before


async def test_import_is_not_taken_for_a_persona_id(client, alice):
    # The static /import path wins over /{persona_id}: POST creates, and GET is not a persona lookup.
    r = await client.post(IMPORT, json=v2_card(name=unique("Route")), headers=alice.headers)
    assert r.status_code == 201
    r = await client.get(IMPORT, headers=alice.headers)
    assert r.status_code == 405


async def test_extensions_are_writable_and_validated_like_other_fields(client, alice):
    persona = await create(client, alice, extensions={"note": "kept"})
    assert persona["extensions"] == {"note": "kept"}
    r = await client.put(f"{BASE}/{persona['id']}", json={"extensions": ["not", "an", "object"]}, headers=alice.headers)
    assert r.status_code == 400 and r.json()["error"]["field"] == "extensions"
    r = await client.put(f"{BASE}/{persona['id']}", json={"extensions": {"note": "changed"}}, headers=alice.headers)
    assert r.status_code == 200 and r.json()["persona"]["extensions"] == {"note": "changed"}
    assert r.json()["persona"]["version"] == 2
