"""The Vercel AI SDK, unchanged, against /v1/responses: its default OpenAI provider (``createOpenAI({baseURL,
apiKey})(model)`` speaks the Responses API) with a persona as the model, through ``generateText``, ``streamText``
structured output (``generateObject``) and a function tool the SDK runs itself.

The SDK is installed once, at pinned versions, from the npm registry into a cache folder outside the checkout
(``$XDG_CACHE_HOME/persona-runtime/npm``). Without Node.js or npm the test skips, and in CI it fails, saying
which package brings them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.services import required_binary, services_required
from tests.test_parameters import _persona

pytestmark = pytest.mark.asyncio

# Versions that run on Node.js 18 and later (ai 7 and @ai-sdk/openai 4 need Node.js 22).
PACKAGES = {"ai": "6.0.333", "@ai-sdk/openai": "3.0.141", "zod": "4.6.7"}
SCRIPT = Path(__file__).parent / "node" / "vercel_ai_sdk.mjs"
_READY_MARK = ".installed"


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = "-".join(f"{name.replace('/', '+')}@{version}" for name, version in PACKAGES.items())
    return base / "persona-runtime" / "npm" / key


def _unavailable(message: str) -> None:
    if services_required():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _install(npm: str) -> Path:
    """The cached ``node_modules`` holding the pinned packages, installed first if they are not there yet."""
    target = cache_dir()
    if (target / _READY_MARK).exists():
        return target / "node_modules"
    target.parent.mkdir(parents=True, exist_ok=True)
    # Installed beside the cache entry, then moved into place: an interrupted install leaves no half entry.
    work = Path(tempfile.mkdtemp(prefix=".install-", dir=target.parent))
    try:
        manifest = {"name": "persona-runtime-vercel-ai-test", "private": True, "dependencies": PACKAGES}
        (work / "package.json").write_text(json.dumps(manifest))
        command = [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"]
        done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            _unavailable(f"npm install {' '.join(PACKAGES)} failed: {done.stderr.strip()[-2000:]}")
        (work / _READY_MARK).write_text(json.dumps(PACKAGES))
        with contextlib.suppress(OSError):  # another run put it there first
            work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target / "node_modules"


@pytest.fixture(scope="module")
def vercel_ai() -> tuple[str, Path]:
    """Node.js 18 or later and the cached packages."""
    node = required_binary("/usr/bin/node", "nodejs")
    npm = required_binary("/usr/bin/npm", "npm")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 18:
        _unavailable(f"Node.js {version} is too old for the AI SDK: it needs 18 or later")
    return node, _install(npm)


async def test_generate_text_stream_text_and_a_tool_round_trip(vercel_ai, llm_app, llm_client, alice, tmp_path):
    node, modules = vercel_ai
    model = await _persona(llm_client, alice, "echo")
    # The script resolves its imports from the folder it is in.
    (tmp_path / "node_modules").symlink_to(modules)
    script = tmp_path / SCRIPT.name
    shutil.copy(SCRIPT, script)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AI_"))}
    command = [node, str(script), llm_app.state.base_url + "/v1", alice.key, model]
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    said = json.loads(done.stdout.strip().splitlines()[-1])

    assert said["generated"] == "[echo] Hello from generateText"
    assert said["generatedFinish"] == "stop"
    assert said["generatedUsage"]["inputTokens"] > 0 and said["generatedUsage"]["outputTokens"] > 0
    # The next turn sends the first answer back as a reference to the stored item, which the runtime resolves.
    assert said["followUp"] == "[echo] And a second turn"
    assert said["streamed"] == "[echo] Hello from streamText"
    assert said["streamedPieces"] > 1 and said["streamedFinish"] == "stop"
    assert said["trip"] == {"city": "[echo] Plan a trip.", "days": 1}
    # The SDK ran the tool the persona called, sent its result back, and got the answer that ends the loop.
    assert said["ran"] == ["Oslo", "Lima"]
    assert said["toolSteps"] == ["tool-calls", "stop"]
    assert said["toolText"] == "[echo] tool get_weather said: sunny in Oslo"
    assert said["streamedToolSteps"] == ["tool-calls", "stop"]
    assert said["streamedToolText"] == "[echo] tool get_weather said: sunny in Lima"
