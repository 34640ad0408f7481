"""Cold-start mode: N concurrent first requests for one persona on a fresh runtime, and the database reads they cost."""

from __future__ import annotations

import asyncio
import collections
import secrets
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import httpx

from bench.client import Connection, Sample, Target, completions_target, open_connection
from bench.query_counter import query_counter
from bench.services import Account, ServerProcess

__all__ = ["ColdResult", "cold_start", "create_persona"]

# The database work the requests started in the background (a key's last use, say) gets this long to show up.
SETTLE_SECONDS = 1.0


@dataclass
class ColdResult:
    """The statements N concurrent first requests for one persona made the runtime execute."""

    requests: int
    workers: int
    persona: str
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    persona_selects: int = 0
    api_key_lookups: int = 0
    preference_selects: int = 0
    # asyncpg resets a connection each time it goes back to the pool: the number of pool acquisitions.
    pool_resets: int = 0
    other_statements: int = 0
    # Every statement executed and how often, most frequent first.
    statements: list[tuple[str, int]] = field(default_factory=list)
    redis_keys_deleted: int | None = None


async def create_persona(server_url: str, account: Account) -> str:
    """A private persona of the benchmark's user, made through the HTTP API; returns its name."""
    name = "bench-cold-" + secrets.token_hex(3)
    draft = {
        "name": name,
        "description": "A persona the benchmark asks for by name on a cold runtime.",
        "system_prompt": "You are a brisk assistant. Answer in one short paragraph.",
        "personality_traits": {"tone": "brisk"},
    }
    async with httpx.AsyncClient(base_url=server_url, headers=account.headers, timeout=30) as client:
        response = await client.post("/api/v1/chat/personas/", json=draft)
        if response.status_code >= 300:
            raise RuntimeError(f"creating the persona failed: HTTP {response.status_code}: {response.text[:300]}")
    return name


async def cold_start(
    database_url: str,
    start_runtime: Callable[[str], AbstractAsyncContextManager[ServerProcess]],
    account: Account,
    persona: str,
    count: int,
    *,
    within: float = 60.0,
) -> ColdResult:
    """Start a runtime through a statement counter, open ``count`` connections, send the same first request
    on all of them at once, and count what the database executed from the first byte to a moment after the
    last answer. ``start_runtime(database_url)`` starts a fresh runtime (one worker) on that database URL."""
    result = ColdResult(requests=count, workers=1, persona=persona)
    async with query_counter(database_url) as (counter, counted_url), start_runtime(counted_url) as server:
        target: Target = completions_target(
            "cold", server.url + "/v1/chat/completions", account.headers, model=f"persona/{persona}", system=None
        )
        connections: list[Connection] = list(
            await asyncio.gather(*(open_connection(target.host, target.port) for _ in range(count)))
        )
        try:
            # Start-up's own statements (migrations, bootstrap, readiness) are not the requests'.
            counter.reset()
            waiters: list[asyncio.Future[Sample]] = [c.send(target, within) for c in connections]
            samples = await asyncio.gather(*waiters)
            await asyncio.sleep(SETTLE_SECONDS)
        finally:
            for connection in connections:
                connection.close()
        result.ok = sum(1 for s in samples if s.error is None)
        result.errors = dict(collections.Counter(s.error for s in samples if s.error is not None))
        categories = counter.categories()
        result.persona_selects = categories["persona_selects"]
        result.api_key_lookups = categories["api_key_lookups"]
        result.preference_selects = categories["preference_selects"]
        result.pool_resets = categories["pool_resets"]
        result.other_statements = categories["other"]
        result.statements = counter.statements.most_common()
    return result
