"""The workers of one instance replay each other's streams, without Redis.

``serve --workers N`` without ``REDIS_URL`` gives its workers a folder of their own (``STREAM_PEERS_DIR``);
each listens there on a Unix socket named by its process id. A worker asked to replay a stream it does not
hold asks its siblings: the one that holds the recording answers ``+`` and sends it, live to its end; the
others answer ``-``. Nothing crosses between workers while a stream is recorded: only a replay that lands
on a worker other than the stream's costs a local connection.

The wire, one connection a replay: the request is a line ``<message_id> <after> <heartbeat>``; the answer a
line ``+`` or ``-``, then, after ``+``, each piece of the stream as a line with its length and the bytes.
The folder ``serve`` makes is its user's alone (``mkdtemp``: mode 0700), so no other local user reaches a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from uuid import UUID

from runtime.chat.frames import DONE, HEARTBEAT

__all__ = ["Peers", "Relay"]

log = logging.getLogger("persona_runtime.streams")

# How long a sibling may take to say whether it holds a stream (it answers from memory, on its event loop).
_ASK_TIMEOUT = 2.0
_REQUEST_LIMIT = 200


class Peers:
    """This worker's socket in the instance's folder, and its questions to the sibling workers there.

    ``follow(message_id, after, heartbeat)`` is this worker's own recording of a stream after its ``after``-th
    event, live to its end, or None when it holds none.
    """

    def __init__(self, folder: str | Path, follow: Callable[[UUID, int, float], AsyncIterator[bytes] | None]) -> None:
        self._folder = Path(folder)
        self._path = self._folder / f"{os.getpid()}.sock"
        self._follow = follow
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._answer, path=str(self._path))

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            self._path.unlink(missing_ok=True)
            self._server = None

    # this worker, holding a stream ------------------------------------------------------------------

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), _ASK_TIMEOUT)
            message_id, after, heartbeat = _request(line)
            frames = self._follow(message_id, after, heartbeat) if message_id is not None else None
            if frames is None:
                writer.write(b"-\n")
                await writer.drain()
                return
            writer.write(b"+\n")
            try:
                async for piece in frames:
                    writer.write(b"%d\n%s" % (len(piece), piece))
                    await writer.drain()
            finally:
                await frames.aclose()  # type: ignore[attr-defined]
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the asking worker went away (its client left)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    # this worker, asked for a stream it does not hold -----------------------------------------------------

    def siblings(self) -> list[Path]:
        try:
            return [p for p in self._folder.glob("*.sock") if p != self._path]
        except OSError:
            return []

    async def ask(self, message_id: UUID, after: int, heartbeat: float) -> Relay | None:
        """The stream from the sibling that holds it, or None when none does (or none answers)."""
        asked = await asyncio.gather(*(_ask(path, message_id, after, heartbeat) for path in self.siblings()))
        found = None
        for answer in asked:
            if answer is None:
                continue
            if found is None:
                found = answer
            else:  # two holders cannot be, but never leave a connection open
                answer[1].close()
        return Relay(*found, after) if found is not None else None


class Relay:
    """A sibling's stream, as the pieces it sends; ``ended`` tells whether it sent it to its end, and
    ``frames`` how many events came (after the ``after``-th)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, after: int) -> None:
        self._reader = reader
        self._writer = writer
        self.frames = after
        self.ended = False

    async def pieces(self) -> AsyncGenerator[bytes, None]:
        try:
            while True:
                head = await self._reader.readline()
                if not head:
                    return
                piece = await self._reader.readexactly(int(head))
                if piece == DONE:
                    self.ended = True
                elif piece != HEARTBEAT:
                    # Each frame ends in a blank line; its JSON data holds no raw newline.
                    self.frames += piece.count(b"\n\n")
                yield piece
                if self.ended:
                    return
        except (OSError, ValueError, asyncio.IncompleteReadError):
            return  # the sibling stopped (killed, restarted) in the middle of the stream
        finally:
            self._writer.close()


def _request(line: bytes) -> tuple[UUID | None, int, float]:
    try:
        text, after, heartbeat = line[:_REQUEST_LIMIT].decode().split()
        return UUID(text), int(after), float(heartbeat)
    except ValueError:
        return None, 0, 0.0


async def _ask(
    path: Path, message_id: UUID, after: int, heartbeat: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    writer = None
    try:
        async with asyncio.timeout(_ASK_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(f"{message_id} {after} {heartbeat}\n".encode())
            await writer.drain()
            answer = await reader.readline()
    except (OSError, TimeoutError) as exc:
        # A worker that is gone (its socket left behind) or starting: it holds nothing to replay.
        log.debug("no answer from the worker at %s (%s)", path.name, type(exc).__name__)
        if writer is not None:
            writer.close()
        return None
    if answer != b"+\n":
        writer.close()
        return None
    return reader, writer
