"""Traces: each turn on every route is an OTLP span in the generative-AI conventions, received by a real OTLP/HTTP
endpoint on loopback; the caller's ``traceparent`` is its parent and the provider hears the span's own."""

from __future__ import annotations

import asyncio
import http.server
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from api.app import create_app
from runtime.server.settings import Settings, SettingsError
from tests.conftest import ANTHROPIC_TEST_KEY, OPENAI_TEST_KEY, llm_env, make_settings, persona_body, running
from tests.services import free_port

ROOT = Path(__file__).resolve().parent.parent
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
# Text that must never reach a span: the question, and the fake model's answer.
QUESTION = "Whisper the secret word marmalade-7731"
ANSWER = "Hello from the fake model."


class OtlpReceiver:
    """An OTLP/HTTP trace endpoint (``POST /v1/traces``, protobuf) on loopback that keeps what it is sent."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                receiver.bodies.append(body)
                receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"

    def spans(self) -> list[Any]:
        found = []
        for body in self.bodies:
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    found.extend(scope_spans.spans)
        return found

    def services(self) -> set[str]:
        names = set()
        for body in self.bodies:
            for resource_spans in ExportTraceServiceRequest.FromString(body).resource_spans:
                names |= {a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"}
        return names

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    yield server
    server.close()


def attributes(span: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in span.attributes:
        value = item.value
        kind = value.WhichOneof("value")
        if kind == "array_value":
            found[item.key] = [getattr(v, v.WhichOneof("value")) for v in value.array_value.values]
        else:
            found[item.key] = getattr(value, kind)
    return found


def traced_app(database_url: str, redis_url: str, fake_llm: Any, receiver: OtlpReceiver) -> Any:
    settings = make_settings(database_url, redis_url, env=llm_env(fake_llm), traces_endpoint=receiver.url)
    return create_app(settings)


async def test_every_route_s_turn_is_a_span_under_the_callers_traceparent(
    database_url, redis_url, fake_llm, receiver, alice, monkeypatch
):
    # The SDK's own variables are honoured: the exporter's headers and the service's name.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-otlp-tenant=persona-tests")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "persona-runtime-tests")
    caller = {"traceparent": TRACEPARENT, "tracestate": "vendor=abc"}
    question = [{"role": "user", "content": QUESTION}]
    async with running(traced_app(database_url, redis_url, fake_llm, receiver)) as http:
        r = await http.post("/api/v1/chat", json={"message": QUESTION}, headers={**alice.headers, **caller})
        assert r.status_code == 200, r.text
        persona, conversation = r.json()["persona"], r.json()["conversation_id"]
        bearer = {"Authorization": f"Bearer {alice.key}", **caller}
        body = {"model": "persona", "messages": question, "stream": True, "stream_options": {"include_usage": True}}
        async with http.stream("POST", "/v1/chat/completions", json=body, headers=bearer) as streamed:
            assert streamed.status_code == 200
            assert "[DONE]" in "".join([chunk async for chunk in streamed.aiter_text()])
        body = {"model": "persona", "max_tokens": 100, "messages": question}
        r = await http.post("/v1/messages", json=body, headers={"x-api-key": alice.key, **caller})
        assert r.status_code == 200, r.text
        r = await http.post("/v1/responses", json={"model": "persona", "input": QUESTION}, headers=bearer)
        assert r.status_code == 200, r.text
        draft = persona_body(name="Traced Tess")
        r = await http.post(
            "/api/v1/chat/personas/preview", json={"persona": draft, "message": QUESTION}, headers=alice.headers
        )
        assert r.status_code == 200, r.text
    # The app has shut down: every span was flushed by then.

    spans = receiver.spans()
    assert len(spans) == 5
    children = [s for s in spans if s.parent_span_id.hex() == CALLER_SPAN]
    assert len(children) == 4  # the preview was sent without a traceparent
    for span in spans:
        found = attributes(span)
        assert span.name == "chat gpt-4o-mini"
        assert span.kind == span.SPAN_KIND_CLIENT
        assert found["gen_ai.operation.name"] == "chat"
        assert found["gen_ai.provider.name"] == "openai"
        assert found["gen_ai.request.model"] == "gpt-4o-mini"
        assert found["gen_ai.usage.input_tokens"] == 11 and found["gen_ai.usage.output_tokens"] == 7
        assert found["gen_ai.response.finish_reasons"] == ["stop"]
        assert found["persona.outcome"] == "complete"
        assert span.status.code != span.status.STATUS_CODE_ERROR
        assert span.end_time_unix_nano > span.start_time_unix_nano
    for span in children:
        assert span.trace_id.hex() == TRACE_ID
    # /api/v1/chat kept its turn: its span names the conversation, the persona and its version.
    chat = next(a for a in map(attributes, children) if a.get("gen_ai.conversation.id") == conversation)
    assert chat["persona.id"] == persona["id"] and chat["persona.version"] == persona["version"]
    preview = next(s for s in spans if s not in children)
    assert not preview.parent_span_id and preview.trace_id.hex() != TRACE_ID
    assert attributes(preview)["persona.version"] == 0  # a draft

    # The provider heard each span's own context: same trace, the span as its parent, the caller's tracestate.
    upstream = [r for r in fake_llm.chat_requests() if "traceparent" in r.headers]
    assert len(upstream) == 5
    sent = {tuple(r.headers["traceparent"].split("-")[1:3]) for r in upstream}
    assert sent == {(s.trace_id.hex(), s.span_id.hex()) for s in spans}
    assert all(r.headers["tracestate"] == "vendor=abc" for r in upstream if TRACE_ID in r.headers["traceparent"])

    exported = b"".join(receiver.bodies)
    for secret in (QUESTION, ANSWER, "marmalade", alice.key, OPENAI_TEST_KEY, ANTHROPIC_TEST_KEY):
        assert secret.encode() not in exported
    assert all(h.get("x-otlp-tenant") == "persona-tests" for h in receiver.headers)
    assert all(h["content-type"] == "application/x-protobuf" for h in receiver.headers)
    assert receiver.services() == {"persona-runtime-tests"}


async def test_a_failed_turn_s_span_says_error_and_an_untraced_call_starts_a_trace(
    database_url, redis_url, fake_llm, receiver, alice
):
    async with running(traced_app(database_url, redis_url, fake_llm, receiver)) as http:
        fake_llm.script(status=503)  # refused before the first byte: an HTTP error to the client
        # A traceparent that is not one is ignored, as W3C says: the turn starts a trace of its own.
        malformed = {**alice.headers, "traceparent": "00-not-a-trace-01"}
        r = await http.post("/api/v1/chat", json={"message": QUESTION}, headers=malformed)
        assert r.status_code >= 500
        fake_llm.script(chunks=("Half", " an answer"), error_after=1)  # broken off mid-stream: an in-band error
        async with http.stream(
            "POST", "/api/v1/chat", json={"message": QUESTION, "stream": True}, headers=alice.headers
        ) as s:
            assert "event: error" in "".join([chunk async for chunk in s.aiter_text()])
        body = {"message": QUESTION, "provider": "anthropic"}
        r = await http.post("/api/v1/chat", json=body, headers=alice.headers)
        assert r.status_code == 200
    spans = receiver.spans()
    assert len(spans) == 3
    refused, broken, fine = (attributes(s) for s in spans)
    assert spans[0].status.code == spans[0].status.STATUS_CODE_ERROR
    assert refused["error.type"] == "provider_unavailable" and refused["persona.outcome"] == "error"
    assert "gen_ai.usage.output_tokens" not in refused
    assert spans[1].status.code == spans[1].status.STATUS_CODE_ERROR
    assert broken["error.type"] == "provider_unavailable" and broken["persona.outcome"] == "error"
    assert spans[2].status.code != spans[2].status.STATUS_CODE_ERROR and "error.type" not in fine
    assert fine["gen_ai.provider.name"] == "anthropic" and fine["persona.outcome"] == "complete"
    assert fake_llm.last_request.path == "/v1/messages" and "traceparent" in fake_llm.last_request.headers
    # No caller context: each span starts a trace of its own, which the provider hears of.
    assert all(not s.parent_span_id for s in spans)
    assert len({s.trace_id for s in spans}) == 3
    heard = [r.headers["traceparent"].split("-")[1] for r in fake_llm.chat_requests() if "traceparent" in r.headers]
    assert heard == [s.trace_id.hex() for s in spans]
    assert QUESTION.encode() not in b"".join(receiver.bodies) and b"Half" not in b"".join(receiver.bodies)


async def test_a_collector_that_is_down_costs_a_turn_nothing(database_url, redis_url, fake_llm, alice, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")  # the flush at shutdown gives up after a second
    settings = make_settings(
        database_url, redis_url, env=llm_env(fake_llm), traces_endpoint=f"http://127.0.0.1:{free_port()}/v1/traces"
    )
    async with running(create_app(settings)) as http:
        r = await http.post("/api/v1/chat", json={"message": QUESTION}, headers=alice.headers)
        assert r.status_code == 200 and r.json()["response"] == ANSWER
    assert "traceparent" in fake_llm.last_request.headers


async def test_with_traces_off_nothing_is_propagated(llm_client, fake_llm, alice):
    headers = {**alice.headers, "traceparent": TRACEPARENT}
    r = await llm_client.post("/api/v1/chat", json={"message": "hi"}, headers=headers)
    assert r.status_code == 200
    assert "traceparent" not in fake_llm.last_request.headers


def run_python(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_with_traces_off_the_tracer_and_exporter_are_never_imported(tmp_path):
    # (redis-py looks for the SDK's metrics on its own when the SDK is installed; the tracing half is ours.)
    code = (
        "import sys\n"
        "from api.app import create_app\n"
        "from runtime.server.settings import Settings\n"
        "create_app(Settings.from_env())\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk.trace', 'opentelemetry.exporter',"
        " 'opentelemetry.trace.propagation.tracecontext'))))\n"
    )
    done = run_python(code, {}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_endpoint_set_without_the_packages_stops_start_up_saying_what_to_install(tmp_path):
    # The SDK hidden, as in an install without the `otel` extra.
    code = (
        "import sys\n"
        "sys.modules['opentelemetry.sdk'] = None\n"
        "from runtime.server.cli import main\n"
        "sys.exit(main(['serve']))\n"
    )
    done = run_python(code, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, tmp_path)
    assert done.returncode == 2
    assert "pip install 'persona-runtime[otel]'" in done.stderr
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in done.stderr and "Traceback" not in done.stderr


def test_the_endpoint_is_read_as_the_opentelemetry_sdks_read_it(monkeypatch):
    def endpoint(**env: str) -> str | None:
        return Settings.from_env(env, dotenv=False).traces_endpoint

    assert endpoint() is None
    assert endpoint(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318/") == "http://127.0.0.1:4318/v1/traces"
    traces = "http://127.0.0.1:4318/custom/traces"
    both = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": traces}
    assert endpoint(**both) == traces
    assert endpoint(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318", OTEL_SDK_DISABLED="true") is None
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http", None)
    with pytest.raises(SettingsError, match="otel"):
        endpoint(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318")


async def test_serve_with_workers_flushes_every_workers_spans_when_it_stops(create_database, receiver):
    from tests.test_cli import start_serve, wait_until_up

    key = "prk_traces_test_admin_key_0123456789"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "REDIS_URL", "OTEL_"))}
    env |= {
        "DATABASE_URL": await create_database(),
        "BOOTSTRAP_ADMIN_KEY": key,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url.removesuffix("/v1/traces"),
        # Far longer than the test: the spans arrive because stopping flushes them.
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
    }
    port = free_port()
    server = start_serve(port, env, "--workers", "2")
    base = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_until_up, base, 90)
        for _ in range(4):  # a new connection each time, so both workers may answer
            async with httpx.AsyncClient(base_url=base) as http:
                headers = {"X-API-Key": key, "Connection": "close", "traceparent": TRACEPARENT}
                r = await http.post("/api/v1/chat", json={"message": QUESTION}, headers=headers)
                assert r.status_code == 200, r.text
        assert receiver.spans() == []
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        _, stderr = await asyncio.to_thread(server.communicate, timeout=60)
    assert server.returncode == 0, stderr
    spans = receiver.spans()
    assert len(spans) == 4
    assert {attributes(s)["gen_ai.provider.name"] for s in spans} == {"echo"}
    assert all(s.trace_id.hex() == TRACE_ID and s.parent_span_id.hex() == CALLER_SPAN for s in spans)
    assert receiver.services() == {"persona-runtime"}
    assert "traces: each chat turn is a span" in stderr and QUESTION.encode() not in b"".join(receiver.bodies)
