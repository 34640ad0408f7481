"""Shared fixtures: a real database and Redis for the session, an app served in-process, and users."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from litestar import Litestar

from api.app import create_app
from runtime.access.accounts import Accounts, User
from runtime.server.embedded import EmbeddedPostgres
from runtime.server.resources import Resources
from runtime.server.settings import Settings
from tests.clock import SetClock
from tests.fakellm import FakeLLM
from tests.proxy import TcpProxy
from tests.services import RedisProcess, env_url, free_port

pytest_plugins = ["tests.fakellm_plugin", "tests.cluster"]

# Provider keys the tests hand to the runtime: they must never show up in a log or an answer.
OPENAI_TEST_KEY = "sk-test-openai-key-4c6f5e1d"
ANTHROPIC_TEST_KEY = "sk-ant-test-key-9a8b7c6d"


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A PostgreSQL server to create test databases on."""
    url = env_url("TEST_DATABASE_URL")
    if url:
        yield url
        return
    embedded = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="prt-pg-")))
    yield embedded.start()
    embedded.stop()


@pytest.fixture(scope="session")
def create_database(postgres_server_url: str) -> Iterator[Callable[[], Awaitable[str]]]:
    """Make fresh, empty databases on the test server; they are dropped when the session ends."""
    created: list[str] = []

    async def create() -> str:
        name = f"prt_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        conn = await asyncpg.connect(postgres_server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        created.append(name)
        return _with_database(postgres_server_url, name)

    yield create

    async def drop_all() -> None:
        conn = await asyncpg.connect(postgres_server_url)
        try:
            for name in created:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop_all())


def _with_database(url: str, name: str) -> str:
    """Point a DSN at another database, keeping host, socket and credentials."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture(scope="session")
async def database_url(create_database: Callable[[], Awaitable[str]]) -> str:
    return await create_database()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = env_url("TEST_REDIS_URL")
    if url:
        yield url
        return
    server = RedisProcess()
    server.start()
    yield server.url
    server.close()


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    """A Redis of this test's own, which the test may stop and start."""
    server = RedisProcess()
    server.start()
    yield server
    server.close()


