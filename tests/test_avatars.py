"""Persona avatars (CONTRACT section 14): set, read and remove one; PNG cards keep their picture and carry V2 and V3."""

from __future__ import annotations

import base64
import io
import json
import uuid

from PIL import Image, PngImagePlugin

from personas.avatars import MAX_AVATAR_BYTES
from personas.png import text_chunks
from tests.conftest import persona_body
from tests.test_cards import v2_card

BASE = "/api/v1/chat/personas"


async def create(client, account, **fields):
    r = await client.post(BASE, json=persona_body(**fields), headers=account.headers)
    assert r.status_code == 201, r.text
    return r.json()["persona"]


def image(kind: str, colour=(200, 30, 90), size=(8, 6), text: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    picture = Image.new("RGB", size, colour)
    if kind == "PNG" and text:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
        picture.save(out, "PNG", pnginfo=info)
    else:
        picture.save(out, kind)
    return out.getvalue()


def pixels(data: bytes) -> tuple[tuple[int, int], bytes]:
    with Image.open(io.BytesIO(data)) as opened:
        return opened.size, opened.convert("RGB").tobytes()


def avatar_url(persona) -> str:
    return f"{BASE}/{persona['id']}/avatar"


async def put(client, account, persona, data: bytes, content_type: str = "image/png"):
    headers = {**account.headers, "content-type": content_type}
    return await client.put(avatar_url(persona), content=data, headers=headers)


async def stored(resources, persona) -> int:
    query = "SELECT count(*) FROM persona_avatars WHERE persona_id = $1"
    return int(await resources.pool.fetchval(query, uuid.UUID(persona["id"])))


async def test_an_owner_sets_reads_and_removes_an_avatar(client, alice):
    persona = await create(client, alice)
    png = image("PNG")
    r = await put(client, alice, persona, png)
    assert r.status_code == 200, r.text
    assert r.json()["avatar"]["content_type"] == "image/png" and r.json()["avatar"]["size"] == len(png)

    r = await client.get(avatar_url(persona), headers=alice.headers)
    assert r.status_code == 200 and r.content == png
    assert r.headers["content-type"] == "image/png"
    assert r.headers["cache-control"] == "private, no-cache"
    etag = r.headers["etag"]
    again = await client.get(avatar_url(persona), headers={**alice.headers, "if-none-match": etag})
    assert again.status_code == 304 and again.content == b""
    listed = await client.get(avatar_url(persona), headers={**alice.headers, "if-none-match": f'"x",W/{etag}'})
    assert listed.status_code == 304

    # A new image is a new ETag.
    assert (await put(client, alice, persona, image("PNG", colour=(1, 2, 3)))).status_code == 200
    changed = await client.get(avatar_url(persona), headers={**alice.headers, "if-none-match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag

    r = await client.delete(avatar_url(persona), headers=alice.headers)
    assert r.status_code == 200 and r.json()["message"] == "Avatar removed"
    r = await client.get(avatar_url(persona), headers=alice.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_the_type_comes_from_the_bytes_not_the_header(client, alice):
    persona = await create(client, alice)
    for kind, content_type in (("JPEG", "image/jpeg"), ("WEBP", "image/webp")):
        data = image(kind)
        r = await put(client, alice, persona, data, content_type="application/octet-stream")
        assert r.status_code == 200, r.text
        got = await client.get(avatar_url(persona), headers=alice.headers)
        assert got.content == data and got.headers["content-type"] == content_type


async def test_another_type_or_too_large_is_refused_and_nothing_is_written(client, alice, resources):
    persona = await create(client, alice)
    gif = image("GIF")
    r = await put(client, alice, persona, gif, content_type="image/png")  # the header lies; the bytes say GIF
    assert r.status_code == 415, r.text
    assert r.json()["error"] | {"request_id": None} == {
        "code": "unsupported_media_type",
        "field": "avatar",
        "details": None,
        "request_id": None,
    }
    assert "PNG, JPEG or WebP" in r.json()["message"]
    too_large = image("PNG") + b"\0" * MAX_AVATAR_BYTES
    r = await put(client, alice, persona, too_large)
    assert r.status_code == 413 and r.json()["error"]["field"] == "avatar"
    damaged = bytearray(image("PNG"))
    damaged[20] ^= 0xFF  # inside IHDR: its CRC no longer matches
    r = await put(client, alice, persona, bytes(damaged))
    assert r.status_code == 400 and r.json()["error"]["field"] == "avatar" and "CRC" in r.json()["message"]
    assert await stored(resources, persona) == 0

    # A refused upload leaves the avatar there was.
    png = image("PNG")
    assert (await put(client, alice, persona, png)).status_code == 200
    assert (await put(client, alice, persona, b"not an image")).status_code == 415
    assert (await client.get(avatar_url(persona), headers=alice.headers)).content == png


async def test_who_may_set_read_and_remove_an_avatar(client, alice, bob, admin, resources):
    public = await create(client, alice, visibility="public")
    private = await create(client, alice)
    png = image("PNG")
    for persona in (public, private):
        assert (await put(client, alice, persona, png)).status_code == 200

    # Whoever sees the persona reads its avatar; a private persona's is nobody else's (not even its existence).
    assert (await client.get(avatar_url(public), headers=bob.headers)).content == png
    r = await client.get(avatar_url(private), headers=bob.headers)
    assert r.status_code == 404 and r.json()["error"]["field"] == "persona_id"
    # Only the owner or an admin changes it.
    r = await put(client, bob, public, image("PNG", colour=(0, 0, 0)))
    assert r.status_code == 403
    assert (await client.delete(avatar_url(public), headers=bob.headers)).status_code == 403
    assert (await put(client, bob, private, png)).status_code == 404
    assert (await client.delete(avatar_url(private), headers=bob.headers)).status_code == 404
    assert (await client.get(avatar_url(public), headers=alice.headers)).content == png
    assert (await put(client, admin, private, image("JPEG"))).status_code == 200
    assert (await client.delete(avatar_url(private), headers=admin.headers)).status_code == 200
    assert await stored(resources, private) == 0
    # A deleted persona's avatar is gone with it.
    assert (await client.delete(f"{BASE}/{public['id']}", headers=alice.headers)).status_code == 200
    assert (await client.get(avatar_url(public), headers=alice.headers)).status_code == 404


def card_text(card) -> str:
    return base64.b64encode(json.dumps(card).encode()).decode()


async def test_a_png_cards_picture_becomes_the_avatar_without_the_cards_text(client, alice):
    name = f"Painted {uuid.uuid4().hex[:8]}"
    text = card_text(v2_card(name=name))
    upload = image("PNG", colour=(10, 120, 240), size=(30, 45), text={"chara": text})
    r = await client.post(f"{BASE}/import", files={"file": ("card.png", upload)}, headers=alice.headers)
    assert r.status_code == 201, r.text
    assert r.json()["message"].endswith("its picture is the persona's avatar")
    r = await client.get(avatar_url(r.json()["persona"]), headers=alice.headers)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert pixels(r.content) == pixels(upload)
    # The card's text (its prompt, for the owner's eyes only) is not in the picture anyone may fetch.
    assert text_chunks(r.content, limit=10**6) == [] and text.encode() not in r.content
    assert text_chunks(upload, limit=10**6) != []

    # A JSON card has no picture.
    r = await client.post(f"{BASE}/import", json=v2_card(name=f"Plain {uuid.uuid4().hex[:8]}"), headers=alice.headers)
    assert r.status_code == 201 and "avatar" not in r.json()["message"]
    assert (await client.get(avatar_url(r.json()["persona"]), headers=alice.headers)).status_code == 404


def cards_in(png: bytes) -> dict[str, dict]:
    with Image.open(io.BytesIO(png)) as opened:
        opened.verify()  # a well-formed PNG, every chunk's CRC included
    with Image.open(io.BytesIO(png)) as opened:
        opened.load()
        assert opened.format == "PNG"
        return {key: json.loads(base64.b64decode(value)) for key, value in opened.text.items()}


async def test_a_png_export_carries_v2_and_v3_cards_on_the_avatar(client, alice):
    persona = await create(client, alice, greetings=["Hello there."])
    avatar = image("PNG", colour=(5, 200, 5), size=(12, 18))
    assert (await put(client, alice, persona, avatar)).status_code == 200

    r = await client.get(f"{BASE}/{persona['id']}/export", params={"format": "png"}, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["content-disposition"].endswith('.png"')
    cards = cards_in(r.content)
    assert set(cards) == {"chara", "ccv3"}
    assert cards["chara"]["spec"] == "chara_card_v2" and cards["chara"]["spec_version"] == "2.0"
    assert cards["ccv3"]["spec"] == "chara_card_v3" and cards["ccv3"]["spec_version"] == "3.0"
    for card in cards.values():
        assert card["data"]["name"] == persona["name"]
        assert card["data"]["description"] == persona["description"]
    assert cards["ccv3"]["data"]["group_only_greetings"] == []
    assert pixels(r.content) == pixels(avatar)

    # The card imports again (V3 read first), its picture with it.
    assert (await client.delete(f"{BASE}/{persona['id']}", headers=alice.headers)).status_code == 200
    headers = {**alice.headers, "content-type": "image/png"}
    again = await client.post(f"{BASE}/import", content=r.content, headers=headers)
    assert again.status_code == 201, again.text
    assert again.json()["message"].startswith(f"Persona {persona['name']} imported from a Character Card V3")
    got = await client.get(avatar_url(again.json()["persona"]), headers=alice.headers)
    assert pixels(got.content) == pixels(avatar)


async def test_a_png_export_without_a_png_avatar_draws_a_plain_picture(client, alice, bob):
    plain = await create(client, alice, visibility="public")
    photo = await create(client, alice)
    assert (await put(client, alice, photo, image("JPEG"))).status_code == 200
    for persona in (plain, photo):
        r = await client.get(f"{BASE}/{persona['id']}/export?format=png", headers=alice.headers)
        assert r.status_code == 200, r.text
        assert cards_in(r.content)["chara"]["data"]["name"] == persona["name"]
        with Image.open(io.BytesIO(r.content)) as opened:
            assert opened.size == (400, 600)
            assert len(opened.convert("RGB").getcolors() or []) == 1  # one colour
    # Export is the owner's, as for the other formats.
    r = await client.get(f"{BASE}/{plain['id']}/export?format=png", headers=bob.headers)
    assert r.status_code == 403
    r = await client.get(f"{BASE}/{plain['id']}/export?format=gif", headers=alice.headers)
    assert r.status_code == 400 and r.json()["error"]["field"] == "format"
