"""Judged and structured test expectations: a grader's score against a rubric, JSON answers, schemas, latency."""

from __future__ import annotations

import pytest

from api.app import create_app
from runtime.authoring.grading import GRADER_INSTRUCTIONS, echo_grade
from tests.conftest import llm_env, make_settings, persona_body, running
from tests.fakellm import Script

PERSONAS = "/api/v1/chat/personas"


async def make_persona(http, account, **fields):
    r = await http.post(PERSONAS, json=persona_body(**fields), headers=account.headers)
    assert r.status_code == 201, r.text
    return r.json()["persona"]


async def add_test(http, account, persona_id, **body):
    r = await http.post(f"{PERSONAS}/{persona_id}/tests", json=body, headers=account.headers)
    assert r.status_code == 201, r.text
    return r.json()["test"]


async def run_suite(http, account, persona_id):
    r = await http.post(f"{PERSONAS}/{persona_id}/tests/run", headers=account.headers)
    assert r.status_code == 200, r.text
    return r.json()


# The echo grader: offline and deterministic ---------------------------------------------------------------


def test_echo_grades_by_the_rubrics_quoted_phrases_else_its_words():
    grade = echo_grade('Greets in French: says "bonjour" and “merci”.', "[echo] Bonjour, mon ami")
    assert grade.score == 0.5
    assert "1 of the rubric's 2 quoted phrases" in grade.reason and "'merci'" in grade.reason
    assert echo_grade("mentions Paris weather", "Paris has fine weather today").score == 0.6667
    assert echo_grade("ok", "anything").score == 0.0  # nothing to look for: no grade to give


async def test_a_judged_test_passes_at_its_threshold_with_score_and_reason(client, alice):
    persona = await make_persona(client, alice)
    pid = persona["id"]
    # The echo provider answers "[echo] " + the message.
    both = await add_test(
        client,
        alice,
        pid,
        name="greets in french",
        message="Bonjour, merci beaucoup",
        expect={"judge": {"rubric": 'Says "bonjour" and "merci".'}},
    )
    assert both["expect"]["judge"] == {"rubric": 'Says "bonjour" and "merci".', "threshold": 0.7}
    await add_test(
        client,
        alice,
        pid,
        name="half is not enough",
        message="Bonjour",
        expect={"judge": {"rubric": 'Says "bonjour" and "merci".', "threshold": 0.7}},
    )
    await add_test(
        client,
        alice,
        pid,
        name="half is enough here",
        message="Bonjour",
        expect={"judge": {"rubric": 'Says "bonjour" and "merci".', "threshold": 0.5}},
    )
    await add_test(client, alice, pid, name="not judged", message="hi", expect={"contains": ["hi"]})

    body = await run_suite(client, alice, pid)
    assert (body["passed"], body["failed"]) == (3, 1)
    full, short, lenient, plain = body["results"]
    assert full["passed"] is True and full["score"] == 1.0 and full["failures"] == []
    assert "2 of the rubric's 2 quoted phrases" in full["reason"]
    assert short["passed"] is False and short["score"] == 0.5
    assert short["failures"] == [f"the grader scored the answer 0.5, below the threshold 0.7: {short['reason']}"]
    assert "missing 'merci'" in short["reason"]
    assert lenient["passed"] is True and lenient["score"] == 0.5
    # A test without a rubric has no grade to show.
    assert "score" not in plain and "reason" not in plain and plain["passed"] is True


