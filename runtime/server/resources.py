"""Resources: everything a running app holds open, opened and closed in the Litestar lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit
from uuid import UUID

import asyncpg
import msgspec
from redis.asyncio import Redis

from core.db import connect_pool
from core.errors import Conflict, ShuttingDown
from core.metrics import Metrics
from core.redis_client import RedisClient, is_cluster, open_redis
from core.signals import Signals, notify
from core.traces import Traces
from personas.avatars import Avatars, AvatarStore
from personas.cache import Cache, MemoryCache, RedisCache
from personas.changes import PERSONA_SIGNAL
from personas.models import Limits
from personas.porter import PersonaPorter
from personas.service import PersonaService
from personas.store import PersonaStore
from providers import ProviderRegistry, ProviderSet, configs_from_env, default_provider
from runtime.access.accounts import KEY_SIGNAL, Accounts
from runtime.access.auth import Authenticator
from runtime.access.counters import Clock
from runtime.access.limits import Limiter
from runtime.authoring.grading import Grader
from runtime.authoring.service import AuthoringService
from runtime.authoring.suites import PersonaTestStore
from runtime.chat.conversations import ConversationStore
from runtime.chat.leases import Leases
from runtime.chat.peers import Peers
from runtime.chat.pipeline import ChatPipeline
from runtime.chat.recordings import StreamRecorder
from runtime.chat.responses import ResponseStore
from runtime.chat.tokens import load_tokenizers
from runtime.memory import MEMORY_SIGNAL, Extractor, MemoryStore, Recall, RecallCache
from runtime.memory.vectors import Embedder, Vectors, embeddings_config, has_vectors
from runtime.server.embedded import EmbeddedPostgres
from runtime.server.migrate import apply_migrations
from runtime.server.settings import Settings
from runtime.turns import TurnLog
from runtime.turns.feedback import TurnFeedback
from runtime.turns.stats import TurnStats

__all__ = ["Resources", "open_resources"]

log = logging.getLogger("persona_runtime")

# The signal that stops an answer on whichever instance runs it; its payload is the message id.
CANCEL = "cancel"


@dataclass
class Resources:
    settings: Settings
    pool: asyncpg.Pool
    cache: Cache
    accounts: Accounts
    auth: Authenticator
    personas: PersonaService
    conversations: ConversationStore
    responses: ResponseStore
    memories: MemoryStore
    providers: ProviderSet
    default_provider: str
    chat: ChatPipeline
    authoring: AuthoringService
    porter: PersonaPorter
    avatars: Avatars
    metrics: Metrics
    signals: Signals
    streams: StreamRecorder
    leases: Leases
    limiter: Limiter
    # Every turn's record (written in batches), the feedback on them and the analytics read from them.
    turns: TurnLog
    feedback: TurnFeedback
    stats: TurnStats
    # Memories' vectors (EMBEDDINGS_PROVIDER on a database with pgvector), else None: full-text ranking only.
    vectors: Vectors | None = None

    # The one Redis client of this process (a cluster client for a Redis Cluster), or None without REDIS_URL.
    # Typed loosely because the handlers' dependency check (msgspec) refuses a union of two client classes;
    # ``redis`` gives it its type.
    redis_client: Any = None

    draining: bool = False

    @property
    def redis(self) -> RedisClient | None:
        return cast("RedisClient | None", self.redis_client)

    async def cancel_answer(self, user_id: UUID, message_id: UUID) -> str | None:
        """Stop the caller's answer ``message_id`` wherever it runs; its stored status after, or None when the
        caller has no such message. An answer already ended is a :class:`Conflict`."""
        conversations = self.conversations
        state = await conversations.message_state(user_id, message_id)
        if state is None:
            return None
        if state.status != "pending":
            raise Conflict(f"The answer already ended (status `{state.status}`); there is nothing to stop.")
        if not self.leases.cancel(message_id):
            # To every instance, through PostgreSQL: present with or without Redis.
            await notify(self.pool, CANCEL, str(message_id))
        # Stopped within a second where it runs; wait for its instance to store what was said.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.0
        while loop.time() < deadline:
            await asyncio.sleep(0.05)
            state = await conversations.message_state(user_id, message_id)
            if state is None or state.status != "pending":
                return state.status if state is not None else "incomplete"
        # Nobody answered: the instance that ran it is gone (its lease says so once it runs out).
        await self.leases.mark_abandoned(message_id)
        state = await conversations.message_state(user_id, message_id)
        return state.status if state is not None else "incomplete"

    def begin_shutdown(self) -> None:
        """SIGTERM: ``/ready`` says 503 from now on, and streams still open after the grace are ended."""
        if self.draining:
            return
        self.draining = True
        grace = self.settings.shutdown_grace_seconds
        log.info("shutting down: streams in flight may run on for %.0f s", grace)
        asyncio.get_running_loop().call_later(grace, self._end_streams)

    def _end_streams(self) -> None:
        self.providers.interrupt(ShuttingDown())

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
async def open_resources(
    settings: Settings, registry: ProviderRegistry | None = None, *, clock: Clock = time.time
) -> AsyncIterator[Resources]:
    """Open the database (embedded if no DSN), migrate, bootstrap the admin, connect the cache, and listen
    for the changes other instances announce. ``clock`` is what the rate limits' windows are read from."""
    async with contextlib.AsyncExitStack() as stack:
        dsn = settings.database_url
        if dsn is None:
            embedded = EmbeddedPostgres(settings.home)
            dsn = await asyncio.to_thread(embedded.start)
            stack.callback(embedded.stop)
        await apply_migrations(dsn)
        pool = await connect_pool(
            dsn,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            pool_mode=settings.database_pool_mode,
        )
        stack.push_async_callback(pool.close)

        redis: RedisClient | None = None
        cache: Cache = MemoryCache()
        if settings.redis_url:
            # One client shared by everything that talks to Redis, closed after all of them.
            redis = await open_redis(settings.redis_url)
            stack.push_async_callback(redis.aclose)
            cache = RedisCache(redis, prefix=settings.redis_prefix)
        stack.push_async_callback(cache.aclose)

        metrics = Metrics()
        stack.callback(metrics.close)
        traces: Traces | None = None
        if settings.traces_endpoint:
            # Closed after everything that may still end a turn: its last spans are flushed then.
            traces = Traces(settings.traces_endpoint)
            stack.push_async_callback(traces.aclose)
            where = urlsplit(settings.traces_endpoint)  # without any user:password@ it holds
            log.info("traces: each chat turn is a span, exported to %s", where.netloc.rpartition("@")[2] + where.path)

        def looked_up(layer: str, result: str) -> None:
            metrics.cache_requests.labels(layer=layer, result=result).inc()

        counters: RedisClient | None = None
        if redis is not None and is_cluster(redis):
            counters = redis  # each script call goes to its scope's node through the cluster client
        elif settings.redis_url:
            # The hot path's own connections (the limits' checks, stream recordings): a slow Redis must cost a
            # request little, and never fail it.
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
            clock=clock,
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
        models = [c.default_model for c in configs if c.default_model]
        metrics.allow(providers=[c.name for c in configs], models=models)
        await asyncio.to_thread(load_tokenizers, models)
        default = default_provider(configs, settings.env)
        embeddings = embeddings_config(configs, settings.embeddings_provider) if settings.embeddings_provider else None
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
        vectors: Vectors | None = None
        if embeddings is not None:
            if await has_vectors(pool):
                embedder = Embedder(embeddings, settings.embeddings_model, timeout=settings.request_timeout)
                vectors = Vectors(pool, embedder)
                stack.push_async_callback(vectors.aclose)
                vectors.backfill()
                log.info(
                    "memories are ranked by vector similarity (embeddings: %s, %s)",
                    embeddings.name,
                    settings.embeddings_model,
                )
            else:
                log.warning(
                    "EMBEDDINGS_PROVIDER is set but this database has no pgvector (the `vector` extension was not "
                    "available when it was migrated): memories are ranked by full text only"
                )

        store = PersonaStore(
            pool,
            cache,
            ttl=settings.persona_cache_seconds,
            local_ttl=settings.persona_local_cache_seconds,
            on_lookup=looked_up,
            notify=notify,
        )
        # Every instance drops what a write anywhere changed, in memory and in the shared cache; while it
        # cannot hear of writes, its in-process layers keep entries briefly instead.
        signals = Signals(settings.database_listen_url or dsn)
        signals.subscribe(PERSONA_SIGNAL, store.hear)
        signals.subscribe(KEY_SIGNAL, auth.hear)
        # Memories read for turns are kept until a write to that user's memories anywhere.
        remembered = RecallCache()
        signals.subscribe(MEMORY_SIGNAL, remembered.hear)

        def hearing(heard: bool) -> None:
            store.set_hearing(heard)
            auth.set_hearing(heard)
            remembered.set_hearing(heard)
            if isinstance(cache, MemoryCache):
                cache.set_hearing(heard)

        signals.watch(hearing)
        await signals.start()
        stack.push_async_callback(signals.aclose)
        personas = PersonaService(store, providers=providers.names())
        conversations = ConversationStore(pool, lease_seconds=settings.stream_lease_seconds)
        leases = Leases(conversations)
        leases.start()
        stack.push_async_callback(leases.aclose)

        async def cancel_heard(payload: bytes) -> None:
            with contextlib.suppress(ValueError, msgspec.DecodeError):
                leases.cancel(UUID(msgspec.json.decode(payload, type=str)))

        # A cancel asked of another instance reaches the one that runs the answer.
        signals.subscribe(CANCEL, cancel_heard)
        # Closed after the pipeline (pushed before it): the last turns' records are written once they have ended.
        turns = TurnLog(pool, retention_days=settings.turn_retention_days)
        turns.start()
        stack.push_async_callback(turns.aclose)
        chat = ChatPipeline(
            personas,
            conversations,
            providers,
            default_provider=default,
            history_messages=settings.history_turns * 2,
            default_context_window=settings.default_context_window,
            summary_provider=settings.summary_provider,
            summary_model=settings.summary_model,
            recall=Recall(pool, remembered, vectors),
            extractor=Extractor(
                pool,
                providers,
                provider=settings.memory_provider,
                model=settings.memory_model,
                cache=remembered,
                vectors=vectors,
            ),
            max_message_chars=settings.max_message_chars,
            metrics=metrics,
            leases=leases,
            limiter=limiter,
            traces=traces,
            records=turns,
        )
        stack.push_async_callback(chat.aclose)
        streams = StreamRecorder(
            redis,
            # The limits' client, without a socket timeout: stream writes are on the hot path too.
            writer=counters if isinstance(counters, Redis) else None,
            prefix=settings.redis_prefix,
            retention=settings.stream_retention_seconds,
            spawn=chat.spawn,
        )
        leases.said = streams.said
        chat.streams = streams
        if settings.stream_peers_dir and redis is None and streams.enabled:
            streams.peers = await _open_peers(stack, settings.stream_peers_dir, streams, chat)
        avatars = AvatarStore(pool)
        yield Resources(
            settings=settings,
            pool=pool,
            cache=cache,
            accounts=accounts,
            auth=auth,
            personas=personas,
            conversations=conversations,
            responses=ResponseStore(pool, settings.response_retention_days),
            memories=MemoryStore(pool, remembered, vectors),
            providers=providers,
            default_provider=default,
            chat=chat,
            authoring=AuthoringService(
                chat,
                PersonaTestStore(pool),
                Grader(
                    providers,
                    provider=settings.judge_provider,
                    model=settings.judge_model,
                    timeout=settings.request_timeout,
                ),
            ),
            porter=PersonaPorter(personas, avatars, max_bytes=settings.import_max_bytes),
            avatars=Avatars(personas, avatars),
            metrics=metrics,
            signals=signals,
            streams=streams,
            leases=leases,
            redis_client=redis,
            limiter=limiter,
            turns=turns,
            feedback=TurnFeedback(pool, turns),
            stats=TurnStats(pool),
            vectors=vectors,
        )


async def _open_peers(
    stack: contextlib.AsyncExitStack, folder: str, streams: StreamRecorder, chat: ChatPipeline
) -> Peers:
    """This worker's socket for its sibling workers' replays of the streams it holds."""

    def held(message_id: UUID, after: int, heartbeat: float) -> AsyncIterator[bytes] | None:
        recording = streams.held(message_id)
        if recording is None:
            return None
        return recording.follow(after, heartbeat, chat.status_of(recording.user_id, message_id))

    peers = Peers(folder, held)
    await peers.start()
    stack.push_async_callback(peers.aclose)
    return peers


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
