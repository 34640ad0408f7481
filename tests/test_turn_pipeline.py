"""The pipeline's one path: input checks in plan on every route, tool calls through comparisons, one frame encoder."""

from __future__ import annotations

import uuid

import pytest

from core.events import TextDelta
from runtime.chat.frames import encode_events
from runtime.chat.recordings import final_frame
from tests.conftest import persona_body
from tests.fakellm import FakeToolCall, Script
from tests.sse import parse_sse

PERSONAS = "/api/v1/chat/personas"
CHAT = "/api/v1/chat"
LIMIT = 2000  # max_message_chars of the test app


def error_of(path: str, body: dict) -> tuple[str, str | None]:
    """The message and the named field of an error body in the shape of ``path``'s prefix."""
    if path == "/v1/messages":
        assert body["type"] == "error"
        return body["error"]["message"], None
    return body["error"]["message"], body["error"]["param"]


def openai_body(**fields):
    return {"model": "persona", "messages": [{"role": "user", "content": "hi"}], **fields}


def anthropic_body(**fields):
    return {"model": "persona", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}], **fields}


def openai_tool(name: str, description: str = "") -> dict:
    return {"type": "function", "function": {"name": name, "description": description}}


def anthropic_tool(name: str, description: str = "") -> dict:
    return {"name": name, "description": description, "input_schema": {"type": "object"}}


# Input checks run in plan, on every route ------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/v1/chat/completions", openai_body(messages=[{"role": "system", "content": "x" * (LIMIT + 1)},
                                                       {"role": "user", "content": "hi"}]),
         413, "messages[0].content"),
        ("/v1/chat/completions", openai_body(messages=[{"role": "user", "content": "hi"},
                                                       {"role": "system", "content": " \n "}]),
         400, "messages[1].content"),
        # The field is the body's: a system message before it does not shift the index.
        ("/v1/chat/completions", openai_body(messages=[{"role": "system", "content": "Be brief."},
                                                       {"role": "user", "content": "   "}]),
         400, "messages[1].content"),
        ("/v1/chat/completions", openai_body(tools=[openai_tool("look"), openai_tool("look")]),
         400, "tools[1].function.name"),
        ("/v1/chat/completions", openai_body(tools=[openai_tool("look", "d" * (LIMIT + 1))]),
         413, "tools[0].function.description"),
        ("/v1/messages", anthropic_body(system="x" * (LIMIT + 1)), 413, "system"),
        ("/v1/messages", anthropic_body(system="  \t"), 400, "system"),
        ("/v1/messages", anthropic_body(system=[{"type": "text", "text": "ok"}, {"type": "text", "text": " "}]),
         400, "system[1].text"),
        ("/v1/messages", anthropic_body(tools=[anthropic_tool("look"), anthropic_tool("look")]), 400, "tools[1].name"),
        ("/v1/messages", anthropic_body(tools=[anthropic_tool("look", "d" * (LIMIT + 1))]),
         413, "tools[0].description"),
    ],
)  # fmt: skip
async def test_the_clients_system_text_and_tools_are_checked_before_any_provider_call(
    llm_client, fake_llm, alice, path, body, status, field
):
    r = await llm_client.post(path, json=body, headers=alice.headers)
    assert r.status_code == status, r.text
    message, named = error_of(path, r.json())
    assert f"`{field}`" in message
    if named is not None:
        assert named == field
    assert fake_llm.chat_requests() == []


@pytest.mark.parametrize(
    ("body", "status"),
    [({"message": "  "}, 400), ({"message": "x" * (LIMIT + 1)}, 413)],
)
@pytest.mark.parametrize("route", ["render", "preview", "compare"])
async def test_authoring_routes_check_the_message_in_plan_too(llm_client, fake_llm, alice, route, body, status):
    draft = {"persona": persona_body(name="Checked")}
    if route == "compare":
        body = {**body, "candidates": [draft, {"persona": persona_body(name="Other")}]}
    else:
        body = {**body, **draft}
    r = await llm_client.post(f"{PERSONAS}/{route}", json=body, headers=alice.headers)
    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] == "message" and "`message`" in r.json()["message"]
    assert fake_llm.chat_requests() == []


