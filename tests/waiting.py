"""Waiting for a state rather than for a while: poll a check until it holds, with a deadline."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.server.resources import Resources

__all__ = ["eventually", "settled"]

Check = Callable[[], "bool | Awaitable[bool]"]


async def eventually(check: Check, within: float = 5.0, *, interval: float = 0.02) -> bool:
    """Ask ``check`` (a function, or a coroutine function) until it holds or ``within`` seconds have passed;
    whether it came to hold. Asked once more at the deadline, so a slow machine only makes it slower."""
    deadline = time.monotonic() + within
    while True:
        held = check()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)


async def settled(resources: Resources, within: float = 10.0) -> None:
    """Until the app's background work (answers being saved, summaries, memory extraction, and what they start)
    has ended: what a test that checks their effects, or that there are none, waits on. A TimeoutError past
    ``within`` seconds."""
    async with asyncio.timeout(within):
        await resources.chat.settled()
