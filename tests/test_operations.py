"""What an operator relies on: request ids in, out and in every log line, JSON logs, one line per chat turn,
one access line per request (no key in it, uvicorn's own lines in the same format), and the command's
--version and --help."""

from __future__ import annotations

import asyncio
import json
import logging
import logging.config
import os
import re
import subprocess
import sys
import time
import uuid

import httpx
import pytest
import uvicorn.config

from core.logs import REQUEST_ID, JsonFormatter, TextFormatter, configure_logging, log_access
from tests.conftest import persona_body
from tests.services import free_port
from tests.test_cli import start_serve, wait_until_up

CHAT = "/api/v1/chat"


async def test_every_answer_carries_a_request_id_and_keeps_a_valid_one_of_the_clients(client, alice):
    own = await client.get("/health", headers={"X-Request-ID": "checkout-42:a.b_c"})
    assert own.headers["x-request-id"] == "checkout-42:a.b_c"
    for bad in ("has spaces", "x" * 129, "semi;colon"):
        r = await client.get("/health", headers={"X-Request-ID": bad})
        assert r.headers["x-request-id"] != bad and len(r.headers["x-request-id"]) == 16
    fresh = [(await client.get("/health")).headers["x-request-id"] for _ in range(2)]
    assert fresh[0] != fresh[1]
    # Errors, unknown paths and refused keys too.
    assert "x-request-id" in (await client.get("/nowhere")).headers
    assert "x-request-id" in (await client.get("/api/v1/chat/personas")).headers


