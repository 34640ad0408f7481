"""A served process takes what it opened at start out of the garbage collector's way (``create_app(settle=True)``,
which ``app_from_env`` asks for); an app made by anything else, like this test session, leaves the collector
alone. Run in a child process: a frozen object is never freed, so this process must not freeze its own."""

from __future__ import annotations

import subprocess
import sys

import pytest

_CHILD = """
import asyncio, gc, sys
from api.app import create_app
from tests.conftest import make_settings, running

async def main() -> None:
    app = create_app(make_settings(sys.argv[1], sys.argv[2] or None), settle=sys.argv[3] == "settle")
    before = gc.get_freeze_count()
    async with running(app) as client:
        assert (await client.get("/health")).status_code == 200
        print(before, gc.get_freeze_count())

asyncio.run(main())
"""


@pytest.mark.parametrize("mode", ["settle", "plain"])
def test_only_a_settled_app_freezes_what_it_holds_once_started(database_url, redis_url, mode):
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, database_url, redis_url or "", mode],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    before, after = map(int, done.stdout.split())
    assert before == 0
    if mode == "settle":
        assert after > 10_000  # the modules, the app and its resources: well over ten thousand objects
    else:
        assert after == 0
