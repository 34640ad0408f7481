"""Property-based fuzzing of every documented operation, from our own /schema/openapi.json.

Schemathesis generates valid and invalid requests for each operation (fixed seed, bounded cases) and
sends them to the app served on loopback, authenticated with a test user's key. Every answer must be
below 500 and match what the document says: its status, its content type and its body.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx
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
from tests.conftest import make_settings, serving

# Cases per operation and generation mode: bounded for CI (~30 s); FUZZ_CASES raises it for a longer run.
CASES_PER_OPERATION = int(os.environ.get("FUZZ_CASES", "12"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def fuzz(base_url: str, document: dict[str, Any], key: str) -> tuple[int, int, list[str]]:
    """Run every operation's cases; returns the operations, the cases sent and the failures found."""
    schema = schemathesis.openapi.from_dict(document)
    operations = cases = 0
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                cases += fuzz_operation(operation, mode, base_url, key, failures)
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE
    return operations, cases, failures


def fuzz_operation(operation: Any, mode: GenerationMode, base_url: str, key: str, failures: list[str]) -> int:
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
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        sent.append(1)
        response = case.call(base_url=base_url, headers={"X-API-Key": key}, timeout=30)
        try:
            case.validate_response(response, checks=CHECKS)
        except BaseException as exc:  # every failure is collected, so that one run reports them all
            if isinstance(exc, KeyboardInterrupt):
                raise
            failures.append(
                f"{operation.label} [{mode.value}] {response.status_code}: {exc}\n"
                f"  {case.as_curl_command()}\n  {response.text[:300]}"
            )

    run()
    return len(sent)


async def test_every_operation_answers_below_500_and_as_documented(database_url, redis_url, make_user):
    account = await make_user("fuzz")
    app = create_app(make_settings(database_url, redis_url))
    async with serving(app) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            document = (await http.get("/schema/openapi.json")).json()
        operations, cases, failures = await asyncio.to_thread(fuzz, url, document, account.key)
    print(f"fuzzed {operations} operations with {cases} cases: {len(failures)} failures")
    assert operations >= 30
    assert not failures, "\n".join(failures[:20])