async def test_error_bodies_name_the_request_in_every_shape(client, alice):
    headers = {**alice.headers, "X-Request-ID": "req-ours"}
    ours = await client.post("/api/v1/chat/personas", json={"name": ""}, headers=headers)
    assert ours.status_code == 400 and ours.json()["error"]["request_id"] == "req-ours"
    openai = await client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
        headers={**alice.headers, "X-Request-ID": "req-openai"},
    )
    assert openai.status_code == 404 and openai.json()["error"]["request_id"] == "req-openai"
    anthropic = await client.post(
        "/v1/messages",
        json={"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
        headers={**alice.headers, "X-Request-ID": "req-anthropic"},
    )
    assert anthropic.status_code == 404 and anthropic.json()["error"]["request_id"] == "req-anthropic"


def _records(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


async def test_each_chat_turn_logs_one_line_with_its_request_and_what_happened(client, alice, caplog):
    caplog.set_level(logging.INFO, logger="persona_runtime.chat")
    r = await client.post(CHAT, json={"message": "hello there"}, headers={**alice.headers, "X-Request-ID": "turn-1"})
    assert r.status_code == 200
    (line,) = [r for r in _records(caplog, "chat turn") if getattr(r, "request_id", None) == "turn-1"]
    fields = {k: getattr(line, k) for k in ("user_id", "persona_source", "provider", "model", "outcome")}
    assert fields == {
        "user_id": alice.id,
        "persona_source": "default",
        "provider": "echo",
        "model": "echo-1",
        "outcome": "complete",
    }
    assert line.persona_version >= 1 and line.input_tokens > 0 and line.output_tokens == 3
    assert line.duration_ms >= line.ttft_ms >= 0
    # Nothing the user said, and no key.
    text = TextFormatter().format(line) + JsonFormatter().format(line)
    assert "hello there" not in text and alice.key not in text


async def test_a_turn_whose_client_hangs_up_is_logged_incomplete(llm_client, fake_llm, alice, caplog):
    caplog.set_level(logging.INFO, logger="persona_runtime.chat")
    fake_llm.script(chunks=tuple(f"w{i} " for i in range(50)), chunk_delay=0.05)
    headers = {**alice.headers, "X-Request-ID": "gone-1"}
    async with llm_client.stream("POST", CHAT, json={"message": "go", "stream": True}, headers=headers) as r:
        async for line in r.aiter_lines():
            if line.startswith("event: content"):
                break
    for _ in range(100):
        lines = [r for r in _records(caplog, "chat turn") if getattr(r, "request_id", None) == "gone-1"]
        if lines:
            break
        await asyncio.sleep(0.05)
    assert [line.outcome for line in lines] == ["incomplete"]


def test_json_lines_carry_the_standard_fields_and_the_extra_ones(capsys, our_handler):
    our_handler("json")
    token = REQUEST_ID.set("json-1")
    try:
        logging.getLogger("persona_runtime.test").info("chat turn", extra={"outcome": "complete", "ttft_ms": 1.5})
    finally:
        REQUEST_ID.reset(token)
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert {k: line[k] for k in ("level", "logger", "msg", "request_id", "outcome", "ttft_ms")} == {
        "level": "INFO",
        "logger": "persona_runtime.test",
        "msg": "chat turn",
        "request_id": "json-1",
        "outcome": "complete",
        "ttft_ms": 1.5,
    }
    assert line["ts"].endswith("Z")


async def test_each_request_writes_one_access_line_with_its_fields_and_no_key(client, alice, caplog):
    caplog.set_level(logging.INFO, logger="persona_runtime.access")
    headers = {"X-Request-ID": "access-1"}
    r = await client.get(f"/v1/models?api_key={alice.key}&x=1", headers={**alice.headers, **headers})
    assert r.status_code == 200
    await client.get("/nowhere/a%20b?key=prk_other", headers={"X-Request-ID": "access-2"})
    lines = {r.request_id: r for r in caplog.records if r.name == "persona_runtime.access"}
    fields = [{k: getattr(lines[i], k) for k in ("method", "path", "status")} for i in ("access-1", "access-2")]
    assert fields == [
        {"method": "GET", "path": "/v1/models?api_key=***&x=1", "status": 200},
        {"method": "GET", "path": "/nowhere/a%20b?key=***", "status": 404},  # as sent: one line, no space
    ]
    assert all(r.getMessage() == "http request" and r.duration_ms >= 0 for r in lines.values())
    text = "".join(TextFormatter().format(r) + JsonFormatter().format(r) for r in lines.values())
    assert alice.key[4:] not in text and "prk_other" not in text


async def test_the_access_line_of_a_stream_is_written_when_it_ends(client, alice, caplog):
    caplog.set_level(logging.INFO, logger="persona_runtime")
    headers = {**alice.headers, "X-Request-ID": "access-stream"}
    r = await client.post(CHAT, json={"message": "hi", "stream": True}, headers=headers)
    assert r.status_code == 200 and "event: done" in r.text
    mine = [r for r in caplog.records if getattr(r, "request_id", None) == "access-stream"]
    (turn,) = [r for r in mine if r.getMessage() == "chat turn"]
    (access,) = [r for r in mine if r.name == "persona_runtime.access"]
    assert mine[-1] is access and access.duration_ms >= turn.duration_ms
    assert (access.method, access.path, access.status) == ("POST", CHAT, 200)


async def test_no_access_line_is_written_above_info(client, caplog):
    caplog.set_level(logging.WARNING, logger="persona_runtime.access")
    assert (await client.get("/health")).status_code == 200
    assert [r for r in caplog.records if r.name == "persona_runtime.access"] == []


def test_an_access_line_stays_one_printable_line_whatever_the_path_holds(caplog):
    caplog.set_level(logging.INFO, logger="persona_runtime.access")
    scope = {"method": "GET", "path": "/a\né", "raw_path": b"/a\n\xc3\xa9", "query_string": b"api_key=prk_x&b=1"}
    log_access(scope, "odd-1", 404, time.perf_counter())
    without_raw = {"method": "GET", "path": "/a b\n", "raw_path": None, "query_string": b""}
    log_access(without_raw, "odd-2", 404, time.perf_counter())
    paths = [r.path for r in caplog.records if r.name == "persona_runtime.access"]
    assert paths == ["/a%0A%C3%A9?api_key=***&b=1", "/a%20b%0A"]


def test_uvicorn_lines_go_through_our_format_even_after_uvicorns_own_logging_config(capsys, our_handler):
    """``uvicorn --factory api.app:app_from_env`` run by hand sets up uvicorn's coloured handlers first."""
    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)
    our_handler("json")
    assert [logging.getLogger(n).handlers for n in ("uvicorn", "uvicorn.error", "uvicorn.access")] == [[], [], []]
    started = "Started server process [\x1b[36m%d\x1b[0m]"
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 7, extra={"color_message": started})
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/", "1.1", 200)
    (line,) = [json.loads(text) for text in capsys.readouterr().err.splitlines()]  # uvicorn's access log is off
    assert line["logger"] == "uvicorn.error" and line["msg"] == "Started server process [7]"
    assert "color_message" not in line


SERVED_KEY = "prk_access-log-test-key-0123456789abcdef"