@pytest.mark.parametrize(
    ("expect", "field"),
    [
        ({"judge": {"rubric": "polite", "threshold": 1.5}}, "expect.judge.threshold"),
        ({"judge": {"rubric": "polite", "threshold": -0.1}}, "expect.judge.threshold"),
        ({"judge": {"rubric": "polite", "threshold": "high"}}, "expect.judge.threshold"),
        ({"judge": {"threshold": 0.5}}, "expect.judge.rubric"),
        ({"judge": {"rubric": ""}}, "expect.judge.rubric"),
        ({"judge": {"rubric": "   "}}, "expect.judge.rubric"),
        ({"judge": {"rubric": "a\u0000b"}}, "expect.judge.rubric"),
        ({"judge": {"rubric": "polite", "model": "x"}}, "expect.judge.model"),
        ({"judge": "be polite"}, "expect.judge"),
        ({"is_json": "yes"}, "expect.is_json"),
        ({"is_json": False}, "expect"),  # expects nothing
        ({"json_schema": {"type": "nope"}}, "expect.json_schema"),
        ({"json_schema": {"type": "string", "pattern": "(unclosed"}}, "expect.json_schema"),
        ({"json_schema": {"type": "string", "pattern": "a{5000}"}}, "expect.json_schema"),
        ({"json_schema": {"$schema": 7}}, "expect.json_schema"),
        ({"json_schema": "object"}, "expect.json_schema"),
        ({"max_latency_ms": 0}, "expect.max_latency_ms"),
        ({"max_latency_ms": 1.5}, "expect.max_latency_ms"),
    ],
)
async def test_bad_expectations_are_refused_naming_the_field(client, alice, expect, field):
    persona = await make_persona(client, alice)
    r = await client.post(
        f"{PERSONAS}/{persona['id']}/tests", json={"name": "t", "message": "m", "expect": expect}, headers=alice.headers
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == field
    assert (await client.get(f"{PERSONAS}/{persona['id']}/tests", headers=alice.headers)).json()["total"] == 0


async def test_a_deeply_nested_schema_is_refused_not_a_500(client, alice):
    persona = await make_persona(client, alice)
    schema: dict = {"type": "object"}
    for _ in range(100):
        schema = {"type": "object", "properties": {"a": schema}}
    body = {"name": "t", "message": "m", "expect": {"json_schema": schema}}
    r = await client.post(f"{PERSONAS}/{persona['id']}/tests", json=body, headers=alice.headers)
    assert r.status_code == 400, r.text  # the server reads no body nested that deep
    assert "nests arrays and objects more than" in r.json()["message"]
    # As deep as a body may be, a schema is checked, and its answer validated, like any other.
    schema = {"type": "integer"}
    for _ in range(25):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    body = {"name": "t", "message": "m", "expect": {"json_schema": schema}}
    r = await client.post(f"{PERSONAS}/{persona['id']}/tests", json=body, headers=alice.headers)
    assert r.status_code == 201, r.text
    [result] = (await run_suite(client, alice, persona["id"]))["results"]
    assert result["failures"][0].startswith("expected the answer to be JSON for `json_schema`")


# Structured answers, from the fake LLM server --------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "pattern": "^[A-Z]"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}


@pytest.mark.parametrize(
    ("answer", "is_json", "schema_failure"),
    [
        ('{"name": "Ada", "age": 36}', None, None),
        ('```json\n{"name": "Ada", "age": 36}\n```', None, None),
        ('{"name": "Ada"}', None, "the answer does not match `json_schema`: 'age' is a required property (at `$`)"),
        ('{"name": "ada", "age": 36}', None, "the answer does not match `json_schema`: 'ada' does not match '^[A-Z]'"),
        ('{"name": "Ada", "age": -1}', None, "-1 is less than the minimum of 0 (at `$.age`)"),
        ("[1, 2]", None, "[1, 2] is not of type 'object'"),
        ("Sure! Here it is: {}", "expected the answer to be JSON", "expected the answer to be JSON for `json_schema`"),
    ],
)
async def test_is_json_and_json_schema_check_the_answer(llm_client, fake_llm, alice, answer, is_json, schema_failure):
    persona = await make_persona(llm_client, alice)
    await add_test(llm_client, alice, persona["id"], name="json", message="m", expect={"is_json": True})
    await add_test(llm_client, alice, persona["id"], name="schema", message="m", expect={"json_schema": SCHEMA})
    fake_llm.default = Script(chunks=(answer,))
    json_result, schema_result = (await run_suite(llm_client, alice, persona["id"]))["results"]
    assert json_result["response"] == answer
    if is_json is None:
        assert json_result["passed"] is True and json_result["failures"] == []
    else:
        [failure] = json_result["failures"]
        assert failure.startswith(is_json)
    if schema_failure is None:
        assert schema_result["passed"] is True and schema_result["failures"] == []
    else:
        [failure] = schema_result["failures"]
        assert schema_failure in failure and schema_result["passed"] is False


async def test_a_schema_that_refers_to_another_document_fails_without_fetching_it(llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice)
    schema = {"$ref": "http://127.0.0.1:9/elsewhere.json"}
    await add_test(llm_client, alice, persona["id"], name="ref", message="m", expect={"json_schema": schema})
    fake_llm.default = Script(chunks=("{}",))
    [result] = (await run_suite(llm_client, alice, persona["id"]))["results"]
    assert result["passed"] is False
    assert "refers to a document that is not fetched" in result["failures"][0]


async def test_max_latency_ms_fails_a_slow_answer(llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice)
    await add_test(llm_client, alice, persona["id"], name="slow", message="m", expect={"max_latency_ms": 1})
    await add_test(llm_client, alice, persona["id"], name="patient", message="m", expect={"max_latency_ms": 60_000})
    fake_llm.default = Script(chunks=("one", " two", " three"), chunk_delay=0.05)
    slow, patient = (await run_suite(llm_client, alice, persona["id"]))["results"]
    assert slow["latency_ms"] >= 100
    assert slow["failures"] == [f"the answer took {slow['latency_ms']} ms, more than max_latency_ms 1"]
    assert patient["passed"] is True and patient["latency_ms"] >= 100


# A grader on the fake LLM server ---------------------------------------------------------------------------

RUBRIC = "The answer recommends a book and says why."


async def test_the_personas_provider_grades_through_a_structured_answer(llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice)
    await add_test(
        llm_client,
        alice,
        persona["id"],
        name="recommends",
        message="What should I read?",
        expect={"judge": {"rubric": RUBRIC, "threshold": 0.8}},
    )
    fake_llm.enqueue(
        Script(chunks=("Read Dune: its world is vast.",)),
        Script(chunks=('{"score": 0.9,', ' "reason": "Names a book and a reason."}')),
    )
    [result] = (await run_suite(llm_client, alice, persona["id"]))["results"]
    assert result["passed"] is True and result["failures"] == []
    assert result["score"] == 0.9 and result["reason"] == "Names a book and a reason."

    answered, graded = fake_llm.chat_requests()
    assert graded.body["model"] == answered.body["model"]  # the persona's own provider and model
    assert graded.body["messages"][0] == {"role": "system", "content": GRADER_INSTRUCTIONS}
    asked = graded.body["messages"][-1]["content"]
    assert RUBRIC in asked and "What should I read?" in asked and "Read Dune: its world is vast." in asked

    # Below the threshold, the grader's reason says why it failed.
    fake_llm.enqueue(Script(chunks=("Hello.",)), Script(chunks=('{"score": 0.2, "reason": "No book."}',)))
    [result] = (await run_suite(llm_client, alice, persona["id"]))["results"]
    assert result["passed"] is False and result["score"] == 0.2
    assert result["failures"] == ["the grader scored the answer 0.2, below the threshold 0.8: No book."]


@pytest.mark.parametrize(
    ("graded", "said"),
    [
        ("I would give it a 9/10.", "the grader's answer is not the JSON asked for"),
        ('{"score": 1.7, "reason": "great"}', "Expected `float` <= 1.0 - at `$.score`"),
        ('{"score": "high", "reason": "great"}', "Expected `float`, got `str` - at `$.score`"),
        ('{"reason": "great"}', "Object missing required field `score`"),
    ],
)
async def test_a_malformed_grade_fails_the_expectation_not_the_run(llm_client, fake_llm, alice, graded, said):
    persona = await make_persona(llm_client, alice)
    await add_test(llm_client, alice, persona["id"], name="t", message="m", expect={"judge": {"rubric": RUBRIC}})
    fake_llm.enqueue(Script(chunks=("A book.",)), Script(chunks=(graded,)))
    body = await run_suite(llm_client, alice, persona["id"])  # a 200 with the result, not a 500
    [judged] = body["results"]
    assert (body["passed"], body["failed"]) == (0, 1)
    assert judged["passed"] is False and judged["score"] is None
    [failure] = judged["failures"]
    assert said in failure and judged["reason"] == failure


async def test_a_grader_that_fails_is_a_failed_expectation(llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice)
    await add_test(llm_client, alice, persona["id"], name="t", message="m", expect={"judge": {"rubric": RUBRIC}})
    fake_llm.enqueue(Script(chunks=("A book.",)), Script(status=500))
    [result] = (await run_suite(llm_client, alice, persona["id"]))["results"]
    assert result["passed"] is False and result["score"] is None
    assert result["failures"][0].startswith("the grader `openai` failed (provider_unavailable)")


async def test_an_answer_that_failed_is_not_graded(llm_client, fake_llm, alice):
    persona = await make_persona(llm_client, alice)
    await add_test(llm_client, alice, persona["id"], name="t", message="m", expect={"judge": {"rubric": RUBRIC}})
    fake_llm.script(status=500)
    [result] = (await run_suite(llm_client, alice, persona["id"]))["results"]
    assert result["passed"] is False and result["score"] is None and result["reason"] == "not graded: the answer failed"
    assert len(fake_llm.chat_requests()) == 1


async def test_judge_provider_and_model_choose_the_grader(database_url, redis_url, fake_llm, alice):
    settings = make_settings(
        database_url, redis_url, env=llm_env(fake_llm), judge_provider="anthropic", judge_model="claude-grader"
    )
    async with running(create_app(settings)) as http:
        persona = await make_persona(http, alice)  # answered by openai, the default
        await add_test(http, alice, persona["id"], name="t", message="m", expect={"judge": {"rubric": RUBRIC}})
        fake_llm.enqueue(Script(chunks=("A book.",)), Script(chunks=('{"score": 1, "reason": "Fine."}',)))
        [result] = (await run_suite(http, alice, persona["id"]))["results"]
    assert result["passed"] is True and result["score"] == 1.0
    answered, graded = fake_llm.chat_requests()
    assert answered.path == "/v1/chat/completions"
    assert graded.path == "/v1/messages" and graded.body["model"] == "claude-grader"
    assert graded.body["system"] == GRADER_INSTRUCTIONS
    assert RUBRIC in graded.body["messages"][-1]["content"]


async def test_an_unconfigured_judge_provider_fails_judged_tests_saying_so(database_url, redis_url, alice):
    settings = make_settings(database_url, redis_url, judge_provider="nowhere")
    async with running(create_app(settings)) as http:
        persona = await make_persona(http, alice)
        await add_test(http, alice, persona["id"], name="t", message="m", expect={"judge": {"rubric": "m"}})
        [result] = (await run_suite(http, alice, persona["id"]))["results"]
    assert result["passed"] is False
    assert result["failures"] == ["the grader `nowhere` (JUDGE_PROVIDER) is not a configured provider; set one that is"]


async def test_the_graders_call_counts_against_the_callers_token_budget(llm_client, fake_llm, admin, alice):
    from runtime.chat.tokens import estimate_size
    from tests.test_limits import limited_key, until_tokens

    headers = await limited_key(llm_client, admin, alice, tokens_per_day=100_000)
    persona = await make_persona(llm_client, alice)
    r = await llm_client.post(
        f"{PERSONAS}/{persona['id']}/tests",
        json={"name": "t", "message": "m", "expect": {"judge": {"rubric": RUBRIC}}},
        headers=headers,
    )
    assert r.status_code == 201, r.text
    graded = '{"score": 1, "reason": "Fine."}'
    fake_llm.enqueue(
        Script(chunks=("A book.",), input_tokens=11, output_tokens=7), Script(chunks=(graded,), input_tokens=999)
    )
    r = await llm_client.post(f"{PERSONAS}/{persona['id']}/tests/run", headers=headers)
    assert r.status_code == 200 and r.json()["passed"] == 1, r.text
    # The turn's 18 tokens as the provider counted them, and the grader's call by its size, as a memory extraction's is.
    asked = f"Rubric:\n{RUBRIC}\n\nThe user's message:\nm\n\nThe answer:\nA book."
    size = len(GRADER_INSTRUCTIONS) + len(asked.encode()) + len(graded.encode())
    await until_tokens(llm_client, headers, 18 + estimate_size(size))
