"""Rate limits and token budgets: one atomic check per request, on Redis when configured, else in this process.

A key's limits (its own, else ``KEY_REQUESTS_PER_MINUTE`` / ``KEY_TOKENS_PER_DAY``) bound everything done
with it; a persona's bound each user's use of it. Each is a *scope* with up to three fixed windows: the
requests of this minute, the tokens of this minute and the tokens of this UTC day. A request is counted
when admitted; its tokens when its usage is known, so a token budget can be overrun by the answers in
flight and no further: a request is refused only when a budget is already spent.

On Redis every scope is one Lua script call that reads its counters and counts the request, all keys of a
scope under one hash tag (``{rl:key:<id>}``), so it runs on a Redis Cluster too; the scopes of a request go
in one pipeline, one round trip. A turn's tokens ride along with the next check of its scope (which so
sees them), or are sent by a background flush within ``FLUSH_SECONDS``, whichever comes first: one round
trip per request in all, and other instances see the tokens at most that late. While Redis is unreachable
each process counts on its own (the outage is logged once, Redis is tried again a second later): limits
never vanish, and a request never fails because the counter store did. A request no limit applies to costs
nothing here.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import msgspec
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from core.errors import Forbidden, RateLimited
from personas.models import Caller, Limits, Persona

__all__ = [
    "LIMIT_HEADERS",
    "Admission",
    "KeyUsage",
    "Limiter",
    "rate_limit_headers",
    "reset_duration",
]

log = logging.getLogger("persona_runtime.limits")

MINUTE = 60
DAY = 86_400
# How long counters outlive their window (fixed windows are named by their number, so any TTL past the
# window's end works; a little more leaves room for clocks a few seconds apart).
_MINUTE_TTL = 2 * MINUTE
_DAY_TTL = DAY + 3_600
# Longest a turn's tokens wait in this process for the next check of their scope before they are sent.
FLUSH_SECONDS = 0.25
# A counter store slower than this counts as down for the request (per-process counting takes over).
_REDIS_TIMEOUT = 0.5

# Adds the scope's tokens not counted yet (ARGV[6]), reads its three counters and, unless a limit is reached,
# counts ``cost`` requests. A limit of 0 is none. Returns {refused (0, 1 requests, 2 tokens a minute, 3 tokens
# a day), requests, tokens, tokens today}.
ADMIT_SCRIPT = """
local rpm, tpm, tpd, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local spent = tonumber(ARGV[6])
local r = tonumber(redis.call('GET', KEYS[1]) or '0')
local t, d
if spent > 0 then
  t = redis.call('INCRBY', KEYS[2], spent)
  if redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
  d = redis.call('INCRBY', KEYS[3], spent)
  if redis.call('TTL', KEYS[3]) < 0 then redis.call('EXPIRE', KEYS[3], ARGV[7]) end
else
  t = tonumber(redis.call('GET', KEYS[2]) or '0')
  d = tonumber(redis.call('GET', KEYS[3]) or '0')
end
local refused = 0
if rpm > 0 and r + cost > rpm then refused = 1
elseif tpm > 0 and t >= tpm then refused = 2
elseif tpd > 0 and d >= tpd then refused = 3
end
if refused == 0 then
  r = redis.call('INCRBY', KEYS[1], cost)
  if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
end
return {refused, r, t, d}
"""
# Adds a turn's tokens to the scope's minute and day counters (or, with a negative count, takes back requests).
ADD_SCRIPT = """
for i, key in ipairs(KEYS) do
  redis.call('INCRBY', key, ARGV[1])
  if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, ARGV[i + 1]) end
end
return 0
"""

# The answer being served's rate limit headers, filled by the pipeline and sent by the request id middleware:
# a list per request (set when the request starts), so turns admitted in tasks of the request count too.
LIMIT_HEADERS: contextvars.ContextVar[list[dict[str, str]] | None] = contextvars.ContextVar(
    "limit_headers", default=None
)

Spawn = Callable[[Coroutine[Any, Any, None]], None]


def reset_duration(seconds: float) -> str:
    """A wait in OpenAI's header format: ``20ms``, ``1s``, ``6m0s``, ``2h3m0s``."""
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


