"""The ingress's HTTP error table (connectors/ingress/errors.py)."""

from __future__ import annotations

import pytest

from connectors.ingress import errors
from connectors.ingress.errors import ApiError


@pytest.mark.parametrize(
    ("status", "reason", "code"),
    [
        ("ok", "", 200),
        ("cached", "", 200),
        ("degraded", "breaker_open", 200),
        ("rejected", "rate_limited", 429),
        ("rejected", "budget_exceeded", 429),
        ("shed", "rate_limited", 429),
        ("rejected", "invalid", 400),
        ("rejected", "unknown_tenant", 400),
        ("rejected", "cache_miss", 504),
        ("shed", "overloaded", 503),
        ("shed", "deadline_expired", 503),
        ("failed", "provider_error", 503),
        ("failed", "unavailable", 503),
        ("exploded", "", 502),
    ],
)
def test_http_status_follows_the_status_and_reason(status: str, reason: str, code: int) -> None:
    assert errors.http_status(status, reason) == code


@pytest.mark.parametrize(
    ("error", "status", "kind", "code"),
    [
        (errors.unauthorized(), 401, "invalid_request_error", "invalid_api_key"),
        (
            errors.priority_not_allowed("critical", "high", "x-sluicegate-priority"),
            403,
            "permission_error",
            "priority_not_allowed",
        ),
        (errors.bad_json("Expecting value"), 400, "invalid_request_error", "invalid_json"),
        (errors.invalid("bad", "stop"), 400, "invalid_request_error", "invalid_value"),
        (errors.model_not_found("gpt-9"), 404, "invalid_request_error", "model_not_found"),
        (errors.too_large("1 bytes"), 413, "invalid_request_error", "request_too_large"),
        (errors.unavailable(), 503, "server_error", "unavailable"),
        (errors.timeout(125.0, "rid"), 504, "timeout", "timeout"),
        (errors.internal(), 500, "server_error", "internal_error"),
    ],
)
def test_ingress_errors_have_openai_status_type_and_code(
    error: ApiError, status: int, kind: str, code: str
) -> None:
    assert error.status == status
    body = error.body()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert (body["error"]["type"], body["error"]["code"]) == (kind, code)
    assert body["error"]["message"]


def test_priority_refusal_names_both_priorities_and_the_header() -> None:
    error = errors.priority_not_allowed("critical", "high", "x-sluicegate-priority")
    assert "'critical'" in error.message and "'high'" in error.message
    assert error.param == "x-sluicegate-priority"


def test_timeout_is_not_retried_by_the_sdk_and_names_the_request() -> None:
    error = errors.timeout(125.0, "rid7")
    assert error.headers == {"x-should-retry": "false", "x-sluicegate-request-id": "rid7"}
    assert "125s" in error.message


def test_unavailable_asks_to_retry_after_a_second() -> None:
    assert errors.unavailable().headers == {"retry-after": "1", "retry-after-ms": "1000"}


@pytest.mark.parametrize(
    ("retry_after_ms", "seconds", "ms"),
    [
        (None, "1", "1000"),
        (0, "1", "1"),
        (1, "1", "1"),
        (1000, "1", "1000"),
        (1001, "2", "1001"),
        (59_500, "60", "59500"),
    ],
)
def test_retry_after_is_whole_seconds_rounded_up_and_exact_ms(
    retry_after_ms: int | None, seconds: str, ms: str
) -> None:
    assert errors.retry_after_headers(retry_after_ms) == {
        "retry-after": seconds,
        "retry-after-ms": ms,
    }


def test_api_error_body_is_openais_shape() -> None:
    assert ApiError(400, "m", param="p", code="c").body() == {
        "error": {"message": "m", "type": "invalid_request_error", "param": "p", "code": "c"}
    }