# Tool calls survive a comparison ---------------------------------------------------------------------


async def test_tool_calls_survive_a_comparison(llm_client, fake_llm, alice):
    call = FakeToolCall(name="lookup", arguments='{"q": "tea"}', id="call_tea")
    fake_llm.default = Script(chunks=("Let me look.",), tool_calls=(call,))
    tool = {"name": "lookup", "description": "Looks things up.", "parameters": {"type": "object"}}
    candidates = [{"persona": persona_body(name=f"Tools{i}", tools=[tool])} for i in range(2)]
    expected = [{"id": "call_tea", "name": "lookup", "arguments": '{"q": "tea"}'}]

    r = await llm_client.post(
        f"{PERSONAS}/compare", json={"message": "tea?", "candidates": candidates}, headers=alice.headers
    )
    assert r.status_code == 200, r.text
    for result in r.json()["results"]:
        assert result["error"] is None and result["response"] == "Let me look."
        assert result["tool_calls"] == expected

    r = await llm_client.post(
        f"{PERSONAS}/compare", json={"message": "tea?", "stream": True, "candidates": candidates}, headers=alice.headers
    )
    events, _ = parse_sse(r.text)
    done = [e.json for e in events if e.event == "done"]
    assert sorted(d["candidate"] for d in done) == [0, 1]
    assert all(d["finish_reason"] == "tool_calls" and d["tool_calls"] == expected for d in done)


async def test_a_comparison_without_tool_calls_has_no_tool_calls_field(llm_client, fake_llm, alice):
    candidates = [{"persona": persona_body(name=f"Plain{i}")} for i in range(2)]
    r = await llm_client.post(
        f"{PERSONAS}/compare", json={"message": "hi", "candidates": candidates}, headers=alice.headers
    )
    assert r.status_code == 200, r.text
    assert all("tool_calls" not in result for result in r.json()["results"])


# One frame encoder -----------------------------------------------------------------------------------


def frames_of(text: str) -> list[bytes]:
    return [piece.encode() + b"\n\n" for piece in text.split("\n\n") if piece.startswith("event: ")]


@pytest.mark.parametrize("script", [Script(chunks=("a", "b")), Script(chunks=("a", "b", "c"), error_after=2)])
async def test_a_final_frame_made_from_the_stored_status_is_the_frame_the_stream_ended_with(
    llm_client, fake_llm, alice, resources, script
):
    fake_llm.script(**{k: getattr(script, k) for k in ("chunks", "error_after")})
    r = await llm_client.post(CHAT, json={"message": "go", "stream": True}, headers=alice.headers)
    assert r.status_code == 200, r.text
    frames = frames_of(r.text)
    start = parse_sse(r.text)[0][0].json
    message_id = uuid.UUID(start["message_id"])
    state = await resources.conversations.message_state(alice.user.id, message_id)
    assert state is not None and state.status == ("complete" if script.error_after is None else "incomplete")
    # What a reader makes when the recording lacks its end is byte for byte what the stream sent.
    assert final_frame(message_id, len(frames), state) == frames[-1]
    assert frames[-1].startswith(b"event: done\n" if script.error_after is None else b"event: error\n")


async def test_candidate_frames_are_chat_frames_with_the_candidate_added(llm_client, alice):
    candidates = [{"persona": persona_body(name=f"Same{i}", model_settings={"provider": "echo"})} for i in range(2)]
    r = await llm_client.post(
        f"{PERSONAS}/compare", json={"message": "hi", "stream": True, "candidates": candidates}, headers=alice.headers
    )
    events, _ = parse_sse(r.text)
    content = next(e for e in events if e.event == "content")
    (frame,), _, last = encode_events([TextDelta(content=content.json["content"])], int(content.id) - 1, candidate=0)
    assert not last
    expected = frame.replace(b'"candidate":0', b'"candidate":%d' % content.json["candidate"])
    assert expected.decode() == f"event: content\nid: {content.id}\ndata: {content.data}\n\n"
