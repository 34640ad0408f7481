"""Judged tests (contract section 16): a model grades a test's answer against the author's rubric.

The grader is ``JUDGE_PROVIDER`` / ``JUDGE_MODEL`` when set, else the persona's own provider and model; its
call is counted against the caller's limits with the test's own turn. It is
asked for one JSON object, ``{"score": 0 to 1, "reason": "..."}``, which is decoded with msgspec; an answer of
any other shape fails the expectation with a reason that says so (the run goes on). The expectation passes
when the score reaches the rubric's ``threshold``.

The offline ``echo`` provider gets no call: it grades here, deterministically (:func:`echo_grade`). The rubric's
quoted phrases (``"..."`` or ``“...”``) are what it looks for, or, when the rubric quotes nothing, its words of
four letters or more; the score is the share of them the answer contains (ignoring case), and the reason
names those missing.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from core.errors import PersonaRuntimeError
from providers import ChatMessage, ProviderRequest, ProviderSet, text_of

__all__ = ["GRADER_INSTRUCTIONS", "Grade", "Graded", "Grader", "echo_grade", "parse_grade"]

log = logging.getLogger("persona_runtime.authoring")

GRADER_INSTRUCTIONS = (
    "You grade an assistant's answer against a rubric written by the assistant's author. Read the rubric, "
    "the user's message and the answer, then reply with one JSON object and nothing else: "
    '{"score": a number from 0 (fails the rubric entirely) to 1 (meets it fully), '
    '"reason": "one short sentence saying why"}.'
)
# What a reason may hold in a result; a longer one is cut.
MAX_REASON_CHARS = 1000
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")
_QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”')
_WORD = re.compile(r"[^\W\d_]{4,}")


class Grade(Struct, frozen=True, kw_only=True):
    """The grader's structured answer. Other fields it adds are ignored."""

    score: Annotated[float, Meta(ge=0, le=1)]
    reason: str


class Graded(Struct, frozen=True, kw_only=True):
    """How a judged expectation went: the grade (``score`` None when there is none) and, if it failed, why."""

    score: float | None
    reason: str
    failure: str | None
    # UTF-8 bytes the grader's call sent and was answered (0 without a call), to count against the caller's limits.
    size: int = 0


_DECODER = msgspec.json.Decoder(Grade)


def parse_grade(text: str) -> Grade:
    """The grader's answer as a :class:`Grade` (a surrounding code fence is allowed); ``ValueError`` saying what is
    wrong when it is not that JSON object."""
    try:
        return _DECODER.decode(_FENCE.sub("", text.strip()))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(str(exc)) from None


def echo_grade(rubric: str, answer: str) -> Grade:
    """The offline grade: the share of the rubric's quoted phrases (else its words of 4+ letters) in the answer."""
    quoted = [a or b for a, b in _QUOTED.findall(rubric)]
    wanted = quoted or _WORD.findall(rubric)
    kind = "quoted phrases" if quoted else "words"
    wanted = list(dict.fromkeys(w.strip() for w in wanted if w.strip()))
    if not wanted:
        return Grade(score=0.0, reason="echo grading: the rubric has no quoted phrase and no word to look for")
    folded = answer.casefold()
    missing = [w for w in wanted if w.casefold() not in folded]
    found = len(wanted) - len(missing)
    reason = f"echo grading: the answer contains {found} of the rubric's {len(wanted)} {kind}"
    if missing:
        reason += "; missing " + ", ".join(repr(w) for w in missing[:10])
    return Grade(score=round(found / len(wanted), 4), reason=reason)


class Grader:
    """Grades answers with the configured grader, else the persona's provider and model."""

    def __init__(
        self,
        providers: ProviderSet,
        *,
        provider: str | None = None,
        model: str | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.providers = providers
        self.provider = provider
        self.model = model
        self.timeout = timeout

    def choose(self, provider: str, model: str) -> tuple[str, str | None]:
        """Who grades a turn that ran on ``provider``/``model``: ``(provider, model)``, None for its default."""
        if self.provider is None:
            return provider, self.model or model
        return self.provider, self.model

    async def grade(
        self, *, rubric: str, threshold: float, message: str, answer: str, provider: str, model: str
    ) -> Graded:
        name, chosen = self.choose(provider, model)
        if name not in self.providers:
            return _failed(f"the grader `{name}` (JUDGE_PROVIDER) is not a configured provider; set one that is")
        grader, size = self.providers.get(name), 0
        if grader.kind == "echo":
            grade = echo_grade(rubric, answer)
        else:
            asked = _asked(rubric, message, answer)
            request = ProviderRequest(
                model=chosen or grader.default_model,
                system=GRADER_INSTRUCTIONS,
                messages=(ChatMessage(role="user", content=asked),),
                temperature=0.0,
                max_tokens=400,
            )
            try:
                text = await asyncio.wait_for(text_of(grader, request), self.timeout)
            except TimeoutError:
                return _failed(f"the grader `{name}` did not answer within {self.timeout:g} s")
            except PersonaRuntimeError as exc:
                return _failed(f"the grader `{name}` failed ({exc.code}): {exc.message}")
            except Exception:
                # A fault of ours or a plugin's: this test fails with a reason, the run goes on.
                log.exception("grading with %s failed", name)
                return _failed(f"the grader `{name}` failed unexpectedly; the server's log says why")
            size = len(GRADER_INSTRUCTIONS) + len(asked.encode()) + len(text.encode())
            try:
                grade = parse_grade(text)
            except ValueError as exc:
                shown = text.strip()[:200] or "(nothing)"
                return _failed(
                    f'the grader\'s answer is not the JSON asked for ({{"score": 0 to 1, "reason": "..."}}): {exc}; '
                    f"it answered {shown!r}",
                    size,
                )
        reason = " ".join(grade.reason.split())[:MAX_REASON_CHARS]
        if grade.score >= threshold:
            return Graded(score=grade.score, reason=reason, failure=None, size=size)
        failure = f"the grader scored the answer {grade.score:g}, below the threshold {threshold:g}: {reason}"
        return Graded(score=grade.score, reason=reason, failure=failure, size=size)


def _asked(rubric: str, message: str, answer: str) -> str:
    return f"Rubric:\n{rubric}\n\nThe user's message:\n{message}\n\nThe answer:\n{answer}"


def _failed(failure: str, size: int = 0) -> Graded:
    return Graded(score=None, reason=failure, failure=failure, size=size)
