"""The full-text rank a turn works out in process orders memories as PostgreSQL's ``ts_rank`` does (contract
section 15: past the budget, the most relevant by PostgreSQL's full-text ranking, then the newest), and
messages its parser could read otherwise are left to PostgreSQL."""

from __future__ import annotations

import random
import struct

import asyncpg

from runtime.memory.textrank import LEXEMES, postings_of, query_words, ranked

# PostgreSQL's order of memories (newest first, as $1's order) against a message: as the turn's ranking query.
_ORDER = """
WITH query AS (SELECT nullif(replace(plainto_tsquery('simple', $2)::text, ' & ', ' | '), '')::tsquery AS terms),
ranked AS (SELECT m.n, ts_rank(to_tsvector('simple', m.content), query.terms) AS rank
           FROM unnest($1::text[]) WITH ORDINALITY AS m(content, n), query
           WHERE query.terms IS NOT NULL AND to_tsvector('simple', m.content) @@ query.terms)
SELECT coalesce(array_agg(n - 1 ORDER BY rank DESC, n) FILTER (WHERE rank > 0), '{}') FROM ranked"""
_LEXEMES = (
    f"SELECT {LEXEMES.format(content='m.content')} FROM unnest($1::text[]) WITH ORDINALITY AS m(content, n) ORDER BY n"
)
_QUERY = "SELECT coalesce(array_agg(lexeme ORDER BY lexeme), '{}') FROM unnest(to_tsvector('simple', $1))"

_WORDS = ["boat", "harbour", "cello", "tea", "garden", "music", "winter", "train", "city", "dog", "cat", "book"]
_WORDS += ["river", "job", "the", "a", "of", "7", "2026", "X1"]
_GLUE = [" ", " ", " ", ", ", ". ", "! ", "? ", ": ", "; ", " (", ") ", "'", '"', "\n", "_"]


def _text(rng: random.Random, words: int) -> str:
    parts = []
    for _ in range(words):
        word = rng.choice(_WORDS)
        parts.append(word.upper() if rng.random() < 0.1 else word)
        parts.append(rng.choice(_GLUE))
    return "".join(parts).strip()


async def test_memories_are_ranked_in_postgresqls_order_ties_and_repeats_included(database_url):
    rng = random.Random(18)
    connection = await asyncpg.connect(database_url)
    try:
        for case in range(150):
            memories = [_text(rng, rng.choice((1, 3, 6, 12, 40))) for _ in range(rng.randint(1, 60))]
            if case % 10 == 0:
                memories.append("a " * 400)  # one word at more places than PostgreSQL keeps (256)
            message = _text(rng, rng.randint(0, 25))
            words = query_words(message)
            assert words is not None, message
            assert words == list(await connection.fetchval(_QUERY, message))
            postings = postings_of([(r[0], r[1]) for r in await connection.fetch(_LEXEMES, memories)])
            assert ranked(postings, words) == list(await connection.fetchval(_ORDER, memories, message)), message
    finally:
        await connection.close()


async def test_a_message_postgresql_could_read_otherwise_is_left_to_it(database_url):
    connection = await asyncpg.connect(database_url)
    try:
        for message in (
            "e.g. the boat",
            "a sea-boat",
            "caf\u00e9 au lait",
            "the harbour/boat",
            "me@harbour.org",
            "1.5 boats",
            "<b>boat</b>",
            "C++ and tea",
            "~dog",
            "U.S.A. trip",
            "x.y",
        ):
            assert query_words(message) is None, message
        for message in ("Is my boat safe at the harbour?", "word. Next", "1. 2. 3.", "Don't stop: x_y", ""):
            assert query_words(message) == list(await connection.fetchval(_QUERY, message)), message
    finally:
        await connection.close()


def _ts_rank_order(memories: list[tuple[list[str] | None, list[int] | None]], words: list[str]) -> list[int]:
    """calc_rank_or written out as tsrank.c has it, one memory at a time: each query word's term in the query's
    order, summed in single precision, divided by the query's size; highest first, among equals the first."""
    f32 = struct.Struct("f")

    def single(value: float) -> float:
        return f32.unpack(f32.pack(value))[0]

    weight = single(0.1)
    ranks = {}
    for index, (lexemes, counts) in enumerate(memories):
        places = {lexeme: min(count or 1, 256) for lexeme, count in zip(lexemes or (), counts or (), strict=True)}
        total = 0.0
        found = False
        for word in words:
            if word not in places:
                continue
            found = True
            resj = 0.0
            for j in range(places[word]):
                resj = single(resj + single(weight / ((j + 1) * (j + 1))))
            total = single(total + single(single(weight + resj) - weight) / 1.64493406685)
        rank = single(total / len(words)) if found else 0.0
        if rank > 0:
            ranks[index] = rank
    return sorted(ranks, key=lambda index: (-ranks[index], index))


def test_memories_counted_by_their_lexemes_rank_as_summed_one_by_one():
    # Most memories have each of a message's words at one place and are ranked by how many they have; those
    # with a word at more places are summed. Either way the order is calc_rank_or's, for any mix of the two.
    rng = random.Random(180)
    vocabulary = [f"w{n}" for n in range(30)]
    for case in range(3000):
        memories: list[tuple[list[str] | None, list[int] | None]] = []
        for _ in range(rng.randint(0, 60)):
            lexemes = sorted(rng.sample(vocabulary, rng.randint(0, 12)))
            repeats = 0.0 if case % 3 == 0 else 0.3  # a third of the cases: every word at one place
            counts = [rng.choice((2, 3, 300, 0)) if rng.random() < repeats else 1 for _ in lexemes]
            memories.append((lexemes or None, counts or None))
        words = sorted(set(rng.sample([*vocabulary, "unsaid"], rng.randint(0, 25))))
        assert ranked(postings_of(memories), words) == _ts_rank_order(memories, words), case
    # A query long enough that counts of matches are many: ranks still rise with each one.
    many = [f"w{n}" for n in range(1000)]
    memories = [(many[: n * 50], [1] * (n * 50)) for n in range(20)]
    assert ranked(postings_of(memories), many) == _ts_rank_order(memories, many) == list(range(19, 0, -1))


async def test_a_message_read_here_is_read_as_postgresql_reads_it(database_url):
    # Any mix of characters: what is worked out here is PostgreSQL's own query, and a message of ASCII words
    # between separators (full stops only before a blank or at the end) is always worked out here.
    rng = random.Random(15)
    plain = list("abcXYZ019 \t\n,;!?\"'()[]{}:*_=|`$%^#\\")
    other = ["-", "/", "@", "\u00e9", "~", "<", "+", ".", "&", "\u00a0"]
    connection = await asyncpg.connect(database_url)
    try:
        for case in range(400):
            chars = plain + (other if case % 2 else [])
            message = "".join(rng.choice(chars) for _ in range(rng.randint(0, 30)))
            if case % 4 == 0:
                message += rng.choice((".", ". b", ".b", "a.", ""))
            words = query_words(message)
            if case % 2 == 0 and not any(
                message[n] == "." and message[n + 1 :][:1] not in ("", " ") for n in range(len(message))
            ):
                assert words is not None, repr(message)
            if words is not None:
                assert words == list(await connection.fetchval(_QUERY, message)), repr(message)
    finally:
        await connection.close()
