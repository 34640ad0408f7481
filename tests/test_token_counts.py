"""Exact token counts for OpenAI's encodings (contract section 13): the counter that splits ASCII text with
Python's own ``re`` and keeps each piece's count agrees with the encoding on every text."""

from __future__ import annotations

import random
import string

import bpe_openai
import pytest

from runtime.chat.tokens import tokenizer_for

_ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \t\n\r\x0b\x0c" + "   '''sStTdDmMlLvVrReE"
_WORDS = ["the", "harbour", "at", "dawn", "was", "quiet", "grey", "gulls", "over", "boats", "I'm", "we'll", "THEY'RE"]


@pytest.mark.parametrize(("model", "encoding"), [("gpt-4o-mini", "o200k_base"), ("gpt-4", "cl100k_base")])
def test_counts_agree_with_the_encoding_on_every_text(model, encoding):
    count = tokenizer_for(model).count
    exact = bpe_openai.get_encoding(encoding).encode_ordinary
    rng = random.Random(encoding)
    texts = ["", " ", "\n\n", "a", "hello world", "  trailing  ", "x\x1c y", "naïve café", "emoji 🙂 ok", "12345678"]
    texts += ["".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(1, 120))) for _ in range(3000)]
    texts += [" ".join(rng.choice(_WORDS) for _ in range(rng.randrange(1, 60))) for _ in range(500)]
    texts += [
        t + rng.choice([" ", "\n", "\n\t", "\n\x0b", " \n ", "\t\n", "\n\n "]) for t in texts[-300:]
    ]  # whitespace last
    # Twice: the second pass is answered from the kept pieces' counts.
    for _ in range(2):
        wrong = [t for t in texts if count(t) != len(exact(t))]
        assert not wrong, wrong[:3]
