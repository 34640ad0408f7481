"""A proxy the providers cannot be reached through is refused at start, naming its variable, never bypassed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import BadRequest
from providers import configs_from_env
from tests.services import free_port

SOCKS = "socks5://user:s3cret@127.0.0.1:1080"


def test_a_socks_proxy_for_a_configured_provider_is_refused_with_what_to_do() -> None:
    with pytest.raises(BadRequest) as caught:
        configs_from_env({"ANTHROPIC_API_KEY": "sk-ant", "ALL_PROXY": SOCKS})
    message = str(caught.value)
    assert caught.value.field == "ALL_PROXY"
    assert message.startswith("Provider 'anthropic' cannot start: ALL_PROXY is a socks5:// proxy (127.0.0.1:1080)")
    assert "add api.anthropic.com to NO_PROXY" in message and "s3cret" not in message


def test_a_socks_proxy_that_no_provider_goes_through_is_no_obstacle() -> None:
    # Only echo (no network), or a local server NO_PROXY exempts, or an http origin while the proxy is for https.
    assert [c.name for c in configs_from_env({"HTTPS_PROXY": SOCKS})] == ["echo"]
    env = {"OPENAI_BASE_URL": "http://localhost:11434/v1", "ALL_PROXY": SOCKS, "NO_PROXY": "localhost"}
    assert [c.name for c in configs_from_env(env)] == ["openai", "echo"]
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:8000/v1", "HTTPS_PROXY": SOCKS}
    assert [c.name for c in configs_from_env(env)] == ["openai", "echo"]


def test_serve_refuses_to_start_behind_a_socks_proxy(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(
        OPENAI_API_KEY="sk-test",
        HTTPS_PROXY=SOCKS,
        # Never reached: the refusal comes before the database is.
        DATABASE_URL="postgresql://postgres@127.0.0.1:9/none",
        PERSONA_RUNTIME_HOME=str(tmp_path),
    )
    result = subprocess.run(
        [sys.executable, "-m", "runtime", "serve", "--port", str(free_port())],
        env=env,
        cwd=tmp_path,  # no .env file of the checkout's
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "HTTPS_PROXY is a socks5:// proxy" in result.stderr and "NO_PROXY" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout and "Traceback" not in result.stderr
