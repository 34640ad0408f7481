"""Recorded streams: every chat stream's events kept as they are sent, so a client can resume it anywhere.

A :class:`Recording` holds one answer's SSE frames on the instance that runs it; readers follow it
live. With Redis the frames are also appended to a Redis Stream per message (``XADD``), by one flush
for all streams every 50 ms at most, each stream's new frames one entry: a short answer is one entry,
and under load one round trip carries many streams' entries. Each entry starts at the first frame Redis
does not hold yet, so after Redis was away the next one catches it up and the stream there is whole again.
Any instance can replay a recording and follow it; a reader takes each frame once, by its number, and
never hands out a stream with a gap. Without Redis, finished recordings stay in this process for the
retention, and the other workers of the same ``serve --workers N`` replay them by asking this one
(:mod:`runtime.chat.peers`). A frame is the exact bytes sent to the first client (its ``id:`` is
``<message_id>:<n>``), so a replay is the same stream, byte for byte.

Streams are told apart from the stored message: the recording ends with the stream, and if it ends
without a final event (the instance died, the client left a stream that was not resumable) the reader
makes one from the message's stored status.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any, NamedTuple
from uuid import UUID

import msgspec
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from core.errors import Conflict, NotStreamed, PersonaRuntimeError, StreamExpired
from core.events import Done, ErrorEvent, error_event
from core.redis_client import REDIS_ERRORS, Outage, packed, send
from runtime.chat.collector import Collector
from runtime.chat.frames import DONE, HEARTBEAT, MessageState, decode, encode_events, final_event

if TYPE_CHECKING:
    from runtime.chat.peers import Peers, Relay

__all__ = ["Recording", "StreamRecorder", "final_frame"]

log = logging.getLogger("persona_runtime.streams")

# A stream of Redis entries is trimmed (approximately) past this many writes: a runaway answer must not
# grow one key without bound. Each write holds every frame produced since the previous one.
_MAX_ENTRIES = 10_000
# The least time between two writes of one stream to Redis: a write holds every frame made since the last.
_EVERY = 0.05
# Looks for a recording not in Redis yet (its last flush is at most ``_EVERY`` and a round trip away),
# before a stored answer without one is taken for expired.
_LATE_TRIES = 4
# How long one write may take before it is given up (the stream goes on; the next write sends it again).
_WRITE_TIMEOUT = 0.5
# A flush on a single Redis server: for each stream (KEYS), its entry and, when asked, its expiry. ARGV is
# the trimming bound, then four values a stream: the first frame's number, the frames, the end mark ('' for
# none) and the expiry in ms (0 for none). Past a stream's first frame its key must be there already
# (NOMKSTREAM): when Redis lost it (a restart without persistence, an outage longer than the expiry) the
# entry is not written, so that no key starts in the middle of a stream, and its position is returned for
# the writer to start that stream again from its first frame.
_APPEND_SCRIPT = """
local maxlen = ARGV[1]
local lost = {}
for i, key in ipairs(KEYS) do
  local at = 1 + (i - 1) * 4
  local first, data, ended, ttl = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], tonumber(ARGV[at + 4])
  local add = {'XADD', key, 'MAXLEN', '~', maxlen, '*', 'f', first, 'd', data}
  if first ~= '1' then
    table.insert(add, 3, 'NOMKSTREAM')
  end
  if ended ~= '' then
    add[#add + 1] = 'e'
    add[#add + 1] = ended
  end
  if not redis.call(unpack(add)) then
    lost[#lost + 1] = i
  elseif ttl > 0 then
    redis.call('PEXPIRE', key, ttl)
  end
end
return lost
"""
_WRITE_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *REDIS_ERRORS)
# How often a reader of another instance's stream looks at the stored message while nothing arrives, to
# notice an answer whose instance died.
_STATUS_EVERY = 1.0
# The stream's last event when Redis lacks frames after those a reader got.
_HOLE = error_event(
    StreamExpired(
        "Part of this stream is no longer recorded, so it cannot be resumed whole; the stored message is in its "
        "conversation."
    )
)

Spawn = Callable[[Coroutine[Any, Any, None]], None]


StatusOf = Callable[[], Coroutine[Any, Any, MessageState | None]]


def final_frame(message_id: UUID, n: int, state: MessageState | None) -> bytes:
    """The ``n``-th frame of a stream that ended without its final event: the one it should have ended
    with, from what is stored."""
    return _frame(message_id, n, final_event(message_id, state))


def _frame(message_id: UUID, n: int, event: Done | ErrorEvent) -> bytes:
    """``event`` as the ``n``-th frame of the stream of ``message_id``, by the one encoder."""
    (part,), _, _ = encode_events((event,), n - 1, b"%s:" % str(message_id).encode())
    return part


class Recording:
    """One answer's frames on the instance that runs it, and the readers waiting for more."""

    __slots__ = ("_wake", "durable", "ended", "ended_at", "frames", "message_id", "terminal", "user_id")

    def __init__(self, message_id: UUID, user_id: UUID) -> None:
        self.message_id = message_id
        self.user_id = user_id
        self.frames: list[bytes] = []
        self.ended = False
        # Whether the last frame is the stream's own `done` or `error`.
        self.terminal = False
        self.ended_at = 0.0
        # Written ahead (a resumable answer's, with Redis): readers get only the first ``durable`` frames,
        # the ones Redis holds, so a crash keeps at least what anyone saw. None: every frame at once.
        self.durable: int | None = None
        self._wake: asyncio.Future[None] | None = None

    def add(self, frames: list[bytes]) -> None:
        self.frames.extend(frames)
        self._notify()

    def end(self, *, terminal: bool) -> None:
        self.ended = True
        self.terminal = terminal
        self.ended_at = time.monotonic()
        self._notify()

    def stored(self, count: int) -> None:
        """Redis holds the first ``count`` frames: readers of a recording written ahead may have them."""
        if self.durable is not None and count > self.durable:
            self.durable = count
            self._notify()

    def release(self) -> None:
        """Stop holding frames back (Redis is away): readers get each frame as it comes, from memory."""
        if self.durable is not None:
            self.durable = None
            self._notify()

    def _notify(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def follow(self, after: int, heartbeat: float, status_of: StatusOf) -> AsyncIterator[bytes]:
        """Frames after the ``after``-th, then each new one as it comes, to the end and ``data: [DONE]``."""
        sent = after
        loop = asyncio.get_running_loop()
        while True:
            shown = len(self.frames) if self.durable is None else min(self.durable, len(self.frames))
            if sent < shown:
                chunk = b"".join(self.frames[sent:shown])
                sent = shown
                yield chunk
                continue
            if self.ended and sent == len(self.frames):
                if not self.terminal:
                    yield final_frame(self.message_id, sent + 1, await status_of())
                yield DONE
                return
            wake = self._wake
            if wake is None or wake.done():
                wake = self._wake = loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(wake), heartbeat)
            except TimeoutError:
                yield HEARTBEAT


class StreamRecorder:
    """The recordings of this instance's streams, and replays of any instance's (with Redis).

    ``retention`` is how long a finished stream can be replayed; 0 records nothing. ``redis`` reads (and,
    on a Redis Cluster, writes); ``writer``, a single server's client, writes on the hot path.
    """

    def __init__(
        self,
        redis: Any | None,
        *,
        writer: Redis | None = None,
        prefix: str,
        retention: float,
        spawn: Spawn,
        max_finished: int = 10_000,
        retry_after: float = 1.0,
    ) -> None:
        self._redis: Any = redis
        self._prefix = prefix
        self.retention = retention
        self._live: dict[UUID, Recording] = {}
        # Finished recordings, oldest first, bounded: for the retention without Redis, else until Redis has
        # all of them (for the retention if it never will).
        self._finished: OrderedDict[UUID, Recording] = OrderedDict()
        self._max_finished = max_finished
        self._outage = Outage(
            log,
            "stream recording",
            meanwhile="streams are kept on this instance only",
            after="streams recorded there",
            retry_after=retry_after,
        )
        # The sibling workers of this instance (``serve --workers N`` without Redis), set once they are known.
        self.peers: Peers | None = None
        self._writers: dict[UUID, _RedisWriter] = {}
        self._outbox = _Outbox(
            # A single server's client without a socket timeout for the hot path's writes, else the
            # reading client (a Redis Cluster's routes each stream to its node).
            writer if writer is not None else redis,
            script=writer is not None,
            outage=self._outage,
            spawn=spawn,
            retention=retention,
            stored=self._stored,
        )

    @property
    def enabled(self) -> bool:
        return self.retention > 0

    def key(self, message_id: UUID) -> str:
        # The braces are a hash tag: every key of one message lands in one Redis Cluster slot.
        return f"{self._prefix}stream:{{{message_id}}}"

    # the instance running the answer ---------------------------------------------------------------

    def open(self, message_id: UUID, user_id: UUID, *, write_ahead: bool = False) -> Recording:
        """Start recording an answer. ``write_ahead`` (a resumable answer): with Redis, its readers get each
        frame only once Redis has it, written at once rather than with the next batch."""
        recording = Recording(message_id, user_id)
        self._live[message_id] = recording
        if self._redis is not None:
            writer = _RedisWriter(recording, self.key(message_id))
            if write_ahead and self._outage.usable():
                recording.durable = 0
                writer.ahead = True
            self._writers[message_id] = writer
        return recording

    def add(self, recording: Recording, frames: list[bytes]) -> None:
        recording.add(frames)
        writer = self._writers.get(recording.message_id)
        if writer is not None:
            self._outbox.write(writer)

    def close(self, recording: Recording, *, terminal: bool) -> None:
        """The stream ended (``terminal``: with its own final event)."""
        recording.end(terminal=terminal)
        message_id = recording.message_id
        self._live.pop(message_id, None)
        writer = self._writers.pop(message_id, None)
        if writer is not None:
            self._outbox.write(writer)
        # Kept here until its end is in Redis (for good, if it never gets there): meanwhile, and while
        # Redis is away, this instance can still replay it whole.
        self.keep(recording)

    def keep(self, recording: Recording) -> None:
        """Keep a finished recording in this process for the retention."""
        finished = self._finished
        message_id = recording.message_id
        finished[message_id] = recording
        cutoff = time.monotonic() - self.retention
        while finished:
            oldest = next(iter(finished.values()))
            if len(finished) <= self._max_finished and oldest.ended_at > cutoff:
                break
            finished.popitem(last=False)

    def _stored(self, recording: Recording) -> None:
        """Redis holds all of a finished recording: any instance replays it from there."""
        self._finished.pop(recording.message_id, None)

    # any instance -----------------------------------------------------------------------------------

    async def replay(self, message_id: UUID, after: int, heartbeat: float, status_of: StatusOf) -> AsyncIterator[bytes]:
        """The stream of ``message_id`` after its ``after``-th event, then live to its end.

        Looks in this process, then in the sibling workers' (``peers``, without Redis), then in Redis. Raises
        (before anything is sent) :class:`StreamExpired` when no recording is left to replay, or when Redis
        lacks some of the frames asked for; :class:`NotStreamed` for a message answered without a stream.
        """
        recording = self.held(message_id)
        if recording is not None:
            return recording.follow(after, heartbeat, status_of)
        if self.peers is not None and (self._redis is None or self._outage.down):
            relay = await self.peers.ask(message_id, after, heartbeat)
            if relay is not None:
                return _relayed(message_id, relay, status_of)
        if self._redis is not None and self._outage.usable():
            first = await self._read(message_id, "-", after)
            for _ in range(_LATE_TRIES):
                if first is not None:
                    break
                # Its last write may still be on its way from the instance that ran it.
                await asyncio.sleep(_EVERY)
                first = await self._read(message_id, "-", after)
            if first is not None:
                if first.hole:
                    raise StreamExpired(
                        f"Part of the stream of message {message_id} after event {after} is no longer "
                        "recorded, so it cannot be replayed; the stored message is in its conversation."
                    )
                return self._follow_redis(message_id, first, after, heartbeat, status_of)
            state = await status_of()
            if state is not None and state.status == "pending" and state.streamed is not False:
                # Not written yet, or its instance died before its first write: wait for either.
                return self._follow_redis(
                    message_id, _Found([], "0-0", False, False, False), after, heartbeat, status_of
                )
            raise self._missing(message_id, state)
        raise self._missing(message_id, await status_of())

    def held(self, message_id: UUID) -> Recording | None:
        """This process's recording of the stream, if it runs here or ended within the retention."""
        recording = self._live.get(message_id)
        if recording is None:
            recording = self._finished.get(message_id)
            if recording is not None and recording.ended_at < time.monotonic() - self.retention:
                recording = None
        return recording

    def _missing(self, message_id: UUID, state: MessageState | None) -> PersonaRuntimeError:
        """Why no recording of the stream of ``message_id`` is left: what the stored message says."""
        kept = "the stored message is in its conversation"
        if state is not None and state.streamed is False:
            return NotStreamed(
                f'Message {message_id} was answered without a stream (`"stream": false`, or a greeting), so it '
                f"has no events to replay; {kept}."
            )
        if not self.enabled:
            return StreamExpired(
                f"Streams are not recorded here (STREAM_RETENTION_SECONDS is 0), so the stream of message "
                f"{message_id} cannot be replayed; {kept}."
            )
        if state is not None and state.status == "pending":
            return Conflict(
                f"The answer of message {message_id} is being generated by another instance, which alone holds its "
                "stream: instances share recordings through Redis (REDIS_URL)."
            )
        ago = state.ended_ago if state is not None else None
        if ago is not None and ago > self.retention:
            return StreamExpired(
                f"The stream of message {message_id} ended {ago:.0f} s ago and can no longer be replayed (streams "
                f"are kept {self.retention:.0f} s after they end); {kept}."
            )
        return StreamExpired(
            f"The stream of message {message_id} is no longer recorded: the server restarted since it ended, or it "
            f"ran on an instance that does not share its recordings (instances share them through Redis, "
            f"REDIS_URL); {kept}."
        )

    async def _read(self, message_id: UUID, start: str, after: int) -> _Found | None:
        """Frames numbered above ``after`` in entries from ``start`` on, or None when the stream has no entries."""
        try:
            entries = await self._redis.xrange(self.key(message_id), min=start)
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)
            return None
        self._outage.recovered()
        if not entries:
            return None
        return _frames_of(entries, after)

    async def _follow_redis(
        self,
        message_id: UUID,
        first: _Found,
        after: int,
        heartbeat: float,
        status_of: StatusOf,
    ) -> AsyncIterator[bytes]:
        frames, last_id, ended, terminal, hole = first
        sent = after + len(frames)
        key = self.key(message_id)
        quiet_since = checked = time.monotonic()
        while True:
            if frames:
                yield b"".join(frames)
                quiet_since = time.monotonic()
            if hole:
                # Redis lost frames after these (it restarted, say): the rest must not look whole.
                yield _frame(message_id, sent + 1, _HOLE)
                yield DONE
                return
            if ended:
                if not terminal:
                    yield final_frame(message_id, sent + 1, await status_of())
                yield DONE
                return
            try:
                found = await self._redis.xread({key: last_id}, block=250)
            except REDIS_ERRORS as exc:
                self._outage.failed(exc)
                await asyncio.sleep(self._outage.retry_after)
                found = None
            frames = []
            if found:
                frames, last_id, ended, terminal, hole = _frames_of(found[0][1], sent)
                sent += len(frames)
            now = time.monotonic()
            if not frames and not ended and not hole:
                if now - checked >= _STATUS_EVERY:
                    checked = now
                    state = await status_of()
                    if state is None or state.status != "pending":
                        # Its instance ended the message without finishing the stream (it died, or was swept).
                        yield final_frame(message_id, sent + 1, state)
                        yield DONE
                        return
                if now - quiet_since >= heartbeat:
                    quiet_since = now
                    yield HEARTBEAT

    async def said(self, message_id: UUID) -> str | None:
        """The answer text a recording in Redis holds (its ``content`` events joined), or None without one."""
        if self._redis is None or not self._outage.usable():
            return None
        found = await self._read(message_id, "-", 0)
        if found is None:
            return None
        said = Collector()
        said.add([event for event in map(decode, found[0]) if event is not None])
        return said.text


async def _relayed(message_id: UUID, relay: Relay, status_of: StatusOf) -> AsyncIterator[bytes]:
    """A sibling worker's stream; if that worker stops before its end, the end the stored message says."""
    async with contextlib.aclosing(relay.pieces()) as pieces:
        async for piece in pieces:
            yield piece
    if not relay.ended:
        yield final_frame(message_id, relay.frames + 1, await status_of())
        yield DONE


class _Found(NamedTuple):
    """What a read of a recording in Redis found: the frames wanted, in order, each once."""

    frames: list[bytes]
    # The last entry's id, to read on from.
    last_id: str
    ended: bool
    # Whether the stream's own final event came before its end.
    terminal: bool
    # Whether Redis lacks frames after these (``frames`` stop before the gap).
    hole: bool


def _frames_of(entries: list[Any], after: int) -> _Found:
    """The frames numbered above ``after`` in ``entries``.

    An entry holds consecutive frames from number ``f`` on, joined in ``d``; ``e`` marks the end (``1`` when
    the stream's own final event came before it). Entries may overlap (a write that timed out but landed is
    sent again, with what came since): a frame is taken once, by its number. An entry starting past the next
    frame wanted is a gap: what Redis lost is never skipped over in silence.
    """
    frames: list[bytes] = []
    have = after
    last_id = "0-0"
    ended = terminal = False
    for entry_id, fields in entries:
        first = int(fields[b"f"])
        if first > have + 1:
            return _Found(frames, last_id, False, False, True)
        last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        data = fields.get(b"d")
        if data:
            pieces = data.split(b"\n\n")[:-1]
            skip = have - first + 1
            for piece in pieces[skip:] if skip > 0 else pieces:
                frames.append(piece + b"\n\n")
            have = max(have, first + len(pieces) - 1)
        end = fields.get(b"e")
        if end is not None:
            ended, terminal = True, end == b"1"
    return _Found(frames, last_id, ended, terminal, False)


class _Entry(msgspec.Struct, gc=False):
    """One stream's write to Redis: frames ``first`` to ``last`` joined in ``data``, its end mark (``b""``
    while it goes on, ``b"1"`` after its own final event, ``b"0"`` without one) and the key's expiry to
    set, in ms (0 to leave it)."""

    key: str
    first: int
    last: int
    data: bytes
    end: bytes
    expire_ms: int


class _RedisWriter:
    """How far one stream's recording got into Redis.

    The frames stay in the :class:`Recording` (its readers here need them anyway), so a write takes every
    frame past the last one Redis took: after a write failed or was skipped while Redis was away, the next
    one catches Redis up, and the stream there is whole again, numbered as it was sent.
    """

    __slots__ = ("ahead", "end_stored", "expires", "key", "recording", "stored")

    def __init__(self, recording: Recording, key: str) -> None:
        self.recording = recording
        self.key = key
        # The frames Redis holds: 1 to ``stored``.
        self.stored = 0
        self.end_stored = False
        # When the key's expiry was last pushed out (at the first and last write, and now and then between).
        self.expires: float | None = None
        # Written ahead: each write goes at once, and readers wait for it.
        self.ahead = False

    @property
    def behind(self) -> bool:
        recording = self.recording
        return self.stored < len(recording.frames) or (recording.ended and not self.end_stored)

    def entry(self, now: float, retention: float) -> _Entry:
        """Every frame Redis does not hold yet, the end mark and, now and then, the key's expiry."""
        recording = self.recording
        frames = recording.frames
        end = (b"1" if recording.terminal else b"0") if recording.ended else b""
        expire = recording.ended or self.expires is None or now - self.expires > retention / 3
        data = b"".join(frames[self.stored :])
        return _Entry(self.key, self.stored + 1, len(frames), data, end, int(retention * 1000) if expire else 0)

    def took(self, entry: _Entry, now: float) -> None:
        """Redis holds ``entry`` now (and the key's expiry, if it came with it)."""
        self.stored = entry.last
        self.end_stored = entry.end != b""
        if entry.expire_ms:
            self.expires = now
        self.recording.stored(entry.last)

    def lost(self) -> None:
        """Redis no longer has the stream (it restarted empty, or the key expired during an outage): the next
        write starts it again from its first frame."""
        self.stored = 0
        self.end_stored = False
        self.expires = None


class _Outbox:
    """Every stream's frames on their way to Redis, sent by one flush for all streams at most every ``_EVERY``.

    A flush sends one entry per stream that Redis is behind on (all its frames since the last write that
    landed) and the keys' expiries in one round trip: one script call on a single server (``script``), a
    pipeline of commands on a Redis Cluster. Under load the cost of a write is shared by many streams, and
    an answer shorter than ``_EVERY`` is written once, after its end. One flush at a time keeps each
    stream's entries in order. While Redis is away (``outage``) the streams wait here; ``stored`` hears of
    each finished stream Redis has whole.
    """

    def __init__(
        self,
        client: Any,
        *,
        script: bool,
        outage: Outage,
        spawn: Spawn,
        retention: float,
        stored: Callable[[Recording], None],
    ) -> None:
        self._client = client
        self._script = script
        self._outage = outage
        self._spawn = spawn
        self._retention = retention
        self._stored = stored
        self._dirty: dict[str, _RedisWriter] = {}
        self._sha = hashlib.sha1(_APPEND_SCRIPT.encode()).hexdigest()
        self._timer: asyncio.Handle | None = None
        self._busy = False
        # A stream written ahead is among the dirty ones: flush without waiting.
        self._urgent = False

    def write(self, writer: _RedisWriter) -> None:
        """The stream has new frames, or has ended: write them with the next flush."""
        self._dirty[writer.key] = writer
        if writer.ahead:
            self._urgent = True
        if not self._busy:
            self._schedule()

    def _schedule(self) -> None:
        """The next flush: at once when a stream written ahead waits for it, else after ``_EVERY``, so that
        a stream's end waits with the others (a replay looks again for a while, ``_LATE_TRIES``, before it
        takes a stored answer without a recording for expired)."""
        loop = asyncio.get_running_loop()
        if self._urgent:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_soon(self._start)
            self._urgent = False
        elif self._timer is None:
            self._timer = loop.call_later(_EVERY, self._start)

    def _start(self) -> None:
        self._timer = None
        self._busy = True
        self._spawn(self._flush())

    async def _flush(self) -> None:
        writers = list(self._dirty.values())
        self._dirty.clear()
        try:
            if not self._outage.usable():
                self._later(writers)
                return
            now = time.monotonic()
            entries = [writer.entry(now, self._retention) for writer in writers]
            try:
                async with asyncio.timeout(_WRITE_TIMEOUT):
                    lost = await self._send(entries)
            except _WRITE_ERRORS as exc:
                # It may have landed all the same: the next write sends these frames again, and a reader
                # takes each frame once, by its number.
                self._outage.failed(exc)
                self._later(writers)
                return
            self._outage.recovered()
            for i, (writer, entry) in enumerate(zip(writers, entries, strict=True)):
                if lost and i in lost:
                    writer.lost()
                    self._dirty.setdefault(writer.key, writer)
                    continue
                writer.took(entry, now)
                if writer.behind:  # new frames came meanwhile
                    self._dirty.setdefault(writer.key, writer)
                elif writer.recording.ended:
                    self._stored(writer.recording)
        finally:
            self._busy = False
            if self._dirty:
                self._urgent = any(writer.ahead for writer in self._dirty.values())
                self._schedule()

    def _later(self, writers: list[_RedisWriter]) -> None:
        """Redis is away: the streams wait for it here, the ones that ended within the retention. Streams
        written ahead stop waiting for it: their readers get each frame from this instance's memory, as
        other streams' do, rather than a stalled answer."""
        cutoff = time.monotonic() - self._retention
        for writer in writers:
            recording = writer.recording
            if writer.ahead:
                writer.ahead = False
                recording.release()
            if not recording.ended or recording.ended_at > cutoff:
                self._dirty.setdefault(writer.key, writer)

    async def _send(self, entries: list[_Entry]) -> set[int]:
        """Write ``entries``; the positions of those whose stream Redis no longer has (and did not take)."""
        if self._script:
            # One script call for every stream of the flush: one command to encode, one reply to read.
            args: list[bytes | str | int] = [len(entries)]
            args += [entry.key for entry in entries]
            args.append(_MAX_ENTRIES)
            for entry in entries:
                args += [entry.first, entry.data, entry.end, entry.expire_ms]
            (reply,) = await send(self._client, [packed("EVALSHA", self._sha, *args)])
            if isinstance(reply, NoScriptError):  # a Redis that restarted, or was flushed: EVAL loads it
                (reply,) = await send(self._client, [packed("EVAL", _APPEND_SCRIPT, *args)])
            if isinstance(reply, Exception):
                raise reply
            return {int(i) - 1 for i in reply} if reply else set()
        async with self._client.pipeline(transaction=False) as pipe:  # a Redis Cluster: each to its node
            for entry in entries:
                fields: dict[str, bytes | int] = {"f": entry.first, "d": entry.data}
                if entry.end:
                    fields["e"] = entry.end
                # Past its first frame, a stream Redis lost is not made again from the middle (see the script).
                pipe.xadd(entry.key, fields, maxlen=_MAX_ENTRIES, approximate=True, nomkstream=entry.first > 1)
                if entry.expire_ms:
                    pipe.pexpire(entry.key, entry.expire_ms)
            replies = await pipe.execute()
        lost: set[int] = set()
        at = 0
        for i, entry in enumerate(entries):
            if replies[at] is None:
                lost.add(i)
            at += 2 if entry.expire_ms else 1
        return lost