@pytest.fixture
async def proxied(database_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    """A TCP proxy in front of the test database, which the test may cut and restore, and a DSN through it."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(database_url)
    if not parts.hostname:
        pytest.skip("the test database is reached through a Unix socket; this test needs TCP")
    proxy = TcpProxy(parts.hostname, parts.port or 5432)
    await proxy.start()
    netloc = parts.netloc.replace(
        f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname, f"127.0.0.1:{proxy.port}"
    )
    yield proxy, urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    await proxy.cut()


def make_settings(database_url: str, redis_url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        # Each test database gets its own cache namespace in the shared Redis.
        "redis_prefix": f"prt-test:{database_url.rsplit('/', 1)[-1]}:",
        "bootstrap_admin": False,
        "key_touch_interval": 0.2,
        "env": {},
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def limits_clock() -> SetClock:
    """The clock the session's apps read their rate limits' windows from: wall time unless a test sets it."""
    return SetClock()


@pytest.fixture
def minute(limits_clock: SetClock) -> Iterator[SetClock]:
    """The session apps' limits clock stopped a second into a minute, for this test: no window ends under it
    unless the test moves the clock on."""
    limits_clock.start_of_minute()
    yield limits_clock
    limits_clock.release()


@pytest.fixture(scope="session")
async def app(database_url: str, redis_url: str, limits_clock: SetClock) -> AsyncIterator[Litestar]:
    yield create_app(make_settings(database_url, redis_url), clock=limits_clock)


@pytest.fixture(scope="session")
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the app in this event loop, so tests may also use its pool directly."""
    async with running(app) as test_client:
        yield test_client


@contextlib.asynccontextmanager
async def running(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and give a client for it."""
    started, stop = asyncio.Event(), asyncio.Event()

    async def run_lifespan() -> None:
        # Entered and exited in one task, as the lifespan's task groups require.
        async with app.lifespan():
            started.set()
            await stop.wait()

    task = asyncio.create_task(run_lifespan())
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()
    try:
        async with http_client(app) as test_client:
            yield test_client
    finally:
        stop.set()
        await task


def http_client(app: Litestar) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@pytest.fixture(scope="session")
async def second_client(database_url: str, redis_url: str, limits_clock: SetClock) -> AsyncIterator[httpx.AsyncClient]:
    """Another instance of the runtime on the same database and Redis, as a second server would be."""
    async with running(create_app(make_settings(database_url, redis_url), clock=limits_clock)) as other:
        yield other


@pytest.fixture(scope="session")
def resources(client: httpx.AsyncClient, app: Litestar) -> Resources:
    resources: Resources = app.state.resources
    return resources


_names = itertools.count()


class Account:
    """A test user with one API key, and the headers that carry it."""

    def __init__(self, user: User, key: str, key_id: uuid.UUID) -> None:
        self.user = user
        self.key = key
        self.key_id = key_id
        self.headers = {"X-API-Key": key}
        self.id = str(user.id)


MakeUser = Callable[..., Awaitable[Account]]


@pytest.fixture(scope="session")
def make_user(resources: Resources) -> MakeUser:
    async def make(prefix: str = "user", *, admin: bool = False) -> Account:
        name = f"{prefix}-{os.getpid()}-{next(_names)}"
        accounts: Accounts = resources.accounts
        user = await accounts.create_user(name, display_name=prefix.title(), is_admin=admin)
        key, record = await accounts.create_key(user.id, name="test")
        return Account(user, key, record.id)

    return make


@pytest.fixture
async def alice(make_user: MakeUser) -> Account:
    return await make_user("alice")


@pytest.fixture
async def bob(make_user: MakeUser) -> Account:
    return await make_user("bob")


@pytest.fixture
async def admin(make_user: MakeUser) -> Account:
    return await make_user("admin", admin=True)


def persona_body(name: str | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": f"Persona {uuid.uuid4().hex[:10]}" if name is None else name,
        "description": "A helpful test persona.",
        "system_prompt": "You are {{persona_name}}, talking with {{user_name}}.",
        "personality_traits": {"tone": "dry"},
        "capabilities": {"math": True},
    }
    body.update(fields)
    return body


def llm_env(fake: FakeLLM) -> dict[str, str]:
    """Providers pointed at the fake LLM server: openai (the default), anthropic and a named local one."""
    return {
        "OPENAI_API_KEY": OPENAI_TEST_KEY,
        "OPENAI_BASE_URL": fake.openai_base_url,
        "ANTHROPIC_API_KEY": ANTHROPIC_TEST_KEY,
        "ANTHROPIC_BASE_URL": fake.anthropic_base_url,
        "PROVIDER_LOCAL_BASE_URL": fake.openai_base_url,
        "PROVIDER_LOCAL_MODEL": "local-model",
    }


@contextlib.asynccontextmanager
async def serving(app: Litestar) -> AsyncIterator[str]:
    """Serve the app with uvicorn on a loopback port in this event loop; yields its base URL."""
    import uvicorn

    port = free_port()
    from runtime.server.serving import GuardedProtocol

    # The protocol `serve` runs; the loop stays the test session's own.
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on", http=GuardedProtocol
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the server stopped before it started")
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="session")
async def llm_app(
    database_url: str, redis_url: str, fake_llm_server: FakeLLM, limits_clock: SetClock
) -> AsyncIterator[Litestar]:
    """The runtime with real providers (through the real SDKs) aimed at the fake LLM server, on a real port."""
    settings = make_settings(
        database_url,
        redis_url,
        env=llm_env(fake_llm_server),
        heartbeat_seconds=0.3,
        request_timeout=2.0,
        max_message_chars=2000,
    )
    app = create_app(settings, clock=limits_clock)
    async with serving(app) as url:
        app.state.base_url = url
        yield app


@pytest.fixture(scope="session")
async def llm_client(llm_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=llm_app.state.base_url, timeout=30) as http:
        yield http
