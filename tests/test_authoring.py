"""Authoring routes: versions, dry runs, previews, comparisons and test suites, on real PostgreSQL and Redis."""

from __future__ import annotations

import uuid

import pytest

from providers import ProviderRegistry
from providers.echo import EchoProvider
from tests.conftest import make_settings, persona_body, running
from tests.fakellm import Script
from tests.sse import parse_sse
from tests.waiting import eventually

CHAT = "/api/v1/chat"
PERSONAS = "/api/v1/chat/personas"


async def make_persona(http, account, **fields):
    r = await http.post(PERSONAS, json=persona_body(**fields), headers=account.headers)
    assert r.status_code == 201, r.text
    return r.json()["persona"]


async def edit(http, account, persona_id, **fields):
    r = await http.put(f"{PERSONAS}/{persona_id}", json=fields, headers=account.headers)
    assert r.status_code == 200, r.text
    return r.json()["persona"]


async def stored_rows(resources):
    return (
        await resources.pool.fetchval("SELECT count(*) FROM conversations"),
        await resources.pool.fetchval("SELECT count(*) FROM messages"),
    )


async def listed_ids(http, account):
    """Every persona id ``account``'s list holds, page by page."""
    ids, offset = set(), 0
    while True:
        r = await http.get(PERSONAS, params={"limit": 200, "offset": offset}, headers=account.headers)
        assert r.status_code == 200, r.text
        page = r.json()
        ids |= {p["id"] for p in page["personas"]}
        offset += 200
        if offset >= page["total"]:
            return ids, page["total"]


async def test_an_admins_list_holds_every_persona_and_a_users_only_public_and_own(client, alice, bob, admin):
    private = await make_persona(client, alice, visibility="private")
    public = await make_persona(client, bob, visibility="public")
    admin_sees, admin_total = await listed_ids(client, admin)
    bob_sees, bob_total = await listed_ids(client, bob)
    alice_sees, _ = await listed_ids(client, alice)
    assert {private["id"], public["id"]} <= admin_sees
    assert public["id"] in bob_sees and private["id"] not in bob_sees
    assert {private["id"], public["id"]} <= alice_sees
    assert admin_total == len(admin_sees) and bob_total == len(bob_sees) and admin_total > bob_total


# Who may use the authoring routes ---------------------------------------------------------------------


@pytest.mark.parametrize("visibility", ["public", "private"])
@pytest.mark.parametrize("who", ["owner", "other", "admin"])
async def test_authoring_routes_are_for_the_owner_and_admins(client, alice, bob, admin, resources, who, visibility):
    persona = await make_persona(client, alice, visibility=visibility)
    await edit(client, alice, persona["id"], description="second")
    test = (
        await client.post(
            f"{PERSONAS}/{persona['id']}/tests",
            json={"name": "greets", "message": "hi", "expect": {"contains": ["hi"]}},
            headers=alice.headers,
        )
    ).json()["test"]
    account = {"owner": alice, "other": bob, "admin": admin}[who]
    may_edit = who in ("owner", "admin")
    refused = 403 if visibility == "public" else 404
    ok = 200 if may_edit else refused
    base = f"{PERSONAS}/{persona['id']}"
    saved = {"persona_id": persona["id"], "version": 1}
    draft = {"persona": persona_body()}
    before = await stored_rows(resources)

    calls = [
        ("GET", f"{base}/versions", None, ok),
        ("GET", f"{base}/versions/1", None, ok),
        ("POST", f"{base}/render", {"message": "hi"}, ok),
        ("POST", f"{base}/render", {"message": "hi", "version": 1}, ok),
        ("POST", f"{PERSONAS}/preview", {**saved, "message": "hi"}, ok),
        ("POST", f"{PERSONAS}/compare", {"message": "hi", "candidates": [saved, draft]}, ok),
        ("GET", f"{base}/tests", None, ok),
        (
            "POST",
            f"{base}/tests",
            {"name": "n", "message": "m", "expect": {"max_chars": 9}},
            201 if may_edit else refused,
        ),
        ("POST", f"{base}/tests/run", {}, ok),
        ("POST", f"{base}/versions/1/restore", None, ok),
        ("DELETE", f"{base}/tests/{test['id']}", None, ok),
    ]
    for method, url, body, expected in calls:
        r = await client.request(method, url, json=body, headers=account.headers)
        assert r.status_code == expected, (method, url, r.text)
        if expected in (403, 404):
            assert r.json()["success"] is False
    # Drafts are anyone's to try.
    assert (
        await client.post(f"{PERSONAS}/render", json={**draft, "message": "hi"}, headers=account.headers)
    ).is_success
    assert await stored_rows(resources) == before

    # What was refused changed nothing.
    versions = (await client.get(f"{base}/versions", headers=alice.headers)).json()
    assert versions["total"] == (3 if may_edit else 2)
    tests = (await client.get(f"{base}/tests", headers=alice.headers)).json()
    assert [t["name"] for t in tests["tests"]] == (["n"] if may_edit else ["greets"])


