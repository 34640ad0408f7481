"""The documentation's examples run as written: README's walk-through and the chat examples in docs/."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from api.app import create_app
from tests.conftest import make_settings, serving
from tests.services import required_binary

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"


def bash_blocks(markdown: Path, heading: str, lang: str = "bash") -> str:
    """Every shell block of the section under ``heading`` (up to the next heading of its level or above), in
    order."""
    level = heading.split(" ", 1)[0]
    blocks: list[str] = []
    inside = fenced = False
    current: list[str] | None = None
    for line in markdown.read_text().splitlines():
        if line.startswith("```"):
            if fenced:
                if current is not None:
                    blocks.append("\n".join(current))
                fenced, current = False, None
            else:
                fenced = True
                current = [] if inside and line.strip() == f"```{lang}" else None
            continue
        if fenced:
            if current is not None:
                current.append(line)
        elif line == heading:
            inside = True
        elif inside and line.startswith("#") and len(line) - len(line.lstrip("#")) <= len(level):
            break  # the next heading of its level or above
    assert blocks, f"no {lang} block under {heading!r} in {markdown.name}"
    return "\n".join(blocks)


def bash_block(markdown: Path, heading: str) -> str:
    """The first ```bash block after ``heading``."""
    text = markdown.read_text()
    section = text[text.index(heading) :]
    match = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert match, f"no bash block after {heading!r} in {markdown.name}"
    return match.group(1)


async def run(*command: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, list(command), env=env, capture_output=True, text=True, timeout=120, cwd=cwd
    )


def checkout_state() -> str:
    """What git sees changed in the checkout (empty outside a git checkout): a guide must change none of it."""
    if not (ROOT / ".git").exists():
        return ""
    found = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=all"], capture_output=True, text=True
    )
    return found.stdout if found.returncode == 0 else ""


async def run_guide(
    script: str, env: dict[str, str], scratch: Path, *, makes: frozenset[str] = frozenset()
) -> subprocess.CompletedProcess[str]:
    """A guide's shell script, run in ``scratch`` as a reader in a folder of their own would: it may leave only
    the files it says it makes (``makes``), none holding a key, and must not touch the checkout."""
    before = checkout_state()
    result = await run("bash", "-euo", "pipefail", "-c", script, env=env, cwd=made(scratch))
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert checkout_state() == before, "the guide wrote into the checkout"
    left = leftovers(scratch)
    assert set(left) <= makes, f"the guide left {sorted(set(left) - makes)} behind"
    for name, content in left.items():
        assert b"prk_" not in content, f"{name} holds an API key"
    return result


def made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def leftovers(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, by its path there, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def curl() -> str:
    """curl, which the shell examples use: the test skips without it, or fails in CI (``.ci/run`` installs it)."""
    return required_binary("/usr/bin/curl", "curl")


@pytest.fixture
def node() -> str:
    """Node.js 18 or later, for the fetch example: skipped without it, or failed in CI, as ``curl`` is."""
    return required_binary("/usr/bin/node", "nodejs")


@pytest.fixture
async def echo_server(create_database, redis_url, limits_clock):
    """A fresh database and the runtime on it with no provider configured, on a real port."""
    database_url = await create_database()
    app = create_app(make_settings(database_url, redis_url), clock=limits_clock)
    async with serving(app) as url:
        yield database_url, url, app


def cli_env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    env["DATABASE_URL"] = database_url
    env.pop("REDIS_URL", None)
    return env


async def readme_walk_through(database_url: str, url: str, scratch: Path) -> None:
    """README's walk-through and its chat examples, as written, with what they print checked."""
    script = "\n".join(bash_block(ROOT / "README.md", h) for h in ("## A walk through the persona API", "## Chatting"))
    # The same commands, pointed at this test's server and run with this interpreter's copy of the CLI.
    script = script.replace(".venv/bin/persona-runtime", f"{sys.executable} -m runtime")
    script = script.replace("http://127.0.0.1:8666", url)
    out = (await run_guide(script, cli_env(database_url), scratch)).stdout
    assert '"source":"default"' in out and '"source":"preference"' in out
    assert '"version":2' in out and "unknown template variable {{nickname}}" in out
    assert '"message":"Current persona is Mu"}' in out
    # The streamed turn continues the conversation the JSON turn started: it holds both turns.
    streamed = out.split("event: start", 1)[1]
    pieces = re.findall(r'data: \{"type":"content","content":"([^"]*)"\}', streamed)
    assert "".join(pieces) == "[echo] Tell me more"
    conversation = re.search(r'"conversation_id":"([0-9a-f-]{36})"', streamed)
    assert conversation is not None
    conn = await asyncpg.connect(database_url)
    try:
        said = await conn.fetch(
            "SELECT role, content FROM messages WHERE conversation_id = $1 ORDER BY seq", uuid.UUID(conversation[1])
        )
    finally:
        await conn.close()
    assert [(r["role"], r["content"]) for r in said] == [
        ("user", "Hello Mu!"),
        ("assistant", "[echo] Hello Mu!"),
        ("user", "Tell me more"),
        ("assistant", "[echo] Tell me more"),
    ]
    assert '"object":"chat.completion"' in out and '"type":"message"' in out


@pytest.mark.usefixtures("curl")
async def test_readme_walk_through_runs_as_written(echo_server, tmp_path):
    database_url, url, _ = echo_server
    await readme_walk_through(database_url, url, tmp_path)


async def run_walk_through(
    markdown: Path,
    heading: str,
    database_url: str,
    url: str,
    scratch: Path,
    after: str | tuple[str, ...] = "",
) -> str:
    """The shell blocks under ``heading``, run in order (after those under ``after``, whose setup they use)."""
    script = bash_blocks(markdown, heading)
    for earlier in reversed((after,) if isinstance(after, str) else after):
        if earlier:
            script = bash_blocks(markdown, earlier) + "\n" + script
    script = script.replace(".venv/bin/persona-runtime", f"{sys.executable} -m runtime")
    script = script.replace("http://127.0.0.1:8666", url)
    return (await run_guide(script, cli_env(database_url), scratch)).stdout


async def authoring_example(database_url: str, url: str, scratch: Path) -> None:
    out = await run_walk_through(ROOT / "docs" / "authoring.md", "## A worked example", database_url, url, scratch)
    # What the page says each step prints.
    assert "You are Quill, a copy editor helping Grace." in out
    assert '37 ["`{{user_name}}` at character 37 keeps the 132 characters after it' in out
    assert "[echo] Bonjour! Can you check my commas? False None" in out
    assert "1 1 [('answers in kind', []), ('stays brief', ['answer is 43 characters, more than max_chars 30'])]" in out
    assert "[(3, 'Restored version 1'), (2, 'terser'), (1, None)]" in out
    assert "[('user', 'Hi Quill'), ('assistant', '[echo] Hi Quill'), ('user', 'And now?')]" in out


async def persona_ci_example(database_url: str, url: str, scratch: Path) -> None:
    # Judged tests and persona CI continue the worked example: one script, in the page's order.
    earlier = ("## A worked example", "## Judged tests")
    out = await run_walk_through(
        ROOT / "docs" / "authoring.md", "## Persona CI", database_url, url, scratch, after=earlier
    )
    # What the page says each step prints.
    assert "{'rubric': 'Greets the user in French, saying \"bonjour\" and \"merci\".', 'threshold': 0.7}\n" in out
    assert "greets in French: True 1.0 []\n" in out
    assert (
        'thanks in three languages: False 0.3333 ["the grader scored the answer 0.3333, below the threshold 0.9: '
        "echo grading: the answer contains 1 of the rubric's 3 quoted phrases; missing 'danke', 'gracias'\"]\n"
    ) in out
    assert (
        "answers as JSON: False None ['expected the answer to be JSON for `json_schema`: JSON is malformed: "
        "invalid character (byte 1)']\n"
    ) in out
    assert "quill.json\nquill.tests.json\nQuill (version 3): 2 passed, 3 failed\n" in out
    assert "       - answer is 43 characters, more than max_chars 30\n" in out
    assert "       score 1: echo grading: the answer contains 2 of the rubric's 2 quoted phrases\n" in out
    assert out.endswith("FAILED: 5 tests of 1 persona, 2 passed, 3 failed\nexit status 1\n5 3\n")


@pytest.mark.usefixtures("curl")
async def test_judged_tests_and_persona_ci_run_as_written(echo_server, tmp_path):
    database_url, url, _ = echo_server
    await persona_ci_example(database_url, url, tmp_path)


async def context_example(database_url: str, url: str, scratch: Path) -> None:
    # The lorebook example uses the worked example's setup: one script, in the page's order.
    out = await run_walk_through(
        ROOT / "docs" / "context.md", "## A lorebook example", database_url, url, scratch, after="## A worked example"
    )
    # What the page says each step prints.
    assert "The user said: Turn 1: the tide is turni\n" in out
    assert "['system', 'summary', 'history', 'message'] True" in out
    assert "context_overflow message\n" in out
    assert "[('river', True, 'key'), ('toll', False, 'secondary_logic'), ('world', True, 'constant')]\n" in out
    assert "['After dark the toll is two coins.', 'This world is called Aria.']\n" in out


async def memory_example(database_url: str, url: str, scratch: Path) -> None:
    out = await run_walk_through(ROOT / "docs" / "memory.md", "## A worked example", database_url, url, scratch)
    # What the page says each step prints.
    assert out.split("\n")[1] == "user"  # after the id `users create` prints
    assert "extracted: my balcony faces north | user: Mira grows tomatoes on a balcony.\n" in out
    assert (
        "What you remember about Mira from earlier conversations:\n- Mira grows tomatoes on a balcony.\n"
        "- my balcony faces north\n"
    ) in out
    assert out.endswith("False\nFalse\n2\n")


@pytest.mark.usefixtures("curl")
async def test_memory_guide_runs_as_written(echo_server, tmp_path):
    database_url, url, _ = echo_server
    await memory_example(database_url, url, tmp_path)


@pytest.mark.usefixtures("curl")
async def test_context_guide_runs_as_written(echo_server, tmp_path):
    database_url, url, _ = echo_server
    await context_example(database_url, url, tmp_path)


@pytest.mark.usefixtures("curl")
async def test_release_guide_runs_as_written(echo_server, tmp_path):
    database_url, url, _ = echo_server
    out = await run_walk_through(ROOT / "docs" / "releases.md", "## A worked example", database_url, url, tmp_path)
    # What the page says each step prints, in its order.
    printed = [
        "2",
        "{'production': {'version': 1, 'pinned': True}}",
        "3",
        "1",
        "{'production': {'version': 1, 'pinned': True}, 'beta': {'version': 3}}",
        "x-persona-version: 3",
        "2",
        "{'version': 3, 'percent': 100}",
        "[('user', 3, None), ('assistant', 3, 'rollout')]",
        "{'version': 3, 'pinned': True}",
        "None",
    ]
    lines = [line.strip() for line in out.splitlines()][1:]  # after the id `users create` prints
    assert [line.lower() for line in lines] == [line.lower() for line in printed], out


@pytest.mark.usefixtures("curl")
async def test_release_loop_runs_as_written(echo_server, tmp_path):
    database_url, url, _ = echo_server
    out = await run_walk_through(
        ROOT / "docs" / "releases.md", "## The release loop", database_url, url, tmp_path, after="## A worked example"
    )
    lines = [line.strip() for line in out.splitlines()][12:]  # after the worked example's id and lines
    # What the page says each step prints, in its order; Lin is in the 10% or not, by the hash of two new ids.
    variant = "rollout" if lines[4:5] == ["[('rollout', 4, 1, 1)]"] else "production"
    version = 4 if variant == "rollout" else 3
    printed = [
        "4",
        "10% of users now get version 4",
        "1",
        "1",
        f"[('{variant}', 4, 1, 1)]",
        f"[({version}, True, True)]",
        "[('echo-1', 4, True)]",
        "Rollout ended; every user gets production",
        "{'version': 4, 'percent': 50}",
        "{'version': 4, 'pinned': True}",
        "None",
    ]
    assert lines == printed, out


@pytest.mark.usefixtures("curl")
async def test_authoring_worked_example_runs_as_written(echo_server, tmp_path):
    database_url, url, _ = echo_server
    await authoring_example(database_url, url, tmp_path)


# The files the portability guide says it writes, in the reader's own folder.
PORTABILITY_FILES = frozenset({"persona.json", "card.json", "card-export.png", "copy.json", "card.png"})


async def portability_examples(database_url: str, url: str, app: Any, workdir: Path) -> None:
    accounts = app.state.resources.accounts
    owner = await accounts.create_user(f"porter-{workdir.name}", is_admin=True)
    key, _ = await accounts.create_key(owner.id, name="docs")
    doc = ROOT / "docs" / "portability.md"
    script = "\n".join(bash_blocks(doc, heading, lang="sh") for heading in ("## Export", "## Import"))
    script = script.replace("http://127.0.0.1:8666", url)
    env = {**cli_env(database_url), "KEY": key}
    out = (await run_guide(script, env, workdir, makes=PORTABILITY_FILES)).stdout
    assert out.count('{"success":true,"persona"') == 3, out
    assert '"name":"Seraphina"' in out and "(PNG)" in out and "(copy)" in out
    card = (workdir / "card.json").read_text()
    assert '"spec":"chara_card_v2"' in card.replace(" ", "")
    assert (workdir / "card-export.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.usefixtures("curl")
async def test_portability_examples_run_as_written(echo_server, tmp_path):
    database_url, url, app = echo_server
    await portability_examples(database_url, url, app, tmp_path)


@pytest.mark.usefixtures("curl")
@pytest.mark.parametrize(
    "order",
    [
        ("readme", "authoring", "portability", "context", "memory"),
        ("memory", "context", "portability", "authoring", "readme"),
    ],
)
async def test_each_guide_also_runs_after_the_others(echo_server, tmp_path, order):
    """A reader who follows one guide, then another, on the same server meets no name taken by the first."""
    database_url, url, app = echo_server
    for guide in order:
        scratch = tmp_path / guide
        if guide == "readme":
            await readme_walk_through(database_url, url, scratch)
        elif guide == "authoring":
            await authoring_example(database_url, url, scratch)
        elif guide == "context":
            await context_example(database_url, url, scratch)
        elif guide == "memory":
            await memory_example(database_url, url, scratch)
        else:
            await portability_examples(database_url, url, app, made(scratch))


async def test_python_examples_run_as_written(echo_server):
    _, url, app = echo_server
    accounts = app.state.resources.accounts
    owner = await accounts.create_user("docs-reader")
    key, _ = await accounts.create_key(owner.id, name="docs")
    env = {**os.environ, "PERSONA_RUNTIME_URL": url, "PERSONA_RUNTIME_KEY": key}

    # -S: no site-packages, so the example runs with nothing but the standard library, as a system Python would.
    streamed = await run(sys.executable, "-S", str(EXAMPLES / "chat_stream.py"), "Hello", "there", env=env)
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.strip() == "[echo] Hello there"
    assert "[Mu via echo/echo-1]" in streamed.stderr

    sdk = await run(sys.executable, str(EXAMPLES / "openai_sdk.py"), env=env)
    assert sdk.returncode == 0, sdk.stderr
    lines = sdk.stdout.strip().splitlines()
    assert "'persona/Mu'" in lines[0]
    assert lines[1] == "[echo] Say hello in five words."
    assert lines[2] == "[echo] Count to three."


async def test_structured_output_example_runs_as_written(echo_server):
    _, url, app = echo_server
    owner = await app.state.resources.accounts.create_user("structured-reader")
    key, _ = await app.state.resources.accounts.create_key(owner.id, name="docs")
    env = {**os.environ, "PERSONA_RUNTIME_URL": url, "PERSONA_RUNTIME_KEY": key}
    result = await run(sys.executable, str(EXAMPLES / "structured_output.py"), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == ["[echo] Plan a trip. for 0 days"] * 2


async def test_anthropic_sdk_example_runs_as_written(echo_server):
    _, url, app = echo_server
    accounts = app.state.resources.accounts
    owner = await accounts.create_user("anthropic-reader")
    key, _ = await accounts.create_key(owner.id, name="docs")
    env = {**os.environ, "PERSONA_RUNTIME_URL": url, "PERSONA_RUNTIME_KEY": key}
    result = await run(sys.executable, str(EXAMPLES / "anthropic_sdk.py"), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == ["[echo] Say hello in five words.", "[echo] Count to three."]
    assert re.search(r"^\[[0-9a-f-]{36} v\d+, request\]$", result.stderr, re.MULTILINE), result.stderr


@pytest.mark.usefixtures("curl")
async def test_anthropic_curl_examples_run_as_written(echo_server):
    database_url, url, app = echo_server
    accounts = app.state.resources.accounts
    owner = await accounts.create_user("anthropic-curl")
    key, _ = await accounts.create_key(owner.id, name="docs")
    script = bash_blocks(ROOT / "docs" / "api.md", "## Anthropic-compatible API")
    env = {**cli_env(database_url), "BASE": url, "KEY": key}
    result = await run("bash", "-euo", "pipefail", "-c", script, env=env)
    assert result.returncode == 0, result.stderr
    message, rest = result.stdout.split("\n", 1)
    stream, counted = rest.rstrip().rsplit("\n", 1)
    assert '"type":"message"' in message and '"text":"[echo] Hi!"' in message
    assert stream.lstrip().startswith("event: message_start") and '"text":"again!"' in stream
    assert stream.rstrip().endswith('event: message_stop\ndata: {"type":"message_stop"}')
    assert re.fullmatch(r'\{"input_tokens":[1-9][0-9]*\}', counted), counted


@pytest.mark.usefixtures("curl")
async def test_responses_curl_examples_run_as_written(echo_server):
    database_url, url, app = echo_server
    accounts = app.state.resources.accounts
    owner = await accounts.create_user("responses-curl")
    key, _ = await accounts.create_key(owner.id, name="docs")
    script = bash_blocks(ROOT / "docs" / "api.md", "## OpenAI Responses API")
    env = {**cli_env(database_url), "BASE": url, "KEY": key}
    result = await run("bash", "-euo", "pipefail", "-c", script, env=env)
    assert result.returncode == 0, result.stderr
    first, rest = result.stdout.split("\n", 1)
    assert '"object":"response"' in first and '"text":"[echo] Hi!"' in first
    assert rest.lstrip().startswith("event: response.created") and "event: response.completed" in rest
    assert "again!" in rest
    assert rest.rstrip().endswith('"object":"response.deleted","deleted":true}')


@pytest.mark.usefixtures("curl")
async def test_images_curl_examples_run_as_written(echo_server):
    database_url, url, app = echo_server
    accounts = app.state.resources.accounts
    owner = await accounts.create_user("images-curl")
    key, _ = await accounts.create_key(owner.id, name="docs")
    script = bash_blocks(ROOT / "docs" / "api.md", "## Images")
    env = {**cli_env(database_url), "BASE": url, "KEY": key}
    result = await run("bash", "-euo", "pipefail", "-c", script, env=env)
    assert result.returncode == 0, result.stderr
    completion, message = result.stdout.rstrip().split("\n")
    assert '"content":"[echo] What is this? [1 image]"' in completion
    assert '"type":"message"' in message and '"text":"[echo] And this one? [1 image]"' in message


@pytest.mark.usefixtures("node")
async def test_javascript_fetch_example_runs_as_written(echo_server):
    _, url, app = echo_server
    accounts = app.state.resources.accounts
    owner = await accounts.create_user("js-reader")
    key, _ = await accounts.create_key(owner.id, name="docs")
    env = {**os.environ, "PERSONA_RUNTIME_URL": url, "PERSONA_RUNTIME_KEY": key}
    result = await run("node", str(EXAMPLES / "chat_stream.mjs"), "Hi", "from", "node", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[echo] Hi from node"


@pytest.mark.usefixtures("curl")
async def test_limits_examples_run_as_written(echo_server, tmp_path, minute):
    database_url, url, app = echo_server
    accounts = app.state.resources.accounts
    owner = await accounts.create_user("limits-admin", is_admin=True)
    key, _ = await accounts.create_key(owner.id, name="docs")
    script = bash_blocks(ROOT / "docs" / "api.md", "## Limits")
    env = {**cli_env(database_url), "KEY": key, "BASE": url}
    out = (await run_guide(script, env, tmp_path)).stdout.lower()
    assert out.count("http/1.1 200") == 2 and out.count("http/1.1 429") == 1, out
    assert "x-ratelimit-remaining-requests: 1" in out and "x-ratelimit-remaining-requests: 0" in out
    assert "retry-after:" in out
    assert '"requests_this_minute":2' in out
    assert '"requests_per_minute":100' in out


@pytest.mark.usefixtures("curl")
async def test_api_guide_keys_resume_and_conversations_examples_run_as_written(echo_server, tmp_path):
    """docs/api.md's examples that act on ids set each id they use from an answer, with no placeholder left."""
    database_url, url, app = echo_server
    accounts = app.state.resources.accounts
    owner = await accounts.create_user("api-guide-admin", is_admin=True)
    key, _ = await accounts.create_key(owner.id, name="docs")
    doc = ROOT / "docs" / "api.md"
    headings = ("### Managing keys", "### Resuming a stream, and stopping an answer", "## Conversations")
    script = "\n".join(bash_blocks(doc, heading) for heading in headings)
    # No bare placeholder: each id is a variable, set before it is used.
    assert not re.findall(r"(?<![$\w])(KEY_ID|USER_ID|PERSONA_ID|CONVERSATION_ID|MESSAGE_ID)\b(?!=)", script)
    out = (await run_guide(script, {**cli_env(database_url), "KEY": key, "BASE": url}, tmp_path)).stdout
    answers, streams = out.split("event: ", 1)  # the keys' and users' JSON answers come first
    assert re.search(r'"message":"API key prk_\S+ revoked"', answers), answers
    assert '"name":"grace"' in answers and '"name":"grace-laptop"' in answers
    resumed, resumable, conversations = ("event: " + streams).split("data: [DONE]")
    # The replay starts after the third event, and goes to the end.
    assert re.findall(r"^id: [0-9a-f-]{36}:(\d+)$", resumed, re.MULTILINE) == ["4", "5", "6", "7", "8", "9"]
    assert '"type":"done"' in resumed and '"type":"done"' in resumable
    # The conversation the persona opened is listed first, read, then deleted.
    opened = re.search(r'"conversations":\[\{"id":"([0-9a-f-]{36})","title":"Mu"', conversations)
    assert opened is not None, conversations
    _, read, deleted = conversations.split(opened[1], 1)[1].partition(f'"id":"{opened[1]}"')
    assert read and '"success":true' in deleted


def test_readme_lists_every_variable_the_program_reads():
    read: set[str] = set()
    for folder in ("api", "core", "personas", "providers", "runtime"):
        for path in (ROOT / folder).rglob("*.py"):
            source = path.read_text()
            read |= set(
                re.findall(r'(?:text|number|environ\.get|environ\[|getenv)\(?\s*"([A-Z][A-Z0-9_]{2,})"', source)
            )
    assert {"DATABASE_URL", "MAX_MESSAGE_CHARS", "SSE_HEARTBEAT_SECONDS"} <= read  # the scan finds them
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration") : readme.index("## Command line")]
    listed = set(re.findall(r"`([A-Z][A-Z0-9_<>]+)`", table))
    assert sorted(read - listed) == []


@pytest.mark.usefixtures("curl")
async def test_api_guide_persona_and_avatar_examples_run_as_written(echo_server, tmp_path):
    database_url, url, app = echo_server
    accounts = app.state.resources.accounts
    owner = await accounts.create_user("api-guide-author")
    key, _ = await accounts.create_key(owner.id, name="docs")
    doc = ROOT / "docs" / "api.md"
    script = "\n".join(bash_blocks(doc, heading) for heading in ("### Routes", "### Avatars"))
    assert not re.findall(r"(?<![$\w])PERSONA_ID\b(?!=)", script)
    out = (await run_guide(script, {**cli_env(database_url), "KEY": key, "BASE": url}, tmp_path)).stdout
    assert '"version":2' in out and '"tone":"warm"' in out
    assert re.search(r'"message":"[^"]*Quill[^"]*"', out), out
    assert '"content_type":"image/png"' in out and "200 image/png " in out


@pytest.mark.usefixtures("curl")
async def test_turns_curl_examples_run_as_written(echo_server, tmp_path):
    database_url, url, app = echo_server
    accounts = app.state.resources.accounts
    owner = await accounts.create_user("turns-curl")
    key, _ = await accounts.create_key(owner.id, name="docs")
    script = bash_blocks(ROOT / "docs" / "api.md", "## Turns, feedback and analytics")
    env = {**cli_env(database_url), "BASE": url, "KEY": key}
    result = await run_guide(script, env, tmp_path)
    down, up, stats, usage, removed = result.stdout.strip().split("\n")
    assert '"rating":-1' in down and '"comment":"Counted wrong."' in down
    assert '"rating":1' in up and '"comment":null' in up
    assert '"rows":[{"key":1,"turns":1,"users":1,' in stats and '"feedback_up":1,"feedback_down":0' in stats
    assert '"turns":1,' in usage and '"errors":0' in usage
    assert '"message":"Feedback removed"' in removed
