"""TurnStats: turn records summed per persona (by version, variant, day or model) and per caller (usage).

Each query reads one time range of one index, ``(persona_id, created_at)`` for a persona's stats and
``(user_id, created_at)`` for a user's usage, which include what is summed (an index-only scan), computes the
percentiles in SQL (``percentile_cont``), and counts feedback over the same range of the feedback table, which
keeps what the turns are grouped by, so no turn is joined to anything.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from uuid import UUID

import asyncpg
import msgspec

from core.errors import BadRequest

__all__ = [
    "PERSONA_KEYS",
    "SETTINGS",
    "USAGE_KEYS",
    "StatsRow",
    "TimeRange",
    "TurnStats",
    "stats_query",
    "time_range",
    "usage_query",
]

# What a row may be per, and the expression it groups by: over ``turns`` and over ``turn_feedback``, which keeps
# the turn's own ``created_at`` as ``turn_created_at``.
PERSONA_KEYS = {"version": "t.persona_version", "variant": "t.variant", "day": "{day}", "model": "t.model"}
USAGE_KEYS = {"day": "{day}", "persona": "t.persona_id", "key": "t.key_id", "model": "t.model"}
_DAY = "({at} AT TIME ZONE 'UTC')::date"

# The range a request leaves open: the 30 days to now.
DEFAULT_DAYS = 30

# The turns' sums and percentiles, then their feedback counted from the feedback table alone, joined by key.
_ROWS = """
WITH turned AS (
    SELECT {key} AS key,
           count(*) AS turns,
           count(DISTINCT t.user_id) AS users,
           coalesce(sum(t.input_tokens), 0) AS input_tokens,
           coalesce(sum(t.output_tokens), 0) AS output_tokens,
           coalesce(sum(t.cached_input_tokens), 0) AS cached_input_tokens,
           percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY t.ttft_ms) AS ttft_ms,
           count(*) FILTER (WHERE t.outcome = 'error') AS errors,
           count(*) FILTER (WHERE t.outcome = 'incomplete') AS incomplete
    FROM turns t
    WHERE {scope} t.created_at >= $1 AND t.created_at < $2
    GROUP BY 1
), rated AS (
    SELECT {rated_key} AS key,
           count(*) FILTER (WHERE t.rating = 1) AS up,
           count(*) FILTER (WHERE t.rating = -1) AS down
    FROM turn_feedback t
    WHERE {scope} t.turn_created_at >= $1 AND t.turn_created_at < $2
    GROUP BY 1
)
SELECT turned.*, coalesce(rated.up, 0) AS feedback_up, coalesce(rated.down, 0) AS feedback_down
FROM turned LEFT JOIN rated ON rated.key IS NOT DISTINCT FROM turned.key
ORDER BY turned.key"""

# Enough memory for the sorts of a range of a few hundred thousand turns (the default 4 MB spills to disk), and
# no JIT: compiling the query (planned costly for its ordered aggregates) takes longer than running it.
SETTINGS = "SET LOCAL work_mem = '32MB'; SET LOCAL jit = off"


def _rows(key: str, scope: str) -> str:
    return _ROWS.format(
        key=key.format(day=_DAY.format(at="t.created_at")),
        rated_key=key.format(day=_DAY.format(at="t.turn_created_at")),
        scope=scope,
    )


def stats_query(by: str) -> str:
    """A persona's rows (``$3``: the persona) for ``by``, one of :data:`PERSONA_KEYS`."""
    return _rows(PERSONA_KEYS[by], "t.persona_id = $3 AND")


def usage_query(by: str, *, everyone: bool = False) -> str:
    """A user's rows (``$3``: the user), or everyone's, for ``by``, one of :data:`USAGE_KEYS`."""
    return _rows(USAGE_KEYS[by], "" if everyone else "t.user_id = $3 AND")


class StatsRow(msgspec.Struct, frozen=True, kw_only=True):
    """One group of turns: its key (a version number, a variant, a day, a model, a persona or key id)."""

    key: str | int | None
    turns: int
    users: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    ttft_ms_p50: float | None
    ttft_ms_p95: float | None
    errors: int
    incomplete: int
    feedback_up: int
    feedback_down: int


class TimeRange(msgspec.Struct, frozen=True, kw_only=True):
    start: datetime
    end: datetime


def _moment(value: str, field: str) -> datetime:
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(
            f"`{field}` is {value[:40]!r}: send an RFC 3339 time (2026-12-01T00:00:00Z) or a day (2026-12-01).",
            field=field,
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def time_range(start: str | None, end: str | None, *, now: datetime | None = None) -> TimeRange:
    """The turns' range from the ``from`` and ``to`` parameters (a day stands for its midnight, UTC): to now and
    from :data:`DEFAULT_DAYS` before ``to`` when left out."""
    until = _moment(end, "to") if end is not None else (now or datetime.now(UTC))
    since = _moment(start, "from") if start is not None else until - timedelta(days=DEFAULT_DAYS)
    if since >= until:
        raise BadRequest("`from` is not before `to`: send a range that starts before it ends.", field="from")
    return TimeRange(start=since, end=until)


def _by(by: str | None, keys: dict[str, str], default: str) -> str:
    chosen = default if by is None else by
    if chosen not in keys:
        raise BadRequest(f"`by` is {chosen[:40]!r}: send one of {', '.join(keys)}.", field="by")
    return chosen


class TurnStats:
    """The analytics over turn records."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def persona(self, persona_id: UUID, window: TimeRange, by: str | None) -> list[StatsRow]:
        chosen = _by(by, PERSONA_KEYS, "version")
        return await self._fetch(stats_query(chosen), window.start, window.end, persona_id)

    async def usage(self, user_id: UUID | None, window: TimeRange, by: str | None) -> list[StatsRow]:
        """``user_id``'s rows, or everyone's (None)."""
        chosen = _by(by, USAGE_KEYS, "day")
        query = usage_query(chosen, everyone=user_id is None)
        args = (window.start, window.end) if user_id is None else (window.start, window.end, user_id)
        return await self._fetch(query, *args)

    async def _fetch(self, query: str, *args: object) -> list[StatsRow]:
        async with self._pool.acquire() as conn, conn.transaction(readonly=True):
            await conn.execute(SETTINGS)
            rows = await conn.fetch(query, *args)
        return [_row(r) for r in rows]


def _row(record: asyncpg.Record) -> StatsRow:
    values = dict(record)
    key = values["key"]
    if isinstance(key, date):
        values["key"] = key.isoformat()
    elif isinstance(key, UUID):
        values["key"] = str(key)
    p50, p95 = values.pop("ttft_ms") or (None, None)
    values["ttft_ms_p50"] = round(p50, 1) if p50 is not None else None
    values["ttft_ms_p95"] = round(p95, 1) if p95 is not None else None
    return StatsRow(**values)
