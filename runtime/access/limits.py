"""Rate limits and token budgets: one atomic check per request, on Redis when configured, else in this process.

A key's limits (its own, else ``KEY_REQUESTS_PER_MINUTE`` / ``KEY_TOKENS_PER_DAY``) bound everything done
with it; a persona's bound each user's use of it. Each is a *scope* with up to three fixed windows: the
requests of this minute, the tokens of this minute and the tokens of this UTC day. A request is counted
when admitted, and where a token budget applies it holds what it may use (its input, estimated, and its
``max_tokens``, else 1024) until its usage settles the hold when the turn ends, however it ends (the
difference goes back in the windows it was held in). A request is refused once what is spent and held
reaches the budget, so parallel requests overrun it by at most the one answer admitted last.

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
    """A request let through: the rate limit headers of its answer, where each turn's tokens go, and what each
    turn reserved (by persona, one entry a turn), to be settled once."""

    __slots__ = ("_limiter", "_reserved", "_scopes", "_windows", "headers")

    def __init__(
        self,
        limiter: Limiter,
        scopes: Sequence[Scope],
        headers: dict[str, str],
        reserved: dict[UUID, list[int]] | None = None,
        windows: tuple[int, int] | None = None,
    ) -> None:
        self._limiter = limiter
        self._scopes = scopes
        self._reserved = reserved or {}
        self._windows = windows
        self.headers = headers

    def spend(self, persona_id: UUID, tokens: int) -> None:
        """Count a turn's ``tokens`` against the key and the persona it spoke as (sent in the background), settling
        what the turn reserved: a turn that used less gives the rest back, in the windows it was reserved in."""
        held = self._reserved.get(persona_id)
        reserve = held.pop() if held else 0
        prefix = f"rl:persona:{persona_id}:"
        counters = self._limiter.counters
        for scope in self._scopes:
            if scope.kind == "key" or scope.tag.startswith(prefix):
                if reserve and scope.reserve:  # this scope holds the turn's reserve (it has a token budget)
                    counters.add_tokens(scope.tag, tokens - reserve, self._windows)
                elif tokens > 0:
                    counters.add_tokens(scope.tag, tokens)

    def release(self, persona_id: UUID) -> None:
        """A turn that never ran (its provider call did not open): give back its reservation."""
        self.spend(persona_id, 0)


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

    def _scopes(self, caller: Caller, personas: Sequence[Persona], reserves: Sequence[int]) -> list[Scope]:
        scopes: list[Scope] = []
        key = self.key_limits(caller.key_limits)
        if key.any and caller.key_id is not None:
            held = sum(reserves) if _budgeted(key) else 0
            scopes.append(Scope("key", f"rl:key:{caller.key_id}", key, len(personas), "This API key", held))
        counted: dict[UUID, tuple[int, int]] = {}
        for persona, reserve in zip(personas, reserves, strict=True):
            # A draft (version 0) is not saved: its limits bound nothing.
            if persona.limits.any and persona.version > 0:
                cost, held = counted.get(persona.id, (0, 0))
                counted[persona.id] = (cost + 1, held + reserve)
        for persona in personas:
            cost, held = counted.pop(persona.id, (0, 0))
            if cost:
                tag = f"rl:persona:{persona.id}:{caller.user_id}"
                held = held if _budgeted(persona.limits) else 0
                scopes.append(Scope("persona", tag, persona.limits, cost, f"Persona {persona.name!r}", held))
        return scopes

    # The check --------------------------------------------------------------------------------------

    async def admit(
        self,
        caller: Caller,
        personas: Sequence[Persona],
        spawn: Spawn,
        reserves: Callable[[], Sequence[int]] | None = None,
    ) -> Admission | None:
        """Count one request for each of ``personas`` (a comparison asks several at once), or refuse them all
        with :class:`RateLimited`. None when no limit applies: nothing was counted, and nothing will be.

        ``reserves`` gives the tokens each turn may use (asked only when a token budget applies); they are held
        in every scope with a token budget until :meth:`Admission.spend` settles each turn."""
        if caller.key_limits is None and not self.defaults.any and not any(p.limits.any for p in personas):
            return None
        budgeted = _budgeted(self.key_limits(caller.key_limits)) or any(_budgeted(p.limits) for p in personas)
        held = list(reserves()) if budgeted and reserves is not None else [0] * len(personas)
        scopes = self._scopes(caller, personas, held)
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
        reserved: dict[UUID, list[int]] = {}
        if any(s.reserve for s in scopes):
            for persona, reserve in zip(personas, held, strict=True):
                reserved.setdefault(persona.id, []).append(reserve)
        return Admission(self, scopes, headers, reserved, windows.numbers)

    # Counting afterwards ----------------------------------------------------------------------------


def _budgeted(limits: Limits) -> bool:
    return limits.tokens_per_minute is not None or limits.tokens_per_day is not None


def _headers(readings: Sequence[Reading], windows: Windows) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers of the tightest limit of each kind (requests, tokens). The tokens
    remaining are counted before this request's own hold (what others spent or hold is left out)."""
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
        own = 0 if reading.refused else reading.scope.reserve
        for limit, used, left in (
            (limits.tokens_per_minute, reading.tokens - own, windows.minute_left),
            (limits.tokens_per_day, reading.tokens_today - own, windows.day_left),
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


def _held(counted: int, budget: int | None) -> str:
    # What is counted includes what answers in flight hold; say so, since part of it may come back.
    return " or held by answers in flight" if budget is not None and counted > budget else ""


def _refusal(reading: Reading, windows: Windows) -> RateLimited:
    scope, limits = reading.scope, reading.scope.limits
    whose = scope.label + ("" if scope.kind == "key" else " (for each user)")
    if reading.refused == 1:
        wait, what = windows.minute_left, f"allows {limits.requests_per_minute} requests a minute"
        if scope.cost > 1:
            what += f" and this one makes {scope.cost}"
    elif reading.refused == 2:
        wait, what = windows.minute_left, f"allows {limits.tokens_per_minute} tokens a minute, all used"
        what += _held(reading.tokens, limits.tokens_per_minute)
    else:
        wait, what = windows.day_left, f"allows {limits.tokens_per_day} tokens a day (UTC), all used today"
        what += _held(reading.tokens_today, limits.tokens_per_day)
    seconds = max(1, math.ceil(wait))
    return RateLimited(
        f"Rate limit reached: {whose} {what}. Try again in {seconds} s (see `Retry-After`).",
        retry_after=seconds,
        scope=scope.kind,
        details={"scope": scope.kind, "retry_after": seconds},
    )
