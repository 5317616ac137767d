"""Time for the policies: passed in, never read from the system inside an algorithm.

Policies take ``now_ms`` (milliseconds since the Unix epoch) as an argument. The
live worker passes ``SystemClock().now_ms()``; tests step a ``ManualClock``; replay
passes recorded timestamps.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int: ...


class SystemClock:
    """Wall-clock time in integer milliseconds."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that moves only when told to; for tests and replay."""

    def __init__(self, start_ms: int = 0) -> None:
        self._now = start_ms

    def now_ms(self) -> int:
        return self._now

    def advance(self, ms: int) -> None:
        if ms < 0:
            raise ValueError("a clock does not go backwards")
        self._now += ms

    def set(self, now_ms: int) -> None:
        self._now = now_ms