async def test_an_unknown_persona_is_a_404_on_every_authoring_route(client, alice):
    base = f"{PERSONAS}/{uuid.uuid4()}"
    for method, url, body in [
        ("GET", f"{base}/versions", None),
        ("GET", f"{base}/versions/1", None),
        ("POST", f"{base}/versions/1/restore", None),
        ("POST", f"{base}/render", {"message": "hi"}),
        ("GET", f"{base}/tests", None),
        ("POST", f"{base}/tests/run", None),
    ]:
        r = await client.request(method, url, json=body, headers=alice.headers)
        assert r.status_code == 404, (method, url, r.text)


# Versions ---------------------------------------------------------------------------------------------


async def test_versions_are_listed_newest_first_and_read_back_whole(client, alice):
    first = await make_persona(
        client,
        alice,
        system_prompt="You are {{persona_name}}, version one.",
        model_settings={"temperature": 0.3},
        tools=[{"name": "lookup", "parameters": {"type": "object"}}],
        extensions={"card": {"creator_notes": "v1 notes"}},
        change_note="first draft",
    )
    pid = first["id"]
    await edit(client, alice, pid, system_prompt="Version two of {{persona_name}}.", change_note="shorter")
    await edit(client, alice, pid, extensions={"card": {"creator_notes": "v3 notes"}}, tools=[])

    r = await client.get(f"{PERSONAS}/{pid}/versions", headers=alice.headers)
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is True and body["total"] == 3
    assert [v["version"] for v in body["versions"]] == [3, 2, 1]
    assert [v["change_note"] for v in body["versions"]] == [None, "shorter", "first draft"]
    assert {v["created_by"] for v in body["versions"]} == {alice.id}
    assert set(body["versions"][0]) == {"version", "created_at", "created_by", "change_note"}

    page = (await client.get(f"{PERSONAS}/{pid}/versions?limit=1&offset=1", headers=alice.headers)).json()
    assert [v["version"] for v in page["versions"]] == [2] and page["total"] == 3

    old = (await client.get(f"{PERSONAS}/{pid}/versions/1", headers=alice.headers)).json()["persona"]
    assert old["version"] == 1 and old["id"] == pid
    for field in ("name", "description", "system_prompt", "personality_traits", "capabilities", "tools"):
        assert old[field] == first[field], field
    assert old["model_settings"]["temperature"] == 0.3
    assert old["extensions"] == {"card": {"creator_notes": "v1 notes"}}
    assert set(old) == set(first)


@pytest.mark.parametrize(
    ("version", "status"), [("9", 404), ("0", 400), ("-1", 400), ("2147483648", 400), ("two", 400), ("1.5", 400)]
)
async def test_a_missing_or_malformed_version_names_the_version(client, alice, version, status):
    persona = await make_persona(client, alice)
    for method, url in [
        ("GET", f"{PERSONAS}/{persona['id']}/versions/{version}"),
        ("POST", f"{PERSONAS}/{persona['id']}/versions/{version}/restore"),
    ]:
        r = await client.request(method, url, headers=alice.headers)
        assert r.status_code == status, r.text
        assert r.json()["error"]["field"] == "version"
        assert "version" in r.json()["message"]
    assert (await client.get(f"{PERSONAS}/{persona['id']}", headers=alice.headers)).json()["persona"]["version"] == 1


async def test_restore_saves_the_old_content_as_a_new_version(client, alice):
    first = await make_persona(
        client, alice, system_prompt="Original {{persona_name}}.", extensions={"keep": [1, 2]}, visibility="public"
    )
    pid = first["id"]
    await edit(
        client,
        alice,
        pid,
        name=first["name"] + " renamed",
        system_prompt="Edited {{persona_name}}.",
        personality_traits={"tone": "loud"},
        extensions={},
        visibility="private",
    )
    r = await client.post(f"{PERSONAS}/{pid}/versions/1/restore", headers=alice.headers)
    assert r.status_code == 200, r.text
    restored = r.json()["persona"]
    assert restored["version"] == 3
    content = ("name", "description", "system_prompt", "personality_traits", "capabilities", "model_settings")
    for field in (*content, "tools", "visibility", "extensions"):
        assert restored[field] == first[field], field
    assert restored["extensions"] == {"keep": [1, 2]}

    now = (await client.get(f"{PERSONAS}/{pid}", headers=alice.headers)).json()["persona"]
    assert now["system_prompt"] == "Original {{persona_name}}." and now["version"] == 3
    versions = (await client.get(f"{PERSONAS}/{pid}/versions", headers=alice.headers)).json()["versions"]
    assert next((v["version"], v["change_note"]) for v in versions) == (3, "Restored version 1")
    # Version 2 is still there, unchanged.
    second = (await client.get(f"{PERSONAS}/{pid}/versions/2", headers=alice.headers)).json()["persona"]
    assert second["system_prompt"] == "Edited {{persona_name}}." and second["visibility"] == "private"


async def test_restoring_a_name_now_taken_by_another_persona_is_a_409(client, alice):
    persona = await make_persona(client, alice)
    old_name = persona["name"]
    await edit(client, alice, persona["id"], name=old_name + " 2")
    await make_persona(client, alice, name=old_name.upper())
    r = await client.post(f"{PERSONAS}/{persona['id']}/versions/1/restore", headers=alice.headers)
    assert r.status_code == 409 and r.json()["error"]["field"] == "name"
    assert (await client.get(f"{PERSONAS}/{persona['id']}/versions", headers=alice.headers)).json()["total"] == 2