@pytest.fixture
async def serve_env(create_database) -> dict[str, str]:
    """``serve``'s environment: a fresh database whose admin has SERVED_KEY, no provider, no Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "REDIS_URL"))}
    env.update(DATABASE_URL=await create_database(), BOOTSTRAP_ADMIN_KEY=SERVED_KEY, LOG_LEVEL="INFO")
    return env


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_serve_writes_uvicorn_and_access_lines_through_its_own_format(serve_env, fmt):
    """What ``serve`` writes to stderr: every line in LOG_FORMAT (uvicorn's own ones too, never coloured),
    and one access line a request, its key masked."""
    key, env = SERVED_KEY, {**serve_env, "LOG_FORMAT": fmt}
    port = free_port()
    # Two workers for JSON: the supervisor's lines and the workers' lines, each process configured alike.
    server = start_serve(port, env, *(("--workers", "2") if fmt == "json" else ()))
    events = f"/api/v1/chat/messages/{uuid.uuid4()}/events"
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base)
        with httpx.Client(base_url=base) as http:
            r = http.get(f"{events}?api_key={key}&after=1", headers={"X-Request-ID": "served-1"})
            assert r.status_code == 404, r.text  # signed in by the query's key; no such message
    finally:
        server.terminate()
        _, err = server.communicate(timeout=60)
    assert "\x1b[" not in err and "\\u001b" not in err and "color_message" not in err and key[4:] not in err
    if fmt == "json":
        lines = [json.loads(line) for line in err.splitlines()]  # every line is one JSON object
        loggers = {line["logger"] for line in lines}
        assert {"uvicorn.error", "persona_runtime.access"} <= loggers and "uvicorn.access" not in loggers
        assert any(line["msg"].startswith("Uvicorn running on") for line in lines)
        (access,) = [line for line in lines if line["request_id"] == "served-1"]
        assert access["level"] == "INFO" and access["msg"] == "http request" and access["duration_ms"] >= 0
        fields = {k: access[k] for k in ("logger", "method", "path", "status")}
        assert fields == {
            "logger": "persona_runtime.access",
            "method": "GET",
            "path": f"{events}?api_key=***&after=1",
            "status": 404,
        }
    else:
        (access,) = [line for line in err.splitlines() if "[served-1]" in line]
        pattern = (
            r"\S+ \S+ INFO persona_runtime\.access \[served-1\]: http request "
            rf"method=GET path={re.escape(events)}\?api_key=\*\*\*&after=1 status=404 duration_ms=\d+\.\d"
        )
        assert re.fullmatch(pattern, access), access
        assert any("INFO uvicorn.error [-]: Uvicorn running on" in line for line in err.splitlines())


def test_version_and_help(tmp_path):
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "runtime", *args], capture_output=True, text=True, timeout=60)

    version = cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("persona-runtime ")
    helped = cli("--help")
    assert helped.returncode == 0
    for variable in (
        "DATABASE_URL",
        "DATABASE_LISTEN_URL",
        "DATABASE_POOL_MODE",
        "REDIS_URL",
        "OPENAI_API_KEY",
        "LOG_FORMAT",
        "PROVIDER_MAX_CONNECTIONS",
    ):
        assert variable in helped.stdout


def test_an_unknown_log_format_is_refused_with_a_clear_message(tmp_path):
    env = {"LOG_FORMAT": "xml", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "runtime", "migrate"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
    )
    assert result.returncode == 2 and "LOG_FORMAT must be `text` or `json`" in result.stderr


async def test_the_persona_is_never_in_the_chat_turn_line(client, alice, caplog):
    caplog.set_level(logging.INFO, logger="persona_runtime.chat")
    secret_prompt = "You are {{persona_name}}. The launch code is 7-ALPHA-9."
    created = await client.post(
        "/api/v1/chat/personas", json=persona_body(system_prompt=secret_prompt), headers=alice.headers
    )
    persona = created.json()["persona"]
    await client.post(CHAT, json={"message": "hi", "persona_id": persona["id"]}, headers=alice.headers)
    lines = [JsonFormatter().format(r) for r in _records(caplog, "chat turn")]
    assert lines and not [line for line in lines if "7-ALPHA-9" in line]
    assert any(persona["id"] in line for line in lines)


@pytest.fixture
def our_handler():
    """The runtime's own log handler, installed for one test and taken away after it."""
    installed: list[logging.Handler] = []
    level = logging.getLogger().level

    def install(fmt: str) -> None:
        installed.append(configure_logging("INFO", fmt))

    yield install
    for handler in installed:
        logging.getLogger().removeHandler(handler)
    logging.getLogger().setLevel(level)
