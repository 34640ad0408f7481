"""Recorded streams: every chat stream's events kept as they are sent, so a client can resume it anywhere.

A :class:`Recording` holds one answer's SSE frames on the instance that runs it; readers follow it
live. With Redis the frames are also appended to a Redis Stream per message (``XADD``), by one flush
for all streams every 50 ms at most, each stream's new frames one entry: a short answer is one entry,
and under load one round trip carries many streams' entries. Any instance can replay a recording and
follow it. Without Redis, finished recordings stay in this process for the retention. A frame is the
exact bytes sent to the first client (its ``id:`` is ``<message_id>:<n>``), so a replay is the same
stream, byte for byte.

Streams are told apart from the stored message: the recording ends with the stream, and if it ends
without a final event (the instance died, the client left a stream that was not resumable) the reader
makes one from the message's stored status.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Protocol
from uuid import UUID

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from core.errors import StreamExpired
from core.redis_client import REDIS_ERRORS, Outage, packed, send
from runtime.chat.collector import Collector
from runtime.chat.frames import DONE, HEARTBEAT, decode, encode_events, final_event

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
# How long one write may take before it is given up (the stream goes on; that part is kept here only).
_WRITE_TIMEOUT = 0.5
# A flush on a single Redis server: for each stream (KEYS), its entry and, when asked, its expiry. ARGV is
# the trimming bound, then four values a stream: the first frame's number, the frames, the end mark ('' for
# none) and the expiry in ms (0 for none).
_APPEND_SCRIPT = """
local maxlen = ARGV[1]
for i, key in ipairs(KEYS) do
  local at = 1 + (i - 1) * 4
  local first, data, ended, ttl = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], tonumber(ARGV[at + 4])
  if ended == '' then
    redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', 'f', first, 'd', data)
  else
    redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', 'f', first, 'd', data, 'e', ended)
  end
  if ttl > 0 then
    redis.call('PEXPIRE', key, ttl)
  end
