"""The in-process layer: one load per key however many ask at once, short-lived and bounded entries."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from personas.local_cache import LocalCache


class Loader:
    """A load that counts its calls and, while ``gate`` is closed, waits: as a slow database would."""

    def __init__(self, value: str = "loaded", *, fail: BaseException | None = None) -> None:
        self.value = value
        self.fail = fail
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self) -> str:
        self.calls += 1
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return self.value


async def test_concurrent_misses_share_one_load():
    cache: LocalCache[str, str] = LocalCache(ttl=60, max_entries=10)
    load = Loader()
    load.gate.clear()
    waiters = [asyncio.ensure_future(cache.get("k", load)) for _ in range(100)]
    await asyncio.sleep(0)
    load.gate.set()
    assert await asyncio.gather(*waiters) == ["loaded"] * 100
    assert load.calls == 1
    assert await cache.get("k", load) == "loaded" and load.calls == 1  # and then kept


async def test_a_cancelled_waiter_leaves_the_load_to_the_others():
    cache: LocalCache[str, str] = LocalCache(ttl=60, max_entries=10)
    load = Loader()
    load.gate.clear()
    first = asyncio.ensure_future(cache.get("k", load))
    second = asyncio.ensure_future(cache.get("k", load))
    await asyncio.sleep(0.01)
    first.cancel()  # the client that started the load went away
    await asyncio.sleep(0.01)
    load.gate.set()
    assert await second == "loaded"
    assert first.cancelled() and load.calls == 1
    assert await cache.get("k", load) == "loaded" and load.calls == 1


async def test_a_load_every_waiter_gave_up_on_still_finishes_and_is_kept():
    cache: LocalCache[str, str] = LocalCache(ttl=60, max_entries=10)
    load = Loader()
    load.gate.clear()
    waiter = asyncio.ensure_future(cache.get("k", load))
    await asyncio.sleep(0.01)
    waiter.cancel()
    load.gate.set()
    await asyncio.sleep(0.01)
    assert await cache.get("k", load) == "loaded" and load.calls == 1


async def test_a_failed_load_reaches_every_waiter_and_is_not_kept():
    cache: LocalCache[str, str] = LocalCache(ttl=60, max_entries=10)
    load = Loader(fail=ConnectionError("database away"))
    load.gate.clear()
    waiters = [asyncio.ensure_future(cache.get("k", load)) for _ in range(10)]
    await asyncio.sleep(0)
    load.gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results) and load.calls == 1
    # Nothing was kept: the next read loads again, and succeeds now the database is back.
    load.fail = None
    assert await cache.get("k", load) == "loaded" and load.calls == 2


async def test_a_failed_load_nobody_waits_for_any_more_is_not_reported_as_unretrieved():
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    try:
        cache: LocalCache[str, str] = LocalCache(ttl=60, max_entries=10)
        load = Loader(fail=ConnectionError("database away"))
        load.gate.clear()
        waiter = asyncio.ensure_future(cache.get("k", load))
        await asyncio.sleep(0.01)
        waiter.cancel()
        load.gate.set()
        await asyncio.sleep(0.01)
        gc.collect()
        assert unhandled == []
    finally:
        loop.set_exception_handler(previous)


async def test_entries_expire_after_their_time():
    cache: LocalCache[str, str] = LocalCache(ttl=0.05, max_entries=10)
    load = Loader("one")
    assert await cache.get("k", load) == "one"
    load.value = "two"
    assert await cache.get("k", load) == "one"  # kept, not loaded again
    await asyncio.sleep(0.1)
    assert await cache.get("k", load) == "two" and load.calls == 2


async def test_a_zero_time_keeps_nothing_but_still_shares_loads():
    cache: LocalCache[str, str] = LocalCache(ttl=0, max_entries=10)
    load = Loader()
    load.gate.clear()
    waiters = [asyncio.ensure_future(cache.get("k", load)) for _ in range(5)]
    await asyncio.sleep(0)
    load.gate.set()
    await asyncio.gather(*waiters)
    assert load.calls == 1
    await cache.get("k", load)
    assert load.calls == 2 and len(cache) == 0


async def test_forget_drops_an_entry_at_once():
    cache: LocalCache[str, str] = LocalCache(ttl=60, max_entries=10)
    load = Loader("old")
    assert await cache.get("k", load) == "old"
    load.value = "new"
    cache.forget("k")
    assert await cache.get("k", load) == "new"


async def test_a_load_under_way_when_a_write_forgets_its_key_is_not_kept():
    cache: LocalCache[str, str] = LocalCache(ttl=60, max_entries=10)
    before = Loader("before the write")
    before.gate.clear()
    early = asyncio.ensure_future(cache.get("k", before))
    await asyncio.sleep(0.01)
    cache.forget("k")  # the write committed while the read was still loading
    after = Loader("after the write")
    assert await cache.get("k", after) == "after the write"  # a read after the write loads afresh
    before.gate.set()
    assert await early == "before the write"  # its own waiter still gets an answer
    assert await cache.get("k", Loader("unused")) == "after the write"  # but it is not what is kept


async def test_clear_drops_everything():
    cache: LocalCache[str, str] = LocalCache(ttl=60, max_entries=10)
    for key in "abc":
        await cache.get(key, Loader(key))
    cache.clear()
    assert len(cache) == 0
    assert await cache.get("a", Loader("fresh")) == "fresh"


@pytest.mark.parametrize("bound", [1, 3])
async def test_entries_are_bounded_oldest_first(bound):
    cache: LocalCache[str, str] = LocalCache(ttl=60, max_entries=bound)
    for key in "abcdef":
        await cache.get(key, Loader(key))
    assert len(cache) == bound
    newest = Loader("reloaded")
    assert await cache.get("f", newest) == "f" and newest.calls == 0
    oldest = Loader("reloaded")
    assert await cache.get("a", oldest) == "reloaded" and oldest.calls == 1


async def test_retime_drops_what_was_kept_and_keeps_new_entries_that_long():
    cache: LocalCache[str, str] = LocalCache(ttl=60, max_entries=10)
    assert await cache.get("k", Loader("kept a minute")) == "kept a minute"
    cache.retime(0.05)  # as when this process stops hearing of writes elsewhere
    assert await cache.get("k", Loader("reloaded")) == "reloaded"
    await asyncio.sleep(0.1)
    assert await cache.get("k", Loader("after the short time")) == "after the short time"


async def test_peek_sees_only_a_fresh_entry_and_neither_loads_nor_counts(monkeypatch):
    lookups: list[str] = []
    cache: LocalCache[str, str] = LocalCache(ttl=60, max_entries=10, on_lookup=lookups.append)
    assert cache.peek("k") is None and lookups == []  # nothing kept: nothing loaded, nothing counted
    load = Loader()
    assert await cache.get("k", load) == "loaded" and lookups == ["miss"]
    assert cache.peek("k") == "loaded" and lookups == ["miss"] and load.calls == 1
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + 61)
    assert cache.peek("k") is None and load.calls == 1  # expired
    monkeypatch.undo()
