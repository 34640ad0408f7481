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

__all__ = ["LEXEMES", "Postings", "postings_of", "query_words", "ranked"]

# A memory's lexemes and the number of positions of each, in the same row as the memory.
LEXEMES = """(SELECT array_agg(lexeme) FROM unnest(to_tsvector('simple', {content}))) AS lexemes,
       (SELECT array_agg(cardinality(positions)) FROM unnest(to_tsvector('simple', {content}))) AS counts"""

# The messages PostgreSQL's parser reads as our words: ASCII letters and digits, ASCII blanks, and punctuation
# that is always a separator to it; a full stop only before a blank or the end ("e.g", "x.y" are its own words).
_PLAIN = re.compile(r"(?:[A-Za-z0-9 \t\n\r,;!?\"'()\[\]{}:*_=|`$%^#\\]|\.(?![^ \t\n\r]))*\Z")
_WORD = re.compile(r"[a-z0-9]+")

# Each lexeme: the memories that have it, each as its index times 512 plus its positions in it (at most 256),
# one int when it is one memory's (most are), else a list: a user's lexemes are kept for as long as their memories.
Postings = dict[str, int | list[int]]
_SHIFT = 9
_COUNT = (1 << _SHIFT) - 1

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
    if not _PLAIN.match(text):
        return None
    return sorted(set(_WORD.findall(text.lower())))


def postings_of(memories: list[tuple[list[str] | None, list[int] | None]]) -> Postings:
    """The postings of memories given as (lexemes, positions of each), in their order."""
    postings: Postings = {}
    for index, (lexemes, counts) in enumerate(memories):
        for lexeme, count in zip(lexemes or (), counts or (), strict=True):
            posting = index << _SHIFT | min(count or 1, 256)
            found = postings.get(lexeme)
            if found is None:
                postings[lexeme] = posting
            elif isinstance(found, int):
                postings[lexeme] = [found, posting]
            else:
                found.append(posting)
    return postings


def ranked(postings: Postings, words: list[str]) -> list[int]:
    """The indexes of the memories that have any of ``words`` (sorted and unique), by their ``ts_rank``,
    highest first; among equals the smaller index (the newer memory)."""
    if not words:
        return []
    pack, unpack = _FLOAT.pack, _FLOAT.unpack
    sums: dict[int, float] = {}
    for word in words:  # in the query's order: the single-precision sums depend on it
        found = postings.get(word)
        if found is None:
            continue
        for posting in (found,) if isinstance(found, int) else found:
            index, term = posting >> _SHIFT, _TERMS[posting & _COUNT]
            total = sums.get(index)
            sums[index] = unpack(pack(term if total is None else total + term))[0]
    size = len(words)
    ranks: dict[int, float] = {}
    divided: dict[float, float] = {}  # most memories share a sum: divide each once
    for index, total in sums.items():
        rank = divided.get(total)
        if rank is None:
            rank = divided[total] = unpack(pack(total / size))[0]
        if rank > 0:
            ranks[index] = rank
    order = sorted(ranks)
    order.sort(key=ranks.__getitem__, reverse=True)  # stable: among equals the smaller index stays first
    return order