# Dry runs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "path"),
    [
        ({"provider": "openai", "model": "gpt-render", "temperature": 0.4}, "/v1/chat/completions"),
        ({"provider": "anthropic", "model": "claude-render", "max_tokens": 256, "top_p": 0.9}, "/v1/messages"),
    ],
)
async def test_render_is_exactly_what_a_chat_sends_and_calls_no_provider(llm_client, fake_llm, alice, settings, path):
    persona = await make_persona(
        llm_client,
        alice,
        model_settings=settings,
        tools=[{"name": "weather", "description": "Weather", "parameters": {"type": "object", "properties": {}}}],
    )
    r = await llm_client.post(f"{PERSONAS}/{persona['id']}/render", json={"message": "Hello?"}, headers=alice.headers)
    assert r.status_code == 200, r.text
    rendered = r.json()
    assert fake_llm.chat_requests() == []
    assert rendered["success"] is True
    assert rendered["provider"] == settings["provider"] and rendered["model"] == settings["model"]
    assert rendered["system_prompt"].startswith(f"You are {persona['name']}, talking with Alice.")
    assert "## Personality traits\n- tone: dry" in rendered["system_prompt"]

    fake_llm.script()
    chat = await llm_client.post(CHAT, json={"message": "Hello?", "persona_id": persona["id"]}, headers=alice.headers)
    assert chat.status_code == 200, chat.text
    assert fake_llm.last_request.path == path
    assert rendered["request"] == fake_llm.last_request.body
    system = fake_llm.last_request.body.get("system") or fake_llm.last_request.body["messages"][0]["content"]
    if isinstance(system, list):  # Anthropic's text blocks, the persona's marked for the prompt cache
        system = "".join(block["text"] for block in system)
    assert system == rendered["system_prompt"]


async def test_render_in_a_conversation_carries_its_history(llm_client, fake_llm, alice, bob):
    persona = await make_persona(llm_client, alice)
    fake_llm.script(chunks=("First answer",))
    first = (
        await llm_client.post(CHAT, json={"message": "First", "persona_id": persona["id"]}, headers=alice.headers)
    ).json()
    conversation_id = first["conversation_id"]
    r = await llm_client.post(
        f"{PERSONAS}/{persona['id']}/render",
        json={"message": "Second", "conversation_id": conversation_id},
        headers=alice.headers,
    )
    assert r.status_code == 200, r.text
    rendered = r.json()["request"]
    assert [(m["role"], m["content"]) for m in rendered["messages"][1:]] == [
        ("user", "First"),
        ("assistant", "First answer"),
        ("user", "Second"),
    ]
    assert len(fake_llm.chat_requests()) == 1

    fake_llm.script()
    await llm_client.post(
        CHAT,
        json={"message": "Second", "conversation_id": conversation_id, "persona_id": persona["id"]},
        headers=alice.headers,
    )
    assert fake_llm.last_request.body == rendered

    # Someone else's conversation is not there for them, even on a persona they may edit.
    theirs = await make_persona(llm_client, bob)
    r = await llm_client.post(
        f"{PERSONAS}/{theirs['id']}/render",
        json={"message": "peek", "conversation_id": conversation_id},
        headers=bob.headers,
    )
    assert r.status_code == 404 and r.json()["error"]["field"] == "conversation_id"


async def test_render_of_an_older_version_uses_that_versions_prompt(client, alice):
    persona = await make_persona(client, alice, system_prompt="Old {{persona_name}}.")
    await edit(client, alice, persona["id"], system_prompt="New {{persona_name}}.")
    url = f"{PERSONAS}/{persona['id']}/render"
    old = (await client.post(url, json={"message": "x", "version": 1}, headers=alice.headers)).json()
    new = (await client.post(url, json={"message": "x"}, headers=alice.headers)).json()
    assert old["system_prompt"].startswith(f"Old {persona['name']}.")
    assert new["system_prompt"].startswith(f"New {persona['name']}.")
    # The echo provider's body is provider-neutral: the system prompt in its own field.
    assert old["provider"] == "echo" and old["request"]["system"] == old["system_prompt"]
    assert old["request"]["messages"] == [{"role": "user", "content": "x", "tool_calls": [], "tool_call_id": None}]
    r = await client.post(url, json={"message": "x", "version": 5}, headers=alice.headers)
    assert r.status_code == 404 and r.json()["error"]["field"] == "version"


