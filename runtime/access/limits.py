"""Rate limits and token budgets: one atomic check per request, on Redis when configured, else in this process.

A key's limits (its own, else ``KEY_REQUESTS_PER_MINUTE`` / ``KEY_TOKENS_PER_DAY``) bound everything done
with it; a persona's bound each user's use of it. Each is a *scope* with up to three fixed windows: the
requests of this minute, the tokens of this minute and the tokens of this UTC day. A request is counted
when admitted; its tokens when its usage is known, so a token budget can be overrun by the answers in
flight and no further: a request is refused only when a budget is already spent.

The counting itself (one Lua script call per scope on Redis, one round trip per request; per-process
counters without Redis and while it is unreachable) is :mod:`runtime.access.counters`. Here: which limits apply,
the refusal, and the ``x-ratelimit-*`` headers. A request no limit applies to costs nothing here: no
counter is touched. The windows are read from ``clock`` (wall time; a test may set its own).
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any
from uuid import UUID

import msgspec
from redis.asyncio import Redis, RedisCluster

from core.errors import Forbidden, RateLimited
from personas.models import Caller, Limits, Persona
from runtime.access.counters import Clock, Counters, KeyUsage, Reading, Scope, Windows

__all__ = [
    "LIMIT_HEADERS",
    "Admission",
    "KeyUsage",
    "Limiter",
    "rate_limit_headers",
    "reset_duration",
]

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


class Admission:
    """A request let through: the rate limit headers of its answer, and where each turn's tokens go."""

    __slots__ = ("_limiter", "_scopes", "headers")

    def __init__(self, limiter: Limiter, scopes: Sequence[Scope], headers: dict[str, str]) -> None:
        self._limiter = limiter
        self._scopes = scopes
        self.headers = headers

    def spend(self, persona_id: UUID, tokens: int) -> None:
        """Count a turn's ``tokens`` against the key and the persona it spoke as (sent in the background)."""
        if tokens <= 0:
            return
        prefix = f"rl:persona:{persona_id}:"
        for scope in self._scopes:
            if scope.kind == "key" or scope.tag.startswith(prefix):
                self._limiter.counters.add_tokens(scope.tag, tokens)


class Limiter:
    """Admits requests under the limits of their key and personas (see the module docstring)."""

    def __init__(
        self,
        redis: Redis | RedisCluster | None,
        *,
        prefix: str = "persona-runtime:",
        defaults: Limits | None = None,
        on_refused: Callable[[str], None] | None = None,
        retry_after: float = 1.0,
        clock: Clock = time.time,
    ) -> None:
        self.defaults = defaults or Limits()
        self._on_refused = on_refused
        self._clock = clock
        self.counters = Counters(redis, prefix=prefix, retry_after=retry_after, clock=clock)

    async def usage(self, key_ids: Sequence[UUID]) -> list[KeyUsage]:
        """What each key used in the current windows (zeros for a key nothing counts)."""
        return await self.counters.usage(key_ids)

    async def flush(self) -> None:
        await self.counters.flush()

    async def aclose(self) -> None:
        await self.counters.aclose()

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

    def bound_chosen(self, limits: Limits | None, caller: Caller) -> Limits | None:
        """The limits a key that ``caller`` creates for themselves gets: what they chose, never looser than the
        key they are using nor than the server's defaults. Asking for looser is a 403 naming the field; a limit
        left out takes the using key's where that one is tighter than the default. Admins choose freely."""
        if caller.is_admin:
            return limits
        using = self.key_limits(caller.key_limits)  # the using key's own limits, its unset ones the defaults'
        chosen = limits or Limits()
        bounded: dict[str, int | None] = {}
        for name, bound in msgspec.structs.asdict(using).items():
            value = getattr(chosen, name)
            default = getattr(self.defaults, name)
            if bound is not None and value is not None and value > bound:
                whose = "this server's default" if bound == default else "the limit of the key you are using"
                raise Forbidden(
                    f"`limits.{name}` is above {whose}, {bound}: a key you make is never looser than that. "
                    "Leave it out, choose at most that, or ask an admin.",
                    field=f"limits.{name}",
                )
            # Left out, the new key would get the default: keep the using key's limit when it is tighter.
            if value is None and bound is not None and bound != default:
                value = bound
            bounded[name] = value
        result = Limits(**bounded)
        return result if result.any or limits is not None else None

    def _scopes(self, caller: Caller, personas: Sequence[Persona]) -> list[Scope]:
        scopes: list[Scope] = []
        key = self.key_limits(caller.key_limits)
        if key.any and caller.key_id is not None:
            scopes.append(Scope("key", f"rl:key:{caller.key_id}", key, len(personas), "This API key"))
        counted: dict[UUID, int] = {}
        for persona in personas:
            # A draft (version 0) is not saved: its limits bound nothing.
            if persona.limits.any and persona.version > 0:
                counted[persona.id] = counted.get(persona.id, 0) + 1
        for persona in personas:
            cost = counted.pop(persona.id, 0)
            if cost:
                tag = f"rl:persona:{persona.id}:{caller.user_id}"
                scopes.append(Scope("persona", tag, persona.limits, cost, f"Persona {persona.name!r}"))
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
        now = self._clock()
        windows = Windows(now)
        keys = [self.counters.keys(windows, s.tag) for s in scopes]
        readings = await self.counters.check(scopes, keys, now)
        headers = _headers(readings, windows)
        holder = LIMIT_HEADERS.get()
        if holder is not None:
            holder.append(headers)
        refused = next((r for r in readings if r.refused), None)
        if refused is not None:
            admitted = [r.scope for r in readings if not r.refused]
            if admitted:  # the request did not happen: give back what the other scopes counted
                spawn(self.counters.take_back(admitted, windows))
            if self._on_refused is not None:
                self._on_refused(refused.scope.kind)
            raise _refusal(refused, windows)
        return Admission(self, scopes, headers)

    # Counting afterwards ----------------------------------------------------------------------------


def _headers(readings: Sequence[Reading], windows: Windows) -> dict[str, str]:
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


def _refusal(reading: Reading, windows: Windows) -> RateLimited:
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
