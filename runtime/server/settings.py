"""Settings: read once from the environment (and an optional ``.env`` file) into one frozen Struct."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import msgspec

from core import traces

__all__ = ["POOL_MODES", "Settings", "SettingsError"]

# How connections reach PostgreSQL (DATABASE_POOL_MODE): `session`, a connection of our own per pooled
# connection (direct, or a pooler in session mode); `transaction`, a pooler such as PgBouncer in
# transaction mode, which hands each transaction to any server connection.
POOL_MODES = ("session", "transaction")


class SettingsError(ValueError):
    """An environment variable holds a value the runtime cannot use."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the runtime reads from its environment. Provider variables stay in ``env``."""

    database_url: str | None = None
    # Where the connection that listens for other instances' changes goes, when DATABASE_URL leads to a
    # transaction-mode pooler (LISTEN needs a session of its own); unset, DATABASE_URL.
    database_listen_url: str | None = None
    home: Path = Path("~/.local/share/persona-runtime").expanduser()
    redis_url: str | None = None
    # Where the workers of one ``serve --workers N`` without Redis reach each other's stream recordings (set by
    # ``serve`` for its workers); unset, a worker replays only its own streams.
    stream_peers_dir: str | None = None
    # Namespace of this deployment's keys, so several deployments (or test databases) can share one Redis.
    redis_prefix: str = "persona-runtime:"
    host: str = "127.0.0.1"
    port: int = 8666
    bootstrap_admin_key: str | None = None
    # Create the admin user on an empty database (``serve`` does; tests that make their own users don't).
    bootstrap_admin: bool = True
    db_pool_min: int = 1
    db_pool_max: int = 10
    # `transaction` turns off asyncpg's named prepared statements, which a transaction-mode pooler (PgBouncer
    # 1.18) cannot carry from one transaction's server connection to the next.
    database_pool_mode: str = "session"
    # How long an API key lookup is trusted before it is checked again: revocations are announced to every
    # instance, so this bounds how late one bites only if that announcement is missed.
    key_cache_seconds: float = 1.0
    # How often buffered "last used" times of API keys are written.
    key_touch_interval: float = 15.0
    persona_cache_seconds: int = 300
    # How long each instance keeps personas, preferences and name lookups in memory without asking the
    # shared cache. Writes are announced to every instance, which drops what they changed at once; this
    # bounds how late a write is seen only if its announcement is missed (and is cut to one second while
    # announcements cannot be heard).
    persona_local_cache_seconds: float = 1.0
    # At most this many earlier turns of a stored conversation are sent; the context budget decides within it.
    history_turns: int = 500
    # Tokens a model takes when neither the persona nor the table of well-known models knows (section 13).
    default_context_window: int = 32_768
    # Who writes conversation summaries; unset, the persona's own provider and model.
    summary_provider: str | None = None
    summary_model: str | None = None
    memory_provider: str | None = None
    memory_model: str | None = None
    # Who grades judged tests (contract section 16); unset, the persona's own provider and model.
    judge_provider: str | None = None
    judge_model: str | None = None
    # Who embeds memories and the latest message for vector retrieval (an OpenAI-compatible provider's
    # /embeddings); unset, memories are ranked by full text only.
    embeddings_provider: str | None = None
    embeddings_model: str = "text-embedding-3-small"
    max_message_chars: int = 32_000
    # Largest persona import (a PNG card, or a document) accepted, and what one PNG text chunk may inflate to.
    import_max_bytes: int = 8 * 1024 * 1024
    request_timeout: float = 120.0
    # Upstream connections each provider may hold open at once, per worker: every open stream holds one.
    provider_connections: int = 10_000
    heartbeat_seconds: float = 15.0
    # Connections each worker serves at once (a 503 past it), and how long a request's headers may take.
    max_connections: int = 10_000
    header_timeout_seconds: float = 10.0
    # How long streams in flight may run on after SIGTERM before they are ended with `shutting_down`.
    shutdown_grace_seconds: float = 25.0
    # How long a finished chat stream can be replayed (GET /api/v1/chat/messages/{id}/events); 0 records none.
    stream_retention_seconds: float = 600.0
    # How long an answer's instance may go silent before the answer is taken for abandoned (it died).
    stream_lease_seconds: float = 30.0
    # How long a stored /v1/responses response can be continued, read or deleted.
    response_retention_days: float = 30.0
    # How long turn records (and the feedback on them) are kept before the background prune deletes them.
    turn_retention_days: float = 90.0
    log_level: str = "INFO"
    # `text` (readable) or `json` (one object a line).
    log_format: str = "text"
    # GET /metrics (METRICS=off removes it).
    metrics: bool = True
    # Limits of keys that set none of their own (section 9 of the contract); None is no limit.
    key_requests_per_minute: int | None = None
    key_tokens_per_day: int | None = None
    # Live (unrevoked, unexpired) API keys one user may hold.
    max_keys_per_user: int = 100
    # Where each turn's span is exported (OTLP over HTTP, ``.../v1/traces``); None: no traces.
    traces_endpoint: str | None = None
    env: dict[str, str] = msgspec.field(default_factory=dict)

    def __repr__(self) -> str:
        # The environment holds provider keys and the bootstrap key: never print it.
        shown = ("database_url", "database_listen_url", "home", "redis_url", "host", "port")
        return "Settings(" + ", ".join(f"{name}={_redact(getattr(self, name))!r}" for name in shown) + ")"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, dotenv: bool = True) -> Settings:
        """Build settings from ``environ`` (default: the process environment plus ``.env``)."""
        if environ is None:
            if dotenv:
                from dotenv import load_dotenv

                load_dotenv(Path.cwd() / ".env", override=False)
            environ = os.environ
        env = dict(environ)

        def text(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def number(name: str, default: float, kind: type = int) -> float:
            value = text(name)
            if value is None:
                return default
            try:
                return kind(value)
            except ValueError:
                raise SettingsError(f"{name} must be a number, got {value!r}") from None

        home = Path(text("PERSONA_RUNTIME_HOME") or "~/.local/share/persona-runtime").expanduser()
        return cls(
            database_url=text("DATABASE_URL"),
            database_listen_url=text("DATABASE_LISTEN_URL"),
            home=home,
            redis_url=text("REDIS_URL"),
            stream_peers_dir=text("STREAM_PEERS_DIR"),
            redis_prefix=text("REDIS_KEY_PREFIX") or "persona-runtime:",
            host=text("HOST") or "127.0.0.1",
            port=int(number("PORT", 8666)),
            bootstrap_admin_key=text("BOOTSTRAP_ADMIN_KEY"),
            db_pool_max=int(number("DATABASE_POOL_SIZE", 10)),
            database_pool_mode=_pool_mode(text("DATABASE_POOL_MODE")),
            persona_local_cache_seconds=float(number("PERSONA_LOCAL_CACHE_SECONDS", 1.0, float)),
            history_turns=int(number("HISTORY_TURNS", 500)),
            default_context_window=_window(int(number("DEFAULT_CONTEXT_WINDOW", 32_768))),
            summary_provider=text("SUMMARY_PROVIDER"),
            summary_model=text("SUMMARY_MODEL"),
            memory_provider=text("MEMORY_PROVIDER"),
            memory_model=text("MEMORY_MODEL"),
            judge_provider=text("JUDGE_PROVIDER"),
            judge_model=text("JUDGE_MODEL"),
            embeddings_provider=text("EMBEDDINGS_PROVIDER"),
            embeddings_model=text("EMBEDDINGS_MODEL") or "text-embedding-3-small",
            max_message_chars=int(number("MAX_MESSAGE_CHARS", 32_000)),
            import_max_bytes=int(number("IMPORT_MAX_BYTES", 8 * 1024 * 1024)),
            request_timeout=float(number("PROVIDER_TIMEOUT", 120.0, float)),
            provider_connections=int(number("PROVIDER_MAX_CONNECTIONS", 10_000)),
            heartbeat_seconds=float(number("SSE_HEARTBEAT_SECONDS", 15.0, float)),
            max_connections=_at_least_one(int(number("MAX_CONNECTIONS", 10_000)), "MAX_CONNECTIONS"),
            header_timeout_seconds=_positive_seconds(
                float(number("HEADER_TIMEOUT_SECONDS", 10.0, float)), "HEADER_TIMEOUT_SECONDS"
            ),
            shutdown_grace_seconds=float(number("SHUTDOWN_GRACE_SECONDS", 25.0, float)),
            stream_retention_seconds=float(number("STREAM_RETENTION_SECONDS", 600.0, float)),
            response_retention_days=float(number("RESPONSE_RETENTION_DAYS", 30.0, float)),
            turn_retention_days=_positive_days(number("TURN_RETENTION_DAYS", 90.0, float), "TURN_RETENTION_DAYS"),
            stream_lease_seconds=float(number("STREAM_LEASE_SECONDS", 30.0, float)),
            log_level=(text("LOG_LEVEL") or "INFO").upper(),
            log_format=_log_format(text("LOG_FORMAT")),
            metrics=(text("METRICS") or "on").lower() not in ("off", "false", "0", "no"),
            key_requests_per_minute=_limit(text("KEY_REQUESTS_PER_MINUTE"), "KEY_REQUESTS_PER_MINUTE"),
            key_tokens_per_day=_limit(text("KEY_TOKENS_PER_DAY"), "KEY_TOKENS_PER_DAY"),
            max_keys_per_user=_at_least_one(int(number("MAX_KEYS_PER_USER", 100)), "MAX_KEYS_PER_USER"),
            traces_endpoint=_traces_endpoint(text),
            env=env,
        )


def _traces_endpoint(text: Callable[[str], str | None]) -> str | None:
    """Where spans go: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` as it is, else ``OTEL_EXPORTER_OTLP_ENDPOINT`` with the
    signal's path, as the OpenTelemetry SDKs read them; None when neither is set (or ``OTEL_SDK_DISABLED=true``).
    Set without the OpenTelemetry packages, start-up stops and says what to install."""
    endpoint = text("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if endpoint is None:
        base = text("OTEL_EXPORTER_OTLP_ENDPOINT")
        endpoint = base.rstrip("/") + "/v1/traces" if base is not None else None
    if endpoint is None or (text("OTEL_SDK_DISABLED") or "").lower() == "true":
        return None
    try:
        traces.require()
    except traces.TracesUnavailable as exc:
        raise SettingsError(str(exc)) from None
    return endpoint


def _window(value: int) -> int:
    if not 256 <= value <= 10_000_000:
        raise SettingsError(f"DEFAULT_CONTEXT_WINDOW must be between 256 and 10000000 tokens, got {value}")
    return value


def _positive_days(value: float, name: str) -> float:
    if not value > 0:
        raise SettingsError(f"{name} must be a number of days above 0, got {value}")
    return value


def _positive_seconds(value: float, name: str) -> float:
    if not 0 < value <= 3600:
        raise SettingsError(f"{name} must be more than 0 and at most 3600 seconds, got {value}")
    return value


def _at_least_one(value: int, name: str) -> int:
    if value < 1:
        raise SettingsError(f"{name} must be at least 1, got {value}")
    return value


def _limit(value: str | None, name: str) -> int | None:
    """A limit from the environment: a positive whole number, or unset (or 0, or ``none``) for no limit."""
    if value is None or value.lower() in ("0", "none", "off"):
        return None
    try:
        number = int(value)
    except ValueError:
        raise SettingsError(f"{name} must be a positive whole number, got {value!r}") from None
    if not 1 <= number <= 1_000_000_000_000:
        raise SettingsError(f"{name} must be between 1 and 10**12 (or 0 for no limit), got {value!r}")
    return number


def _log_format(value: str | None) -> str:
    fmt = (value or "text").lower()
    if fmt not in ("text", "json"):
        raise SettingsError(f"LOG_FORMAT must be `text` or `json`, got {value!r}")
    return fmt


def _pool_mode(value: str | None) -> str:
    mode = (value or "session").lower()
    if mode == "statement":
        raise SettingsError(
            "DATABASE_POOL_MODE=statement is not supported: chat turns and persona writes need multi-statement "
            "transactions; run the pooler in transaction mode and set DATABASE_POOL_MODE=transaction"
        )
    if mode not in POOL_MODES:
        raise SettingsError(f"DATABASE_POOL_MODE must be `session` or `transaction`, got {value!r}")
    return mode


def _redact(value: object) -> object:
    """Hide a password inside a URL such as ``postgresql://user:secret@host/db``."""
    if isinstance(value, str) and "://" in value and "@" in value:
        scheme, rest = value.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in credentials else value
    return value
