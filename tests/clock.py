"""A clock a test can set: what the test apps' rate limits read their minute and day windows from."""

from __future__ import annotations

import time

__all__ = ["MINUTE", "SetClock"]

MINUTE = 60


class SetClock:
    """Wall time until a test sets it; then that time, standing still until the test moves it on."""

    def __init__(self) -> None:
        self._at: float | None = None

    def __call__(self) -> float:
        return time.time() if self._at is None else self._at

    def set(self, at: float) -> None:
        self._at = at

    def start_of_minute(self, into: float = 1.0) -> float:
        """Stop the clock ``into`` seconds after the start of the current minute; that time."""
        self.set(time.time() // MINUTE * MINUTE + into)
        return self()

    def advance(self, seconds: float) -> float:
        self.set(self() + seconds)
        return self()

    def release(self) -> None:
        """Back to wall time."""
        self._at = None
