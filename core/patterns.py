"""Regular expressions that users give (test expectations, lorebook keys): bounded, compiled and matched off the loop.

A pattern is text a hostile user chooses, and the ``regex`` engine trusts it: ``a{2147483647}`` asks for
gigabytes while it compiles, and counted repeats expand as they compile, so ``(?:a{1000}){1000}`` holds
~260 MB and blocks whoever compiles it for half a second. Every user pattern therefore takes one path:

* **bounds first**, from the engine's own parse of the pattern (so no syntax can hide a repeat from the
  check): at most :data:`MAX_PATTERN_CHARS` characters, no count above :data:`MAX_REPEAT`, and at most
  :data:`MAX_EXPANSION` items once counted repeats are written out (nested counts multiply). That bound is
  the memory budget: a compiled pattern holds a few hundred bytes per expanded item, so one within the
  bounds stays under ~4 MB and compiles in milliseconds;
* **compiled in a thread of its own** under :data:`COMPILE_SECONDS`, never into the
  engine's module-wide cache, with ``MemoryError`` and every compile error turned into a 400 naming the field;
* **kept in a bounded LRU** (:data:`CACHE_PATTERNS` patterns, :data:`CACHE_BYTES` approximate bytes), so
  a suite run compiles nothing twice and deleted patterns are forgotten;
* **matched in a worker thread** with the engine's ``timeout`` (:data:`MATCH_SECONDS`): the engine lets go
  of the GIL while it matches and stops at the budget, so a pattern that backtracks without end costs
  that much and holds up no other request.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import regex
from regex import _regex_core

from core.errors import BadRequest

__all__ = [
    "CACHE_BYTES",
    "CACHE_PATTERNS",
    "COMPILE_SECONDS",
    "MATCH_SECONDS",
    "MAX_EXPANSION",
    "MAX_PATTERN_CHARS",
    "MAX_REPEAT",
    "PatternCache",
    "cached",
    "compile_pattern",
    "matches",
    "search",
]

MAX_PATTERN_CHARS = 1000
MAX_REPEAT = 1000
MAX_EXPANSION = 10_000
COMPILE_SECONDS = 2.0
MATCH_SECONDS = 0.5
CACHE_PATTERNS = 256
CACHE_BYTES = 16 * 1024 * 1024
# Measured with tracemalloc on regex 2026.x: 120-300 bytes kept per expanded item, ~1 KiB for a tiny pattern.
_BYTES_PER_ITEM = 300
_BYTES_PER_PATTERN = 1024
# Threads of their own, so a flood of patterns queues here rather than taking the loop's default executor.
# One compiles: compiling's transient memory (a few MB) then stays in one malloc arena; 25 heavy compiles
# at once spread over four threads left ~15-20 MB more resident. Matching lets go of the GIL and allocates little.
_MATCHERS = 4


class PatternCache:
    """Compiled patterns by ``(pattern, flags)``, least recently used dropped first past either bound."""

    def __init__(self, *, most: int = CACHE_PATTERNS, most_bytes: int = CACHE_BYTES) -> None:
        self.most = most
        self.most_bytes = most_bytes
        self.bytes = 0
        self._entries: OrderedDict[tuple[str, int], tuple[regex.Pattern[str], int]] = OrderedDict()
        self._lock = threading.Lock()  # apps on several loops (tests, embedding) share the process's cache

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, pattern: str, flags: int) -> regex.Pattern[str] | None:
        with self._lock:
            entry = self._entries.get((pattern, flags))
            if entry is None:
                return None
            self._entries.move_to_end((pattern, flags))
            return entry[0]

    def put(self, pattern: str, flags: int, compiled: regex.Pattern[str], size: int) -> None:
        with self._lock:
            old = self._entries.pop((pattern, flags), None)
            if old is not None:
                self.bytes -= old[1]
            self._entries[(pattern, flags)] = (compiled, size)
            self.bytes += size
            while len(self._entries) > self.most or (self.bytes > self.most_bytes and len(self._entries) > 1):
                _, (_, dropped) = self._entries.popitem(last=False)
                self.bytes -= dropped


class _Threads:
    """The compiling thread and the matching threads, started on first use (none at import)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._compiler: ThreadPoolExecutor | None = None
        self._matchers: ThreadPoolExecutor | None = None

    def compiler(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._compiler is None:
                self._compiler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="patterns-compile")
            return self._compiler

    def matchers(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._matchers is None:
                self._matchers = ThreadPoolExecutor(max_workers=_MATCHERS, thread_name_prefix="patterns-match")
            return self._matchers


_cache = PatternCache()
_threads = _Threads()


def cached() -> PatternCache:
    """The process's cache of compiled user patterns (one per process, as the engine keeps its own)."""
    return _cache


async def compile_pattern(pattern: str, *, field: str, flags: int = 0) -> regex.Pattern[str]:
    """``pattern`` compiled (from the cache, or in the compiling thread); a 400 naming ``field`` when it cannot be used.

    Refused: a pattern over the bounds (the message says which and by how much), one that is not a valid
    regular expression, one whose compiling runs out of memory or past :data:`COMPILE_SECONDS`.
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        raise BadRequest(
            f"`{field}` is {len(pattern)} characters long, more than {MAX_PATTERN_CHARS}: shorten the pattern.",
            field=field,
            details={"max_chars": MAX_PATTERN_CHARS},
        )
    compiled = _cache.get(pattern, flags)
    if compiled is not None:
        return compiled
    loop = asyncio.get_running_loop()
    started = loop.create_future()

    def compile_now() -> tuple[regex.Pattern[str], int]:
        loop.call_soon_threadsafe(_settle, started)
        return _compile(pattern, flags, field)

    work = loop.run_in_executor(_threads.compiler(), compile_now)
    # The budget counts the compiling, not the wait for the compiling thread.
    await asyncio.wait({started, work}, return_when=asyncio.FIRST_COMPLETED)
    try:
        compiled, size = await asyncio.wait_for(work, COMPILE_SECONDS)
    except TimeoutError:
        raise BadRequest(
            f"`{field}` took more than {COMPILE_SECONDS} s to compile: use fewer or smaller repeats.", field=field
        ) from None
    _cache.put(pattern, flags, compiled, size)
    return compiled


async def search(compiled: regex.Pattern[str], text: str, *, seconds: float = MATCH_SECONDS) -> bool:
    """Whether ``compiled`` occurs in ``text``; ``TimeoutError`` once it has searched for ``seconds``.

    ``MemoryError`` (an engine that ran out while backtracking) is the caller's to report, as a timeout is.
    """
    return await asyncio.get_running_loop().run_in_executor(_threads.matchers(), _search, compiled, text, seconds)


async def matches(pattern: str, text: str, *, field: str, flags: int = 0, seconds: float = MATCH_SECONDS) -> bool:
    """Compile (or take from the cache) and search, a few patterns at a time: the way to judge many at once.

    A suite run judges all its answers together; each pattern compiled outside the cache lives until its
    search ends, so without this gate twenty heavy ones (~3 MB each) were alive at once and left the process
    ~50 MB larger. Raises as :func:`compile_pattern` and :func:`search` do.
    """
    async with _gate():
        return await search(await compile_pattern(pattern, field=field, flags=flags), text, seconds=seconds)


_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _gate() -> asyncio.Semaphore:
    # One per event loop: a semaphore belongs to the loop it first waits on (apps on several loops in tests).
    loop = asyncio.get_running_loop()
    gate = _gates.get(loop)
    if gate is None:
        gate = _gates[loop] = asyncio.Semaphore(_MATCHERS)
    return gate


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _search(compiled: regex.Pattern[str], text: str, seconds: float) -> bool:
    return compiled.search(text, timeout=seconds, concurrent=True) is not None


def _compile(pattern: str, flags: int, field: str) -> tuple[regex.Pattern[str], int]:
    """In a worker thread: check the bounds on the parsed pattern, then compile it; the pattern and its size."""
    try:
        expansion = _check_bounds(_parse(pattern, flags), field)
        # Not into the engine's own cache: it keeps 500 patterns, however large, for the life of the process.
        compiled = regex.compile(pattern, flags, cache_pattern=False)
    except BadRequest:
        raise
    except MemoryError:
        raise BadRequest(
            f"`{field}` needs more memory to compile than this server gives a pattern: use fewer or smaller repeats.",
            field=field,
        ) from None
    except (regex.error, ValueError, TypeError, OverflowError, RecursionError, IndexError) as exc:
        reason = str(exc) or type(exc).__name__
        raise BadRequest(f"`{field}` is not a valid regular expression: {reason}.", field=field) from None
    return compiled, _BYTES_PER_PATTERN + _BYTES_PER_ITEM * expansion


def _parse(pattern: str, flags: int) -> Any:
    """The engine's own parse tree of ``pattern``: the first steps of ``regex.compile``, which expand nothing."""
    global_flags = flags
    while True:
        source = _regex_core.Source(pattern)
        info = _regex_core.Info(global_flags, source.char_type, {})
        info.guess_encoding = _regex_core.UNICODE
        source.ignore_space = bool(info.flags & _regex_core.VERBOSE)
        try:
            return _regex_core._parse_pattern(source, info)
        except _regex_core._UnscopedFlagSet:  # a flag such as (?x) in the middle: parse again with it global
            global_flags = info.global_flags


def _check_bounds(tree: Any, field: str) -> int:
    """The pattern's size with its counted repeats written out; a 400 past either repeat bound."""
    expansion = _expansion(tree, field)
    if expansion > MAX_EXPANSION:
        raise BadRequest(
            f"`{field}` expands to {expansion:,} items once its repeats are counted out (nested repeats multiply: "
            f"(?:a{{100}}){{100}} is 10,000), more than {MAX_EXPANSION:,}: use fewer or smaller repeats.",
            field=field,
            details={"max_expansion": MAX_EXPANSION},
        )
    return expansion


def _expansion(node: Any, field: str) -> int:
    if isinstance(node, _regex_core.GreedyRepeat):  # lazy and possessive repeats are subclasses
        for count in (node.min_count, node.max_count):
            if count is not None and count > MAX_REPEAT:
                raise BadRequest(
                    f"`{field}` repeats something {count:,} times, more than {MAX_REPEAT:,}, the most one repeat "
                    "may count: use a smaller count.",
                    field=field,
                    details={"max_repeat": MAX_REPEAT},
                )
        # An open-ended repeat ({3,}, +, *) is matched as it goes; what it writes out is its minimum.
        times = node.min_count if node.max_count is None else node.max_count
        return max(times, 1) * _expansion(node.subpattern, field)
    if isinstance(node, _regex_core.SetBase):  # a character class is one item, however it is spelled
        return 1
    children = _children(node)
    if not children:
        return 1
    return sum(_expansion(child, field) for child in children)


def _children(node: Any) -> list[Any]:
    # Node classes keep their parts under different names (items, branches, subpattern, yes_item, ...).
    found: list[Any] = []
    for value in vars(node).values():
        if isinstance(value, _regex_core.RegexBase):
            found.append(value)
        elif isinstance(value, list | tuple):
            found.extend(item for item in value if isinstance(item, _regex_core.RegexBase))
    return found
