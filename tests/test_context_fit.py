"""The history's fit (contract section 13: whole turns, newest first, within the room left) against a walk over
every row, the plain statement of the rule that ``_fit``'s bisection must agree with."""

from __future__ import annotations

import random

import pytest

from providers import ChatMessage
from runtime.chat.context import _fit
from runtime.chat.conversations import WindowRow


def walked(rows: list[WindowRow], more: bool, left: int, ratio: float, keep: int):
    """Turn by turn, newest first: a turn ends at its user message, or at the conversation's first message; the
    first turn that does not fit ends the walk. The rows kept, their tokens, whether any stored message was left
    out, and where a summary keeping ``keep`` tokens would end."""
    kept: list[WindowRow] = []
    group: list[WindowRow] = []
    spent = cost = 0
    mark = None
    for index, row in enumerate(rows):
        group.append(row)
        cost += row.tokens if ratio == 1.0 else int(row.tokens * ratio + 0.999)
        if not (row.role == "user" or (index == len(rows) - 1 and not more)):
            continue
        if spent + cost > left:
            return kept, spent, True, mark
        kept.extend(group)
        spent += cost
        if spent <= keep or mark is None:
            mark = row.seq
        group, cost = [], 0
    return kept, spent, more or bool(group), mark


def rows_of(rng: random.Random, n: int) -> list[WindowRow]:
    rows = []
    for seq in range(n, 0, -1):  # newest first
        role = "user" if rng.random() < 0.45 else "assistant"
        tokens = rng.choice([0, 1, 5, 40, 60, 300])
        rows.append(WindowRow(seq, role, "x", tokens, ChatMessage(role=role, content="x")))
    return rows


@pytest.mark.parametrize("seed", range(6))
def test_the_fit_agrees_with_a_walk_over_every_turn(seed):
    rng = random.Random(seed)
    cases = 0
    for _ in range(700):
        rows = rows_of(rng, rng.randrange(0, 30))
        more = rng.random() < 0.5
        left = rng.randrange(0, 2000)
        keep = int(left * rng.choice([0.0, 0.3, 0.65, 1.0]))
        ratio = rng.choice([1.0, 1.0, 0.8, 1.37])
        got = _fit(rows, more, left, ratio, keep)
        want = walked(rows, more, left, ratio, keep)
        assert (list(got[0]), *got[1:]) == want, (rows, more, left, ratio, keep)
        cases += bool(want[0]) and want[0] != rows
    assert cases > 100  # most draws keep some turns and leave others out


def test_a_greeting_that_opens_the_conversation_is_a_turn_of_its_own():
    greeting = WindowRow(1, "assistant", "hi", 10, ChatMessage(role="assistant", content="hi"))
    question = WindowRow(2, "user", "q", 10, ChatMessage(role="user", content="q"))
    answer = WindowRow(3, "assistant", "a", 10, ChatMessage(role="assistant", content="a"))
    rows = [answer, question, greeting]
    assert _fit(rows, False, 30, 1.0, 30) == (rows, 30, False, 1)
    assert _fit(rows, False, 25, 1.0, 25) == ([answer, question], 20, True, 2)
    # Read only part of the way back (``more``), the greeting is not known to be the first: it makes no turn.
    assert _fit(rows, True, 30, 1.0, 30) == ([answer, question], 20, True, 2)
