"""Rate-limit header parsing, from real-world header examples."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from connectors.providers.ratelimit_headers import (
    RateLimitInfo,
    parse_duration_ms,
    parse_ratelimit_headers,
    parse_retry_after_ms,
    parse_rfc3339_ms,
)

NOW_MS = int(datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    ("text", "expected_ms"),
    [
        ("1s", 1000),
        ("6m0s", 360_000),
        ("20ms", 20),
        ("1h2m3.5s", 3_723_500),
        ("0s", 0),
        ("17.28s", 17_280),
        ("2m59.56s", 179_560),
        ("1.5", 1500),  # a bare number is seconds
        ("5", 5000),
        ("", None),
        ("soon", None),
        ("1s garbage", None),
        ("s", None),
        ("inf", None),
    ],
)
def test_parse_duration_reads_openai_reset_formats(text: str, expected_ms: int | None) -> None:
    assert parse_duration_ms(text) == expected_ms


@pytest.mark.parametrize(
    ("value", "expected_ms"),
    [
        ("2", 2000),
        ("0", 0),
        ("1.5", 1500),
        ("Wed, 01 May 2024 12:00:30 GMT", 30_000),
        ("Wed, 01 May 2024 11:59:00 GMT", 0),  # in the past: retry now
        ("-3", 0),
        ("later", None),
        ("nan", None),
    ],
)
def test_retry_after_accepts_seconds_and_http_dates(value: str, expected_ms: int | None) -> None:
    assert parse_retry_after_ms(value, NOW_MS) == expected_ms


@pytest.mark.parametrize(
    ("value", "expected_ms"),
    [
        ("2024-05-01T12:00:07Z", 7000),
        ("2024-05-01T12:00:00.250Z", 250),
        ("2024-05-01T14:00:01+02:00", 1000),
        ("2024-05-01T11:00:00Z", 0),
        ("2024-05-01T12:00:07", None),  # no timezone: ambiguous
        ("tomorrow", None),
    ],
)
def test_rfc3339_reset_is_relative_to_now(value: str, expected_ms: int | None) -> None:
    assert parse_rfc3339_ms(value, NOW_MS) == expected_ms


def test_openai_headers_fill_every_field() -> None:
    headers = {
        "x-ratelimit-limit-requests": "10000",
        "x-ratelimit-limit-tokens": "2000000",
        "x-ratelimit-remaining-requests": "9999",
        "x-ratelimit-remaining-tokens": "1999985",
        "x-ratelimit-reset-requests": "6ms",
        "x-ratelimit-reset-tokens": "0s",
    }
    assert parse_ratelimit_headers(headers, NOW_MS) == RateLimitInfo(
        retry_after_ms=None,
        remaining_requests=9999,
        remaining_tokens=1_999_985,
        reset_requests_ms=6,
        reset_tokens_ms=0,
        limit_requests=10_000,
        limit_tokens=2_000_000,
    )


def test_header_names_are_case_insensitive() -> None:
    info = parse_ratelimit_headers({"Retry-After": "3", "X-RateLimit-Remaining-Requests": "0"}, 0)
    assert (info.retry_after_ms, info.remaining_requests) == (3000, 0)


@pytest.mark.parametrize(
    ("headers", "expected_ms"),
    [
        ({"retry-after": "2", "retry-after-ms": "1500"}, 1500),  # the precise one wins
        ({"retry-after": "2"}, 2000),
        ({"retry-after-ms": "20"}, 20),
        ({"retry-after-ms": "junk", "retry-after": "1"}, 1000),
        ({}, None),
    ],
)
def test_retry_after_ms_takes_precedence(headers: dict[str, str], expected_ms: int | None) -> None:
    assert parse_ratelimit_headers(headers, NOW_MS).retry_after_ms == expected_ms


def test_anthropic_headers_report_the_tightest_token_bucket() -> None:
    headers = {
        "retry-after": "7",
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2024-05-01T12:00:07Z",
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-input-tokens-remaining": "12000",
        "anthropic-ratelimit-input-tokens-reset": "2024-05-01T12:00:02Z",
        "anthropic-ratelimit-output-tokens-limit": "8000",
        "anthropic-ratelimit-output-tokens-remaining": "500",
        "anthropic-ratelimit-output-tokens-reset": "2024-05-01T12:00:05Z",
    }
    assert parse_ratelimit_headers(headers, NOW_MS) == RateLimitInfo(
        retry_after_ms=7000,
        remaining_requests=0,
        remaining_tokens=500,
        reset_requests_ms=7000,
        reset_tokens_ms=5000,
        limit_requests=50,
        limit_tokens=8000,
    )


def test_anthropic_combined_token_bucket_is_read() -> None:
    headers = {
        "anthropic-ratelimit-tokens-limit": "100000",
        "anthropic-ratelimit-tokens-remaining": "99000",
        "anthropic-ratelimit-tokens-reset": "2024-05-01T12:01:00Z",
    }
    info = parse_ratelimit_headers(headers, NOW_MS)
    assert (info.limit_tokens, info.remaining_tokens, info.reset_tokens_ms) == (
        100_000,
        99_000,
        60_000,
    )


def test_malformed_values_become_none_not_errors() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "many",
        "x-ratelimit-reset-requests": "whenever",
        "x-ratelimit-limit-tokens": "1e400",
    }
    assert parse_ratelimit_headers(headers, NOW_MS) == RateLimitInfo()
