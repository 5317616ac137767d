"""Retries of a failed provider call: full-jitter backoff, deadlines, Retry-After, a retry budget.

Algorithm: after attempt n (1-based) fails with a retryable ``FailureKind``, wait
``uniform(0, min(cap_ms, base_ms * 2**(n-1)))`` ("full jitter"), but never less than the
server's Retry-After. No retry when the kind is never retryable, the attempt cap is reached,
the Retry-After is absurdly long, the next attempt could not start ``min_attempt_ms`` before
the request's deadline, or the global ``RetryBudget`` is empty.

The budget (as in Finagle and gRPC) keeps retries at most ``ratio`` of first attempts over a
sliding ``window_s`` seconds, plus a small reserve of ``min_retries_per_s`` so that low traffic
can still retry: during an outage retries add at most ``ratio`` load instead of multiplying it.
It counts per-second buckets in a ring: O(1) per call, amortised; memory O(window_s).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from streams.policies.verdict import Reason


class FailureKind(StrEnum):
    RATE_LIMITED = "rate_limited"  # 429 rate limit: wait Retry-After, retry
    OVERLOADED = "overloaded"  # 529 / 503: back off, counts toward the breaker
    SPEND_LIMIT = "spend_limit"  # 429 insufficient quota / billing: never retry
    BAD_REQUEST = "bad_request"  # 400 / 404 / 413 / 422: never retry
    AUTH = "auth"  # 401 / 403: never retry
    TIMEOUT = "timeout"  # no answer in time: retryable, counts toward the breaker
    UNAVAILABLE = "unavailable"  # other 5xx, connection errors: retryable, counts

    @property
    def retryable(self) -> bool:
        return self in _RETRYABLE

    @property
    def counts_toward_breaker(self) -> bool:
        """Does this outcome say the provider is unhealthy (record it as a breaker failure)?"""
        return self in _UNHEALTHY

    @property
    def reason(self) -> Reason:
        """The terminal-response reason when this is the last failure."""
        return _REASONS[self]


_RETRYABLE = frozenset(
    {FailureKind.RATE_LIMITED, FailureKind.OVERLOADED, FailureKind.TIMEOUT, FailureKind.UNAVAILABLE}
)
_UNHEALTHY = frozenset({FailureKind.OVERLOADED, FailureKind.TIMEOUT, FailureKind.UNAVAILABLE})
_REASONS = {
    FailureKind.RATE_LIMITED: Reason.PROVIDER_RATE_LIMITED,
    FailureKind.OVERLOADED: Reason.UNAVAILABLE,
    FailureKind.SPEND_LIMIT: Reason.PROVIDER_ERROR,
    FailureKind.BAD_REQUEST: Reason.PROVIDER_ERROR,
    FailureKind.AUTH: Reason.PROVIDER_ERROR,
    FailureKind.TIMEOUT: Reason.TIMEOUT,
    FailureKind.UNAVAILABLE: Reason.UNAVAILABLE,
}


@dataclass(frozen=True)
class RetryBudgetConfig:
    ratio: float = 0.2  # retries <= 20 % of first attempts in the window ...
    min_retries_per_s: float = 1.0  # ... plus this reserve per second of window
    window_s: int = 10

    def __post_init__(self) -> None:
        if self.ratio < 0 or self.min_retries_per_s < 0 or self.window_s < 1:
            raise ValueError("ratio and min_retries_per_s must be >= 0, window_s >= 1")


class RetryBudget:
    """Retries allowed across all requests of one worker (or one provider), by sliding window."""

    def __init__(self, config: RetryBudgetConfig) -> None:
        self.config = config
        size = config.window_s
        self._firsts = [0] * size
        self._retries = [0] * size
        self._head: int | None = None  # newest epoch second in the ring
        self._first_total = 0
        self._retry_total = 0

    def _roll(self, now_ms: int) -> int:
        second = now_ms // 1000
        size = self.config.window_s
        if self._head is None or second > self._head:
            start = (
                second - size + 1 if self._head is None else max(self._head + 1, second - size + 1)
            )
            for s in range(start, second + 1):  # at most `size` buckets
                i = s % size
                self._first_total -= self._firsts[i]
                self._retry_total -= self._retries[i]
                self._firsts[i] = self._retries[i] = 0
            self._head = second
        return self._head % size

    def record_first_attempt(self, now_ms: int) -> None:
        """Count a request's first call (the deposit that earns retries)."""
        self._firsts[self._roll(now_ms)] += 1
        self._first_total += 1

    def available(self, now_ms: int) -> float:
        """Retries that may still be spent in the current window."""
        self._roll(now_ms)
        allowed = (
            self.config.ratio * self._first_total
            + self.config.min_retries_per_s * self.config.window_s
        )
        return allowed - self._retry_total

    def try_spend(self, now_ms: int) -> bool:
        """Take one retry from the budget: False (and nothing taken) when it is empty."""
        if self.available(now_ms) < 1:
            return False
        self._retries[self._roll(now_ms)] += 1
        self._retry_total += 1
        return True


@dataclass(frozen=True)
class RetryConfig:
    max_attempts: int = 3  # per request and model, the first attempt included
    base_ms: int = 500
    cap_ms: int = 20_000
    min_attempt_ms: int = 0  # an attempt needs at least this much time before the deadline
    max_retry_after_ms: int = 60_000  # told to wait longer: give up here (fall back instead)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if min(self.base_ms, self.cap_ms, self.min_attempt_ms, self.max_retry_after_ms) < 0:
            raise ValueError("durations must be >= 0")


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay_ms: int  # wait this long before the next attempt (0 when not retrying)
    reason: str  # not_retryable | attempt_cap | retry_after_too_long | deadline
    #              | budget_exhausted | backoff | retry_after


class RetryPolicy:
    """Decides, after a failed attempt, whether and when to try the same model again."""

    def __init__(
        self, config: RetryConfig, rng: random.Random, budget: RetryBudget | None = None
    ) -> None:
        self.config = config
        self.rng = rng
        self.budget = budget

    def backoff_ceiling_ms(self, attempt: int) -> int:
        """The upper bound of the jittered delay after attempt ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError("attempt is 1-based")
        exponent = min(attempt - 1, 62)  # 2**62 * base is past any cap
        return min(self.config.cap_ms, self.config.base_ms << exponent)

    def decide(
        self,
        now_ms: int,
        attempt: int,
        kind: FailureKind,
        retry_after_ms: int | None = None,
        deadline_ms: int | None = None,
    ) -> RetryDecision:
        """``attempt``: attempts made so far (1 after the first call failed). A True decision
        has already taken its retry from the budget."""
        if not kind.retryable:
            return RetryDecision(False, 0, "not_retryable")
        if attempt >= self.config.max_attempts:
            return RetryDecision(False, 0, "attempt_cap")
        if retry_after_ms is not None and retry_after_ms > self.config.max_retry_after_ms:
            return RetryDecision(False, 0, "retry_after_too_long")
        delay = int(self.rng.random() * self.backoff_ceiling_ms(attempt))
        reason = "backoff"
        if retry_after_ms is not None and retry_after_ms > delay:
            delay, reason = retry_after_ms, "retry_after"
        if deadline_ms is not None and now_ms + delay + self.config.min_attempt_ms >= deadline_ms:
            return RetryDecision(False, 0, "deadline")
        if self.budget is not None and not self.budget.try_spend(now_ms):
            return RetryDecision(False, 0, "budget_exhausted")
        return RetryDecision(True, delay, reason)
