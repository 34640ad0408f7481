"""ConversationStore: conversations and their messages in PostgreSQL."""

from __future__ import annotations

import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import accumulate
from operator import attrgetter
from typing import Any, Literal
from uuid import UUID

import asyncpg
import msgspec

from core.errors import Interrupted, NotFound
from providers import ChatMessage
from runtime.chat.tokens import MESSAGE_OVERHEAD, estimate_tokens

__all__ = [
    "Conversation",
    "ConversationStore",
    "MessageState",
    "MessageStatus",
    "StaleConversation",
    "StoredMessage",
    "WindowRow",
]

MessageStatus = Literal["pending", "complete", "incomplete", "error"]

_CONVERSATION = """id, title, persona_id, persona_version, created_at, updated_at, user_turns, token_ratio, summary,
    summary_tokens, summary_covers_seq, summary_covers_message_id, summary_updated_at, lore_state, revision"""
_MESSAGE = """id, role, content, status, persona_id, persona_version, persona_source, variant, provider, model,
    usage, latency_ms, finish_reason, tool_calls, context, created_at"""

GET_CONVERSATION = f"SELECT {_CONVERSATION} FROM conversations WHERE id = $1 AND user_id = $2"
LIST_CONVERSATIONS = f"""
SELECT {_CONVERSATION}, count(*) OVER () AS total FROM conversations WHERE user_id = $1
ORDER BY updated_at DESC, id LIMIT $2 OFFSET $3"""
COUNT_CONVERSATIONS = "SELECT count(*) FROM conversations WHERE user_id = $1"
DELETE_CONVERSATION = "DELETE FROM conversations WHERE id = $1 AND user_id = $2"
# A turn's question and its pending answer in one statement, so storing them costs one round trip. The
# answer's row is made from the question's, which orders their ``seq``: CTEs alone run in no set order.
_QUESTION_AND_ANSWER = """
question AS (
    INSERT INTO messages (conversation_id, role, content, persona_id, persona_version, persona_source, tokens)
    SELECT id, 'user', $2, $3, $4, $5, $9 FROM conversation RETURNING conversation_id, seq
), answer AS (
    INSERT INTO messages (conversation_id, role, status, persona_id, persona_version, persona_source, provider, model,
                          lease_until, variant, streamed)
    SELECT conversation_id, 'assistant', 'pending', $3, $4, $5, $6, $7, clock_timestamp() + $8 * interval '1 second',
           $12, $13
    FROM question RETURNING id, seq
)"""
_BEGUN = "conversation.*, answer.id AS answer_id, question.seq AS question_seq, answer.seq AS answer_seq"
BEGIN_TURN_NEW = f"""
WITH conversation AS (
    INSERT INTO conversations (user_id, title, persona_id, persona_version, user_turns, lore_state)
    VALUES ($1, $10, $3, $4, 1, $11)
    RETURNING {_CONVERSATION}
), {_QUESTION_AND_ANSWER}
SELECT {_BEGUN} FROM conversation, question, answer"""
# On a copy of the conversation ($14: its revision, else null), only while it is still the revision stored.
BEGIN_TURN_EXISTING = f"""
WITH conversation AS (
    UPDATE conversations SET updated_at = now(), user_turns = user_turns + 1,
        lore_state = CASE WHEN $10::boolean THEN $11::jsonb ELSE lore_state END
    WHERE id = $1 AND ($14::bigint IS NULL OR revision = $14) RETURNING {_CONVERSATION}
), {_QUESTION_AND_ANSWER}
SELECT {_BEGUN} FROM conversation, question, answer"""
# A conversation the persona opens: its greeting ($5; none when null) is the first message, the persona's own.
START_CONVERSATION = f"""
WITH conversation AS (
    INSERT INTO conversations (user_id, title, persona_id, persona_version) VALUES ($1, $2, $3, $4)
    RETURNING {_CONVERSATION}
), greeting AS (
    INSERT INTO messages (conversation_id, role, content, persona_id, persona_version, persona_source, tokens, variant,
                          streamed)
    SELECT id, 'assistant', $5, $3, $4, $6, $7, $8, false FROM conversation WHERE $5::text IS NOT NULL
)
SELECT * FROM conversation"""
# Only over a pending answer: one a sweep already marked incomplete (its lease ran out while its instance was
# stalled) stays as the user was told it ended, and every instance's copy of the window stays true to it.
_FINISH = """
UPDATE messages SET content = $2, status = $3, provider = $4, model = $5, usage = $6, latency_ms = $7,
    finish_reason = $8, tool_calls = $9, error = $10, lease_until = NULL, tokens = $11, context = $12
WHERE id = $1 AND status = 'pending'"""
FINISH_ANSWER = _FINISH
# The same, with the conversation's correction of estimated token counts ($13) in the same statement: whether
# the answer was saved, and the conversation's revision when the correction changed it (null: it was the same).
FINISH_ANSWER_RATIO = f"""
WITH answer AS ({_FINISH} RETURNING conversation_id), corrected AS (
    UPDATE conversations SET token_ratio = $13 FROM answer
    WHERE conversations.id = answer.conversation_id AND token_ratio IS DISTINCT FROM $13
    RETURNING conversations.revision
)
SELECT EXISTS (SELECT FROM answer) AS saved, (SELECT revision FROM corrected) AS revision"""
# ``ended_ago``: seconds since the answer ended (its start plus how long it took), NULL while it runs.
GET_MESSAGE_STATE = """
SELECT m.status, m.finish_reason, m.error, m.streamed,
    extract(epoch FROM clock_timestamp() - m.created_at)::float8 - m.latency_ms / 1000.0 AS ended_ago
FROM messages m JOIN conversations c ON c.id = m.conversation_id
WHERE m.id = $1 AND c.user_id = $2 AND m.role = 'assistant'"""
RENEW_LEASES = """
UPDATE messages SET lease_until = clock_timestamp() + $2 * interval '1 second'
WHERE id = ANY($1::uuid[]) AND status = 'pending'"""
# Answers whose instance stopped renewing their lease: it died, so nobody will finish them.
FIND_ABANDONED = "SELECT id FROM messages WHERE status = 'pending' AND lease_until < clock_timestamp()"
# An answer whose lease ran out (its instance died, or a cancel found nobody running it) marked incomplete, in
# the same statement as what its stream's recording held ($3; kept only if nothing was saved meanwhile), so
# no reader ever sees it incomplete but emptier than its stream was.
MARK_ABANDONED = """
UPDATE messages SET status = 'incomplete', lease_until = NULL, error = $2,
    content = CASE WHEN content = '' THEN coalesce($3, '') ELSE content END
WHERE id = $1 AND status = 'pending' AND lease_until < clock_timestamp()"""
LIST_MESSAGES = f"SELECT {_MESSAGE} FROM messages WHERE conversation_id = $1 ORDER BY seq"
# What a stored message costs when it was stored before counts were kept: the estimate of its bytes.
_TOKENS = "coalesce(tokens, ceil(octet_length(content) / 3.5)::integer + 4)"
_SENDABLE = "conversation_id = $1 AND seq > $2 AND status IN ('complete', 'incomplete') AND content <> ''"
_UNTIL = "seq <= $5"
# A conversation's latest messages worth sending upstream (after the summary's last, $2, through $5), newest
# first, read one index probe at a time while their tokens stay under the budget ($3) and their number under $4:
# the walk reads the window and one message more, however long the conversation.
_WALK = f"""
WITH RECURSIVE walk AS (
    (SELECT seq, role, content, {_TOKENS} AS tokens, {_TOKENS} AS total, 1 AS n FROM messages
     WHERE {_SENDABLE} AND {_UNTIL} ORDER BY seq DESC LIMIT 1)
    UNION ALL
    SELECT m.seq, m.role, m.content, m.tokens, walk.total + m.tokens, walk.n + 1
    FROM walk CROSS JOIN LATERAL (
        SELECT seq, role, content, {_TOKENS} AS tokens FROM messages
        WHERE {_SENDABLE} AND seq < walk.seq ORDER BY seq DESC LIMIT 1
    ) m
    WHERE walk.total <= $3 AND walk.n < $4
)"""
WINDOW = f"""{_WALK}
SELECT seq, role, content, tokens, total FROM walk"""
# The same walk for the instance's cache of windows, with the oldest answer still pending among the messages it
# covers (after its oldest row, else, when it reached the start, after $2), read in the same snapshot: the
# cache keeps only what lies before it, since a message once finished never changes.
WINDOW_CACHED = f"""{_WALK}, edge AS (
    SELECT CASE WHEN max(total) > $3 OR count(*) >= $4 THEN min(seq) ELSE $2 END AS low FROM walk
)
SELECT seq, role, content, tokens, total,
    (SELECT min(m.seq) FROM messages m, edge
     WHERE m.conversation_id = $1 AND m.seq > edge.low AND m.status = 'pending') AS pending
FROM walk"""
# What a conversation stored after the cached window ($2), newest first, whatever its state: a cached window
# is brought up to date with it. The conversation's row lock orders its inserts (each turn's statement takes
# it before its messages get their seq), so nothing is ever stored behind what was read.
WINDOW_SINCE = f"""
SELECT seq, role, content, {_TOKENS} AS tokens, status FROM messages
WHERE conversation_id = $1 AND seq > $2 ORDER BY seq DESC LIMIT $3"""
# GET_CONVERSATION for a turn whose instance keeps a copy of the conversation's window: with what was stored
# after the copy ($3; at most $4 messages, newest first), so that catching the copy up costs no query of its own.
GET_CONVERSATION_SINCE = f"""
SELECT {_CONVERSATION}, since.* FROM conversations CROSS JOIN LATERAL (
    SELECT array_agg(seq ORDER BY seq DESC) AS since_seq, array_agg(role ORDER BY seq DESC) AS since_role,
           array_agg(content ORDER BY seq DESC) AS since_content, array_agg(tokens ORDER BY seq DESC) AS since_tokens,
           array_agg(status ORDER BY seq DESC) AS since_status
    FROM (SELECT seq, role, content, {_TOKENS} AS tokens, status FROM messages
          WHERE conversation_id = conversations.id AND seq > $3 ORDER BY seq DESC LIMIT $4) recent
) since
WHERE id = $1 AND user_id = $2"""
# The summary a new one folds, with the messages it folds in (after the summary's last, before $2; at most $3):
# one row without a message when there is none, no row when the conversation is gone.
SUMMARY_STATE = """
SELECT c.summary, c.summary_covers_seq, m.id, m.seq, m.role, m.content FROM conversations c
LEFT JOIN LATERAL (
    SELECT id, seq, role, content FROM messages
    WHERE conversation_id = c.id AND seq > coalesce(c.summary_covers_seq, 0) AND seq < $2
      AND status IN ('complete', 'incomplete') AND content <> ''
    ORDER BY seq LIMIT $3
) m ON true
WHERE c.id = $1"""
# Written only over the summary it folded ($6), so a slower writer never replaces a newer summary.
SAVE_SUMMARY = """
UPDATE conversations SET summary = $2, summary_tokens = $3, summary_covers_seq = $4,
    summary_covers_message_id = coalesce($5, (SELECT id FROM messages WHERE conversation_id = $1 AND seq = $4)),
    summary_updated_at = now()
WHERE id = $1 AND summary_covers_seq IS NOT DISTINCT FROM $6
RETURNING summary_covers_message_id, summary_updated_at"""


