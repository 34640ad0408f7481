"""``persona-runtime personas test NAME... [--label L] [--junit FILE]``: saved suites run for CI, against fresh
databases, with the offline echo provider (which answers "[echo] " + the message and grades by quoted words)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
import xml.etree.ElementTree as ET
from typing import Any

import msgspec
import pytest

from core.db import connect_pool
from core.events import PersonaRef
from personas.cache import MemoryCache
from personas.store import PersonaStore
from runtime.authoring.reports import junit_xml
from runtime.authoring.service import SuiteRun
from runtime.authoring.service import TestResult as Result  # not a test class
from runtime.authoring.suites import PersonaTestDraft, PersonaTestStore
from tests.test_personas_files import cli, document, fresh_db, query, write  # noqa: F401 (fresh_db is a fixture)


def add_tests(dsn: str, persona: str, *tests: dict[str, Any]) -> None:
    """Save ``tests`` on the persona named ``persona``, as POST .../tests does."""

    async def run() -> None:
        pool = await connect_pool(dsn, min_size=1, max_size=1)
        try:
            persona_id = await pool.fetchval("SELECT id FROM personas WHERE lower(name) = lower($1)", persona)
            store = PersonaTestStore(pool)
            for test in tests:
                await store.add(persona_id, msgspec.convert(test, PersonaTestDraft), created_by=None)  # type: ignore[arg-type]
        finally:
            await pool.close()

    asyncio.run(run())


@pytest.fixture
def suites(fresh_db, tmp_path, capsys) -> str:  # noqa: F811
    """Two personas imported from files, one whose suite passes and one whose suite has a failing test."""
    source = tmp_path / "personas"
    write(source, "greeter.json", document("Greeter"))
    write(source, "critic.json", document("Critic"))
    assert cli(capsys, "personas", "import", str(source))[0] == 0
    add_tests(
        fresh_db,
        "Greeter",
        {"name": "says bonjour", "message": "Bonjour!", "expect": {"contains": ["bonjour"]}},
        {"name": "is judged polite", "message": "Bonjour, merci", "expect": {"judge": {"rubric": 'Says "merci".'}}},
    )
    add_tests(
        fresh_db,
        "Critic",
        {"name": "stays short", "message": "hi", "expect": {"max_chars": 50}},
        {"name": "answers in JSON", "message": "hi", "expect": {"is_json": True}},
        {"name": "is judged warm", "message": "hi", "expect": {"judge": {"rubric": 'Says "thanks"', "threshold": 0.5}}},
    )
    return fresh_db


def test_a_passing_suite_exits_0_and_says_what_passed(suites, capsys):
    code, out, err = cli(capsys, "personas", "test", "greeter")  # names in any case
    assert code == 0, err
    assert "Greeter (version 1): 2 passed, 0 failed" in out
    assert "  PASS says bonjour" in out and "  PASS is judged polite" in out
    assert "score 1: echo grading: the answer contains 1 of the rubric's 1 quoted phrases" in out
    assert out.rstrip().endswith("passed: 2 tests of 1 persona, 2 passed, 0 failed")


def test_a_failing_test_exits_1_and_the_junit_file_says_which_and_why(suites, tmp_path, capsys):
    report = tmp_path / "reports" / "personas.xml"
    report.parent.mkdir()
    code, out, _ = cli(capsys, "personas", "test", "Greeter", "Critic", "--junit", str(report))
    assert code == 1
    assert "Critic (version 1): 1 passed, 2 failed" in out
    assert "  FAIL answers in JSON" in out and "       - expected the answer to be JSON" in out
    assert out.rstrip().endswith("FAILED: 5 tests of 2 personas, 3 passed, 2 failed")

    root = ET.parse(report).getroot()  # the stdlib parser reads it: well-formed XML
    assert root.tag == "testsuites" and root.get("tests") == "5" and root.get("failures") == "2"
    greeter, critic = root.findall("testsuite")
    assert greeter.get("name") == "Greeter (version 1)" and greeter.get("failures") == "0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", greeter.get("timestamp"))
    assert [c.get("name") for c in greeter.findall("testcase")] == ["says bonjour", "is judged polite"]
    assert all(c.find("failure") is None for c in greeter.findall("testcase"))
    assert critic.get("tests") == "3" and critic.get("failures") == "2"
    properties = {p.get("name"): p.get("value") for p in critic.iter("property")}
    assert properties["persona_version"] == "1" and len(properties["persona_id"]) == 36
    cases = {c.get("name"): c for c in critic.findall("testcase")}
    assert all(c.get("classname") == "Critic" and float(c.get("time")) >= 0 for c in cases.values())
    assert cases["stays short"].find("failure") is None
    json_failure = cases["answers in JSON"].find("failure")
    assert json_failure.get("message").startswith("expected the answer to be JSON")
    assert "answer: [echo] hi" in json_failure.text
    judged = cases["is judged warm"].find("failure")
    assert judged.get("message").startswith("the grader scored the answer 0, below the threshold 0.5")
    assert "score 0: echo grading" in judged.text and "missing 'thanks'" in judged.text


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["Nobody"], "no persona named 'Nobody'"),
        (["Greeter", "--owner", "nobody"], "--owner: no user named 'nobody'"),
        (["Greeter", "--label", "Not A Label"], "a label is 1 to 32 of a-z, 0-9, _ and -"),
        (["Greeter", "--label", "canary"], "persona 'Greeter' has no label 'canary'"),
    ],
)
def test_usage_errors_exit_2_and_run_nothing(suites, capsys, argv, said):
    code, out, err = cli(capsys, "personas", "test", *argv)
    assert code == 2
    assert said in err and out == ""


def set_label(dsn: str, persona: str, label: str, version: int) -> None:
    """Point ``label`` of the persona named ``persona`` at ``version``, as PUT .../labels/{label} does."""

    async def run() -> None:
        pool = await connect_pool(dsn, min_size=1, max_size=1)
        try:
            store = PersonaStore(pool, MemoryCache())
            persona_id = await pool.fetchval("SELECT id FROM personas WHERE lower(name) = lower($1)", persona)
            current = await store.get_uncached(persona_id)
            assert current is not None
            await store.set_label(current, label, version, actor=None)
        finally:
            await pool.close()

    asyncio.run(run())


def test_labels_pick_the_version_tested(suites, tmp_path, capsys):
    source = tmp_path / "personas"  # the fixture's directory: a second save of Greeter
    write(source, "greeter.json", document("Greeter", description="Greeter, second take."))
    assert cli(capsys, "personas", "import", str(source))[0] == 0

    def tested(*label: str) -> str:
        code, out, _ = cli(capsys, "personas", "test", "Greeter", *label)
        assert code == 0
        return out.split(":", 1)[0]

    # Production follows the latest save until it is pinned; latest is always the latest save.
    assert tested() == tested("--label", "production") == tested("--label", "latest") == "Greeter (version 2)"
    set_label(suites, "Greeter", "canary", 1)
    assert tested("--label", "canary") == "Greeter (version 1)"
    set_label(suites, "Greeter", "production", 1)
    assert tested() == tested("--label", "production") == "Greeter (version 1)"
    assert tested("--label", "latest") == "Greeter (version 2)"


def test_without_names_it_is_a_usage_error(suites, capsys):
    with pytest.raises(SystemExit) as exited:
        cli(capsys, "personas", "test")
    assert exited.value.code == 2


def test_a_persona_without_tests_passes_and_says_so(fresh_db, tmp_path, capsys):  # noqa: F811
    write(tmp_path / "p", "quiet.json", document("Quiet"))
    assert cli(capsys, "personas", "import", str(tmp_path / "p"))[0] == 0
    code, out, _ = cli(capsys, "personas", "test", "Quiet", "--junit", str(tmp_path / "out.xml"))
    assert code == 0 and "(no tests)" in out
    assert ET.parse(tmp_path / "out.xml").getroot().get("tests") == "0"


def test_a_junit_file_that_cannot_be_written_is_a_usage_error(suites, tmp_path, capsys):
    code, out, err = cli(capsys, "personas", "test", "Greeter", "--junit", str(tmp_path / "missing" / "x.xml"))
    assert code == 2 and "cannot write the JUnit file" in err
    assert "Greeter (version 1)" in out  # the summary was printed first


# Suites as files, for a branch of exported personas ------------------------------------------------------


def test_export_writes_each_suite_beside_its_persona_and_import_brings_it_into_another_database(
    suites, create_database, tmp_path, capsys, monkeypatch
):
    branch = tmp_path / "branch"
    code, out, _ = cli(capsys, "personas", "export", str(branch))
    assert code == 0
    assert "written   Greeter (greeter.tests.json)" in out and "written   Critic (critic.tests.json)" in out
    suite = json.loads((branch / "greeter.tests.json").read_text())
    assert suite["format"] == "persona-runtime/tests-v1" and suite["persona"] == "Greeter"
    assert [t["name"] for t in suite["tests"]] == ["says bonjour", "is judged polite"]
    assert suite["tests"][1]["expect"]["judge"] == {"rubric": 'Says "merci".', "threshold": 0.7}
    # Exported again, nothing changed, byte for byte.
    assert "nothing changed" in cli(capsys, "personas", "export", str(branch))[1]

    # A CI job: a fresh database, the branch imported, the suites run.
    monkeypatch.setenv("DATABASE_URL", asyncio.run(create_database()))
    code, out, _ = cli(capsys, "personas", "import", str(branch))
    assert code == 0
    assert "created   Greeter (greeter.tests.json)" in out and "created   Critic (critic.tests.json)" in out
    assert "nothing changed" in cli(capsys, "personas", "import", str(branch))[1]
    code, out, _ = cli(capsys, "personas", "test", "Greeter", "Critic")
    assert code == 1 and out.rstrip().endswith("FAILED: 5 tests of 2 personas, 3 passed, 2 failed")

    # Fixing the failing tests in the branch (here: dropping them) is the next import's whole suite.
    suite = json.loads((branch / "critic.tests.json").read_text())
    suite["tests"] = suite["tests"][:1]
    (branch / "critic.tests.json").write_text(json.dumps(suite))
    code, out, _ = cli(capsys, "personas", "import", str(branch))
    assert "updated   Critic (critic.tests.json)" in out and "unchanged Greeter (greeter.tests.json)" in out
    assert cli(capsys, "personas", "test", "Greeter", "Critic")[0] == 0


@pytest.mark.parametrize(
    ("suite", "said"),
    [
        ({"persona": "Greeter", "tests": []}, "Object missing required field `format`"),
        ({"format": "persona-runtime/tests-v1", "persona": "Nobody", "tests": []}, "persona 'Nobody' is not defined"),
        (
            {"format": "persona-runtime/tests-v1", "persona": "Greeter", "tests": [{"name": "t", "message": "m"}]},
            "missing required field `expect` - at `$.tests[0]`",
        ),
        (
            {
                "format": "persona-runtime/tests-v1",
                "persona": "Greeter",
                "tests": [{"name": "t", "message": "m", "expect": {"judge": {"rubric": "r", "threshold": 2}}}],
            },
            "at `$.tests[0].expect.judge.threshold`",
        ),
        (
            {
                "format": "persona-runtime/tests-v1",
                "persona": "Greeter",
                "tests": [{"name": "t", "message": "m", "expect": {}}],
            },
            "`tests[0].expect` expects nothing",
        ),
        (
            {
                "format": "persona-runtime/tests-v1",
                "persona": "Greeter",
                "tests": [{"name": "t", "message": "m", "expect": {"json_schema": {"type": "nope"}}}],
            },
            "`tests[0].expect.json_schema` is not a valid JSON Schema",
        ),
    ],
)
def test_a_bad_suite_file_refuses_the_whole_directory(fresh_db, tmp_path, capsys, suite, said):  # noqa: F811
    source = tmp_path / "branch"
    write(source, "greeter.json", document("Greeter"))
    write(source, "greeter.tests.json", suite)
    code, _, err = cli(capsys, "personas", "import", str(source))
    assert code == 1
    assert "nothing was imported" in err and "greeter.tests.json: " in err and said in err
    assert query(fresh_db, "SELECT count(*) AS n FROM personas WHERE name = 'Greeter'")[0]["n"] == 0


def test_an_answer_with_characters_xml_cannot_hold_still_makes_a_readable_report():
    answer = 'bell \x07, escape \x1b, NUL \x00 and <tags> & "quotes"'
    result = Result(
        test_id=uuid.uuid4(), name="odd <answer>", passed=False, response=answer, failures=["it \x07 failed"]
    )
    run = SuiteRun(persona=PersonaRef(id=uuid.uuid4(), name="R&D", version=2), passed=0, failed=1, results=[result])
    root = ET.fromstring(junit_xml([run]))
    [case] = root.iter("testcase")
    assert case.get("name") == "odd <answer>" and case.get("classname") == "R&D"
    failure = case.find("failure")
    assert failure.get("message") == "it \ufffd failed"
    assert 'answer: bell \ufffd, escape \ufffd, NUL \ufffd and <tags> & "quotes"' in failure.text
