"""Suite runs as people and CI systems read them: a text summary, and JUnit XML.

JUnit XML has no single standard; this writes the shape Jenkins, GitLab, GitHub Actions reporters and
pytest's ``--junitxml`` agree on: one ``<testsuites>`` holding a ``<testsuite>`` per persona's suite, a
``<testcase>`` per test (``classname`` the persona, ``time`` the answer's seconds) and, for a failed one,
a ``<failure>`` whose ``message`` is the first failure and whose text lists every failure, the grade and
the answer.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from msgspec import UNSET

from runtime.authoring.service import SuiteRun, TestResult

__all__ = ["junit_xml", "summary", "write_junit"]


# Characters XML 1.0 cannot hold at all, even escaped (most control characters): a report shows them as U+FFFD.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def _seconds(result: TestResult) -> float:
    return (result.latency_ms if result.latency_ms is not UNSET else 0) / 1000


def _label(run: SuiteRun) -> str:
    return f"{run.persona.name} (version {run.persona.version})"


def _graded(result: TestResult) -> str | None:
    if result.reason is UNSET:
        return None
    score = "none" if result.score is None or result.score is UNSET else f"{result.score:g}"
    return f"score {score}: {result.reason}"


def summary(runs: Sequence[SuiteRun]) -> str:
    """What ``personas test`` prints: each test's outcome under its persona, then the totals."""
    lines: list[str] = []
    for run in runs:
        lines.append(f"{_label(run)}: {run.passed} passed, {run.failed} failed")
        if not run.results:
            lines.append("  (no tests)")
        for result in run.results:
            took = f" ({result.latency_ms} ms)" if result.latency_ms is not UNSET else ""
            lines.append(f"  {'PASS' if result.passed else 'FAIL'} {result.name}{took}")
            if not result.passed:
                lines.extend(f"       - {failure}" for failure in result.failures)
            graded = _graded(result)
            if graded is not None and result.passed:
                lines.append(f"       {graded}")
    passed = sum(r.passed for r in runs)
    failed = sum(r.failed for r in runs)
    outcome = "FAILED" if failed else "passed"
    tests, personas = passed + failed, len(runs)
    counted = f"{tests} test{'' if tests == 1 else 's'} of {personas} persona{'' if personas == 1 else 's'}"
    lines.append(f"{outcome}: {counted}, {passed} passed, {failed} failed")
    return "\n".join(lines)


def junit_xml(runs: Sequence[SuiteRun], *, now: datetime | None = None) -> bytes:
    """The runs as a JUnit XML document (UTF-8, with its declaration)."""
    # UTC without an offset: the JUnit schema's timestamp is a plain date and time.
    stamp = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0, tzinfo=None).isoformat()
    root = ET.Element("testsuites", name="persona-runtime")
    total = failures = 0
    elapsed = 0.0
    for run in runs:
        seconds = sum(_seconds(r) for r in run.results)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=_label(run),
            tests=str(len(run.results)),
            failures=str(run.failed),
            errors="0",
            skipped="0",
            time=f"{seconds:.3f}",
            timestamp=stamp,
        )
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", name="persona_id", value=str(run.persona.id))
        ET.SubElement(properties, "property", name="persona_version", value=str(run.persona.version))
        for result in run.results:
            case = ET.SubElement(
                suite, "testcase", classname=run.persona.name, name=result.name, time=f"{_seconds(result):.3f}"
            )
            if not result.passed:
                failure = ET.SubElement(case, "failure", message=result.failures[0], type="expectation")
                details = [f"- {f}" for f in result.failures]
                graded = _graded(result)
                if graded is not None:
                    details.append(graded)
                details.append(f"answer: {result.response}")
                failure.text = "\n".join(details)
            elif _graded(result) is not None:
                ET.SubElement(case, "system-out").text = _graded(result)
        total += len(run.results)
        failures += run.failed
        elapsed += seconds
    root.set("tests", str(total))
    root.set("failures", str(failures))
    root.set("errors", "0")
    root.set("time", f"{elapsed:.3f}")
    for element in root.iter():
        element.attrib = {k: _xml(v) for k, v in element.attrib.items()}
        if element.text:
            element.text = _xml(element.text)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_junit(path: Path, runs: Sequence[SuiteRun]) -> None:
    path.write_bytes(junit_xml(runs))