async def test_draft_render_needs_no_saved_persona_and_saves_none(llm_client, fake_llm, alice, resources):
    before = await resources.pool.fetchval("SELECT count(*) FROM personas")
    draft = persona_body(
        name="Draft Dora",
        system_prompt="You are {{persona_name}}. {{traits}}",
        model_settings={"provider": "anthropic", "model": "claude-draft"},
    )
    r = await llm_client.post(f"{PERSONAS}/render", json={"persona": draft, "message": "Hi"}, headers=alice.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["provider"] == "anthropic" and body["model"] == "claude-draft"
    assert body["system_prompt"] == "You are Draft Dora. - tone: dry\n\n## Capabilities\n- math: yes"
    assert body["request"]["system"] == [
        {"type": "text", "text": body["system_prompt"], "cache_control": {"type": "ephemeral"}}
    ]
    assert body["request"]["messages"] == [{"role": "user", "content": "Hi"}]
    assert await resources.pool.fetchval("SELECT count(*) FROM personas") == before
    assert fake_llm.chat_requests() == []


BAD_DRAFTS = [
    {"id": str(uuid.uuid4())},
    {"version": 7},
    {"colour": "blue"},
    {"name": ""},
    {"name": "two\nlines"},
    {"name": 42},
    {"system_prompt": "Hello {{mood}}"},
    {"visibility": "friends"},
    {"personality_traits": ["not", "an", "object"]},
    {"model_settings": {"temperature": 3}},
    {"model_settings": {"seed": 1}},
    {"tools": [{"name": "bad name!"}]},
    {"tools": [{"name": "t", "parameters": {"type": "string"}}]},
    {"tools": [{"name": "t"}, {"name": "t"}]},
]


@pytest.mark.parametrize("fields", BAD_DRAFTS)
async def test_drafts_are_refused_like_saved_personas(client, alice, fields):
    saved = await client.post(PERSONAS, json=persona_body(**fields), headers=alice.headers)
    assert saved.status_code == 400
    field = saved.json()["error"]["field"]
    code = saved.json()["error"]["code"]
    draft = persona_body(**fields)
    for url, body, where in [
        (f"{PERSONAS}/render", {"persona": draft, "message": "hi"}, "persona."),
        (f"{PERSONAS}/preview", {"persona": draft, "message": "hi"}, "persona."),
        (
            f"{PERSONAS}/compare",
            {"message": "hi", "candidates": [{"persona": persona_body()}, {"persona": draft}]},
            "candidates[1].persona.",
        ),
    ]:
        r = await client.post(url, json=body, headers=alice.headers)
        assert r.status_code == 400, (url, r.text)
        assert r.json()["error"]["code"] == code, (url, r.text)
        assert r.json()["error"]["field"] == where + field, (url, r.text)
        assert where + field in r.json()["message"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"message": ""}, 400, "message"),
        ({"message": "x" * 2001}, 413, "message"),
        ({}, 400, "message"),
        ({"message": "hi", "version": 0}, 400, "version"),
        ({"message": "hi", "conversation_id": "nope"}, 400, "conversation_id"),
        ({"message": "hi", "conversation_id": str(uuid.uuid4())}, 404, "conversation_id"),
        ({"message": "hi", "stream": True}, 400, "stream"),
    ],
)
async def test_bad_render_requests_name_the_field(llm_client, fake_llm, alice, body, status, field):
    persona = await make_persona(llm_client, alice)
    r = await llm_client.post(f"{PERSONAS}/{persona['id']}/render", json=body, headers=alice.headers)
    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] == field
    assert fake_llm.chat_requests() == []


# Previews ---------------------------------------------------------------------------------------------


async def test_preview_of_a_draft_calls_the_provider_and_stores_nothing(llm_client, fake_llm, alice, resources):
    before = await stored_rows(resources)
    fake_llm.script(chunks=("Ahoy", " there"), input_tokens=5, output_tokens=2)
    draft = persona_body(name="Pirate Pete", system_prompt="You are {{persona_name}}, a pirate.")
    r = await llm_client.post(f"{PERSONAS}/preview", json={"persona": draft, "message": "Hi"}, headers=alice.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True and body["stored"] is False
    assert body["response"] == "Ahoy there"
    assert body["conversation_id"] is None and body["message_id"] is None
    assert body["persona"]["name"] == "Pirate Pete" and body["persona"]["version"] == 0
    assert body["persona_source"] == "request" and body["provider"] == "openai"
    assert body["usage"] == {"input_tokens": 5, "output_tokens": 2, "cached_input_tokens": 0}
    sent = fake_llm.last_request.body
    assert sent["messages"][0]["content"].startswith("You are Pirate Pete, a pirate.")
    assert sent["messages"][-1] == {"role": "user", "content": "Hi"}
    assert await stored_rows(resources) == before


async def test_preview_of_a_saved_version_streams_and_stores_nothing(llm_client, fake_llm, alice, resources):
    persona = await make_persona(llm_client, alice, system_prompt="Version one of {{persona_name}}.")
    await edit(llm_client, alice, persona["id"], system_prompt="Version two of {{persona_name}}.")
    before = await stored_rows(resources)
    fake_llm.script(chunks=("a", "b"))
    r = await llm_client.post(
        f"{PERSONAS}/preview",
        json={"persona_id": persona["id"], "version": 1, "message": "go", "stream": True},
        headers=alice.headers,
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events, _ = parse_sse(r.text)
    assert [e.event for e in events] == ["start", "content", "content", "usage", "done", None]
    assert events[0].json["persona"] == {"id": persona["id"], "name": persona["name"], "version": 1}
    assert events[0].json["conversation_id"] is None
    assert fake_llm.last_request.body["messages"][0]["content"].startswith(f"Version one of {persona['name']}.")
    assert await stored_rows(resources) == before


async def test_preview_provider_failure_is_an_http_status_and_stores_nothing(llm_client, fake_llm, alice, resources):
    persona = await make_persona(llm_client, alice)
    before = await stored_rows(resources)
    fake_llm.script(status=429, headers={"retry-after": "3"})
    r = await llm_client.post(
        f"{PERSONAS}/preview", json={"persona_id": persona["id"], "message": "hi"}, headers=alice.headers
    )
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    assert r.json()["error"]["code"] == "provider_rate_limited"
    assert await stored_rows(resources) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"message": "hi"}, "persona_id"),
        ({"message": "hi", "persona_id": "__saved__", "persona": "__draft__"}, "persona_id"),
        ({"message": "hi", "persona": "__draft__", "version": 1}, "version"),
        ({"message": "hi", "persona_id": str(uuid.uuid4())}, "persona_id"),
        ({"message": "hi", "persona_id": "__saved__", "version": 3}, "version"),
        ({"message": "hi", "persona_id": "__saved__", "provider": "nowhere"}, "provider"),
        ({"message": "", "persona": "__draft__"}, "message"),
        ({"message": "hi", "persona": "__draft__", "conversation_id": str(uuid.uuid4())}, "conversation_id"),
    ],
)
async def test_bad_preview_requests_name_the_field(client, alice, resources, body, field):
    persona = await make_persona(client, alice)
    replace = {"__saved__": persona["id"], "__draft__": persona_body()}
    body = {k: replace.get(v, v) if isinstance(v, str) else v for k, v in body.items()}
    before = await stored_rows(resources)
    r = await client.post(f"{PERSONAS}/preview", json=body, headers=alice.headers)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["field"] == field
    assert await stored_rows(resources) == before


