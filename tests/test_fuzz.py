"""Property-based fuzzing of every documented operation, from our own /schema/openapi.json.

Schemathesis generates valid and invalid requests for each operation (fixed seed, bounded cases) and
sends them to the app served on loopback, authenticated with a test user's key. Every answer must be
below 500 and match what the document says: its status, its content type and its body, a stream of
Server-Sent Events included: each event against the one the document describes, its ``data`` decoded.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from typing import Any

import httpx
import msgspec
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from tests.conftest import make_settings, persona_body, serving

PERSONAS = "/api/v1/chat/personas"

# Cases per operation and generation mode: bounded for CI (~30 s); FUZZ_CASES raises it for a longer run.
CASES_PER_OPERATION = int(os.environ.get("FUZZ_CASES", "12"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


class Fuzz:
    """One fuzzing run against a served app: what was sent, what came back, what failed."""

    def __init__(self, base_url: str, key: str, document: dict[str, Any]) -> None:
        self.base_url = base_url
        self.headers = {"X-API-Key": key}
        self.document = document
        self.cases = 0
        self.streams: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []

    def run(self) -> int:
        """Every operation: valid and invalid cases with generated ids, then valid ones with the caller's own ids."""
        operations = 0
        for result in schemathesis.openapi.from_dict(self.document).get_all_operations():
            operation = result.ok()
            operations += 1
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    self.cases += self.operation(
                        operation.as_strategy(generation_mode=mode), f"{operation.label} {mode}"
                    )
                except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                    assert mode is GenerationMode.NEGATIVE
            names = {p.name for p in operation.path_parameters}
            if names:
                # Generated ids almost never exist: run once more on things the caller owns, made afresh each time.
                ids = {k: v for k, v in self.own_ids().items() if k in names}
                strategy = operation.as_strategy(path_parameters=ids)
                self.cases += self.operation(strategy, f"{operation.label} with own ids")
            success = self.document["paths"][operation.path][operation.method.lower()]["responses"].get("200", {})
            if "text/event-stream" in success.get("content", {}):
                self.stream(operation)
        return operations

    def stream(self, operation: Any) -> None:
        """A request the operation answers with a stream (generated bodies seldom are one), checked like the rest."""
        ids = self.own_ids()
        message = [{"role": "user", "content": "hi"}]
        bodies = {
            "/api/v1/chat": {"message": "hi", "stream": True},
            f"{PERSONAS}/preview": {"persona_id": ids["persona_id"], "message": "hi", "stream": True},
            f"{PERSONAS}/compare": {
                "message": "hi",
                "stream": True,
                "candidates": [{"persona_id": ids["persona_id"]}, {"persona": persona_body()}],
            },
            "/v1/chat/completions": {"model": "persona", "messages": message, "stream": True},
            "/v1/messages": {"model": "persona", "max_tokens": 16, "messages": message, "stream": True},
            "/v1/responses": {"model": "persona", "input": "hi", "stream": True},
        }
        if operation.method.lower() == "get":  # the replay of a streamed answer (a JSON answer has none)
            with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=30) as http:
                streamed = http.post("/api/v1/chat", json={"message": "hi", "stream": True}).text
            message_id = msgspec.json.decode(streamed.split("data: ", 1)[1].split("\n", 1)[0])["message_id"]
            case = operation.Case(path_parameters={"message_id": message_id})
        else:
            case = operation.Case(body=bodies[operation.path], media_type="application/json")
        self.cases += 1
        response = case.call(base_url=self.base_url, headers=self.headers, timeout=30)
        self.statuses[response.status_code] += 1
        try:
            assert response.headers["content-type"][0].startswith("text/event-stream"), response.text[:300]
            case.validate_response(response, checks=CHECKS)
            self.count_stream(case, response)
        except AssertionError as exc:
            self.failures.append(f"{operation.label} streamed {response.status_code}: {exc}\n  {response.text[:300]}")

    def own_ids(self) -> dict[str, str]:
        """A persona with one test, a conversation with it and a second key, all the caller's."""
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=30) as http:
            persona = http.post(PERSONAS, json=persona_body(system_prompt="You are {{persona_name}}.")).json()[
                "persona"
            ]
            test = {"name": "greets", "message": "hi", "expect": {"contains": ["hi"]}}
            test_id = http.post(f"{PERSONAS}/{persona['id']}/tests", json=test).json()["test"]["id"]
            chat = http.post("/api/v1/chat", json={"message": "hi", "persona_id": persona["id"]}).json()
            key_id = http.post("/api/v1/keys", json={"name": "fuzz"}).json()["api_key"]["id"]
        return {
            "persona_id": persona["id"],
            "test_id": test_id,
            "conversation_id": chat["conversation_id"],
            "key_id": key_id,
            "version": "1",
            "model_id": f"persona/{persona['name']}",
        }

    def operation(self, strategy: Any, label: str) -> int:
        sent: list[int] = []

        @seed(20261202)
        @settings(
            max_examples=CASES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            sent.append(1)
            response = case.call(base_url=self.base_url, headers=self.headers, timeout=30)
            self.statuses[response.status_code] += 1
            try:
                case.validate_response(response, checks=CHECKS)
                self.count_stream(case, response)
            except BaseException as exc:  # every failure is collected, so that one run reports them all
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self.failures.append(
                    f"{label} {response.status_code}: {exc}\n  {case.as_curl_command()}\n  {response.text[:300]}"
                )

        run()
        return len(sent)

    def count_stream(self, case: Any, response: Any) -> None:
        # Schemathesis checked each event against the documented one, its `data` decoded by `contentSchema`.
        if response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
            self.streams[case.operation.label] += 1


async def test_every_operation_answers_below_500_and_as_documented(database_url, redis_url, make_user):
    account = await make_user("fuzz")
    app = create_app(make_settings(database_url, redis_url))
    async with serving(app) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            document = (await http.get("/schema/openapi.json")).json()
        fuzz = Fuzz(url, account.key, document)
        operations = await asyncio.to_thread(fuzz.run)
    print(
        f"fuzzed {operations} operations with {fuzz.cases} cases, answers {dict(sorted(fuzz.statuses.items()))}, "
        f"streams {dict(fuzz.streams)}: {len(fuzz.failures)} failures"
    )
    assert operations >= 30
    assert sum(n for status, n in fuzz.statuses.items() if status < 300) > 100  # the cases reach the handlers
    assert not fuzz.failures, "\n".join(fuzz.failures[:20])
    assert len(fuzz.streams) == 7, fuzz.streams  # every streaming route's answer was read and checked
