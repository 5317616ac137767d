"""Per provider/model limiter: a worker's share of a provider's RPM and TPM, learning from 429s.

Algorithm: a call holds a slot from the moment it is admitted until ``window_ms`` (60 s) after it
*finished*. While in flight it is counted as such; when it finishes (``finish``) it moves to a
sliding log of (finished_at, tokens). A request is admitted only if, counting it, the calls in
flight plus the log hold at most the effective request limit and at most the effective token
limit. So the guarantee is exact for what the provider receives:

    in ANY window of ``window_ms`` of the provider's clock, the calls it receives number at
    most the effective RPM and carry at most the effective TPM of estimated tokens, where
    effective = max(1, floor(configured * share * rate_factor)).

Why: the provider receives a call at some moment between its admission and its end (the HTTP
request may wait for a connection or a busy event loop before it is sent, for hundreds of
ms). Take the calls received within one window [x, x + window) and the last of them to be
admitted, at a < x + window: every other one was admitted before a and ended at or after its
receipt >= x > a - window, so at a it was in flight or still in the log, and was counted.
Counting from the admission alone (the previous design) freed a slot exactly one window after
admission: a call sent 0.8 s late and a call sent promptly one window after its admission
then landed in one provider minute (610 calls at 600 RPM in the benchmark). No extra safety
margin is needed: the end of a call is an upper bound of its receipt. The price: a slot is held
for the call's duration longer than before (0.1 s of a 60 s window for a 100 ms call).

(A token bucket refilled at RPM/60 per second that starts full would allow up to 2 x RPM in a
60 s window; the log has no such edge.) Two documented exceptions: a single request whose
estimate exceeds the whole effective TPM is admitted alone into an otherwise empty window
(else it could never run), and ``finish`` with an actual count above the estimate raises the
count of a window after the fact.

On top of its own count it learns from the provider's responses (``observe``): a Retry-After
blocks every admission until it has passed; a ``remaining`` count of requests/tokens is
honoured until its reset (remaining 0 = wait for the reset); and the effective rate is AIMD:
halved (down to a floor) on a 429, at most once per ``decrease_cooldown_ms``, and raised back
linearly (``increase_per_s`` of configured per second) while calls succeed.

Cost: admission O(1) amortised (expired entries are popped from the left); computing how long
to wait when refused is O(n) in the entries of the window; memory O(calls per window).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class ProviderLimitConfig:
    rpm: int | None  # requests per window for the whole provider/model; None = unlimited
    tpm: int | None  # tokens per window for the whole provider/model; None = unlimited
    share: float = 1.0  # this worker's fraction of the limits (its fraction of partitions)
    window_ms: int = 60_000
    decrease_factor: float = 0.5  # rate_factor *= this on a 429
    min_rate_factor: float = 0.1  # never below 10 % of the configured rate
    increase_per_s: float = 0.02  # rate_factor += this per second of successful traffic
    decrease_cooldown_ms: int = 1_000  # a burst of 429s counts as one decrease
    default_reset_ms: int = 1_000  # used when a remaining count arrives without a reset time

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value}")
        _check_share(self.share)
        if self.window_ms <= 0:
            raise ValueError("window_ms must be positive")
        if not 0.0 < self.decrease_factor < 1.0:
            raise ValueError("decrease_factor must be in (0, 1)")
        if not 0.0 < self.min_rate_factor <= 1.0:
            raise ValueError("min_rate_factor must be in (0, 1]")
        if self.increase_per_s < 0 or self.decrease_cooldown_ms < 0 or self.default_reset_ms < 0:
            raise ValueError("increase_per_s, decrease_cooldown_ms, default_reset_ms must be >= 0")


@dataclass(frozen=True)
class LimiterSnapshot:
    effective_rpm: int | None
    effective_tpm: int | None
    requests_available: int | None  # admissions left in the current window (None = unlimited)
    tokens_available: int | None
    rate_factor: float  # AIMD factor in [min_rate_factor, 1]
    share: float
    blocked_until_ms: int  # Retry-After: nothing is admitted before this


def _check_share(share: float) -> None:
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")


class ProviderLimiter:
    """One provider/model as seen by one worker. Not thread-safe; one per event loop."""

    def __init__(self, config: ProviderLimitConfig) -> None:
        self.config = config
        self._share = config.share
        self._factor = 1.0
        self._log: deque[tuple[int, int]] = deque()  # (finished_at_ms, tokens), oldest first
        self._tokens = 0  # sum of tokens in _log
        self._in_flight = 0  # calls admitted and not finished
        self._in_flight_tokens = 0  # their estimated tokens
        self._now = 0  # latest time seen; time never runs backwards here
        self._blocked_until = 0
        self._last_decrease = -config.decrease_cooldown_ms
        self._last_increase = 0
        # What the provider last told us, valid until the matching reset time.
        self._requests_left: int | None = None
        self._requests_reset_at = 0
        self._tokens_left: int | None = None
        self._tokens_reset_at = 0

    # -- limits -------------------------------------------------------------------------------

    def _effective(self, configured: int | None) -> int | None:
        if configured is None:
            return None
        return max(1, math.floor(configured * self._share * self._factor))

    def set_share(self, share: float) -> None:
        """Set this worker's fraction of the provider limit (call on every rebalance)."""
        _check_share(share)
        self._share = share

    # -- admission ----------------------------------------------------------------------------

    def _advance(self, now_ms: int) -> int:
        self._now = max(self._now, now_ms)
        horizon = self._now - self.config.window_ms
        while self._log and self._log[0][0] <= horizon:
            self._tokens -= self._log.popleft()[1]
        if self._requests_left is not None and self._now >= self._requests_reset_at:
            self._requests_left = None
        if self._tokens_left is not None and self._now >= self._tokens_reset_at:
            self._tokens_left = None
        return self._now

    def try_acquire(self, now_ms: int, tokens: int) -> int:
        """Admit one call of ``tokens`` estimated tokens: 0 if admitted (it is now in flight and
        must be ended with ``finish``), else the milliseconds to wait before asking again (always
        >= 1; a lower bound when the slot to free is held by a call still in flight)."""
        if tokens < 0:
            raise ValueError("tokens must be >= 0")
        now = self._advance(now_ms)
        wait = max(0, self._blocked_until - now)
        rpm = self._effective(self.config.rpm)
        if rpm is not None:
            excess = self._in_flight + len(self._log) + 1 - rpm
            if excess > 0:
                wait = max(wait, self._wait_for_slots(now, excess))
        tpm = self._effective(self.config.tpm)
        if tpm is not None:
            excess = self._in_flight_tokens + self._tokens + min(tokens, tpm) - tpm
            if excess > 0:
                wait = max(wait, self._wait_for_tokens(now, excess))
        if self._requests_left is not None and self._requests_left < 1:
            wait = max(wait, self._requests_reset_at - now)
        if self._tokens_left is not None and tokens > self._tokens_left:
            wait = max(wait, self._tokens_reset_at - now)
        if wait > 0:
            return wait
        self._in_flight += 1
        self._in_flight_tokens += tokens
        if self._requests_left is not None:
            self._requests_left -= 1
        if self._tokens_left is not None:
            self._tokens_left -= tokens
        return 0

    def _wait_for_slots(self, now: int, excess: int) -> int:
        """Until ``excess`` entries have left the log; a whole window when that is not enough
        (a call in flight must end first, and then stays a window)."""
        if excess > len(self._log):
            return self.config.window_ms
        return self._log[excess - 1][0] + self.config.window_ms - now

    def _wait_for_tokens(self, now: int, excess: int) -> int:
        freed = 0
        for finished_at, tokens in self._log:
            freed += tokens
            if freed >= excess:
                return finished_at + self.config.window_ms - now
        return self.config.window_ms  # tokens of calls still in flight must be freed

    def finish(self, now_ms: int, tokens_estimated: int, tokens_actual: int) -> None:
        """End a call admitted by ``try_acquire`` with ``tokens_estimated``, whatever its outcome
        (answer, error, cancellation): its slot stays in the window until ``window_ms`` after
        ``now_ms``, counting ``tokens_actual`` (0 for a call that used none). An actual count
        above the estimate may push that window over TPM."""
        if self._in_flight < 1:
            raise RuntimeError("finish without a call in flight")  # a bug in the caller
        now = self._advance(now_ms)
        self._in_flight -= 1
        self._in_flight_tokens -= tokens_estimated
        actual = max(0, tokens_actual)
        self._log.append((now, actual))
        self._tokens += actual

    @property
    def in_flight(self) -> int:
        """Calls admitted and not finished."""
        return self._in_flight

    # -- learning from the provider -------------------------------------------------------------

    def observe(
        self,
        now_ms: int,
        *,
        rate_limited: bool,
        retry_after_ms: int | None = None,
        remaining_requests: int | None = None,
        remaining_tokens: int | None = None,
        reset_requests_ms: int | None = None,
        reset_tokens_ms: int | None = None,
    ) -> None:
        """Learn from one provider response: ``rate_limited`` is True for a 429 (rate, not
        spend), False for an accepted call. Don't call it for other errors. The header values
        are plain ints parsed elsewhere; reset_* are durations from ``now_ms``."""
        now = self._advance(now_ms)
        if retry_after_ms is not None:
            self._blocked_until = max(self._blocked_until, now + max(0, retry_after_ms))
        if remaining_requests is not None:
            self._requests_left = max(0, remaining_requests)
            self._requests_reset_at = now + _or(reset_requests_ms, self.config.default_reset_ms)
        if remaining_tokens is not None:
            self._tokens_left = max(0, remaining_tokens)
            self._tokens_reset_at = now + _or(reset_tokens_ms, self.config.default_reset_ms)
        if rate_limited:
            if now - self._last_decrease >= self.config.decrease_cooldown_ms:
                self._factor = max(
                    self.config.min_rate_factor, self._factor * self.config.decrease_factor
                )
                self._last_decrease = now
            self._last_increase = now
        else:
            # Time spent blocked by a Retry-After is not evidence that the provider recovered.
            since = max(self._last_increase, min(self._blocked_until, now))
            elapsed_s = (now - since) / 1000
            self._factor = min(1.0, self._factor + self.config.increase_per_s * elapsed_s)
            self._last_increase = now

    # -- status -------------------------------------------------------------------------------

    def snapshot(self, now_ms: int) -> LimiterSnapshot:
        self._advance(now_ms)
        rpm = self._effective(self.config.rpm)
        tpm = self._effective(self.config.tpm)
        return LimiterSnapshot(
            effective_rpm=rpm,
            effective_tpm=tpm,
            requests_available=(
                None if rpm is None else max(0, rpm - self._in_flight - len(self._log))
            ),
            tokens_available=(
                None if tpm is None else max(0, tpm - self._in_flight_tokens - self._tokens)
            ),
            rate_factor=self._factor,
            share=self._share,
            blocked_until_ms=self._blocked_until,
        )


def _or(value: int | None, default: int) -> int:
    return default if value is None else max(0, value)