# Comparisons ------------------------------------------------------------------------------------------


async def test_compare_answers_every_candidate_and_one_failure_spares_the_others(
    llm_client, fake_llm, alice, resources
):
    failing = await make_persona(llm_client, alice, model_settings={"provider": "openai", "model": "gpt-down"})
    steady = await make_persona(llm_client, alice, model_settings={"provider": "echo"})
    await edit(llm_client, alice, steady["id"], description="v2")
    before = await stored_rows(resources)
    fake_llm.script(status=500)
    r = await llm_client.post(
        f"{PERSONAS}/compare",
        json={
            "message": "Which is better?",
            "candidates": [
                {"persona_id": failing["id"]},
                {"persona_id": steady["id"], "version": 1},
                {"persona": persona_body(name="Drafty", model_settings={"provider": "echo"})},
            ],
        },
        headers=alice.headers,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True
    results = body["results"]
    assert [x["candidate"] for x in results] == [0, 1, 2]
    down, echo, drafty = results
    assert down["persona"] == {"id": failing["id"], "name": failing["name"], "version": 1}
    assert down["error"]["code"] == "provider_unavailable" and down["error"]["message"]
    assert down["response"] == "" and down["usage"] is None
    assert echo["error"] is None and echo["response"] == "[echo] Which is better?"
    assert echo["persona"] == {"id": steady["id"], "name": steady["name"], "version": 1}
    assert echo["usage"]["output_tokens"] == 4 and echo["latency_ms"] >= 0
    assert drafty["error"] is None and drafty["persona"]["name"] == "Drafty" and drafty["persona"]["version"] == 0
    assert [q.body["model"] for q in fake_llm.chat_requests()] == ["gpt-down"]
    assert await stored_rows(resources) == before


async def test_streaming_compare_tags_every_event_with_its_candidate(llm_client, fake_llm, alice, resources):
    one = await make_persona(llm_client, alice, model_settings={"model": "gpt-a"})
    two = await make_persona(llm_client, alice, model_settings={"model": "gpt-b"})
    before = await stored_rows(resources)
    # Both answer slowly: run one after the other, candidate 0 would finish before candidate 1 starts.
    fake_llm.default = Script(chunks=("x", "y", "z"), chunk_delay=0.25)
    r = await llm_client.post(
        f"{PERSONAS}/compare",
        json={"message": "go", "stream": True, "candidates": [{"persona_id": one["id"]}, {"persona_id": two["id"]}]},
        headers=alice.headers,
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events, _ = parse_sse(r.text)
    assert events[-1].data == "[DONE]" and [e.data for e in events].count("[DONE]") == 1
    tagged = events[:-1]
    for event in tagged:
        assert event.json["type"] == event.event and event.json["candidate"] in (0, 1)
    ids = [e.id for e in tagged]
    assert all(ids) and len(set(ids)) == len(ids)
    for index, persona in enumerate((one, two)):
        mine = [e for e in tagged if e.json["candidate"] == index]
        assert [e.event for e in mine] == ["start", "content", "content", "content", "usage", "done"]
        assert mine[0].json["persona"]["id"] == persona["id"]
        assert mine[0].json["model"] == ("gpt-a", "gpt-b")[index]
        assert "".join(e.json["content"] for e in mine if e.event == "content") == "xyz"
    order = [e.json["candidate"] for e in tagged]
    assert order.index(1) < len(order) - 1 - order[::-1].index(0), "the candidates did not run at the same time"
    assert await stored_rows(resources) == before


async def test_streaming_compare_reports_a_candidate_that_fails_before_answering(llm_client, fake_llm, alice):
    down = await make_persona(llm_client, alice, model_settings={"provider": "anthropic"})
    fake_llm.script(status=503)
    r = await llm_client.post(
        f"{PERSONAS}/compare",
        json={
            "message": "hello",
            "stream": True,
            "candidates": [{"persona_id": down["id"]}, {"persona": persona_body(model_settings={"provider": "echo"})}],
        },
        headers=alice.headers,
    )
    events, _ = parse_sse(r.text)
    failed = [e for e in events[:-1] if e.json["candidate"] == 0]
    assert [e.event for e in failed] == ["error"]
    assert failed[0].json["code"] == "provider_unavailable"
    answered = [e for e in events[:-1] if e.json["candidate"] == 1]
    assert next(e.event for e in answered) == "start" and answered[-1].event == "done"
    assert events[-1].data == "[DONE]"


async def test_leaving_a_streaming_compare_cancels_every_candidate_upstream(llm_client, fake_llm, alice):
    fake_llm.default = Script(chunks=tuple(f"w{n} " for n in range(40)), chunk_delay=0.1)
    body = {
        "message": "long",
        "stream": True,
        "candidates": [{"persona": persona_body(model_settings={"model": m})} for m in ("gpt-a", "gpt-b")],
    }
    async with llm_client.stream("POST", f"{PERSONAS}/compare", json=body, headers=alice.headers) as r:
        seen = ""
        async for line in r.aiter_lines():
            seen += line + "\n"
            if seen.count("event: content") >= 4:
                break
    upstream = fake_llm.chat_requests()
    assert len(upstream) == 2
    for request in upstream:
        assert await request.wait_disconnected(within=2.0), "a candidate kept talking to its provider"
        assert not request.completed


@pytest.mark.parametrize("count", [0, 1, 5])
async def test_compare_takes_two_to_four_candidates(client, alice, count):
    candidates = [{"persona": persona_body()} for _ in range(count)]
    r = await client.post(
        f"{PERSONAS}/compare", json={"message": "hi", "candidates": candidates}, headers=alice.headers
    )
    assert r.status_code == 400
    assert r.json()["error"]["field"] == "candidates" and "candidates" in r.json()["message"]


async def test_compare_refuses_a_persona_the_caller_may_not_edit_before_calling_anyone(
    llm_client, fake_llm, alice, bob
):
    theirs = await make_persona(llm_client, bob, visibility="public")
    r = await llm_client.post(
        f"{PERSONAS}/compare",
        json={"message": "hi", "candidates": [{"persona": persona_body()}, {"persona_id": theirs["id"]}]},
        headers=alice.headers,
    )
    assert r.status_code == 403
    assert fake_llm.chat_requests() == []


# Test suites ------------------------------------------------------------------------------------------


async def add_test(http, account, persona_id, **body):
    r = await http.post(f"{PERSONAS}/{persona_id}/tests", json=body, headers=account.headers)
    assert r.status_code == 201, r.text
    return r.json()["test"]


async def test_tests_are_added_listed_and_deleted(client, alice):
    persona = await make_persona(client, alice)
    first = await add_test(client, alice, persona["id"], name="greets", message="hello", expect={"contains": ["hello"]})
    assert first["name"] == "greets" and first["persona_id"] == persona["id"]
    assert first["expect"] == {"contains": ["hello"], "not_contains": [], "regex": None, "max_chars": None}
    assert first["created_by"] == alice.id
    second = await add_test(client, alice, persona["id"], name="short", message="hi", expect={"max_chars": 50})
    listed = (await client.get(f"{PERSONAS}/{persona['id']}/tests", headers=alice.headers)).json()
    assert listed["success"] is True and listed["total"] == 2
    assert [t["id"] for t in listed["tests"]] == [first["id"], second["id"]]

    r = await client.delete(f"{PERSONAS}/{persona['id']}/tests/{first['id']}", headers=alice.headers)
    assert r.status_code == 200
    listed = (await client.get(f"{PERSONAS}/{persona['id']}/tests", headers=alice.headers)).json()
    assert [t["id"] for t in listed["tests"]] == [second["id"]]
    again = await client.delete(f"{PERSONAS}/{persona['id']}/tests/{first['id']}", headers=alice.headers)
    assert again.status_code == 404 and again.json()["error"]["field"] == "test_id"
    # A test belongs to its persona: another persona's id does not reach it.
    other = await make_persona(client, alice)
    r = await client.delete(f"{PERSONAS}/{other['id']}/tests/{second['id']}", headers=alice.headers)
    assert r.status_code == 404


async def test_tests_go_with_their_persona(client, alice, resources):
    persona = await make_persona(client, alice)
    await add_test(client, alice, persona["id"], name="t", message="m", expect={"max_chars": 5})
    await resources.pool.execute("DELETE FROM personas WHERE id = $1", uuid.UUID(persona["id"]))
    assert (
        await resources.pool.fetchval(
            "SELECT count(*) FROM persona_tests WHERE persona_id = $1", uuid.UUID(persona["id"])
        )
        == 0
    )


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"name": "t", "message": "m", "expect": {}}, 400, "expect"),
        ({"name": "t", "message": "m", "expect": {"contains": [], "not_contains": []}}, 400, "expect"),
        ({"name": "t", "message": "m", "expect": {"regex": "(unclosed"}}, 400, "expect.regex"),
        ({"name": "t", "message": "m", "expect": {"max_chars": 0}}, 400, "expect.max_chars"),
        ({"name": "t", "message": "m", "expect": {"contains": [""]}}, 400, "expect.contains[0]"),
        ({"name": "t", "message": "m", "expect": {"contains": ["a"] * 21}}, 400, "expect.contains"),
        ({"name": "t", "message": "m", "expect": {"contains": "a"}}, 400, "expect.contains"),
        ({"name": "t", "message": "m", "expect": {"contains": ["a"], "maybe": 1}}, 400, "expect.maybe"),
        ({"name": "", "message": "m", "expect": {"max_chars": 5}}, 400, "name"),
        ({"name": "   ", "message": "m", "expect": {"max_chars": 5}}, 400, "name"),
        ({"name": "t", "message": "", "expect": {"max_chars": 5}}, 400, "message"),
        ({"name": "t", "message": "x" * 32_001, "expect": {"max_chars": 5}}, 413, "message"),
        ({"name": "t", "expect": {"max_chars": 5}}, 400, "message"),
    ],
)
async def test_bad_tests_are_refused_by_field(client, alice, body, status, field):
    persona = await make_persona(client, alice)
    r = await client.post(f"{PERSONAS}/{persona['id']}/tests", json=body, headers=alice.headers)
    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] == field
    assert (await client.get(f"{PERSONAS}/{persona['id']}/tests", headers=alice.headers)).json()["total"] == 0


