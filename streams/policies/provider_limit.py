"""Per provider/model limiter: a worker's share of a provider's RPM and TPM, learning from 429s.

Algorithm: a sliding log of what this worker admitted (timestamp, estimated tokens) over the
last ``window_ms`` (60 s). A request is admitted only if, counting it, the log holds at most
the effective request limit and at most the effective token limit. So the guarantee is exact:

    in ANY window of ``window_ms`` (two admissions less than ``window_ms`` apart are in the
    same window), admitted requests <= effective RPM and admitted estimated tokens <=
    effective TPM, where effective = max(1, floor(configured * share * rate_factor)).

(A token bucket refilled at RPM/60 per second that starts full would allow up to 2 x RPM in a
60 s window; the log has no such edge.) Two documented exceptions: a single request whose
estimate exceeds the whole effective TPM is admitted alone into an otherwise empty window
(else it could never run), and ``refund`` with an actual count above the estimate raises the
count of a window after the fact.

On top of its own count it learns from the provider's responses (``observe``): a Retry-After
blocks every admission until it has passed; a ``remaining`` count of requests/tokens is
honoured until its reset (remaining 0 = wait for the reset); and the effective rate is AIMD:
halved (down to a floor) on a 429, at most once per ``decrease_cooldown_ms``, and raised back
linearly (``increase_per_s`` of configured per second) while calls succeed.

Cost: admission O(1) amortised (expired entries are popped from the left); computing how long
to wait when refused is O(n) in the entries of the window; memory O(admissions per window).
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
        self._log: deque[list[int]] = deque()  # [admitted_at_ms, estimated_tokens], oldest first
        self._tokens = 0  # sum of tokens in _log
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
        """Admit one request of ``tokens`` estimated tokens: 0 if admitted (and counted), else
        the milliseconds to wait before asking again (always >= 1)."""
        if tokens < 0:
            raise ValueError("tokens must be >= 0")
        now = self._advance(now_ms)
        wait = max(0, self._blocked_until - now)
        rpm = self._effective(self.config.rpm)
        if rpm is not None and len(self._log) + 1 > rpm:
            oldest_to_expire = self._log[len(self._log) - rpm]
            wait = max(wait, oldest_to_expire[0] + self.config.window_ms - now)
        tpm = self._effective(self.config.tpm)
        if tpm is not None:
            excess = self._tokens + min(tokens, tpm) - tpm
            if excess > 0:
                wait = max(wait, self._wait_for_tokens(now, excess))
        if self._requests_left is not None and self._requests_left < 1:
            wait = max(wait, self._requests_reset_at - now)
        if self._tokens_left is not None and tokens > self._tokens_left:
            wait = max(wait, self._tokens_reset_at - now)
        if wait > 0:
            return wait
        self._log.append([now, tokens])
        self._tokens += tokens
        if self._requests_left is not None:
            self._requests_left -= 1
        if self._tokens_left is not None:
            self._tokens_left -= tokens
        return 0

    def _wait_for_tokens(self, now: int, excess: int) -> int:
        freed = 0
        for admitted_at, tokens in self._log:
            freed += tokens
            if freed >= excess:
                return admitted_at + self.config.window_ms - now
        raise AssertionError("the log holds fewer tokens than its running sum")  # a bug

    def refund(
        self, now_ms: int, acquired_at_ms: int, tokens_estimated: int, tokens_actual: int
    ) -> None:
        """Correct the estimate of the request admitted at ``acquired_at_ms`` (the ``now_ms`` of
        its ``try_acquire``) once its usage is known. The entry keeps its admission time, as the
        provider counts it; an actual count above the estimate may push that window over TPM.
        A request that already left the window, or is unknown, is ignored."""
        self._advance(now_ms)
        for entry in reversed(self._log):
            if entry[0] < acquired_at_ms:
                return
            if entry[0] == acquired_at_ms and entry[1] == tokens_estimated:
                actual = max(0, tokens_actual)
                self._tokens += actual - entry[1]
                entry[1] = actual
                return

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
            requests_available=None if rpm is None else max(0, rpm - len(self._log)),
            tokens_available=None if tpm is None else max(0, tpm - self._tokens),
            rate_factor=self._factor,
            share=self._share,
            blocked_until_ms=self._blocked_until,
        )


def _or(value: int | None, default: int) -> int:
    return default if value is None else max(0, value)