@dataclass(frozen=True, slots=True)
class _Scope:
    """One scope's counters for one request: whose (``kind``), its hash tag, its limits, how many requests."""

    kind: str  # "key" or "persona"
    tag: str
    limits: Limits
    cost: int
    label: str  # how a refusal names it: "This API key", "Persona 'Mu'"


@dataclass(frozen=True, slots=True)
class _Reading:
    scope: _Scope
    refused: int
    requests: int
    tokens: int
    tokens_today: int


class KeyUsage(msgspec.Struct, frozen=True, kw_only=True):
    """What a key used in the current windows."""

    requests_this_minute: int
    tokens_this_minute: int
    tokens_today: int


class _Windows:
    """The current windows' numbers and the seconds left in each, read once per check."""

    __slots__ = ("day", "day_left", "minute", "minute_left")

    def __init__(self, now: float) -> None:
        self.minute, into_minute = divmod(now, MINUTE)
        self.day, into_day = divmod(now, DAY)
        self.minute_left = MINUTE - into_minute
        self.day_left = DAY - into_day

    def keys(self, prefix: str, tag: str) -> tuple[str, str, str]:
        base = f"{prefix}{{{tag}}}:"
        return f"{base}r:{int(self.minute)}", f"{base}t:{int(self.minute)}", f"{base}d:{int(self.day)}"


class _LocalCounters:
    """Per-process counters with the script's semantics: without Redis, and while it is unreachable."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, float]] = {}
        self._pruned = 0.0

    def get(self, key: str, now: float) -> int:
        entry = self._counts.get(key)
        if entry is None or entry[1] <= now:
            return 0
        return entry[0]

    def add(self, key: str, amount: int, ttl: float, now: float) -> int:
        value = self.get(key, now) + amount
        entry = self._counts.get(key)
        expires = entry[1] if entry is not None and entry[1] > now else now + ttl
        self._counts[key] = (value, expires)
        if now - self._pruned > MINUTE:
            self._pruned = now
            self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
        return value

    def admit(self, keys: tuple[str, str, str], scope: _Scope, now: float) -> _Reading:
        r, t, d = (self.get(k, now) for k in keys)
        limits = scope.limits
        refused = 0
        if limits.requests_per_minute is not None and r + scope.cost > limits.requests_per_minute:
            refused = 1
        elif limits.tokens_per_minute is not None and t >= limits.tokens_per_minute:
            refused = 2
        elif limits.tokens_per_day is not None and d >= limits.tokens_per_day:
            refused = 3
        if not refused:
            r = self.add(keys[0], scope.cost, _MINUTE_TTL, now)
        return _Reading(scope, refused, r, t, d)


class Admission:
    """A request let through: the rate limit headers of its answer, and where each turn's tokens go."""

    __slots__ = ("_limiter", "_scopes", "_windows", "headers")

    def __init__(self, limiter: Limiter, scopes: Sequence[_Scope], windows: _Windows, headers: dict[str, str]):
        self._limiter = limiter
        self._scopes = scopes
        self._windows = windows
        self.headers = headers

    def spend(self, persona_id: UUID, tokens: int) -> None:
        """Count a turn's ``tokens`` against the key and the persona it spoke as (sent in the background)."""
        if tokens <= 0:
            return
        prefix = f"rl:persona:{persona_id}:"
        for scope in self._scopes:
            if scope.kind == "key" or scope.tag.startswith(prefix):
                self._limiter.add_tokens(scope.tag, tokens)


