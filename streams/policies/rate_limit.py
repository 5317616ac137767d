"""Tenant rate limits: requests and tokens per sliding minute and per calendar day.

What is limited: ``rpm``/``tpm`` (requests/tokens per minute) and ``rpd``/``tpd`` (per
day) for one scope, a tenant or a (tenant, feature); each scope has its own state and
config. Over a limit is a returned ``RateDecision(allowed=False)``, never an exception.

How the minute is counted: a sliding window of ``bucket_ms`` buckets (1 s by default).
At time ``t`` the count is the sum of the buckets that start at or after
``bucket(t) - 60 s``: the last full minute plus the current partial bucket. Every
admitted unit therefore stays counted for at least 60 s after it was admitted, so NO
60-second interval ever holds more than the limit; the price is that a unit may stay
counted up to one bucket longer than an exact sliding log would keep it (a client may
wait up to 1 s more than strictly needed). The two-window weighted counter of the
``limits`` library is smaller but can admit up to twice the limit within one minute.

How the day is counted: the calendar day in ``tz`` (``windows.py``), reset at local
midnight, like a daily quota.

``retry_after_ms``: counts only fall with time (buckets age out, days reset), so each
limit has an earliest instant at which the request fits, and the request fits all of
them from the latest of those instants on. That instant is computed exactly: retrying
after ``retry_after_ms``, with no traffic in between, is admitted. A request larger
than a limit can never fit: ``retry_after_ms`` is ``None``.

Cost: O(60 s / bucket_ms) = 61 buckets per check or record; the state is at most 61
``(bucket_start_ms, requests, tokens)`` triples and two day counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.policies.verdict import Reason
from streams.policies.windows import (
    UTC_ZONE,
    WindowKind,
    quote_part,
    state_key,
    window_end_ms,
    window_id,
)

MINUTE_MS = 60_000
KEY_VERSION = 1


@dataclass(frozen=True)
class RateLimitConfig:
    rpm: int | None = None  # requests per sliding minute
    tpm: int | None = None  # tokens per sliding minute
    rpd: int | None = None  # requests per calendar day in ``tz``
    tpd: int | None = None  # tokens per calendar day in ``tz``
    tz: str = UTC_ZONE
    bucket_ms: int = 1_000  # granularity of the sliding minute

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "rpd", "tpd"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None")
        if self.bucket_ms < 1 or MINUTE_MS % self.bucket_ms:
            raise ValueError("bucket_ms must divide 60000")


@dataclass(frozen=True)
class RateLimitState:
    """Counts of one scope. ``buckets`` are ``(start_ms, requests, tokens)``, ascending."""

    buckets: tuple[tuple[int, int, int], ...] = ()
    day: str = ""  # window id of the day counted, e.g. "day/2026-11-27"
    day_requests: int = 0
    day_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "buckets": [list(b) for b in self.buckets],
            "day": self.day,
            "day_requests": self.day_requests,
            "day_tokens": self.day_tokens,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RateLimitState:
        buckets = tuple(sorted((int(s), int(r), int(t)) for s, r, t in data.get("buckets", ())))
        return cls(
            buckets,
            str(data.get("day", "")),
            int(data.get("day_requests", 0)),
            int(data.get("day_tokens", 0)),
        )


@dataclass(frozen=True)
class LimitStatus:
    """One limit's verdict. ``retry_at_ms`` is when the request fits (``now_ms`` if it
    does now), ``None`` if it never can; ``reset_ms`` is when the count drops to zero."""

    name: str  # "rpm", "tpm", "rpd" or "tpd"
    limit: int
    used: int  # counted before this request
    amount: int  # what this request adds
    retry_at_ms: int | None
    reset_ms: int

    @property
    def allowed(self) -> bool:
        return self.used + self.amount <= self.limit


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    retry_after_ms: int | None  # 0 when allowed; None when the request can never fit
    limit_name: str  # the binding limit ("" when none is configured)
    limit: int | None
    remaining: int | None  # left after this request if allowed, else left now
    reset_ms: int  # epoch ms at which the binding limit's count is back to zero
    statuses: tuple[LimitStatus, ...] = field(default=())

    @property
    def reason(self) -> Reason:
        return Reason.NONE if self.allowed else Reason.RATE_LIMITED


def rate_limit_key(tenant: str, feature: str | None = None) -> str:
    """``ratelimit/v1/{tenant}`` or ``ratelimit/v1/{tenant}/feature/{feature}``."""
    parts = [quote_part(tenant)]
    if feature is not None:
        parts += ["feature", quote_part(feature)]
    return state_key("ratelimit", KEY_VERSION, *parts)


def _counted(state: RateLimitState, now_ms: int, bucket_ms: int) -> list[tuple[int, int, int]]:
    cutoff = now_ms // bucket_ms * bucket_ms - MINUTE_MS
    return [b for b in state.buckets if b[0] >= cutoff]


def _minute_status(
    name: str,
    limit: int,
    buckets: list[tuple[int, int, int]],
    column: int,
    amount: int,
    now_ms: int,
    bucket_ms: int,
) -> LimitStatus:
    used = sum(b[column] for b in buckets)
    reset = buckets[-1][0] + MINUTE_MS + bucket_ms if used else now_ms
    retry: int | None = now_ms
    if amount > limit:
        retry = None
    elif used + amount > limit:
        left = used
        for bucket in buckets:  # oldest first; a bucket stops counting at start + 60 s + 1 bucket
            left -= bucket[column]
            if left + amount <= limit:
                retry = bucket[0] + MINUTE_MS + bucket_ms
                break
    return LimitStatus(name, limit, used, amount, retry, reset)


def _day_status(
    name: str, limit: int, used: int, amount: int, now_ms: int, end: int
) -> LimitStatus:
    retry: int | None = now_ms
    if amount > limit:
        retry = None
    elif used + amount > limit:
        retry = end
    return LimitStatus(name, limit, used, amount, retry, end)


def check(state: RateLimitState, now_ms: int, tokens: int, config: RateLimitConfig) -> RateDecision:
    """Would one request of ``tokens`` tokens fit every configured limit now?"""
    if tokens < 0:
        raise ValueError("tokens must be >= 0")
    buckets = _counted(state, now_ms, config.bucket_ms)
    today = window_id(WindowKind.DAY, now_ms, config.tz)
    same_day = state.day == today
    day_end = window_end_ms(WindowKind.DAY, now_ms, config.tz)
    statuses: list[LimitStatus] = []
    if config.rpm is not None:
        statuses.append(_minute_status("rpm", config.rpm, buckets, 1, 1, now_ms, config.bucket_ms))
    if config.tpm is not None:
        tpm = _minute_status("tpm", config.tpm, buckets, 2, tokens, now_ms, config.bucket_ms)
        statuses.append(tpm)
    if config.rpd is not None:
        used = state.day_requests if same_day else 0
        statuses.append(_day_status("rpd", config.rpd, used, 1, now_ms, day_end))
    if config.tpd is not None:
        used = state.day_tokens if same_day else 0
        statuses.append(_day_status("tpd", config.tpd, used, tokens, now_ms, day_end))
    return _decide(statuses, now_ms)


def _decide(statuses: list[LimitStatus], now_ms: int) -> RateDecision:
    if not statuses:
        return RateDecision(True, 0, "", None, None, now_ms)
    allowed = all(s.allowed for s in statuses)
    if allowed:  # report the limit with the least room left, as a share of the limit
        binding = min(statuses, key=lambda s: (s.limit - s.used - s.amount) / s.limit)
        remaining = binding.limit - binding.used - binding.amount
        return RateDecision(
            True, 0, binding.name, binding.limit, remaining, binding.reset_ms, tuple(statuses)
        )
    never = [s for s in statuses if s.retry_at_ms is None]
    binding = never[0] if never else max(statuses, key=lambda s: s.retry_at_ms or 0)
    retry = None if binding.retry_at_ms is None else binding.retry_at_ms - now_ms
    remaining = max(0, binding.limit - binding.used)
    return RateDecision(
        False, retry, binding.name, binding.limit, remaining, binding.reset_ms, tuple(statuses)
    )


def combine(*decisions: RateDecision) -> RateDecision:
    """One decision for several scopes (tenant, then tenant+feature): allowed only if all
    are; the binding one is the latest to clear (a never-fitting one first)."""
    denied = [d for d in decisions if not d.allowed]
    if not denied:
        return decisions[0] if decisions else RateDecision(True, 0, "", None, None, 0)
    never = [d for d in denied if d.retry_after_ms is None]
    return never[0] if never else max(denied, key=lambda d: d.retry_after_ms or 0)


def record(
    state: RateLimitState, now_ms: int, tokens: int, config: RateLimitConfig, requests: int = 1
) -> RateLimitState:
    """The state after admitting ``requests`` requests of ``tokens`` tokens at ``now_ms``."""
    if tokens < 0 or requests < 0:
        raise ValueError("tokens and requests must be >= 0")
    start = now_ms // config.bucket_ms * config.bucket_ms
    counts = {s: (r, t) for s, r, t in _counted(state, now_ms, config.bucket_ms)}
    r, t = counts.get(start, (0, 0))
    counts[start] = (r + requests, t + tokens)
    buckets = tuple(sorted((s, r, t) for s, (r, t) in counts.items()))
    today = window_id(WindowKind.DAY, now_ms, config.tz)
    if state.day != today:
        return RateLimitState(buckets, today, requests, tokens)
    return RateLimitState(buckets, today, state.day_requests + requests, state.day_tokens + tokens)


def adjust_tokens(
    state: RateLimitState, recorded_at_ms: int, delta: int, config: RateLimitConfig
) -> RateLimitState:
    """Correct the tokens recorded at ``recorded_at_ms`` by ``delta`` (actual minus the
    estimate recorded at admission), in the bucket and day they were counted in; a
    bucket or day that has already passed is left alone. Counts never go below zero."""
    start = recorded_at_ms // config.bucket_ms * config.bucket_ms
    buckets = tuple(
        (s, r, max(0, t + delta)) if s == start else (s, r, t) for s, r, t in state.buckets
    )
    day_tokens = state.day_tokens
    if state.day == window_id(WindowKind.DAY, recorded_at_ms, config.tz):
        day_tokens = max(0, day_tokens + delta)
    return RateLimitState(buckets, state.day, state.day_requests, day_tokens)
