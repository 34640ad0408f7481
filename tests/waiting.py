"""Waiting for a state rather than for a while: poll a check until it holds, with a deadline."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

__all__ = ["eventually"]

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
