"""Where limits are counted: a Lua script per scope on Redis, or counters in this process.

Each scope (a key, or a persona and one user) has three fixed windows, all under one hash tag
(``{rl:key:<id>}``) so that a scope's script runs on a Redis Cluster too: the requests of this minute, its
tokens, and the tokens of this UTC day. Every check is one script call per scope, in one round trip; a
turn's tokens ride along with the next check of their scope, or go in a background flush within
``FLUSH_SECONDS``. While Redis is unreachable this process counts on its own (the outage logged once, Redis
tried again a second later), and nothing here ever raises for the counter store's sake.

Which window a count goes in is the runtime's own clock's to say (``clock``, wall time unless a test sets
one): the window's number is in its key's name and a key's expiry is relative, so the scripts never read
Redis's time, and instances whose clocks agree count in the same windows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import msgspec
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoScriptError

from core.redis_client import REDIS_ERRORS, Outage, packed, send
from personas.models import Limits

__all__ = ["DAY", "FLUSH_SECONDS", "MINUTE", "Clock", "Counters", "KeyUsage", "Reading", "Scope", "Windows"]

log = logging.getLogger("persona_runtime.limits")

# What the windows are read from: seconds since the epoch (``time.time``, unless a test sets the time).
Clock = Callable[[], float]

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
# counts ``cost`` requests and reserves ``reserve`` tokens (ARGV[8]) in the minute's and the day's counters. A
# token budget refuses once what is spent and held by answers in flight reaches it, so at most one answer (the
# one admitted last) can take it past its limit. A limit of 0 is none. Returns {refused (0, 1 requests, 2 tokens
# a minute, 3 tokens a day), requests, tokens, tokens today}, the tokens with the reservation.
ADMIT_SCRIPT = """
local rpm, tpm, tpd, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local spent, reserve = tonumber(ARGV[6]), tonumber(ARGV[8])
local r = tonumber(redis.call('GET', KEYS[1]) or '0')
local t, d
if spent ~= 0 then
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
  if reserve > 0 then
    t = redis.call('INCRBY', KEYS[2], reserve)
    if redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
    d = redis.call('INCRBY', KEYS[3], reserve)
    if redis.call('TTL', KEYS[3]) < 0 then redis.call('EXPIRE', KEYS[3], ARGV[7]) end
  end
end
return {refused, r, t, d}
"""
# Adds a turn's tokens to the scope's minute and day counters (a negative count gives back what a reservation
# held beyond the turn's use; with one key, takes back requests).
ADD_SCRIPT = """
for i, key in ipairs(KEYS) do
  redis.call('INCRBY', key, ARGV[1])
  if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, ARGV[i + 1]) end
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Scope:
    """One scope's counters for one request: whose (``kind``), its hash tag, its limits, how many requests, and
    how many tokens its answers may take (``reserve``: held at admission, settled on usage)."""

    kind: str  # "key" or "persona"
    tag: str
    limits: Limits
    cost: int
    label: str  # how a refusal names it: "This API key", "Persona 'Mu'"
    reserve: int = 0


@dataclass(frozen=True, slots=True)
class Reading:
    scope: Scope
    refused: int
    requests: int
    tokens: int
    tokens_today: int


class KeyUsage(msgspec.Struct, frozen=True, kw_only=True):
    """What a key used in the current windows."""

    requests_this_minute: int
    tokens_this_minute: int
    tokens_today: int


class Windows:
    """The current windows' numbers and the seconds left in each, read once per check."""

    __slots__ = ("day", "day_left", "minute", "minute_left")

    def __init__(self, now: float) -> None:
        self.minute, into_minute = divmod(now, MINUTE)
        self.day, into_day = divmod(now, DAY)
        self.minute_left = MINUTE - into_minute
        self.day_left = DAY - into_day

    @property
    def numbers(self) -> tuple[int, int]:
        """The minute's and the day's numbers: where tokens counted now belong."""
        return int(self.minute), int(self.day)

    def keys(self, prefix: str, tag: str) -> tuple[str, str, str]:
        return _keys(prefix, tag, int(self.minute), int(self.day))


