"""Resources: everything a running app holds open, opened and closed in the Litestar lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import msgspec
from redis.asyncio import Redis

from core.errors import ShuttingDown
from personas.cache import Cache, MemoryCache, RedisCache
from personas.models import Limits
from personas.porter import PersonaPorter
from personas.service import PersonaService
from personas.store import PersonaStore
from personas.suites import PersonaTestStore
from providers import ProviderRegistry, ProviderSet, configs_from_env, default_provider
from runtime.accounts import Accounts
from runtime.auth import Authenticator
from runtime.authoring import AuthoringService
from runtime.conversations import ConversationStore
from runtime.db import connect_pool
from runtime.embedded import EmbeddedPostgres
from runtime.limits import Limiter
from runtime.metrics import Metrics
from runtime.migrate import apply_migrations
from runtime.pipeline import ChatPipeline
from runtime.settings import Settings

__all__ = ["Resources", "open_resources"]

log = logging.getLogger("persona_runtime")


@dataclass
class Resources:
    settings: Settings
    pool: asyncpg.Pool
    cache: Cache
    accounts: Accounts
    auth: Authenticator
    personas: PersonaService
    conversations: ConversationStore
    providers: ProviderSet
    default_provider: str
    chat: ChatPipeline
    authoring: AuthoringService
    porter: PersonaPorter
    metrics: Metrics
    limiter: Limiter

    draining: bool = False

    def begin_shutdown(self) -> None:
        """SIGTERM: ``/ready`` says 503 from now on, and streams still open after the grace are ended."""
        if self.draining:
            return
        self.draining = True
        grace = self.settings.shutdown_grace_seconds
        log.info("shutting down: streams in flight may run on for %.0f s", grace)
        asyncio.get_running_loop().call_later(grace, self._end_streams)

    def _end_streams(self) -> None:
        self.providers.interrupt(
            ShuttingDown("The server is shutting down; the answer was cut short. Send the message again.")
        )

    async def readiness(self) -> dict[str, str]:
        """What ``/ready`` reports: each dependency and whether it answers now (and whether we are stopping)."""
        checks: dict[str, str] = {}
        if self.draining:
            checks["server"] = "shutting_down"
        try:
            async with self.pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1", timeout=2)
            checks["database"] = "ok"
        except Exception:
            checks["database"] = "unavailable"
        if self.settings.redis_url:
            checks["redis"] = "ok" if await self.cache.ping() else "unavailable"
        return checks


@contextlib.asynccontextmanager
async def open_resources(settings: Settings, registry: ProviderRegistry | None = None) -> AsyncIterator[Resources]:
    """Open the database (embedded if no DSN), migrate, bootstrap the admin, connect the cache."""
    async with contextlib.AsyncExitStack() as stack:
        dsn = settings.database_url
        if dsn is None:
            embedded = EmbeddedPostgres(settings.home)
            dsn = await asyncio.to_thread(embedded.start)
            stack.callback(embedded.stop)
        await apply_migrations(dsn)
        pool = await connect_pool(dsn, min_size=settings.db_pool_min, max_size=settings.db_pool_max)
        stack.push_async_callback(pool.close)

        cache: Cache
        cache = (
            RedisCache.from_url(settings.redis_url, prefix=settings.redis_prefix)
            if settings.redis_url
            else MemoryCache()
        )
        stack.push_async_callback(cache.aclose)

        metrics = Metrics()
        stack.callback(metrics.close)

        def looked_up(layer: str, result: str) -> None:
            metrics.cache_requests.labels(layer=layer, result=result).inc()

        counters: Redis | None = None
        if settings.redis_url:
            # The limits' own connections: a slow counter store must cost a request little, and never fail it.
            # No socket timeout here: redis-py would run every read in a task of its own for it; the limiter
            # bounds each call itself (asyncio.timeout), at a fraction of the cost.
            counters = Redis.from_url(settings.redis_url, socket_connect_timeout=0.5, health_check_interval=10)
            stack.push_async_callback(counters.aclose)
        limiter = Limiter(
            counters,
            prefix=settings.redis_prefix,
            defaults=Limits(
                requests_per_minute=settings.key_requests_per_minute, tokens_per_day=settings.key_tokens_per_day
            ),
            on_refused=lambda scope: metrics.rate_limited.labels(scope=scope).inc(),
        )
        stack.push_async_callback(limiter.aclose)

        accounts = Accounts(pool)
        if settings.bootstrap_admin:
            await _bootstrap_admin(accounts, settings)
        auth = Authenticator(
            accounts,
            cache_seconds=settings.key_cache_seconds,
            touch_interval=settings.key_touch_interval,
            on_lookup=lambda result: looked_up("keys", result),
        )
        auth.start()
        stack.push_async_callback(auth.aclose)

        configs = [
            msgspec.structs.replace(c, timeout=settings.request_timeout, max_connections=settings.provider_connections)
            for c in configs_from_env(settings.env)
        ]
        default = default_provider(configs, settings.env)
        providers = (registry or ProviderRegistry.with_builtins()).build(configs)
        stack.push_async_callback(providers.aclose)
        if providers.names() == ["echo"]:
            log.warning(
                "no provider is configured (OPENAI_API_KEY, ANTHROPIC_API_KEY, ...): answers come from the "
                "offline `echo` provider, which repeats the user's message"
            )
        elif default == "echo":
            log.warning(
                "DEFAULT_PROVIDER is the offline `echo` provider, which repeats the user's message; personas "
                "that name another provider use it"
            )
        log.info("providers: %s (default %s)", ", ".join(providers.names()), default)

        store = PersonaStore(
            pool,
            cache,
            ttl=settings.persona_cache_seconds,
            local_ttl=settings.persona_local_cache_seconds,
            on_lookup=looked_up,
        )
        personas = PersonaService(store, providers=providers.names())
        conversations = ConversationStore(pool)
        chat = ChatPipeline(
            personas,
            conversations,
            providers,
            default_provider=default,
            history_messages=settings.history_turns * 2,
            max_message_chars=settings.max_message_chars,
            metrics=metrics,
            limiter=limiter,
        )
        stack.push_async_callback(chat.aclose)
        yield Resources(
            settings=settings,
            pool=pool,
            cache=cache,
            accounts=accounts,
            auth=auth,
            personas=personas,
            conversations=conversations,
            providers=providers,
            default_provider=default,
            chat=chat,
            authoring=AuthoringService(chat, PersonaTestStore(pool)),
            porter=PersonaPorter(personas, max_bytes=settings.import_max_bytes),
            metrics=metrics,
            limiter=limiter,
        )


async def _bootstrap_admin(accounts: Accounts, settings: Settings) -> None:
    created = await accounts.bootstrap_admin(settings.bootstrap_admin_key)
    if created is None:
        return
    _, key = created
    if settings.bootstrap_admin_key:
        log.info("created user 'admin' with the key from BOOTSTRAP_ADMIN_KEY")
    else:
        # Printed once, to the operator's terminal, never to the log.
        print(
            "\npersona-runtime: created user 'admin' on this empty database. Its API key, shown only now:\n\n"
            f"    {key}\n",
            file=sys.stderr,
            flush=True,
        )