class Limiter:
    """Admits requests under the limits of their key and personas (see the module docstring)."""

    def __init__(
        self,
        redis: Redis | None,
        *,
        prefix: str = "persona-runtime:",
        defaults: Limits | None = None,
        on_refused: Callable[[str], None] | None = None,
        retry_after: float = 1.0,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self.defaults = defaults or Limits()
        self._on_refused = on_refused
        self._retry_after = retry_after
        self._local = _LocalCounters()
        self._down_since: float | None = None
        self._next_try = 0.0
        self._admit_sha: str | None = None
        self._add_sha: str | None = None
        # Tokens of finished turns not sent to Redis yet, by scope tag; and the task that will send them.
        self._pending: dict[str, int] = {}
        self._flusher: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[None]] = set()

    # Which limits apply ---------------------------------------------------------------------------

    def key_limits(self, own: Limits | None) -> Limits:
        """A key's limits: its own, each one it leaves unset from the defaults."""
        defaults = self.defaults
        if own is None:
            return defaults
        if not defaults.any:
            return own
        return Limits(
            requests_per_minute=own.requests_per_minute or defaults.requests_per_minute,
            tokens_per_minute=own.tokens_per_minute or defaults.tokens_per_minute,
            tokens_per_day=own.tokens_per_day or defaults.tokens_per_day,
        )

    def check_chosen(self, limits: Limits | None, caller: Caller) -> None:
        """A user may give a key of their own tighter limits than the defaults; only an admin may loosen them
        (or, since a limit left out means the default, set them on another user's key)."""
        if caller.is_admin or limits is None:
            return
        for name, default in msgspec.structs.asdict(self.defaults).items():
            chosen = getattr(limits, name)
            if default is not None and chosen is not None and chosen > default:
                raise Forbidden(
                    f"`limits.{name}` is above this server's default of {default}: only an admin may give a key "
                    "looser limits. Leave it out for the default, or ask an admin.",
                    field=f"limits.{name}",
                )

    def _scopes(self, caller: Caller, personas: Sequence[Persona]) -> list[_Scope]:
        scopes: list[_Scope] = []
        key = self.key_limits(caller.key_limits)
        if key.any and caller.key_id is not None:
            scopes.append(_Scope("key", f"rl:key:{caller.key_id}", key, len(personas), "This API key"))
        counted: dict[UUID, int] = {}
        for persona in personas:
            # A draft (version 0) is not saved: its limits bound nothing.
            if persona.limits.any and persona.version > 0:
                counted[persona.id] = counted.get(persona.id, 0) + 1
        for persona in personas:
            cost = counted.pop(persona.id, 0)
            if cost:
                tag = f"rl:persona:{persona.id}:{caller.user_id}"
                scopes.append(_Scope("persona", tag, persona.limits, cost, f"Persona {persona.name!r}"))
        return scopes

    # The check --------------------------------------------------------------------------------------

    async def admit(self, caller: Caller, personas: Sequence[Persona], spawn: Spawn) -> Admission | None:
        """Count one request for each of ``personas`` (a comparison asks several at once), or refuse them all
        with :class:`RateLimited`. None when no limit applies: nothing was counted, and nothing will be."""
        if caller.key_limits is None and not self.defaults.any and not any(p.limits.any for p in personas):
            return None
        scopes = self._scopes(caller, personas)
        if not scopes:
            return None
        now = time.time()
        windows = _Windows(now)
        keys = [windows.keys(self._prefix, s.tag) for s in scopes]
        readings = await self._read(scopes, keys, windows, now)
        headers = _headers(readings, windows)
        holder = LIMIT_HEADERS.get()
        if holder is not None:
            holder.append(headers)
        refused = next((r for r in readings if r.refused), None)
        if refused is not None:
            admitted = [r.scope for r, k in zip(readings, keys, strict=True) if not r.refused]
            if admitted:  # the request did not happen: give back what the other scopes counted
                spawn(self._take_back(admitted, windows))
            if self._on_refused is not None:
                self._on_refused(refused.scope.kind)
            raise _refusal(refused, windows)
        return Admission(self, scopes, windows, headers)

    async def _read(
        self, scopes: list[_Scope], keys: list[tuple[str, str, str]], windows: _Windows, now: float
    ) -> list[_Reading]:
        if self._usable():
            assert self._redis is not None
            spent = [self._pending.pop(s.tag, 0) for s in scopes]
            try:
                async with asyncio.timeout(_REDIS_TIMEOUT):
                    return await self._read_redis(scopes, keys, spent)
            except (RedisError, OSError) as exc:
                self._failed(exc)
                for scope, tokens in zip(scopes, spent, strict=True):
                    self._count_here(scope.tag, tokens, now)
        return [self._local.admit(k, s, now) for s, k in zip(scopes, keys, strict=True)]

    async def _read_redis(
        self, scopes: list[_Scope], keys: list[tuple[str, str, str]], spent: list[int]
    ) -> list[_Reading]:
        calls = [
            (list(k), [*_limit_args(s.limits), s.cost, _MINUTE_TTL, tokens, _DAY_TTL])
            for s, k, tokens in zip(scopes, keys, spent, strict=True)
        ]
        results = await self._run(ADMIT_SCRIPT, "_admit_sha", calls)
        self._recovered()
        return [
            _Reading(scope, int(res[0]), int(res[1]), int(res[2]), int(res[3]))
            for scope, res in zip(scopes, results, strict=True)
        ]

    async def _run(self, script: str, sha_attr: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run ``script`` once per ``(keys, args)`` in one round trip: EVALSHA, or EVAL where Redis lacks it."""
        assert self._redis is not None
        sha = getattr(self, sha_attr)
        if sha is None:
            sha = await self._redis.script_load(script)
            setattr(self, sha_attr, sha)
        results = await self._send([_packed("EVALSHA", sha, len(k), *k, *a) for k, a in calls])
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:  # Redis restarted or was flushed: EVAL loads the script again
            again = await self._send(
                [_packed("EVAL", script, len(calls[i][0]), *calls[i][0], *calls[i][1]) for i in missing]
            )
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def _send(self, commands: list[bytes]) -> list[Any]:
        """Commands written in one go on one pooled connection, and their replies (an error reply as its exception).

        The commands are encoded here, once, rather than by redis-py's general encoder, which costs a limited
        request several times as much CPU for a script's dozen arguments.
        """
        assert self._redis is not None
        pool = self._redis.connection_pool
        connection = await pool.get_connection()
        try:
            await connection.send_packed_command(b"".join(commands))
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        finally:
            await pool.release(connection)

    # Counting afterwards ----------------------------------------------------------------------------

    def add_tokens(self, tag: str, tokens: int) -> None:
        """Count a turn's tokens in the scope ``tag``: with the scope's next check, or the flush soon after."""
        if self._redis is None or self._down_since is not None:
            self._count_here(tag, tokens, time.time())
            return
        self._pending[tag] = self._pending.get(tag, 0) + tokens
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._flush_soon)

    def _count_here(self, tag: str, tokens: int, now: float) -> None:
        if tokens:
            _, t, d = _Windows(now).keys(self._prefix, tag)
            self._local.add(t, tokens, _MINUTE_TTL, now)
            self._local.add(d, tokens, _DAY_TTL, now)

    def _flush_soon(self) -> None:
        self._flusher = None
        task = asyncio.get_running_loop().create_task(self.flush())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def flush(self) -> None:
        """Send the tokens no check has taken along yet (in one round trip)."""
        pending, self._pending = self._pending, {}
        if not pending:
            return
        now = time.time()
        windows = _Windows(now)
        calls = []
        for tag, tokens in pending.items():
            _, t, d = windows.keys(self._prefix, tag)
            calls.append(([t, d], [tokens, _MINUTE_TTL, _DAY_TTL]))
        if await self._add(calls):
            return
        for tag, tokens in pending.items():
            self._count_here(tag, tokens, now)

    async def aclose(self) -> None:
        """At shutdown: send the tokens still waiting."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        await self.flush()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def _take_back(self, scopes: Sequence[_Scope], windows: _Windows) -> None:
        calls = [([windows.keys(self._prefix, s.tag)[0]], [-s.cost, _MINUTE_TTL]) for s in scopes]
        if not await self._add(calls):
            now = time.time()
            for keys, args in calls:
                self._local.add(keys[0], args[0], _MINUTE_TTL, now)

    async def _add(self, calls: list[tuple[list[str], list[Any]]]) -> bool:
        """Run the adding script for each call on Redis; False when it cannot be reached."""
        if not self._usable():
            return False
        try:
            async with asyncio.timeout(_REDIS_TIMEOUT):
                await self._run(ADD_SCRIPT, "_add_sha", calls)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return False
        self._recovered()
        return True

    async def usage(self, key_ids: Sequence[UUID]) -> list[KeyUsage]:
        """What each key used in the current windows (zeros for a key nothing counts)."""
        now = time.time()
        windows = _Windows(now)
        names = [windows.keys(self._prefix, f"rl:key:{key_id}") for key_id in key_ids]
        if names and self._usable():
            assert self._redis is not None
            try:
                pipe = self._redis.pipeline(transaction=False)
                for keys in names:
                    pipe.mget(keys)
                async with asyncio.timeout(_REDIS_TIMEOUT):
                    found = await pipe.execute()
                self._recovered()
                return [KeyUsage(**_usage(values)) for values in found]
            except (RedisError, OSError) as exc:
                self._failed(exc)
        return [KeyUsage(**_usage([self._local.get(k, now) for k in keys])) for keys in names]

    # Redis outages ----------------------------------------------------------------------------------

    def _usable(self) -> bool:
        if self._redis is None:
            return False
        # While Redis is down, one request a second tries it again; the others count here.
        if self._down_since is not None:
            now = time.monotonic()
            if now < self._next_try:
                return False
            self._next_try = now + self._retry_after
        return True

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._down_since is None:
            log.warning(
                "Redis unavailable for rate limits (%s); each process counts on its own until it is back",
                type(exc).__name__,
            )
            self._down_since = now
        self._next_try = now + self._retry_after

    def _recovered(self) -> None:
        if self._down_since is not None:
            log.warning(
                "Redis is reachable again after %.1fs; rate limits counted there", time.monotonic() - self._down_since
            )
            self._down_since = None


def _packed(*args: str | int) -> bytes:
    """One command in Redis's protocol (RESP): an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _limit_args(limits: Limits) -> tuple[int, int, int]:
    return limits.requests_per_minute or 0, limits.tokens_per_minute or 0, limits.tokens_per_day or 0


def _usage(values: Sequence[Any]) -> dict[str, int]:
    r, t, d = (int(v or 0) for v in values)
    return {"requests_this_minute": r, "tokens_this_minute": t, "tokens_today": d}


def _headers(readings: Sequence[_Reading], windows: _Windows) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers of the tightest limit of each kind (requests, tokens)."""
    headers: dict[str, str] = {}
    requests: tuple[int, int] | None = None  # (remaining, limit)
    tokens: tuple[int, int, float] | None = None  # (remaining, limit, seconds to reset)
    for reading in readings:
        limits = reading.scope.limits
        rpm = limits.requests_per_minute
        if rpm is not None:
            remaining = max(0, rpm - reading.requests)
            if requests is None or remaining < requests[0]:
                requests = (remaining, rpm)
        for limit, used, left in (
            (limits.tokens_per_minute, reading.tokens, windows.minute_left),
            (limits.tokens_per_day, reading.tokens_today, windows.day_left),
        ):
            if limit is not None:
                remaining = max(0, limit - used)
                if tokens is None or remaining < tokens[0] or (remaining == tokens[0] and left > tokens[2]):
                    tokens = (remaining, limit, left)
    if requests is not None:
        headers["x-ratelimit-limit-requests"] = str(requests[1])
        headers["x-ratelimit-remaining-requests"] = str(requests[0])
        headers["x-ratelimit-reset-requests"] = reset_duration(windows.minute_left)
    if tokens is not None:
        headers["x-ratelimit-limit-tokens"] = str(tokens[1])
        headers["x-ratelimit-remaining-tokens"] = str(tokens[0])
        headers["x-ratelimit-reset-tokens"] = reset_duration(tokens[2])
    return headers


def rate_limit_headers(holder: Sequence[dict[str, str]]) -> dict[str, str]:
    """The headers an answer should carry: the tightest of its request's admissions (``LIMIT_HEADERS``)."""
    if not holder:
        return {}
    if len(holder) == 1:
        return holder[0]
    merged: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        remaining = f"x-ratelimit-remaining-{kind}"
        tightest = min((h for h in holder if remaining in h), key=lambda h: int(h[remaining]), default=None)
        if tightest is not None:
            merged.update({k: v for k, v in tightest.items() if k.endswith(kind)})
    return merged


def _refusal(reading: _Reading, windows: _Windows) -> RateLimited:
    scope, limits = reading.scope, reading.scope.limits
    whose = scope.label + ("" if scope.kind == "key" else " (for each user)")
    if reading.refused == 1:
        wait, what = windows.minute_left, f"allows {limits.requests_per_minute} requests a minute"
        if scope.cost > 1:
            what += f" and this one makes {scope.cost}"
    elif reading.refused == 2:
        wait, what = windows.minute_left, f"allows {limits.tokens_per_minute} tokens a minute, all used"
    else:
        wait, what = windows.day_left, f"allows {limits.tokens_per_day} tokens a day (UTC), all used today"
    seconds = max(1, math.ceil(wait))
    return RateLimited(
        f"Rate limit reached: {whose} {what}. Try again in {seconds} s (see `Retry-After`).",
        retry_after=seconds,
        scope=scope.kind,
        details={"scope": scope.kind, "retry_after": seconds},
    )