async def test_a_suite_run_reports_passes_and_failures_and_stores_nothing(client, alice, resources):
    persona = await make_persona(client, alice)
    pid = persona["id"]
    # The echo provider answers "[echo] " + the message.
    passing = await add_test(
        client,
        alice,
        pid,
        name="says bonjour",
        message="Bonjour, mon ami",
        expect={
            "contains": ["BONJOUR", "ami"],
            "not_contains": ["sorry"],
            "regex": r"^\[echo\] Bonjour",
            "max_chars": 40,
        },
    )
    failing = await add_test(
        client,
        alice,
        pid,
        name="stays short and polite",
        message="Sorry, this message is long enough to break the limit",
        expect={"contains": ["bonjour"], "not_contains": ["SORRY"], "regex": "^Hello", "max_chars": 20},
    )
    before = await stored_rows(resources)
    r = await client.post(f"{PERSONAS}/{pid}/tests/run", headers=alice.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True and body["passed"] == 1 and body["failed"] == 1
    assert body["persona"]["version"] == 1
    good, bad = body["results"]
    assert isinstance(good.pop("latency_ms"), int) and isinstance(bad.pop("latency_ms"), int)
    assert good == {
        "test_id": passing["id"],
        "name": "says bonjour",
        "passed": True,
        "response": "[echo] Bonjour, mon ami",
        "failures": [],
    }
    assert bad["test_id"] == failing["id"] and bad["passed"] is False
    answer = "[echo] Sorry, this message is long enough to break the limit"
    assert bad["response"] == answer
    assert bad["failures"] == [
        "expected the answer to contain 'bonjour'",
        "expected the answer not to contain 'SORRY'",
        "expected the answer to match the regex '^Hello'",
        f"answer is {len(answer)} characters, more than max_chars 20",
    ]
    assert await stored_rows(resources) == before


async def test_a_suite_runs_against_the_version_asked_for(llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice, system_prompt="Old {{persona_name}}.")
    await edit(llm_client, alice, persona["id"], system_prompt="New {{persona_name}}.")
    for n in range(6):
        await add_test(llm_client, alice, persona["id"], name=f"t{n}", message=f"m{n}", expect={"contains": ["oui"]})
    fake_llm.default = Script(chunks=("Oui", " oui"))
    url = f"{PERSONAS}/{persona['id']}/tests/run"
    r = await llm_client.post(url, json={"version": 1}, headers=alice.headers)
    assert r.status_code == 200, r.text
    assert r.json()["passed"] == 6 and r.json()["persona"]["version"] == 1
    sent = fake_llm.chat_requests()
    assert sorted(q.body["messages"][-1]["content"] for q in sent) == [f"m{n}" for n in range(6)]
    assert all(q.body["messages"][0]["content"].startswith("Old ") for q in sent)
    r = await llm_client.post(url, json={"version": 7}, headers=alice.headers)
    assert r.status_code == 404 and r.json()["error"]["field"] == "version"


async def test_a_provider_error_fails_the_test_with_the_error(llm_client, fake_llm, alice, resources):
    persona = await make_persona(llm_client, alice)
    await add_test(llm_client, alice, persona["id"], name="t", message="m", expect={"max_chars": 500})
    fake_llm.script(status=500)
    before = await stored_rows(resources)
    r = await llm_client.post(f"{PERSONAS}/{persona['id']}/tests/run", headers=alice.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["passed"] == 0 and body["failed"] == 1
    [result] = body["results"]
    assert result["passed"] is False and result["response"] == ""
    assert len(result["failures"]) == 1 and "provider_unavailable" in result["failures"][0]
    assert await stored_rows(resources) == before


async def test_an_empty_suite_passes_vacuously(client, alice):
    persona = await make_persona(client, alice)
    r = await client.post(f"{PERSONAS}/{persona['id']}/tests/run", json={}, headers=alice.headers)
    assert r.status_code == 200
    assert r.json()["passed"] == 0 and r.json()["failed"] == 0 and r.json()["results"] == []


# Concurrency, seen from the provider's side -------------------------------------------------------------


class CountingEcho(EchoProvider):
    """The echo provider, slowed down, counting how many of its answers are in flight at once."""

    def __init__(self, config):
        super().__init__(config, delay=0.05)
        self.in_flight = 0
        self.most = 0

    async def stream(self, request):
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            async for event in super().stream(request):
                yield event
        finally:
            self.in_flight -= 1


@pytest.fixture(scope="module")
async def counting(database_url, redis_url):
    """An app whose echo provider counts concurrent answers; yields (client, provider)."""
    made: list[CountingEcho] = []
    registry = ProviderRegistry.with_builtins(plugins=False)
    registry.register("echo", lambda config: made.append(CountingEcho(config)) or made[-1], replace=True)
    from api.app import create_app

    async with running(create_app(make_settings(database_url, redis_url), registry=registry)) as http:
        yield http, made[0]


async def test_a_suite_runs_four_tests_at_a_time(counting, make_user):
    http, echo = counting
    author = await make_user("author")
    persona = await make_persona(http, author)
    for n in range(9):
        await add_test(http, author, persona["id"], name=f"t{n}", message=f"message {n}", expect={"contains": [f"{n}"]})
    echo.most = 0
    r = await http.post(f"{PERSONAS}/{persona['id']}/tests/run", headers=author.headers)
    assert r.status_code == 200 and r.json()["passed"] == 9, r.text
    assert echo.most == 4


async def test_compare_candidates_answer_at_the_same_time(counting, make_user):
    http, echo = counting
    author = await make_user("author")
    echo.most = 0
    r = await http.post(
        f"{PERSONAS}/compare",
        json={"message": "one two three", "candidates": [{"persona": persona_body()} for _ in range(4)]},
        headers=author.headers,
    )
    assert r.status_code == 200 and all(x["error"] is None for x in r.json()["results"]), r.text
    assert echo.most == 4


# Regexes that backtrack without end -------------------------------------------------------------------


async def test_health_still_answers_while_a_suite_runs_a_runaway_regex(llm_app, llm_client, alice):
    """A test regex that backtracks exponentially is stopped and reported, and holds up no other request."""
    import asyncio

    # The echo provider answers "[echo] " + the message, so each test's answer is known.
    persona = await make_persona(llm_client, alice, model_settings={"provider": "echo"})
    # The finding's own pattern: the regex engine answers it at once now, so it simply fails to match.
    nested = {"regex": "(a+)+$"}
    await add_test(llm_client, alice, persona["id"], name="nested", message="a" * 24 + "!", expect=nested)
    # One that backtracks exponentially even there: stopped at its time budget and reported as too slow.
    alternation = {"regex": "(a|aa)+$"}
    await add_test(llm_client, alice, persona["id"], name="alternation", message="a" * 34 + "!", expect=alternation)

    turns = llm_app.state.resources.metrics.chat_turns

    def answered() -> float:
        return sum(
            sample.value
            for metric in turns.collect()
            for sample in metric.samples
            if sample.name.endswith("_total") and sample.labels["provider"] == "echo"
        )

    before = answered()
    run = asyncio.create_task(llm_client.post(f"{PERSONAS}/{persona['id']}/tests/run", headers=alice.headers))
    # Both answers are in, so the run is judging them: the runaway regex for up to half a second.
    assert await eventually(lambda: answered() == before + 2)
    health = await llm_client.get("/health")
    assert health.status_code == 200
    assert not run.done(), "/health waited for the suite run to finish"

    r = await run
    assert r.status_code == 200, r.text
    results = {x["name"]: x for x in r.json()["results"]}
    assert results["nested"]["failures"] == ["expected the answer to match the regex '(a+)+$'"]
    [slow] = results["alternation"]["failures"]
    assert slow.startswith("the regex '(a|aa)+$' took too long")


async def test_a_regex_that_does_not_compile_is_refused_when_the_test_is_saved(client, alice):
    persona = await make_persona(client, alice)
    for pattern in ("(unclosed", "a{2,1}", "[z-a]"):
        r = await client.post(
            f"{PERSONAS}/{persona['id']}/tests",
            json={"name": "t", "message": "m", "expect": {"regex": pattern}},
            headers=alice.headers,
        )
        assert r.status_code == 400, (pattern, r.text)
        assert r.json()["error"]["field"] == "expect.regex"