end
return #KEYS
"""
_WRITE_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, *REDIS_ERRORS)
# How often a reader of another instance's stream looks at the stored message while nothing arrives, to
# notice an answer whose instance died.
_STATUS_EVERY = 1.0

Spawn = Callable[[Coroutine[Any, Any, None]], None]


class MessageState(Protocol):
    """What a reader needs to know of the stored message when its stream ends without a final event."""

    @property
    def status(self) -> str: ...
    @property
    def finish_reason(self) -> str | None: ...
    @property
    def error(self) -> dict[str, Any] | None: ...


StatusOf = Callable[[], Coroutine[Any, Any, MessageState | None]]


def final_frame(message_id: UUID, n: int, state: MessageState | None) -> bytes:
    """The ``n``-th frame of a stream that ended without its final event: the one it should have ended
    with, from what is stored."""
    (part,), _, _ = encode_events((final_event(message_id, state),), n - 1, b"%s:" % str(message_id).encode())
    return part


class Recording:
    """One answer's frames on the instance that runs it, and the readers waiting for more."""

    __slots__ = ("_wake", "ended", "ended_at", "frames", "message_id", "terminal", "user_id")

    def __init__(self, message_id: UUID, user_id: UUID) -> None:
        self.message_id = message_id
        self.user_id = user_id
        self.frames: list[bytes] = []
        self.ended = False
        # Whether the last frame is the stream's own `done` or `error`.
        self.terminal = False
        self.ended_at = 0.0
        self._wake: asyncio.Future[None] | None = None

    def add(self, frames: list[bytes]) -> None:
        self.frames.extend(frames)
        self._notify()

    def end(self, *, terminal: bool) -> None:
        self.ended = True
        self.terminal = terminal
        self.ended_at = time.monotonic()
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
            if sent < len(self.frames):
                chunk = b"".join(self.frames[sent:])
                sent = len(self.frames)
                yield chunk
                continue
            if self.ended:
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
        # A single server's client without a socket timeout, for the writes of the hot path (see _Outbox).
        self._writer = writer
        self._prefix = prefix
        self.retention = retention
        self._spawn = spawn
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
        self._writers: dict[UUID, _RedisWriter] = {}
        self._outbox = _Outbox(self)

    @property
    def enabled(self) -> bool:
        return self.retention > 0

    def key(self, message_id: UUID) -> str:
        # The braces are a hash tag: every key of one message lands in one Redis Cluster slot.
        return f"{self._prefix}stream:{{{message_id}}}"

    # the instance running the answer ---------------------------------------------------------------

    def open(self, message_id: UUID, user_id: UUID) -> Recording:
        recording = Recording(message_id, user_id)
        self._live[message_id] = recording
        if self._redis is not None:
            self._writers[message_id] = _RedisWriter(recording, self.key(message_id))
        return recording

    def add(self, recording: Recording, frames: list[bytes]) -> None:
        recording.add(frames)
        writer = self._writers.get(recording.message_id)
        if writer is not None:
            self._outbox.write(writer, frames)

    def close(self, recording: Recording, *, terminal: bool) -> None:
        """The stream ended (``terminal``: with its own final event)."""
        recording.end(terminal=terminal)
        message_id = recording.message_id
        self._live.pop(message_id, None)
        writer = self._writers.pop(message_id, None)
        if writer is not None:
            self._outbox.write(writer, [], end=True, terminal=terminal)
        # Kept here until its end is in Redis (for good, if some of it never got there): meanwhile, and
        # while Redis is away, this instance can still replay it whole.
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

    # any instance -----------------------------------------------------------------------------------

    async def replay(self, message_id: UUID, after: int, heartbeat: float, status_of: StatusOf) -> AsyncIterator[bytes]:
        """The stream of ``message_id`` after its ``after``-th event, then live to its end.

        Raises :class:`StreamExpired` (before anything is sent) when no recording is left to replay.
        """
        recording = self._live.get(message_id)
        if recording is None:
            recording = self._finished.get(message_id)
            if recording is not None and recording.ended_at < time.monotonic() - self.retention:
                recording = None
        if recording is not None:
            return recording.follow(after, heartbeat, status_of)
        if self._redis is not None and self._outage.usable():
            first = await self._read(message_id, "-", after)
            for _ in range(_LATE_TRIES):
                if first is not None:
                    break
                # Its last write may still be on its way from the instance that ran it.
                await asyncio.sleep(_EVERY)
                first = await self._read(message_id, "-", after)
            if first is not None:
                return self._follow_redis(message_id, first, after, heartbeat, status_of)
            state = await status_of()
            if state is not None and state.status == "pending":
                # Not written yet, or its instance died before its first write: wait for either.
                return self._follow_redis(message_id, ([], "0-0", False, False), after, heartbeat, status_of)
        raise StreamExpired(
            f"The stream of message {message_id} can no longer be replayed (streams are kept "
            f"{self.retention:.0f} s after they end); the stored message is in its conversation."
        )

    async def _read(self, message_id: UUID, start: str, after: int) -> tuple[list[bytes], str, bool, bool] | None:
        """Frames numbered above ``after`` in entries from ``start`` on: (frames, last entry id, ended, terminal),
        or None when the stream has no entries."""
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
        first: tuple[list[bytes], str, bool, bool],
        after: int,
        heartbeat: float,
        status_of: StatusOf,
    ) -> AsyncIterator[bytes]:
        frames, last_id, ended, terminal = first
        sent = after + len(frames)
        key = self.key(message_id)
        quiet_since = checked = time.monotonic()
        while True:
            if frames:
                yield b"".join(frames)
                quiet_since = time.monotonic()
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
                entries = found[0][1]
                frames, last_id, ended, terminal = _frames_of(entries, sent)
                sent += len(frames)
            now = time.monotonic()
            if not frames and not ended:
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


def _frames_of(entries: list[Any], after: int) -> tuple[list[bytes], str, bool, bool]:
    """The frames numbered above ``after`` in ``entries``, the last entry's id, and whether (and how) the
    stream ended. An entry holds consecutive frames from number ``f`` on, joined in ``d``; ``e`` marks the end
    (``1`` when the stream's own final event came before it)."""
    frames: list[bytes] = []
    last_id = "0-0"
    ended = terminal = False
    for entry_id, fields in entries:
        last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        data = fields.get(b"d")
        if data:
            pieces = [piece + b"\n\n" for piece in data.split(b"\n\n")[:-1]]
            skip = after - int(fields[b"f"]) + 1
            frames.extend(pieces[skip:] if skip > 0 else pieces)
        end = fields.get(b"e")
        if end is not None:
            ended, terminal = True, end == b"1"
    return frames, last_id, ended, terminal


