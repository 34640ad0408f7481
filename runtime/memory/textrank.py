"""PostgreSQL's full-text rank of a user's memories against a message, worked out in this process.

A turn past its memory budget ranks the memories with ``ts_rank(to_tsvector('simple', content), query)``, where
the query is any of the message's words (``plainto_tsquery('simple', message)`` with its terms joined by OR). The
memories' lexemes and how often each occurs come from PostgreSQL when the memories are read (:data:`LEXEMES`), so
they are its own. The message's words are PostgreSQL's too when its parser can only read the message as runs of
ASCII letters and digits between separators (:func:`query_words`; anything else, such as ``-``, ``.`` inside a
word, ``/``, ``@`` or a letter outside ASCII, is left to PostgreSQL). The rank is then ``ts_rank``'s own
arithmetic (``calc_rank_or`` in PostgreSQL's ``tsrank.c``, single precision as there), so the order is the one
PostgreSQL would answer, ties included; ``tests/test_memory_rank.py`` holds the two side by side.
"""

from __future__ import annotations

import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain, pairwise

__all__ = ["LEXEMES", "Postings", "postings_of", "query_words", "ranked"]

# A memory's lexemes and the number of positions of each, in the same row as the memory.
LEXEMES = """(SELECT array_agg(lexeme) FROM unnest(to_tsvector('simple', {content}))) AS lexemes,
       (SELECT array_agg(cardinality(positions)) FROM unnest(to_tsvector('simple', {content}))) AS counts"""

# The messages PostgreSQL's parser reads as our words: ASCII letters and digits, ASCII blanks, and punctuation
# that is always a separator to it; a full stop only before a blank or the end ("e.g", "x.y" are its own words).
# Searched for what breaks that (any other character, a full stop before one that is not a blank): one search is
# cheaper than matching each character.
_NOT_PLAIN = re.compile(r"[^A-Za-z0-9 \t\n\r,;!?\"'()\[\]{}:*_=|`$%^#\\.]|\.[^ \t\n\r]")
_WORD = re.compile(r"[a-z0-9]+")

_FLOAT = struct.Struct("f")
_DEFAULT_WEIGHT = _FLOAT.unpack(_FLOAT.pack(0.1))[0]  # weight D, the only one to_tsvector gives


def _f32(value: float) -> float:
    return _FLOAT.unpack(_FLOAT.pack(value))[0]


def _term(positions: int) -> float:
    """What one query lexeme found at ``positions`` places adds to the rank, before the division by the query's
    size: ``(wjm + resj - wjm / (jm + 1)^2) / 1.64493406685`` with every weight D."""
    resj = 0.0
    for j in range(positions):
        resj = _f32(resj + _f32(_DEFAULT_WEIGHT / ((j + 1) * (j + 1))))
    return _f32(_f32(_DEFAULT_WEIGHT + resj) - _DEFAULT_WEIGHT) / 1.64493406685


# PostgreSQL keeps at most 256 positions of a lexeme.
_TERMS = [0.0, *(_term(k) for k in range(1, 257))]


def query_words(text: str) -> list[str] | None:
    """The lexemes of ``plainto_tsquery('simple', text)``, sorted as PostgreSQL sorts a query's operands and
    unique; None when its parser may read ``text`` otherwise than as ASCII words (then ask it)."""
    if _NOT_PLAIN.search(text) is not None:
        return None
    return sorted(set(_WORD.findall(text.lower())))


@dataclass(frozen=True)
class Postings:
    """Which memories have each lexeme, kept for as long as the memories are: ``once`` the memories (by index)
    that have a lexeme at one place, most of them; ``more`` those that have it at more, and ``places`` each of
    those memories' lexemes with their places (at most 256, as PostgreSQL keeps)."""

    once: dict[str, tuple[int, ...]] = field(default_factory=dict)
    more: dict[str, tuple[int, ...]] = field(default_factory=dict)
    places: dict[int, dict[str, int]] = field(default_factory=dict)


def postings_of(memories: list[tuple[list[str] | None, list[int] | None]]) -> Postings:
    """The postings of memories given as (lexemes, positions of each), in their order."""
    once: dict[str, list[int]] = {}
    more: dict[str, list[int]] = {}
    places: dict[int, dict[str, int]] = {}
    for index, (lexemes, counts) in enumerate(memories):
        pairs = [(lexeme, min(count or 1, 256)) for lexeme, count in zip(lexemes or (), counts or (), strict=True)]
        if any(count > 1 for _, count in pairs):
            places[index] = dict(pairs)
        for lexeme, count in pairs:
            (once if count == 1 else more).setdefault(lexeme, []).append(index)
    return Postings(
        once={lexeme: tuple(found) for lexeme, found in once.items()},
        more={lexeme: tuple(found) for lexeme, found in more.items()},
        places=places,
    )


def _sums_of_once(most: int) -> list[float]:
    """The single-precision sums of 0 to ``most`` lexemes each found at one place, as calc_rank_or adds them."""
    sums = [0.0]
    for _ in range(most):
        sums.append(_f32(sums[-1] + _TERMS[1]))
    return sums


# A ranked message is at most 2,000 characters: at most 1,000 words.
_ONCE = _sums_of_once(1000)


def _once(m: int) -> float:
    return _ONCE[m] if m < len(_ONCE) else _sums_of_once(m)[m]


def ranked(postings: Postings, words: list[str]) -> list[int]:
    """The indexes of the memories that have any of ``words`` (sorted and unique), by their ``ts_rank``,
    highest first; among equals the smaller index (the newer memory).

    A memory's rank is the single-precision sum, in the query's order, of a term per lexeme of the query it has
    (by that lexeme's places in it), divided by the query's size. When each of those lexemes is at one place
    in it, as for most, the terms are all alike and the sum depends only on how many it has: those memories
    are counted, not summed one by one; the others are summed as PostgreSQL does."""
    if not words:
        return []
    once, more = postings.once, postings.more
    matched = Counter(chain.from_iterable([found for found in map(once.get, words) if found is not None]))
    summed: set[int] = set()
    if more:
        for found in map(more.get, words):
            if found is not None:
                summed.update(found)
    if not matched and not summed:
        return []
    size = len(words)
    pack, unpack = _FLOAT.pack, _FLOAT.unpack
    by_count = {m: unpack(pack(_once(m) / size))[0] for m in set(matched.values())}
    if not summed:
        counts = sorted(by_count)
        ranks = [by_count[m] for m in counts]
        if ranks[0] > 0 and all(a < b for a, b in pairwise(ranks)):
            # More lexemes, a higher rank: order by the count itself.
            order = sorted(matched)
            order.sort(key=matched.__getitem__, reverse=True)  # stable: among equals the smaller index first
            return order
    rank_of = {index: by_count[m] for index, m in matched.items()}
    for index in summed:
        places = postings.places[index]
        total = 0.0
        for word in words:  # in the query's order: the single-precision sums depend on it
            count = places.get(word)
            if count is not None:
                total = unpack(pack(total + _TERMS[count]))[0]
        rank_of[index] = unpack(pack(total / size))[0]
    order = sorted(index for index, rank in rank_of.items() if rank > 0)
    order.sort(key=rank_of.__getitem__, reverse=True)  # stable: among equals the smaller index stays first
    return order