_STOPPED = Interrupted(
    "The instance generating this answer stopped before its end; what was said is kept as incomplete."
)
_ABANDONED = {"code": _STOPPED.code, "message": _STOPPED.message}


class MessageState(msgspec.Struct, frozen=True, kw_only=True):
    """Where an answer stands: ``pending`` while it is generated, then how it ended."""

    status: MessageStatus
    finish_reason: str | None
    error: dict[str, Any] | None
    # Whether it went out as a stream (None: stored before this was kept).
    streamed: bool | None = None
    # Seconds since it ended; None while it runs.
    ended_ago: float | None = None


class Conversation(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    title: str
    persona_id: UUID | None
    persona_version: int | None
    created_at: datetime
    updated_at: datetime
    # User turns stored so far; the provider's input tokens over our estimate (None: no report yet).
    user_turns: int = 0
    token_ratio: float | None = None
    # The rolling summary of turns that fell out of the window, through message ``summary_covers_seq``.
    summary: str | None = None
    summary_tokens: int | None = None
    summary_covers_seq: int | None = None
    summary_covers_message_id: UUID | None = None
    summary_updated_at: datetime | None = None
    # Lorebook entries' timed effects: entry id → [active through turn, kept out through turn].
    lore_state: dict[str, list[int]] | None = None
    # Changes to the conversation's row so far (a turn, a correction of its counts; a new summary is not one).
    revision: int = 0
    # Whether this is the instance's copy, as its last turn here left it, rather than a read: a turn on it is
    # stored only if the revision is still this one (:class:`StaleConversation` otherwise).
    copied: bool = False


class WindowRow(msgspec.Struct, frozen=True):
    """A stored message read for a turn's history: its order, role, text and token count, and the message to
    send (made once, kept with the row in the cache of windows)."""

    seq: int
    role: Literal["user", "assistant"]
    content: str
    tokens: int
    message: ChatMessage


def _row(seq: int, role: str, content: str, tokens: int) -> WindowRow:
    kind: Literal["user", "assistant"] = "assistant" if role == "assistant" else "user"
    return WindowRow(seq, kind, content, tokens, ChatMessage(role=kind, content=content))


@dataclass
class _Window:
    """An instance's copy of a conversation's latest sendable messages (after ``after``), newest first.

    Every message after ``after`` (from ``rows``' oldest on, unless ``complete``) through ``through`` was
    finished when read, and so never changes; what was stored since is read on each use. ``complete``: no
    sendable message after ``after`` is older than ``rows``' oldest."""

    after: int
    through: int
    rows: list[WindowRow]
    complete: bool
    chars: int
    # What a turn's read of the conversation found stored after ``through`` (when, and the rows), for its window.
    since: tuple[int, float, list[tuple[Any, ...]]] | None = None
    # Whether the read that made it found no answer pending: then it holds everything stored through ``through``.
    settled: bool = False
    # The conversation as this instance's last turn on it left it (and whose it is), once that turn's answer was
    # saved here: the next turn here starts from it without a read (:meth:`ConversationStore.get`).
    copy: tuple[UUID, Conversation] | None = None


@dataclass
class _Begun:
    """A turn stored on a window that held everything before it: when its answer is saved here, the window and
    the conversation are known through that answer without a read."""

    conversation: Conversation
    user_id: UUID
    window: _Window
    question: WindowRow | None
    answer_seq: int


class StaleConversation(Exception):
    """The conversation changed since this instance's copy of it was made: the turn is planned again from a read."""


class StoredMessage(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    role: str
    content: str
    status: MessageStatus
    persona_id: UUID | None
    persona_version: int | None
    persona_source: str | None
    # How the persona's version was chosen (section 16); null for questions and answers stored before.
    variant: str | None
    provider: str | None
    model: str | None
    usage: dict[str, int] | None
    latency_ms: int | None
    finish_reason: str | None
    tool_calls: list[dict[str, Any]] | None
    context: dict[str, Any] | None
    created_at: datetime


# What a cached window is brought up to date with at most (more: it is read again), and the largest copy kept.
_SINCE = 64
_WINDOW_CHARS = 2_000_000
# The text all of an instance's copies hold at most (characters): the least recently read go first.
_CACHED_CHARS = 32_000_000
# How long what a turn's read of its conversation found stays the window's news (seconds): the turn reads its
# window right after; a read that no window followed is not used later.
_SINCE_FRESH = 1.0

# Turns awaiting their answer's save, and conversations found changed elsewhere, kept at most (the oldest go).
_BEGUN_KEPT = 10_000
_SHARED_KEPT = 10_000
# How long a conversation found changed elsewhere is read before each turn rather than taken from a copy.
_SHARED_SECONDS = 600.0

_tokens = attrgetter("tokens")
_content = attrgetter("content")


def _stored_tokens(content: str, tokens: int | None) -> int:
    """A message's tokens as a window reads them: the stored count, else the estimate of its UTF-8 size with a
    message's overhead (``_TOKENS`` in SQL)."""
    return tokens if tokens is not None else estimate_tokens(content) + MESSAGE_OVERHEAD


def _walk(
    rows: list[WindowRow], budget: int, limit: int, sums: list[int] | None = None
) -> tuple[list[WindowRow], bool]:
    """What :data:`WINDOW` reads of ``rows`` (newest first): each row while the ones before it stay within
    ``budget`` and number under ``limit``; and whether it stopped short (as :meth:`ConversationStore.window`).
    ``sums`` are the rows' running totals when the caller has them."""
    if not rows:
        return rows, False
    # The running totals, newest first (counts are never negative, so they only grow): the first row is always
    # read, and each next one while the total before it is within the budget.
    if sums is None:
        sums = list(accumulate(map(_tokens, rows)))
    kept = max(min(bisect_right(sums, budget) + 1, limit, len(rows)), 1)
    return (rows[:kept] if kept < len(rows) else rows), sums[kept - 1] > budget or kept >= limit


def _conversation(record: asyncpg.Record) -> Conversation:
    return msgspec.convert(dict(record), Conversation, strict=False)


def _message(record: asyncpg.Record) -> StoredMessage:
    return msgspec.convert(dict(record), StoredMessage, strict=False)


def title_for(message: str) -> str:
    line = " ".join(message.split())
    return line if len(line) <= 80 else line[:79].rstrip() + "…"


class ConversationStore:
    """A user sees only their own conversations: every read is scoped by ``user_id``.

    An answer being generated holds a lease of ``lease_seconds``, renewed by its instance while it runs
    (:meth:`renew`); :meth:`sweep` ends those whose instance stopped renewing.
    """

    def __init__(self, pool: asyncpg.Pool, *, lease_seconds: float = 30.0, cached_windows: int = 512) -> None:
        self._pool = pool
        self.lease_seconds = lease_seconds
        # The latest windows read, by conversation, so that a turn decodes only the messages stored since the
        # last (0: none kept). Never stale: each use reads what was stored after it, in any instance.
        self.cached_windows = cached_windows
        self._windows: OrderedDict[UUID, _Window] = OrderedDict()
        self._chars = 0
        # Turns stored on a settled window, by answer id, until their answer is saved (:class:`_Begun`).
        self._begun: OrderedDict[UUID, _Begun] = OrderedDict()
        # Conversations whose copy was found stale (when): turns on them elsewhere too, so they are read first.
        self._shared: OrderedDict[UUID, float] = OrderedDict()

    async def get(
        self, user_id: UUID, conversation_id: UUID, *, for_turn: bool = False, copy: bool = False
    ) -> Conversation:
        """The user's conversation. ``for_turn``: a turn's, whose window is read next; when a copy of it is kept,
        what was stored since is read with it (one round trip).

        ``copy``: a turn that will be stored. When this instance's last turn on the conversation left a copy of
        it (the turn was stored on a window holding everything before it, and its answer saved here), the copy
        is the answer, without a read: the turn is then stored only if nothing changed meanwhile
        (:meth:`begin_turn` raises :class:`StaleConversation`, and the turn is planned again from a read)."""
        kept = self._windows.get(conversation_id) if for_turn else None
        if copy and kept is not None and kept.copy is not None:
            owner, copied = kept.copy
            kept.copy = None  # one turn starts from a copy; what it stores makes the next
            if owner == user_id:
                kept.since = (kept.through, time.monotonic(), [])
                return copied
        if kept is None:
            record = await self._pool.fetchrow(GET_CONVERSATION, conversation_id, user_id)
        else:
            through = kept.through
            record = await self._pool.fetchrow(GET_CONVERSATION_SINCE, conversation_id, user_id, through, _SINCE)
        if record is None:
            raise NotFound(
                f"Conversation {conversation_id} not found: check `conversation_id`.", field="conversation_id"
            )
        if kept is None:
            return _conversation(record)
        values = dict(record)
        seqs = values.pop("since_seq") or ()
        columns = [values.pop(f"since_{name}") for name in ("role", "content", "tokens", "status")]
        kept.since = (through, time.monotonic(), list(zip(seqs, *columns, strict=True)) if seqs else [])
        return msgspec.convert(values, Conversation, strict=False)

    async def list_for_user(self, user_id: UUID, *, limit: int, offset: int) -> tuple[list[Conversation], int]:
        records = await self._pool.fetch(LIST_CONVERSATIONS, user_id, limit, offset)
        total = records[0]["total"] if records else await self._pool.fetchval(COUNT_CONVERSATIONS, user_id)
        return [_conversation(r) for r in records], int(total)

    async def messages(self, conversation_id: UUID) -> list[StoredMessage]:
        return [_message(r) for r in await self._pool.fetch(LIST_MESSAGES, conversation_id)]

    async def window(
        self, conversation_id: UUID, *, after_seq: int, budget: int, limit: int, until_seq: int = 2**62
    ) -> tuple[list[WindowRow], bool]:
        """The latest messages worth sending upstream (after ``after_seq``, through ``until_seq``), newest first,
        while their stored token counts stay within ``budget`` (one more is read, to know) and at most ``limit``
        of them; and whether the walk stopped before the conversation's start.

        The latest window read of a conversation is kept (:attr:`cached_windows` of them), and a later read
        decodes only what was stored since: in steady state one short query of the last exchange."""
        if self.cached_windows <= 0 or until_seq != 2**62:
            records = await self._pool.fetch(WINDOW, conversation_id, after_seq, budget, limit, until_seq)
            rows = [_row(*r[:4]) for r in records]
            return rows, bool(records) and (records[-1]["total"] > budget or len(records) >= limit)
        kept = self._windows.get(conversation_id)
        if kept is not None and kept.after <= after_seq:
            found = await self._extend(conversation_id, kept, after_seq, budget, limit)
            if found is not None:
                return found
        return await self._read_window(conversation_id, after_seq, budget, limit)

    async def _read_window(
        self, conversation_id: UUID, after_seq: int, budget: int, limit: int
    ) -> tuple[list[WindowRow], bool]:
        # Read with room to spare, so that a later turn with a little more room is still served from the copy.
        spare = budget + budget // 2 + 1
        records = await self._pool.fetch(WINDOW_CACHED, conversation_id, after_seq, spare, limit, 2**62)
        rows = [_row(*r[:4]) for r in records]
        pending = records[0]["pending"] if records else None
        more = bool(records) and (records[-1]["total"] > spare or len(records) >= limit)
        kept = [r for r in rows if pending is None or r.seq < pending]
        through = pending - 1 if pending is not None else (rows[0].seq if rows else after_seq)
        window = _Window(after_seq, through, kept, not more, 0, settled=bool(records) and pending is None)
        self._keep(conversation_id, window, budget, limit)
        return _walk(rows, budget, limit)

    async def _extend(
        self, conversation_id: UUID, kept: _Window, after_seq: int, budget: int, limit: int
    ) -> tuple[list[WindowRow], bool] | None:
        """The window from the kept copy and what was stored since; None when the copy does not reach far
        enough (or too much was stored since), for a full read."""
        since, kept.since = kept.since, None
        if since is not None and since[0] == kept.through and time.monotonic() - since[1] < _SINCE_FRESH:
            records: list[Any] = since[2]
        else:
            records = await self._pool.fetch(WINDOW_SINCE, conversation_id, kept.through, _SINCE)
        if len(records) >= _SINCE:
            return None
        fresh: list[WindowRow] = []
        pending = None
        for seq, role, content, tokens, status in records:
            if status == "pending":
                pending = seq
            elif content and seq > after_seq and status in ("complete", "incomplete"):
                fresh.append(_row(seq, role, content, tokens))
        older = kept.rows if kept.after == after_seq else [r for r in kept.rows if r.seq > after_seq]
        rows = [*fresh, *older] if fresh else older
        sums = list(accumulate(map(_tokens, rows)))
        found = _walk(rows, budget, limit, sums)
        if len(found[0]) == len(rows) and not kept.complete and not found[1]:
            return None  # the copy ran out before the window did
        through = pending - 1 if pending is not None else (records[0][0] if records else kept.through)
        if pending is None:  # what is kept is what was walked: its totals and size are known
            chars = kept.chars if older is kept.rows else sum(map(len, map(_content, older)))
            chars += sum(len(r.content) for r in fresh)
            window = _Window(after_seq, through, rows, kept.complete, chars, settled=True)
            self._keep(conversation_id, window, budget, limit, sums)
        else:
            finished = [r for r in fresh if r.seq < pending]
            window = _Window(after_seq, through, [*finished, *older], kept.complete, 0)
            self._keep(conversation_id, window, budget, limit)
        return found

    def _keep(
        self, conversation_id: UUID, window: _Window, budget: int, limit: int, sums: list[int] | None = None
    ) -> None:
        """Keep ``window``, cut to what a turn with half as much room again could use. With ``sums`` (its rows'
        running totals) its ``chars`` are already counted; without, they are counted here."""
        rows = window.rows
        counted = sums is not None
        if rows:
            # Through the first row that takes the total past the spare room, or the limit's last.
            if sums is None:
                sums = list(accumulate(map(_tokens, rows)))
            last = min(bisect_right(sums, budget + budget // 2), max(limit - 1, 0))
            if last + 1 < len(rows):
                if counted:
                    window.chars -= sum(map(len, map(_content, rows[last + 1 :])))
                window.rows = rows = rows[: last + 1]
                window.complete = False
        if not counted:
            window.chars = sum(map(len, map(_content, rows)))
        chars = window.chars
        windows = self._windows
        gone = windows.pop(conversation_id, None)
        if gone is not None:
            self._chars -= gone.chars
        if chars > _WINDOW_CHARS:
            return
        windows[conversation_id] = window
        self._chars += chars
        while len(windows) > self.cached_windows or self._chars > _CACHED_CHARS:
            self._chars -= windows.popitem(last=False)[1].chars

    async def summary_state(
        self, conversation_id: UUID, *, before_seq: int, limit: int
    ) -> tuple[str | None, int | None, Sequence[tuple[int, str, str]]] | None:
        """The conversation's summary, the last message it covers, and the sendable messages after that one and
        before ``before_seq`` (oldest first, at most ``limit``, as ``(seq, role, content)``); None when the
        conversation is gone.

        From this instance's copy of the conversation and its window when they hold all of it (the summary is
        asked for right after a turn here is saved, and the messages it folds have just left the history sent),
        else in one read."""
        kept = self._summary_kept(conversation_id, before_seq, limit)
        if kept is not None:
            return kept
        records = await self._pool.fetch(SUMMARY_STATE, conversation_id, before_seq, limit)
        if not records:
            return None
        first = records[0]
        folded = [(r["seq"], r["role"], r["content"]) for r in records if r["seq"] is not None]
        return first["summary"], first["summary_covers_seq"], folded

    def _summary_kept(
        self, conversation_id: UUID, before_seq: int, limit: int
    ) -> tuple[str | None, int | None, Sequence[tuple[int, str, str]]] | None:
        window = self._windows.get(conversation_id)
        if window is None or window.copy is None or not window.rows or before_seq > window.through + 1:
            return None
        conversation = window.copy[1]
        covers = conversation.summary_covers_seq or 0
        rows = window.rows
        # Every sendable message after ``covers`` is in the rows: they reach back past it, or hold all since theirs.
        if not (rows[-1].seq <= covers or (window.complete and window.after <= covers)):
            return None
        folded = [(r.seq, r.role, r.content) for r in reversed(rows) if covers < r.seq < before_seq][:limit]
        return conversation.summary, conversation.summary_covers_seq, folded

    async def save_summary(
        self,
        conversation_id: UUID,
        *,
        summary: str,
        tokens: int,
        covers_seq: int,
        covers_message_id: UUID | None = None,
        folded_seq: int | None,
    ) -> bool:
        """Keep ``summary`` (through message ``covers_seq``, whose id is looked up when not given) unless another
        summary was saved since the one it folded (``folded_seq``); whether it was kept."""
        record = await self._pool.fetchrow(
            SAVE_SUMMARY, conversation_id, summary, tokens, covers_seq, covers_message_id, folded_seq
        )
        if record is None:
            return False
        window = self._windows.get(conversation_id)
        if window is not None and window.copy is not None:  # the next turn here starts from the new summary
            owner, copied = window.copy
            copied = msgspec.structs.replace(
                copied,
                summary=summary,
                summary_tokens=tokens,
                summary_covers_seq=covers_seq,
                summary_covers_message_id=record["summary_covers_message_id"],
                summary_updated_at=record["summary_updated_at"],
            )
            window.copy = (owner, copied)
        return True

    async def delete(self, user_id: UUID, conversation_id: UUID) -> None:
        result = await self._pool.execute(DELETE_CONVERSATION, conversation_id, user_id)
        gone = self._windows.pop(conversation_id, None)
        if gone is not None:
            self._chars -= gone.chars
        if not result.endswith(" 1"):
            raise NotFound(
                f"Conversation {conversation_id} not found: check `conversation_id`.", field="conversation_id"
            )

    async def start(
        self,
        *,
        user_id: UUID,
        title: str,
        persona_id: UUID,
        persona_version: int,
        persona_source: str,
        greeting: str | None,
        tokens: int | None,
        variant: str = "production",
    ) -> Conversation:
        """A new conversation of the user with the persona, opened by ``greeting`` (``tokens`` its cost in a
        context) as the persona's message, or empty when ``greeting`` is None."""
        args = (user_id, title, persona_id, persona_version, greeting, persona_source, tokens, variant)
        return _conversation(await self._pool.fetchrow(START_CONVERSATION, *args))

    async def begin_turn(
        self,
        *,
        user_id: UUID,
        conversation: Conversation | None,
        message: str,
        persona_id: UUID,
        persona_version: int,
        persona_source: str,
        provider: str,
        model: str,
        tokens: int | None = None,
        lore_state: dict[str, list[int]] | None = None,
        variant: str = "production",
        streamed: bool = False,
    ) -> tuple[Conversation, UUID]:
        """Store the user's message (and the conversation, when new) and a pending answer, in one statement.

        ``tokens`` is what the message costs in a context, kept so later turns need not count it again.
        ``lore_state`` replaces the conversation's lorebook timed effects (None: left as they are).
        ``streamed`` says the answer goes out as a stream.
        Returns the conversation and the id of the pending answer.
        """
        args = (message, persona_id, persona_version, persona_source, provider, model, self.lease_seconds, tokens)
        if conversation is None:
            record = await self._pool.fetchrow(
                BEGIN_TURN_NEW, user_id, *args, title_for(message), lore_state, variant, streamed
            )
        else:
            expected = conversation.revision if conversation.copied else None
            record = await self._pool.fetchrow(
                BEGIN_TURN_EXISTING,
                conversation.id,
                *args,
                lore_state is not None,
                lore_state,
                variant,
                streamed,
                expected,
            )
            if record is None and expected is not None:
                # Changed (or deleted) since the copy: nothing was stored, and this conversation is read from now on.
                self._shared[conversation.id] = time.monotonic()
                while len(self._shared) > _SHARED_KEPT:
                    self._shared.popitem(last=False)
                raise StaleConversation(str(conversation.id))
            if record is None:  # deleted since it was read
                raise NotFound(
                    f"Conversation {conversation.id} not found: check `conversation_id`.", field="conversation_id"
                )
        values = dict(record)
        answer_id = values.pop("answer_id")
        question_seq, answer_seq = values.pop("question_seq"), values.pop("answer_seq")
        stored = msgspec.convert(values, Conversation, strict=False)
        if conversation is not None:
            self._began(stored, conversation.revision, user_id, answer_id, message, tokens, question_seq, answer_seq)
        return stored, answer_id

    def _began(
        self,
        stored: Conversation,
        read_revision: int,
        user_id: UUID,
        answer_id: UUID,
        message: str,
        tokens: int | None,
        question_seq: int,
        answer_seq: int,
    ) -> None:
        """Note a turn stored on a window that held everything before it (nothing pending when it was read, and
        no change to the conversation between that read and this turn), so that its saved answer completes it."""
        window = self._windows.get(stored.id)
        if window is None or not window.settled or stored.revision != read_revision + 1:
            return
        if stored.id in self._shared:
            if time.monotonic() - self._shared[stored.id] < _SHARED_SECONDS:
                return
            del self._shared[stored.id]
        question = _row(question_seq, "user", message, _stored_tokens(message, tokens)) if message else None
        self._begun[answer_id] = _Begun(stored, user_id, window, question, answer_seq)
        while len(self._begun) > _BEGUN_KEPT:
            self._begun.popitem(last=False)

    async def finish_answer(
        self,
        message_id: UUID,
        *,
        content: str,
        status: MessageStatus,
        provider: str,
        model: str,
        usage: dict[str, int] | None,
        latency_ms: int,
        finish_reason: str | None,
        tool_calls: list[dict[str, Any]] | None,
        error: dict[str, Any] | None,
        tokens: int | None = None,
        context: dict[str, Any] | None = None,
        token_ratio: float | None = None,
    ) -> None:
        """Save how the answer ended; ``tokens`` is what it costs in a later context, ``context`` the account
        of what it was given, and ``token_ratio`` the conversation's new correction of estimated counts."""
        args = (message_id, content, status, provider, model, usage, latency_ms, finish_reason, tool_calls, error)
        begun = self._begun.pop(message_id, None)
        revision: int | None = None
        if token_ratio is None:
            saved = (await self._pool.execute(FINISH_ANSWER, *args, tokens, context)).endswith(" 1")
        else:
            record = await self._pool.fetchrow(FINISH_ANSWER_RATIO, *args, tokens, context, token_ratio)
            saved, revision = record["saved"], record["revision"]
        if begun is not None and saved:
            self._finished(begun, revision, content, status, tokens, token_ratio)

    def _finished(
        self,
        begun: _Begun,
        corrected: int | None,
        content: str,
        status: MessageStatus,
        tokens: int | None,
        token_ratio: float | None,
    ) -> None:
        """The window and the conversation through a turn's saved answer, kept as the copy the next turn starts
        from (``corrected``: the revision the answer's correction of token counts made, None when it made none).

        The copy is the conversation as the turn stored it: what changed since elsewhere makes the next turn on it
        stale, and that turn is planned again from a read (:meth:`begin_turn`). A correction whose revision shows
        another change too leaves no copy."""
        conversation = begun.conversation
        window = begun.window
        if self._windows.get(conversation.id) is not window:  # read again since (or dropped): that read knows better
            return
        revision = conversation.revision
        if corrected is not None:
            if corrected != revision + 1:
                return
            revision = corrected
        fresh = [begun.question] if begun.question is not None else []
        if content and status in ("complete", "incomplete"):
            fresh.insert(0, _row(begun.answer_seq, "assistant", content, _stored_tokens(content, tokens)))
        if fresh:
            window.rows = [*fresh, *window.rows]
            added = sum(len(r.content) for r in fresh)
            window.chars += added
            self._chars += added
        window.through = begun.answer_seq
        corrections = {"token_ratio": token_ratio, "revision": revision} if token_ratio is not None else {}
        window.copy = (begun.user_id, msgspec.structs.replace(conversation, copied=True, **corrections))

    async def message_state(self, user_id: UUID, message_id: UUID) -> MessageState | None:
        """The status of the caller's answer ``message_id``; None for another user's or an unknown one."""
        record = await self._pool.fetchrow(GET_MESSAGE_STATE, message_id, user_id)
        return msgspec.convert(dict(record), MessageState, strict=False) if record is not None else None

    async def renew(self, message_ids: list[UUID]) -> None:
        await self._pool.execute(RENEW_LEASES, message_ids, self.lease_seconds)

    async def abandoned(self) -> list[UUID]:
        """The pending answers whose lease ran out."""
        return [r["id"] for r in await self._pool.fetch(FIND_ABANDONED)]

    async def mark_abandoned(self, message_id: UUID, said: str | None) -> bool:
        """Mark the answer incomplete if its lease ran out, with ``said`` (what its recording held) as its text
        when nothing was saved; whether it was this call that marked it."""
        result = await self._pool.execute(MARK_ABANDONED, message_id, _ABANDONED, said)
        return result.endswith(" 1")