class _RedisWriter:
    """One stream's frames not yet in Redis, and how far it got there."""

    __slots__ = ("ended", "expires", "key", "missed", "n", "pending", "recording", "terminal")

    def __init__(self, recording: Recording, key: str) -> None:
        self.recording = recording
        self.key = key
        self.pending: list[bytes] = []
        self.n = 0
        self.ended = False
        self.terminal = False
        # When the key's expiry was last pushed out (at the first and last write, and now and then between).
        self.expires: float | None = None
        # Whether a write was skipped or failed (Redis away): the stream in Redis has a gap then.
        self.missed = False

    def entry(self, now: float, retention: float) -> tuple[list[bytes | str | int], int]:
        """The entry for the frames pending (numbered from ``n + 1``, joined) and the expiry to set, if any."""
        frames, self.pending = self.pending, []
        fields: list[bytes | str | int] = ["f", self.n + 1, "d", b"".join(frames)]
        self.n += len(frames)
        if self.ended:
            fields += ["e", b"1" if self.terminal else b"0"]
        expire = self.ended or self.expires is None or now - self.expires > retention / 3
        if expire:
            self.expires = now
        return fields, int(retention * 1000) if expire else 0


class _Outbox:
    """Every stream's frames on their way to Redis, sent by one flush for all streams at most every ``_EVERY``.

    A flush sends one entry per stream that has new frames (all its frames since the last flush) and the
    keys' expiries in one round trip, so under load the cost of a write is shared by many streams, and an
    answer shorter than ``_EVERY`` is written once, after its end. One flush at a time keeps each stream's
    entries in order.
    """

    def __init__(self, recorder: StreamRecorder) -> None:
        self._recorder = recorder
        self._dirty: dict[UUID, _RedisWriter] = {}
        self._sha: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False

    def write(self, writer: _RedisWriter, frames: list[bytes], *, end: bool = False, terminal: bool = False) -> None:
        writer.pending.extend(frames)
        if end:
            writer.ended, writer.terminal = True, terminal
        self._dirty[writer.recording.message_id] = writer
        if not self._busy and self._timer is None:
            # A stream's end waits for the timer too, with the others: a replay looks again for a while
            # (``_LATE_TRIES``) before it takes a stored answer without a recording for expired.
            self._timer = asyncio.get_running_loop().call_later(_EVERY, self._start)

    def _start(self) -> None:
        self._timer = None
        self._busy = True
        self._recorder._spawn(self._flush())

    async def _flush(self) -> None:
        recorder = self._recorder
        writers = list(self._dirty.values())
        self._dirty.clear()
        try:
            if not recorder._outage.usable():
                self._missed(writers)  # kept on their instance only, while Redis is away
                return
            now = time.monotonic()
            entries = [(w, *w.entry(now, recorder.retention)) for w in writers]
            try:
                async with asyncio.timeout(_WRITE_TIMEOUT):
                    await self._send(entries)
            except _WRITE_ERRORS as exc:
                recorder._outage.failed(exc)
                self._missed(writers)
                return
            recorder._outage.recovered()
            for writer in writers:
                if writer.ended and not writer.missed:
                    recorder._finished.pop(writer.recording.message_id, None)  # Redis has all of it
        finally:
            self._busy = False
            if self._dirty and self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(_EVERY, self._start)

    async def _send(self, entries: list[tuple[_RedisWriter, list[bytes | str | int], int]]) -> None:
        recorder = self._recorder
        writer = recorder._writer
        if writer is not None:
            # One script call for every stream of the flush: one command to encode, one reply to read.
            args: list[bytes | str | int] = [len(entries)]
            args += [stream.key for stream, _, _ in entries]
            args.append(_MAX_ENTRIES)
            for _, fields, expire_ms in entries:
                args += [fields[1], fields[3], fields[5] if len(fields) > 4 else b"", expire_ms]
            if self._sha is None:
                self._sha = hashlib.sha1(_APPEND_SCRIPT.encode()).hexdigest()
            (reply,) = await send(writer, [packed("EVALSHA", self._sha, *args)])
            if isinstance(reply, NoScriptError):  # a Redis that restarted, or was flushed: EVAL loads it
                (reply,) = await send(writer, [packed("EVAL", _APPEND_SCRIPT, *args)])
            if isinstance(reply, Exception):
                raise reply
            return
        async with recorder._redis.pipeline(transaction=False) as pipe:  # a Redis Cluster: each to its node
            for stream, fields, expire_ms in entries:
                entry = dict(zip(fields[::2], fields[1::2], strict=True))
                pipe.xadd(stream.key, entry, maxlen=_MAX_ENTRIES, approximate=True)
                if expire_ms:
                    pipe.pexpire(stream.key, expire_ms)
            await pipe.execute()

    def _missed(self, writers: list[_RedisWriter]) -> None:
        for writer in writers:
            writer.missed = True
            writer.pending.clear()
            if writer.ended:
                self._recorder.keep(writer.recording)