def _keys(prefix: str, tag: str, minute: int, day: int) -> tuple[str, str, str]:
    base = f"{prefix}{{{tag}}}:"
    return f"{base}r:{minute}", f"{base}t:{minute}", f"{base}d:{day}"


class LocalCounters:
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

    def admit(self, keys: tuple[str, str, str], scope: Scope, now: float) -> Reading:
        r, t, d = (self.get(k, now) for k in keys)
        limits = scope.limits
        refused, reserve = 0, scope.reserve
        if limits.requests_per_minute is not None and r + scope.cost > limits.requests_per_minute:
            refused = 1
        elif limits.tokens_per_minute is not None and t >= limits.tokens_per_minute:
            refused = 2
        elif limits.tokens_per_day is not None and d >= limits.tokens_per_day:
            refused = 3
        if not refused:
            r = self.add(keys[0], scope.cost, _MINUTE_TTL, now)
            if reserve:
                t = self.add(keys[1], reserve, _MINUTE_TTL, now)
                d = self.add(keys[2], reserve, _DAY_TTL, now)
        return Reading(scope, refused, r, t, d)


class Counters:
    """The counter store: Redis when configured and reachable, else this process's own counters."""

    def __init__(
        self,
        redis: Redis | RedisCluster | None,
        *,
        prefix: str = "persona-runtime:",
        retry_after: float = 1.0,
        clock: Clock = time.time,
    ) -> None:
        self._redis: Any = redis
        self._prefix = prefix
        self._clock = clock
        self._outage = Outage(
            log,
            "rate limits",
            meanwhile="each process counts on its own",
            after="rate limits counted there",
            retry_after=retry_after,
        )
        self._local = LocalCounters()
        self._admit_sha: str | None = None
        self._add_sha: str | None = None
        # Tokens of finished turns not sent to Redis yet, by scope tag and the (minute, day) windows they belong
        # in; and the timer that will send them.
        self._pending: dict[tuple[str, int, int], int] = {}
        self._flusher: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[None]] = set()

    def keys(self, windows: Windows, tag: str) -> tuple[str, str, str]:
        return windows.keys(self._prefix, tag)

    async def check(self, scopes: list[Scope], keys: list[tuple[str, str, str]], now: float) -> list[Reading]:
        if self._usable():
            assert self._redis is not None
            minute, day = Windows(now).numbers
            spent = [self._pending.pop((s.tag, minute, day), 0) for s in scopes]
            try:
                async with asyncio.timeout(_REDIS_TIMEOUT):
                    return await self._read_redis(scopes, keys, spent)
            except REDIS_ERRORS as exc:
                self._outage.failed(exc)
                for scope, tokens in zip(scopes, spent, strict=True):
                    self._count_here(scope.tag, tokens, now, minute, day)
        return [self._local.admit(k, s, now) for s, k in zip(scopes, keys, strict=True)]

    async def _read_redis(
        self, scopes: list[Scope], keys: list[tuple[str, str, str]], spent: list[int]
    ) -> list[Reading]:
        calls = [
            (list(k), [*_limit_args(s.limits), s.cost, _MINUTE_TTL, tokens, _DAY_TTL, s.reserve])
            for s, k, tokens in zip(scopes, keys, spent, strict=True)
        ]
        results = await self._run(ADMIT_SCRIPT, "_admit_sha", calls)
        self._outage.recovered()
        return [
            Reading(scope, int(res[0]), int(res[1]), int(res[2]), int(res[3]))
            for scope, res in zip(scopes, results, strict=True)
        ]

    async def _run(self, script: str, sha_attr: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run ``script`` once per ``(keys, args)`` in one round trip: EVALSHA, or EVAL where Redis lacks it."""
        assert self._redis is not None
        sha = getattr(self, sha_attr)
        if sha is None:
            sha = await self._redis.script_load(script)
            setattr(self, sha_attr, sha)
        results = await self._send([("EVALSHA", sha, len(k), *k, *a) for k, a in calls])
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:  # Redis restarted or was flushed: EVAL loads the script again
            again = await self._send([("EVAL", script, len(calls[i][0]), *calls[i][0], *calls[i][1]) for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def _send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Commands written in one go on one pooled connection, and their replies (an error reply as its exception).

        The commands are encoded here, once, rather than by redis-py's general encoder, which costs a limited
        request several times as much CPU for a script's dozen arguments. On a Redis Cluster each goes through
        the cluster client instead, to the node of its scope's hash tag (concurrently: still one round trip).
        """
        assert self._redis is not None
        if isinstance(self._redis, RedisCluster):
            return list(
                await asyncio.gather(*(self._redis.execute_command(*c) for c in commands), return_exceptions=True)
            )
        return await send(self._redis, [packed(*c) for c in commands])

    def add_tokens(self, tag: str, tokens: int, windows: tuple[int, int] | None = None) -> None:
        """Count ``tokens`` (negative: give back part of a reservation) in the scope ``tag``, in the (minute, day)
        ``windows`` they belong to (the current ones by default): with the scope's next check, or the flush
        soon after."""
        if not tokens:
            return
        now = self._clock()
        minute, day = windows or Windows(now).numbers
        if self._redis is None or self._outage.down:
            self._count_here(tag, tokens, now, minute, day)
            return
        slot = (tag, minute, day)
        self._pending[slot] = self._pending.get(slot, 0) + tokens
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._flush_soon)

    def _count_here(self, tag: str, tokens: int, now: float, minute: int, day: int) -> None:
        if tokens:
            _, t, d = _keys(self._prefix, tag, minute, day)
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
        calls = []
        for (tag, minute, day), tokens in pending.items():
            _, t, d = _keys(self._prefix, tag, minute, day)
            calls.append(([t, d], [tokens, _MINUTE_TTL, _DAY_TTL]))
        if await self._add(calls):
            return
        now = self._clock()
        for (tag, minute, day), tokens in pending.items():
            self._count_here(tag, tokens, now, minute, day)

    async def aclose(self) -> None:
        """At shutdown: send the tokens still waiting."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        await self.flush()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def take_back(self, scopes: Sequence[Scope], windows: Windows) -> None:
        calls = [([windows.keys(self._prefix, s.tag)[0]], [-s.cost, _MINUTE_TTL]) for s in scopes]
        if not await self._add(calls):
            now = self._clock()
            for keys, args in calls:
                self._local.add(keys[0], args[0], _MINUTE_TTL, now)

    async def _add(self, calls: list[tuple[list[str], list[Any]]]) -> bool:
        """Run the adding script for each call on Redis; False when it cannot be reached."""
        if not self._usable():
            return False
        try:
            async with asyncio.timeout(_REDIS_TIMEOUT):
                await self._run(ADD_SCRIPT, "_add_sha", calls)
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)
            return False
        self._outage.recovered()
        return True

    async def usage(self, key_ids: Sequence[UUID]) -> list[KeyUsage]:
        """What each key used in the current windows (zeros for a key nothing counts)."""
        now = self._clock()
        windows = Windows(now)
        names = [windows.keys(self._prefix, f"rl:key:{key_id}") for key_id in key_ids]
        if names and self._usable():
            assert self._redis is not None
            try:
                pipe = self._redis.pipeline(transaction=False)
                for keys in names:
                    pipe.mget(keys)
                async with asyncio.timeout(_REDIS_TIMEOUT):
                    found = await pipe.execute()
                self._outage.recovered()
                return [KeyUsage(**_usage(values)) for values in found]
            except REDIS_ERRORS as exc:
                self._outage.failed(exc)
        return [KeyUsage(**_usage([self._local.get(k, now) for k in keys])) for keys in names]

    # Redis outages ----------------------------------------------------------------------------------

    def _usable(self) -> bool:
        return self._redis is not None and self._outage.usable()


def _limit_args(limits: Limits) -> tuple[int, int, int]:
    return limits.requests_per_minute or 0, limits.tokens_per_minute or 0, limits.tokens_per_day or 0


def _usage(values: Sequence[Any]) -> dict[str, int]:
    r, t, d = (int(v or 0) for v in values)
    return {"requests_this_minute": r, "tokens_this_minute": t, "tokens_today": d}
