"""Analytics (contract section 16): a persona's stats count the turns it served per version, variant, day and
model, with their tokens, errors and feedback; usage shows a caller their own turns, and an admin everyone's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.conftest import persona_body
from tests.waiting import eventually

PERSONAS = "/api/v1/chat/personas"
ROW_FIELDS = {
    "key",
    "turns",
    "users",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "ttft_ms_p50",
    "ttft_ms_p95",
    "errors",
    "incomplete",
    "feedback_up",
    "feedback_down",
}


async def make_persona(http, account, **fields) -> dict[str, Any]:
    r = await http.post(
        PERSONAS, json=persona_body(model_settings={"provider": "openai"}, **fields), headers=account.headers
    )
    assert r.status_code == 201, r.text
    return r.json()["persona"]


async def turn(http, fake_llm, account, persona_id, *, model=None, fail=False, **script) -> str:
    fake_llm.script(status=500) if fail else fake_llm.script(chunks=("ok",), **script)
    body: dict[str, Any] = {"message": "hi", "persona_id": persona_id}
    if model:
        body["model"] = model
    r = await http.post("/api/v1/chat", json=body, headers=account.headers)
    assert r.status_code == (502 if fail else 200), r.text
    return r.headers.get("x-persona-turn-id", "")


async def rows_once(http, path, account, turns: int, **params) -> list[dict[str, Any]]:
    """The rows once they count ``turns`` turns in all (records are written within a second of a turn's end)."""
    found: list[dict[str, Any]] = []

    async def counted() -> bool:
        r = await http.get(path, params=params, headers=account.headers)
        assert r.status_code == 200, r.text
        found[:] = r.json()["rows"]
        return sum(row["turns"] for row in found) == turns

    assert await eventually(counted), found
    return found


async def test_stats_count_what_was_sent_per_version_model_variant_and_day(llm_client, fake_llm, alice, bob):
    persona = await make_persona(llm_client, alice, visibility="public")
    pid = persona["id"]
    up = await turn(llm_client, fake_llm, alice, pid, input_tokens=10, cached_tokens=4, output_tokens=3)
    await turn(llm_client, fake_llm, bob, pid, input_tokens=20, output_tokens=5)
    r = await llm_client.put(f"{PERSONAS}/{pid}", json={"description": "second"}, headers=alice.headers)
    assert r.status_code == 200 and r.json()["persona"]["version"] == 2
    down = await turn(llm_client, fake_llm, alice, pid, model="gpt-b", input_tokens=7, output_tokens=1)
    await turn(llm_client, fake_llm, alice, pid, model="gpt-b", fail=True)
    for turn_id, rating in ((up, 1), (down, -1)):
        r = await llm_client.post(f"/api/v1/turns/{turn_id}/feedback", json={"rating": rating}, headers=alice.headers)
        assert r.status_code == 200, r.text
    fake_llm.script(chunks=("tried",))
    r = await llm_client.post(f"{PERSONAS}/preview", json={"persona_id": pid, "message": "hi"}, headers=alice.headers)
    assert r.status_code == 200, r.text

    stats = f"{PERSONAS}/{pid}/stats"
    by_version = await rows_once(llm_client, stats, alice, 5, by="version")
    assert all(set(row) == ROW_FIELDS for row in by_version)
    one, two = by_version
    assert (one["key"], one["turns"], one["users"]) == (1, 2, 2)
    assert (one["input_tokens"], one["output_tokens"], one["cached_input_tokens"]) == (30, 8, 4)
    assert (one["errors"], one["feedback_up"], one["feedback_down"]) == (0, 1, 0)
    assert one["ttft_ms_p50"] is not None and one["ttft_ms_p50"] <= one["ttft_ms_p95"]
    assert (two["key"], two["turns"], two["users"]) == (2, 3, 1)  # two chats and the preview
    assert (two["errors"], two["feedback_up"], two["feedback_down"], two["incomplete"]) == (1, 0, 1, 0)
    assert two["input_tokens"] == 7 + 11  # the preview's: the fake model's default

    by_model = {row["key"]: row for row in await rows_once(llm_client, stats, alice, 5, by="model")}
    assert by_model["gpt-b"]["turns"] == 2 and by_model["gpt-b"]["errors"] == 1
    by_variant = {row["key"]: row["turns"] for row in await rows_once(llm_client, stats, alice, 5, by="variant")}
    assert by_variant == {"production": 4, "pinned": 1}  # the preview of a saved version
    (today,) = await rows_once(llm_client, stats, alice, 5, by="day")
    assert today["key"] == datetime.now(UTC).date().isoformat()
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    r = await llm_client.get(stats, params={"from": tomorrow}, headers=alice.headers)
    assert r.status_code == 400 and "`from`" in r.json()["message"]  # not before the default `to`
    r = await llm_client.get(stats, params={"from": tomorrow, "to": tomorrow + "T12:00:00Z"}, headers=alice.headers)
    assert r.status_code == 200 and r.json()["rows"] == []


async def test_stats_are_for_the_owner_and_admins(llm_client, fake_llm, alice, bob, admin):
    public = await make_persona(llm_client, alice, visibility="public")
    private = await make_persona(llm_client, alice)
    await turn(llm_client, fake_llm, alice, public["id"])
    assert (await llm_client.get(f"{PERSONAS}/{public['id']}/stats", headers=bob.headers)).status_code == 403
    assert (await llm_client.get(f"{PERSONAS}/{private['id']}/stats", headers=bob.headers)).status_code == 404
    assert await rows_once(llm_client, f"{PERSONAS}/{public['id']}/stats", admin, 1)


async def test_bad_parameters_are_400s_naming_them(llm_client, alice):
    persona = await make_persona(llm_client, alice)
    for path in (f"{PERSONAS}/{persona['id']}/stats", "/api/v1/usage"):
        for params, named in (
            ({"by": "colour"}, "by"),
            ({"from": "yesterday"}, "from"),
            ({"to": "2026-13-40"}, "to"),
            ({"from": "2026-12-02", "to": "2026-12-01"}, "from"),
        ):
            r = await llm_client.get(path, params=params, headers=alice.headers)
            assert r.status_code == 400, (path, params, r.text)
            assert f"`{named}`" in r.json()["message"], r.text
    r = await llm_client.get("/api/v1/usage", params={"by": "version"}, headers=alice.headers)
    assert r.status_code == 400  # a persona's grouping, not usage's


async def test_usage_shows_callers_their_own_turns_and_admins_everyones(llm_client, fake_llm, alice, bob, admin):
    since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    mine = await make_persona(llm_client, alice)
    theirs = await make_persona(llm_client, bob)
    for _ in range(3):
        await turn(llm_client, fake_llm, alice, mine["id"], input_tokens=5, output_tokens=2)
    await turn(llm_client, fake_llm, bob, theirs["id"])

    (own,) = await rows_once(llm_client, "/api/v1/usage", alice, 3, by="persona", **{"from": since})
    assert (own["key"], own["input_tokens"], own["output_tokens"]) == (mine["id"], 15, 6)
    (key,) = await rows_once(llm_client, "/api/v1/usage", alice, 3, by="key", **{"from": since})
    assert key["key"] == str(alice.key_id)
    assert (await rows_once(llm_client, "/api/v1/usage", bob, 1, by="persona", **{"from": since}))[0]["key"] == theirs[
        "id"
    ]
    r = await llm_client.get("/api/v1/usage", params={"user_id": alice.id}, headers=bob.headers)
    assert r.status_code == 403 and "user_id" in r.json()["message"]

    (hers,) = await rows_once(llm_client, "/api/v1/usage", admin, 3, by="persona", user_id=alice.id, **{"from": since})
    assert hers["key"] == mine["id"]
    r = await llm_client.get("/api/v1/usage", params={"by": "persona", "from": since}, headers=admin.headers)
    everyone = {row["key"]: row["turns"] for row in r.json()["rows"]}
    assert everyone[mine["id"]] == 3 and everyone[theirs["id"]] == 1
