"""Circuit breaker per provider/model: a pure CLOSED / OPEN / HALF_OPEN state machine.

Algorithm (resilience4j's): outcomes are counted in a sliding window, either of the last
``window_size`` calls (a ring buffer) or of the last ``window_size`` seconds (one bucket per
second). Each record adds to running totals and the evicted slot or bucket is subtracted, so
recording and reading the rates are O(1) (a time window clears at most ``window_size`` buckets
when time jumps). Memory O(window_size).

- CLOSED: every call is allowed. Once the window holds ``minimum_calls`` outcomes, a failure
  rate or slow-call rate at or above its threshold opens the breaker. No verdict before that.
- OPEN: every call fails fast until ``open_duration_ms`` has passed; the next ``allow`` moves
  to HALF_OPEN.
- HALF_OPEN: exactly ``half_open_probes`` calls are allowed, the rest fail fast. When that many
  outcomes are in, it closes if both rates are under their thresholds, else re-opens. If the
  probes never report (a lost call), it re-opens after ``probe_timeout_ms``.

Transitions are checked against ``ALLOWED_TRANSITIONS``; each one is appended to
``transitions`` (the last ``history`` of them) and passed to the optional ``on_transition``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


ALLOWED_TRANSITIONS: frozenset[tuple[BreakerState, BreakerState]] = frozenset(
    {
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
        (BreakerState.HALF_OPEN, BreakerState.OPEN),
    }
)


@dataclass(frozen=True)
class BreakerConfig:
    window_type: Literal["count", "time"] = "count"
    window_size: int = 50  # calls (count) or seconds (time)
    minimum_calls: int = 10
    failure_rate_threshold: float = 0.5  # 0..1; opens at or above
    slow_call_duration_ms: int = 30_000  # a call taking longer than this is slow
    slow_call_rate_threshold: float = 0.8  # 0..1; opens at or above
    open_duration_ms: int = 30_000
    half_open_probes: int = 3
    probe_timeout_ms: int = 120_000  # re-open if the probes have not all reported by then
    history: int = 100  # transitions kept for status pages

    def __post_init__(self) -> None:
        if self.window_type not in ("count", "time"):
            raise ValueError(f"window_type must be 'count' or 'time', got {self.window_type!r}")
        if self.window_size < 1 or self.minimum_calls < 1 or self.half_open_probes < 1:
            raise ValueError("window_size, minimum_calls and half_open_probes must be >= 1")
        if self.window_type == "count" and self.minimum_calls > self.window_size:
            raise ValueError("a count window must hold at least minimum_calls calls")
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1]")
        if min(self.slow_call_duration_ms, self.open_duration_ms, self.probe_timeout_ms) < 0:
            raise ValueError("durations must be >= 0")


@dataclass(frozen=True)
class Transition:
    at_ms: int
    from_state: BreakerState
    to_state: BreakerState
    reason: str


@dataclass(frozen=True)
class BreakerSnapshot:
    state: BreakerState
    calls: int  # outcomes in the window (in HALF_OPEN: probe outcomes)
    failure_rate: float
    slow_call_rate: float
    open_until_ms: int  # meaningful in OPEN


@dataclass
class _Totals:
    calls: int = 0
    failures: int = 0
    slow: int = 0

    def add(self, other: _Totals, sign: int) -> None:
        self.calls += sign * other.calls
        self.failures += sign * other.failures
        self.slow += sign * other.slow


class _CountWindow:
    """The last ``size`` outcomes, in a ring buffer."""

    def __init__(self, size: int) -> None:
        self._slots: list[_Totals | None] = [None] * size
        self._next = 0
        self.totals = _Totals()

    def add(self, now_ms: int, outcome: _Totals) -> None:
        evicted = self._slots[self._next]
        if evicted is not None:
            self.totals.add(evicted, -1)
        self._slots[self._next] = outcome
        self.totals.add(outcome, +1)
        self._next = (self._next + 1) % len(self._slots)

    def read(self, now_ms: int) -> _Totals:
        return self.totals


class _TimeWindow:
    """Outcomes of the last ``size`` seconds, one bucket per epoch second."""

    def __init__(self, size: int) -> None:
        self._buckets = [_Totals() for _ in range(size)]
        self._head: int | None = None  # newest second with a live bucket
        self.totals = _Totals()

    def _roll(self, now_ms: int) -> None:
        second = now_ms // 1000
        if self._head is not None and second <= self._head:
            return
        size = len(self._buckets)
        start = second - size + 1 if self._head is None else max(self._head + 1, second - size + 1)
        for s in range(start, second + 1):  # at most `size` buckets
            bucket = self._buckets[s % size]
            self.totals.add(bucket, -1)
            bucket.calls = bucket.failures = bucket.slow = 0
        self._head = second

    def add(self, now_ms: int, outcome: _Totals) -> None:
        self._roll(now_ms)
        # A late record from a second we still hold lands in the newest bucket.
        assert self._head is not None
        self._buckets[self._head % len(self._buckets)].add(outcome, +1)
        self.totals.add(outcome, +1)

    def read(self, now_ms: int) -> _Totals:
        self._roll(now_ms)
        return self.totals


def _rates(totals: _Totals) -> tuple[float, float]:
    if totals.calls == 0:
        return 0.0, 0.0
    return totals.failures / totals.calls, totals.slow / totals.calls


class CircuitBreaker:
    """One provider/model's breaker, local to one worker."""

    def __init__(
        self,
        config: BreakerConfig,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> None:
        self.config = config
        self.on_transition = on_transition
        self.transitions: deque[Transition] = deque(maxlen=config.history)
        self._state = BreakerState.CLOSED
        self._window = self._new_window()
        self._open_until = 0
        self._half_open_since = 0
        self._permits = 0  # probes handed out in HALF_OPEN
        self._probes = _Totals()  # probe outcomes in HALF_OPEN

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def open_until_ms(self) -> int:
        return self._open_until

    def _new_window(self) -> _CountWindow | _TimeWindow:
        if self.config.window_type == "count":
            return _CountWindow(self.config.window_size)
        return _TimeWindow(self.config.window_size)

    def _move(self, now_ms: int, to: BreakerState, reason: str, open_until_ms: int = 0) -> None:
        if (self._state, to) not in ALLOWED_TRANSITIONS:
            raise RuntimeError(f"breaker bug: {self._state} -> {to} is not allowed")
        transition = Transition(now_ms, self._state, to, reason)
        self._state = to
        self._window = self._new_window()
        self._permits = 0
        self._probes = _Totals()
        if to is BreakerState.OPEN:
            self._open_until = open_until_ms or now_ms + self.config.open_duration_ms
        elif to is BreakerState.HALF_OPEN:
            self._half_open_since = now_ms
        self.transitions.append(transition)
        if self.on_transition is not None:
            self.on_transition(transition)

    def allow(self, now_ms: int) -> bool:
        """May a call go to this provider/model now? In HALF_OPEN a True is a probe permit:
        its outcome must be recorded."""
        if self._state is BreakerState.OPEN:
            if now_ms < self._open_until:
                return False
            self._move(now_ms, BreakerState.HALF_OPEN, "open_duration_elapsed")
        if self._state is BreakerState.HALF_OPEN:
            if self._permits < self.config.half_open_probes:
                self._permits += 1
                return True
            if now_ms - self._half_open_since >= self.config.probe_timeout_ms:
                self._move(now_ms, BreakerState.OPEN, "probe_timeout")
            return False
        return True

    def release(self, now_ms: int) -> None:
        """Hand back an allowed call that was never made or whose outcome does not count
        (rate limited, bad request), so a HALF_OPEN probe permit is not lost."""
        if self._state is BreakerState.HALF_OPEN and self._permits > self._probes.calls:
            self._permits -= 1

    def retry_after_ms(self, now_ms: int) -> int:
        """How long a fail-fast caller should wait before trying again (0 when not OPEN)."""
        return max(0, self._open_until - now_ms) if self._state is BreakerState.OPEN else 0

    def record(self, now_ms: int, success: bool, duration_ms: int) -> None:
        """Record one call's outcome. Failures are the kinds that count toward the breaker
        (overload, timeout, 5xx); don't record client errors or rate limits."""
        outcome = _Totals(
            1, 0 if success else 1, 1 if duration_ms > self.config.slow_call_duration_ms else 0
        )
        if self._state is BreakerState.OPEN:
            return  # a straggler admitted before the breaker opened
        if self._state is BreakerState.HALF_OPEN:
            self._probes.add(outcome, +1)
            if self._probes.calls >= self.config.half_open_probes:
                verdict = self._verdict(self._probes)
                if verdict:
                    self._move(now_ms, BreakerState.OPEN, f"probes_failed: {verdict}")
                else:
                    self._move(now_ms, BreakerState.CLOSED, "probes_succeeded")
            return
        self._window.add(now_ms, outcome)
        totals = self._window.read(now_ms)
        if totals.calls >= self.config.minimum_calls:
            verdict = self._verdict(totals)
            if verdict:
                self._move(now_ms, BreakerState.OPEN, verdict)

    def _verdict(self, totals: _Totals) -> str:
        """Why these outcomes should open the breaker, or '' if they should not."""
        failure_rate, slow_rate = _rates(totals)
        if failure_rate >= self.config.failure_rate_threshold:
            return f"failure_rate {failure_rate:.2f} >= {self.config.failure_rate_threshold:.2f}"
        if slow_rate >= self.config.slow_call_rate_threshold:
            return f"slow_call_rate {slow_rate:.2f} >= {self.config.slow_call_rate_threshold:.2f}"
        return ""

    def force_open(self, now_ms: int, until_ms: int, reason: str = "remote") -> None:
        """Open until ``until_ms`` because another worker (the health topic) or an operator said
        so; an already OPEN breaker only extends its deadline."""
        if until_ms <= now_ms:
            return
        if self._state is BreakerState.OPEN:
            self._open_until = max(self._open_until, until_ms)
        else:
            self._move(now_ms, BreakerState.OPEN, reason, open_until_ms=until_ms)

    def snapshot(self, now_ms: int) -> BreakerSnapshot:
        totals = (
            self._probes if self._state is BreakerState.HALF_OPEN else self._window.read(now_ms)
        )
        failure_rate, slow_rate = _rates(totals)
        return BreakerSnapshot(self._state, totals.calls, failure_rate, slow_rate, self._open_until)
