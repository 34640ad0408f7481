"""An API key never reaches a log, however its query parameter is spelled, and the query-string key works on
the events route alone (found by the route the request matched, not by how its path ends)."""

from __future__ import annotations

import logging
import uuid

import pytest

from core.logs import configure_logging, scrub_query

EVENTS = "/api/v1/chat/messages/{}/events"

# Every spelling of the key's parameter a server decoding the query would read as `api_key`, and a few it
# would not (which must not reach the log either, since they carry a key).
NAMES = ["api_key", "API_KEY", "api%5Fkey", "api%5fkey", "%61pi_key", "%61%70%69%5F%6B%65%79", "api%255Fkey", "key"]


@pytest.fixture
def served_logging():
    """Logging as ``serve`` sets it up (its handler, uvicorn's loggers through it), for one test."""
    root, client = logging.getLogger(), logging.getLogger("httpx")
    levels = root.level, client.level
    handler = configure_logging("INFO", "text")
    # The test's own HTTP client logs the URLs it asks for, key and all: that is not the server's log.
    client.setLevel(logging.WARNING)
    yield
    root.removeHandler(handler)
    root.setLevel(levels[0])
    client.setLevel(levels[1])


@pytest.mark.parametrize("name", NAMES)
async def test_no_spelling_of_the_key_parameter_reaches_the_access_log(
    llm_client, alice, name, caplog, capsys, served_logging
):
    caplog.set_level(logging.INFO, logger="persona_runtime.access")
    secret = alice.key
    for path in (EVENTS.format(uuid.uuid4()), "/v1/models", "/api/v1/chat/personas"):
        await llm_client.get(f"{path}?{name}={secret}&after=1")
        await llm_client.get(f"{path}?x=1;{name}={secret}")
    # A key sent as some other parameter's value, percent-encoded, is masked too.
    encoded = "".join(f"%{ord(c):02X}" for c in secret)
    await llm_client.get(f"/v1/models?q={encoded}")
    access = [r.path for r in caplog.records if r.name == "persona_runtime.access"]
    assert len(access) >= 7  # the requests were logged, and read here
    leaked = [line for line in access if secret[4:] in line or encoded in line]
    assert leaked == []
    assert all("=***" in path for path in access)  # masked, not dropped
    assert secret[4:] not in caplog.text
    assert secret[4:] not in capsys.readouterr().err  # what serve's own handler wrote


async def test_the_key_spelled_differently_still_authenticates_the_events_route(llm_client, alice):
    """The server decodes parameter names as any server does; the log masks what it accepts."""
    unknown = uuid.uuid4()
    for name in ("api_key", "api%5Fkey", "%61pi_key"):
        r = await llm_client.get(f"{EVENTS.format(unknown)}?{name}={alice.key}")
        assert r.status_code == 404, r.text  # signed in; the message is unknown


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/persona/events",  # ends like the events route, is not it
        "/api/v1/chat/conversations/events",
        "/api/v1/chat/personas/events",
        "/v1/models",
    ],
)
async def test_the_query_string_key_is_refused_off_the_events_route(llm_client, alice, path):
    r = await llm_client.get(f"{path}?api_key={alice.key}")
    assert r.status_code == 401, r.text
    assert (await llm_client.get(path, headers=alice.headers)).status_code != 401


def test_scrubbing_keeps_everything_but_the_secrets():
    assert scrub_query("/a?x=1&api%5Fkey=prk_abc&y=2") == "/a?x=1&api%5Fkey=***&y=2"
    assert scrub_query("/a?token=t0k;note=prk_zz&z=") == "/a?token=***;note=***&z="
    assert scrub_query("/a/prk_path?after=3") == "/a/prk_path?after=3"  # paths hold no key; ids are never keys
    assert scrub_query("/plain") == "/plain"
