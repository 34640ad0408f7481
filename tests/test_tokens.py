"""Offline token counts: OpenAI's families exact from the shipped vocabularies, others estimated."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from runtime.chat.tokens import ESTIMATE, calibrated, context_window_for, estimate_tokens, tokenizer_for


def test_openai_models_are_counted_exactly_offline() -> None:
    o200k, cl100k = tokenizer_for("gpt-4o-mini"), tokenizer_for("gpt-4-0613")
    assert (o200k.name, cl100k.name) == ("o200k_base", "cl100k_base")
    # Reference ids from tiktoken's own encodings of the same text (8 tokens in each).
    assert o200k.count("Hello world, this is a test.") == 8
    assert cl100k.count("Hello world, this is a test.") == 8
    assert o200k.exact and o200k.count("") == 0


def test_other_families_are_estimated_on_the_generous_side() -> None:
    assert tokenizer_for("claude-sonnet-4-5") is ESTIMATE
    assert tokenizer_for("llama3.1:8b") is ESTIMATE
    text = "Hello world, this is a test."
    assert estimate_tokens(text) >= tokenizer_for("gpt-4o").count(text)
    assert estimate_tokens("日本語") == 3  # nine UTF-8 bytes


def test_windows_of_well_known_models() -> None:
    assert context_window_for("gpt-4o-2024-08-06") == 128_000
    assert context_window_for("claude-3-5-haiku-latest") == 200_000
    assert context_window_for("meta-llama/Llama-3.1-8B-Instruct") == 131_072
    assert context_window_for("fake-model") is None


def test_calibration_stays_within_bounds() -> None:
    assert calibrated(None) == 1.0
    assert calibrated(1.2) == 1.2
    assert calibrated(0.01) == 0.75
    assert calibrated(50.0) == 2.0


_AT_START = """
import asyncio
from runtime.chat import tokens
from runtime.server.resources import open_resources
from runtime.server.settings import Settings

async def main():
    before = sorted(tokens._encodings)
    async with open_resources(Settings.from_env(dotenv=False)):
        print(before, sorted(tokens._encodings))

asyncio.run(main())
"""


async def test_the_configured_models_tokenizers_are_loaded_at_start_not_by_the_first_turn(create_database) -> None:
    # Loading a vocabulary takes a third of a second; done by the first turn, it would hold the event loop.
    env = {
        **os.environ,
        "DATABASE_URL": await create_database(),
        "OPENAI_API_KEY": "sk-test-not-a-key",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "OPENAI_MODEL": "gpt-4o-mini",
    }
    env.pop("REDIS_URL", None)
    command = [sys.executable, "-c", _AT_START]
    done = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "[] ['o200k_base']"
