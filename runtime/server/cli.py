"""The ``persona-runtime`` command: serve, migrate, manage users and API keys, keep personas as files and test them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import asyncpg

from core.db import connect_pool
from core.errors import PersonaRuntimeError
from core.logs import configure_logging
from core.signals import notify
from personas.avatars import AvatarStore
from personas.cache import Cache, MemoryCache, RedisCache
from personas.files import FileResult, import_drafts, read_directory, read_pictures, write_directory
from personas.models import Limits
from personas.store import PersonaStore
from providers import configs_from_env, default_provider
from runtime.access.accounts import Accounts
from runtime.authoring.suite_files import check_suites, import_suites, read_suites, write_suites
from runtime.authoring.suites import PersonaTestStore
from runtime.memory.vectors import embeddings_config
from runtime.server import ci
from runtime.server.embedded import EmbeddedPostgres, EmbeddedUnavailable
from runtime.server.migrate import MigrationError, apply_migrations
from runtime.server.serving import raise_open_file_limit, run, uvicorn_options
from runtime.server.settings import Settings, SettingsError

__all__ = ["main"]

log = logging.getLogger("persona_runtime")


# What --help says about configuration: every variable the runtime reads, and what it is when unset.
ENVIRONMENT = """environment variables (a .env file in the working directory is read too):
  DATABASE_URL               PostgreSQL DSN (unset: an embedded server, data under PERSONA_RUNTIME_HOME)
  DATABASE_LISTEN_URL        DSN for the connection that listens for other instances' changes, past a
                             transaction-mode pooler (DATABASE_URL)
  PERSONA_RUNTIME_HOME       data folder of the embedded defaults (~/.local/share/persona-runtime)
  REDIS_URL                  Redis or Redis Cluster for the shared cache, rate limits and stream recordings
                             (unset: in-process, each process on its own)
  REDIS_KEY_PREFIX           namespace of this deployment's Redis keys (persona-runtime:)
  OPENAI_API_KEY, OPENAI_BASE_URL          the openai provider (any OpenAI-compatible server)
  ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL    the anthropic provider
  PROVIDER_<NAME>_BASE_URL, _API_KEY, _MODEL, _KIND   more OpenAI-compatible providers
  DEFAULT_PROVIDER, DEFAULT_MODEL          when a persona names none (first configured; else echo)
  BOOTSTRAP_ADMIN_KEY        on an empty database, user `admin` gets this key (unset: one is printed)
  HOST, PORT                 bind address (127.0.0.1, 8666)
  LOG_LEVEL, LOG_FORMAT      log threshold (INFO); text or json (text)
  METRICS                    off removes GET /metrics (on)
  SHUTDOWN_GRACE_SECONDS     after SIGTERM, how long streams may run on (25)
  STREAM_RETENTION_SECONDS   how long a finished chat stream can be replayed (600; 0 records none)
  RESPONSE_RETENTION_DAYS    how long a stored /v1/responses response is kept (30)
  TURN_RETENTION_DAYS        how long turn records and their feedback are kept (90)
  STREAM_LEASE_SECONDS       silence after which a dead instance's answers are marked incomplete (30)
  KEY_REQUESTS_PER_MINUTE, KEY_TOKENS_PER_DAY   limits of keys without their own (no limit)
  MAX_KEYS_PER_USER          live API keys one user may hold (100)
  DATABASE_POOL_SIZE         database connections per process (10)
  DATABASE_POOL_MODE         transaction behind a transaction-mode pooler such as PgBouncer (session)
  PROVIDER_TIMEOUT           seconds a provider may stay silent (120)
  PROVIDER_MAX_CONNECTIONS   upstream connections per provider and worker (10000)
  PERSONA_LOCAL_CACHE_SECONDS   how long a process keeps personas in memory (1)
  HISTORY_TURNS, MAX_MESSAGE_CHARS, IMPORT_MAX_BYTES, SSE_HEARTBEAT_SECONDS   limits and pacing
  DEFAULT_CONTEXT_WINDOW     tokens a model takes when neither persona nor table knows (32768)
  SUMMARY_PROVIDER, SUMMARY_MODEL   who writes conversation summaries (the persona's provider)
  MEMORY_PROVIDER, MEMORY_MODEL     who extracts memories after turns (the persona's provider)
  JUDGE_PROVIDER, JUDGE_MODEL       who grades judged tests (the persona's provider)
  MAX_CONNECTIONS            connections each worker serves at once; past it a 503 (10000)
  HEADER_TIMEOUT_SECONDS     how long a request's headers may take to arrive; then a 408 (10)
  SSL_CERT_FILE, SSL_CERT_DIR, HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY   how providers are reached
  OTEL_EXPORTER_OTLP_ENDPOINT   OTLP/HTTP collector each chat turn is sent to as a span (no traces; needs
                                the otel extra); the SDK's OTEL_* variables apply
"""


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if not 1 <= number <= 1_000_000_000_000:
        raise argparse.ArgumentTypeError(f"{value} must be between 1 and 10**12")
    return number


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="persona-runtime",
        description="A persona runtime for LLM chat.",
        epilog=ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="apply pending migrations, then serve HTTP")
    serve.add_argument("--host", help="bind address (default: $HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: $PORT or 8666)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")

    commands.add_parser("migrate", help="apply pending migrations and exit")

    users = commands.add_parser("users", help="manage users").add_subparsers(dest="action", required=True)
    create_user = users.add_parser("create", help="create a user and print its id")
    create_user.add_argument("name")
    create_user.add_argument("--display-name")
    create_user.add_argument("--admin", action="store_true", help="the user may act on every persona")

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    create_key = keys.add_parser("create", help="create an API key; the key is the last line printed")
    create_key.add_argument("--user", required=True, help="name of the user who owns the key")
    create_key.add_argument("--name", default="", help="a label to recognise the key by")
    create_key.add_argument("--expires-in-days", type=int)
    create_key.add_argument("--requests-per-minute", type=_positive, metavar="N", help="the key's request rate limit")
    create_key.add_argument("--tokens-per-minute", type=_positive, metavar="N", help="the key's token rate limit")
    create_key.add_argument("--tokens-per-day", type=_positive, metavar="N", help="the key's daily token budget")
    revoke = keys.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key", metavar="KEY_ID_OR_PREFIX")

    personas = commands.add_parser("personas", help="keep personas as files (persona-runtime/v1 documents)")
    files = personas.add_subparsers(dest="action", required=True)
    export = files.add_parser(
        "export", help="write one <slug>.json per active persona into DIR, and <slug>.tests.json for its tests"
    )
    export.add_argument("directory", metavar="DIR", type=Path)
    import_ = files.add_parser(
        "import", help="create or update personas by name from the files in DIR, and their test suites"
    )
    import_.add_argument("directory", metavar="DIR", type=Path)
    import_.add_argument("--owner", metavar="NAME", help="user who owns new personas (default: the system)")
    test = files.add_parser(
        "test",
        help="run the saved test suites of the named personas; exit 1 when a test fails",
        description="Run each named persona's saved tests, as POST /api/v1/chat/personas/{id}/tests/run does, "
        "and print what passed and failed. Exit status: 0 all passed, 1 a test failed, 2 a usage error "
        "(such as a persona that does not exist).",
    )
    test.add_argument("names", nargs="+", metavar="NAME", help="a persona's name (any case)")
    test.add_argument(
        "--owner", metavar="NAME", help="user whose personas the names are (default: the system's, else the only one)"
    )
    test.add_argument(
        "--label",
        metavar="L",
        help="the version a label names: production (the default: the version chats get), latest (the latest "
        "save), or a custom label",
    )
    test.add_argument("--junit", metavar="FILE", type=Path, help="also write the results as JUnit XML to FILE")
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("persona-runtime")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"persona-runtime: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        if args.command == "serve":
            return _serve(settings, args)
        if args.command == "personas" and args.action == "test":
            return asyncio.run(ci.run(settings, args.names, owner=args.owner, label=args.label, junit=args.junit))
        return asyncio.run(_run(settings, args))
    except (PersonaRuntimeError, MigrationError, EmbeddedUnavailable) as exc:
        print(f"persona-runtime: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    # Refuse a bad provider configuration here, with its message, rather than as a worker's traceback.
    configs = configs_from_env(settings.env)
    default_provider(configs, settings.env)
    if settings.embeddings_provider:
        embeddings_config(configs, settings.embeddings_provider)
    # uvicorn re-raises the SIGTERM that stopped it once it is done; as an exception it lets the embedded
    # database below be stopped too, where the default action would end the process on the spot.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    metrics_dir = None
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each worker writes its figures here and /metrics adds up all of them; a fresh folder per start.
        metrics_dir = tempfile.mkdtemp(prefix="persona-runtime-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    peers_dir = None
    if args.workers > 1 and not settings.redis_url and not settings.stream_peers_dir:
        # Without Redis the workers replay each other's streams through sockets here; a fresh folder per start.
        peers_dir = tempfile.mkdtemp(prefix="persona-runtime-streams-")
        os.environ["STREAM_PEERS_DIR"] = peers_dir
    embedded = None
    if settings.database_url is None:
        # Started here rather than in each worker, so that every worker shares one server.
        embedded = EmbeddedPostgres(settings.home)
        os.environ["DATABASE_URL"] = embedded.start()
    # Every connection is a file: the workers inherit a soft limit raised as far as the hard one allows.
    raise_open_file_limit()
    try:
        run(
            "api.app:app_from_env",
            uvicorn_options(
                host=args.host or settings.host,
                port=args.port or settings.port,
                workers=args.workers,
                grace=settings.shutdown_grace_seconds,
                max_connections=settings.max_connections,
            ),
        )
    finally:
        if embedded is not None:
            embedded.stop()
        for folder in (metrics_dir, peers_dir):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


@contextlib.asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    embedded = None
    dsn = settings.database_url
    if dsn is None:
        embedded = EmbeddedPostgres(settings.home)
        dsn = await asyncio.to_thread(embedded.start)
    try:
        await apply_migrations(dsn)
        pool = await connect_pool(dsn, min_size=1, max_size=2, pool_mode=settings.database_pool_mode)
        try:
            yield pool
        finally:
            await pool.close()
    finally:
        if embedded is not None:
            embedded.stop()


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    async with _database(settings) as pool:
        if args.command == "personas":
            return await _personas(settings, pool, args)
        accounts = Accounts(pool)
        if args.command == "migrate":
            print("migrations are up to date")
            return 0
        if args.command == "users":
            user = await accounts.create_user(args.name, display_name=args.display_name, is_admin=args.admin)
            print(user.id)
            return 0
        if args.action == "create":
            owner = await accounts.get_user_by_name(args.user)
            if owner is None:
                print(f"persona-runtime: no user named {args.user!r}", file=sys.stderr)
                return 1
            limits = Limits(
                requests_per_minute=args.requests_per_minute,
                tokens_per_minute=args.tokens_per_minute,
                tokens_per_day=args.tokens_per_day,
            )
            key, record = await accounts.create_key(
                owner.id,
                name=args.name,
                expires_in_days=args.expires_in_days,
                limits=limits,
                max_live=settings.max_keys_per_user,
            )
            print(f"created key {record.id} ({record.prefix}…) for {owner.name}; it is shown only once:")
            print(key)
            return 0
        found = await accounts.find_keys(args.key)
        if not found:
            print(f"persona-runtime: no key with id or prefix {args.key!r}", file=sys.stderr)
            return 1
        if len(found) > 1:
            print(f"persona-runtime: {len(found)} keys share the prefix {args.key!r}; use the key id", file=sys.stderr)
            return 1
        await accounts.revoke_key(found[0].id)
        print(f"revoked key {found[0].id} ({found[0].prefix}…)")
        return 0


async def _personas(settings: Settings, pool: asyncpg.Pool, args: argparse.Namespace) -> int:
    # Writes are announced to running instances, and go through Redis when there is one: they drop their
    # cached copies either way.
    cache: Cache = (
        await RedisCache.open(settings.redis_url, prefix=settings.redis_prefix) if settings.redis_url else MemoryCache()
    )
    try:
        store = PersonaStore(pool, cache, notify=notify)
        tests = PersonaTestStore(pool)
        if args.action == "export":
            exported = await store.list_active()
            suites = {p.id: await tests.list(p.id) for p in exported}
            results = write_directory(args.directory, exported)
            results += write_suites(args.directory, results, suites)
        else:
            owner = None
            if args.owner:
                user = await Accounts(pool).get_user_by_name(args.owner)
                if user is None:
                    print(f"persona-runtime: no user named {args.owner!r}", file=sys.stderr)
                    return 1
                owner = user.id
            drafts = read_directory(args.directory, limit=settings.import_max_bytes)
            pictures = read_pictures(args.directory, drafts)
            read = read_suites(
                args.directory,
                [draft.name for _, draft in drafts],
                limit=settings.import_max_bytes,
                max_message_chars=settings.max_message_chars,
            )
            await check_suites(read)
            results = await import_drafts(store, drafts, owner=owner, avatars=AvatarStore(pool), pictures=pictures)
            ids = {}
            for _, suite in read:
                persona = await store.find_owned(suite.persona, owner)
                assert persona is not None  # imported just above
                ids[suite.persona.casefold()] = persona.id
            results += await import_suites(tests, read, ids, owner=owner)
    finally:
        await cache.aclose()
    _report(results)
    return 0


def _report(results: list[FileResult]) -> None:
    for result in results:
        print(f"{result.outcome:<9} {result.name} ({result.file})")
    outcomes = ("written", "created", "updated", "removed", "unchanged")
    counts = {o: sum(r.outcome == o for r in results) for o in outcomes}
    summary = ", ".join(f"{n} {outcome}" for outcome, n in counts.items() if n) or "no persona files"
    changed = counts["written"] + counts["created"] + counts["updated"] + counts["removed"]
    print(summary if changed else f"nothing changed: {summary}")
