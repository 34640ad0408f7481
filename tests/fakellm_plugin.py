"""Pytest fixtures for the fake LLM server; load with ``pytest_plugins = ["tests.fakellm_plugin"]``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakellm import FakeLLM


@pytest.fixture(scope="session")
def fake_llm_server() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture
def fake_llm(fake_llm_server: FakeLLM) -> Iterator[FakeLLM]:
    """The shared server with an empty script queue and request log for this test."""
    fake_llm_server.reset()
    yield fake_llm_server
    fake_llm_server.reset()
