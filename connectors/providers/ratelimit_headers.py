"""Parse providers' rate-limit response headers into one ``RateLimitInfo`` (pure, stdlib only).

Headers understood (names are case-insensitive):

- ``retry-after``: delay in seconds (``"2"``, ``"1.5"``) or an HTTP date
  (``"Wed, 21 Oct 2015 07:28:00 GMT"``); ``retry-after-ms`` (OpenAI) wins when both are present.
- OpenAI: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; resets are Go-style
  durations such as ``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"``.
- Anthropic: ``anthropic-ratelimit-requests-{limit,remaining,reset}`` and the same for
  ``tokens``, ``input-tokens`` and ``output-tokens``; resets are RFC 3339 timestamps. When
  several token buckets are present, the one with the fewest remaining tokens is reported
  (the binding constraint), with its own limit and reset.

Every time is returned relative to ``now_ms`` in milliseconds, clamped at 0. A malformed value
yields ``None`` for that field, never an exception: the headers come from outside. Cost: one
pass over the headers plus a constant number of small parses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|h|m|s)")
_ANTHROPIC_TOKEN_BUCKETS = ("tokens", "input-tokens", "output-tokens")


@dataclass(frozen=True)
class RateLimitInfo:
    """What a provider told us about its limits; ``None`` means "not said"."""

    retry_after_ms: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_ms: int | None = None
    reset_tokens_ms: int | None = None
    limit_requests: int | None = None
    limit_tokens: int | None = None


EMPTY = RateLimitInfo()


def parse_duration_ms(text: str) -> int | None:
    """``"6m0s"`` -> 360000, ``"20ms"`` -> 20, ``"1.5"`` -> 1500 (bare numbers are seconds)."""
    text = text.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0, math.ceil(seconds * 1000)) if math.isfinite(seconds) else None
    total = 0.0
    pos = 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        value, unit = float(match.group(1)), match.group(2)
        total += value * {"h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}[unit]
        pos = match.end()
    if pos != len(text) or pos == 0:
        return None
    return math.ceil(total)


def parse_retry_after_ms(value: str, now_ms: int) -> int | None:
    """A ``retry-after`` value (seconds or HTTP date) as milliseconds from ``now_ms``."""
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        return max(0, math.ceil(when.timestamp() * 1000) - now_ms)
    return max(0, math.ceil(seconds * 1000)) if math.isfinite(seconds) else None


def parse_rfc3339_ms(value: str, now_ms: int) -> int | None:
    """An RFC 3339 timestamp as milliseconds from ``now_ms`` (0 if already past)."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return max(0, math.ceil(when.timestamp() * 1000) - now_ms)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        try:
            return int(float(value))
        except (ValueError, OverflowError):
            return None


def parse_ratelimit_headers(headers: Mapping[str, str], now_ms: int) -> RateLimitInfo:
    """Read every rate-limit header we know from ``headers`` into a ``RateLimitInfo``."""
    h = {k.lower(): v for k, v in headers.items()}

    retry_after_ms = None
    if "retry-after-ms" in h:
        ms = _int(h["retry-after-ms"])
        retry_after_ms = max(0, ms) if ms is not None else None
    if retry_after_ms is None and "retry-after" in h:
        retry_after_ms = parse_retry_after_ms(h["retry-after"], now_ms)

    if any(k.startswith("anthropic-ratelimit-") for k in h):
        return _anthropic(h, now_ms, retry_after_ms)

    def reset(name: str) -> int | None:
        value = h.get(name)
        return parse_duration_ms(value) if value is not None else None

    return RateLimitInfo(
        retry_after_ms=retry_after_ms,
        remaining_requests=_int(h.get("x-ratelimit-remaining-requests")),
        remaining_tokens=_int(h.get("x-ratelimit-remaining-tokens")),
        reset_requests_ms=reset("x-ratelimit-reset-requests"),
        reset_tokens_ms=reset("x-ratelimit-reset-tokens"),
        limit_requests=_int(h.get("x-ratelimit-limit-requests")),
        limit_tokens=_int(h.get("x-ratelimit-limit-tokens")),
    )


def _anthropic(h: dict[str, str], now_ms: int, retry_after_ms: int | None) -> RateLimitInfo:
    prefix = "anthropic-ratelimit-"

    def reset(bucket: str) -> int | None:
        value = h.get(f"{prefix}{bucket}-reset")
        return parse_rfc3339_ms(value, now_ms) if value is not None else None

    tightest: str | None = None
    tightest_remaining: int | None = None
    for bucket in _ANTHROPIC_TOKEN_BUCKETS:
        remaining = _int(h.get(f"{prefix}{bucket}-remaining"))
        if remaining is not None and (tightest_remaining is None or remaining < tightest_remaining):
            tightest, tightest_remaining = bucket, remaining
    if tightest is None:  # no remaining counts: still report a limit/reset if one is given
        tightest = next((b for b in _ANTHROPIC_TOKEN_BUCKETS if f"{prefix}{b}-limit" in h), None)

    return RateLimitInfo(
        retry_after_ms=retry_after_ms,
        remaining_requests=_int(h.get(f"{prefix}requests-remaining")),
        remaining_tokens=tightest_remaining,
        reset_requests_ms=reset("requests"),
        reset_tokens_ms=reset(tightest) if tightest else None,
        limit_requests=_int(h.get(f"{prefix}requests-limit")),
        limit_tokens=_int(h.get(f"{prefix}{tightest}-limit")) if tightest else None,
    )
