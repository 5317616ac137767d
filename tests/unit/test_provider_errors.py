"""Error classification at the connector boundary: status/code -> error class, secrets redacted."""

from __future__ import annotations

import json

import aiohttp
import httpx
import pytest

from connectors.errors import SluicegateError
from connectors.providers.errors import (
    AuthError,
    BadRequestError,
    OverloadedError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
    SpendLimitError,
    UnavailableError,
    classify_status,
)
from connectors.providers.transport import as_int, error_from_response, translate_exception

KEY = "sk-live-0123456789abcdefSECRET"


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (429, "rate_limit_exceeded", RateLimitedError),
        (429, None, RateLimitedError),
        (429, "insufficient_quota", SpendLimitError),
        (402, None, SpendLimitError),
        (400, "billing_error", SpendLimitError),
        (529, "overloaded_error", OverloadedError),
        (503, None, OverloadedError),
        (500, "server_error", UnavailableError),
        (502, None, UnavailableError),
        (504, None, UnavailableError),
        (408, None, ProviderTimeoutError),
        (400, "invalid_request_error", BadRequestError),
        (404, "model_not_found", BadRequestError),
        (422, None, BadRequestError),
        (401, "invalid_api_key", AuthError),
        (403, "permission_error", AuthError),
    ],
)
def test_status_and_code_select_the_error_class(
    status: int, code: str | None, expected: type[ProviderError]
) -> None:
    assert classify_status(status, code) is expected


@pytest.mark.parametrize(
    ("cls", "retryable", "counts_as_failure"),
    [
        (RateLimitedError, True, False),
        (SpendLimitError, False, False),
        (OverloadedError, True, True),
        (UnavailableError, True, True),
        (ProviderTimeoutError, True, True),
        (BadRequestError, False, False),
        (AuthError, False, False),
    ],
)
def test_retry_and_breaker_flags(
    cls: type[ProviderError], retryable: bool, counts_as_failure: bool
) -> None:
    error = cls("x")
    assert (error.retryable, error.counts_as_failure) == (retryable, counts_as_failure)
    assert isinstance(error, SluicegateError)


def test_message_never_contains_the_key() -> None:
    error = AuthError(f"Incorrect API key provided: {KEY}.", status=401, secret=KEY)
    assert KEY not in str(error)
    assert KEY not in repr(error)
    assert "[redacted]" in str(error)


def test_long_messages_are_truncated() -> None:
    assert len(str(UnavailableError("x" * 10_000))) < 700


def test_str_names_class_status_code_provider_and_model() -> None:
    error = RateLimitedError("slow down", provider="openai", model="gpt-4o", status=429, code="rl")
    assert str(error) == "RateLimitedError 429 [rl] from openai/gpt-4o: slow down"


OPENAI_QUOTA = {
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
}
OPENAI_RATE = {
    "error": {
        "message": "Rate limit reached for gpt-4o on requests per min (RPM): Limit 3.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}
ANTHROPIC_OVERLOADED = {
    "type": "error",
    "error": {"type": "overloaded_error", "message": "Overloaded"},
}
ANTHROPIC_AUTH = {
    "type": "error",
    "error": {"type": "authentication_error", "message": f"invalid x-api-key {KEY}"},
}


@pytest.mark.parametrize(
    ("status", "body", "headers", "cls", "code", "retry_after_ms"),
    [
        (429, OPENAI_QUOTA, {}, SpendLimitError, "insufficient_quota", None),
        (429, OPENAI_RATE, {"retry-after-ms": "250"}, RateLimitedError, "rate_limit_exceeded", 250),
        (
            529,
            ANTHROPIC_OVERLOADED,
            {"retry-after": "3"},
            OverloadedError,
            "overloaded_error",
            3000,
        ),
        (401, ANTHROPIC_AUTH, {}, AuthError, "authentication_error", None),
    ],
)
def test_error_bodies_of_both_apis_are_classified(
    status: int,
    body: dict[str, object],
    headers: dict[str, str],
    cls: type[ProviderError],
    code: str,
    retry_after_ms: int | None,
) -> None:
    error = error_from_response(
        status, json.dumps(body).encode(), headers, provider="p", model="m", secret=KEY
    )
    assert type(error) is cls
    assert (error.status, error.code, error.retry_after_ms) == (status, code, retry_after_ms)
    assert KEY not in str(error)


def test_non_json_error_body_keeps_status() -> None:
    error = error_from_response(
        502, b"<html>Bad Gateway</html>", {}, provider="p", model="m", secret=None
    )
    assert type(error) is UnavailableError
    assert error.status == 502
    assert "Bad Gateway" in error.message


def _caused(exc: httpx.HTTPError, cause: BaseException) -> httpx.HTTPError:
    exc.__cause__ = cause
    return exc


def _refused() -> aiohttp.ClientConnectorError:
    key = aiohttp.client_reqrep.ConnectionKey("127.0.0.1", 1, False, True, None, None, None)
    return aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connection refused"))


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TimeoutError(), ProviderTimeoutError),
        (httpx.ReadTimeout("read"), ProviderTimeoutError),
        (_caused(httpx.ReadTimeout("t"), aiohttp.SocketTimeoutError()), ProviderTimeoutError),
        # httpx_aiohttp reports a refused connection as ConnectTimeout: the cause says otherwise
        (_caused(httpx.ConnectTimeout("c"), _refused()), UnavailableError),
        (httpx.ConnectError("refused"), UnavailableError),
        (httpx.RemoteProtocolError("peer closed"), UnavailableError),
        (aiohttp.ServerDisconnectedError(), UnavailableError),
        (ConnectionResetError(), UnavailableError),
    ],
)
def test_transport_failures_are_translated(
    exc: BaseException, expected: type[ProviderError]
) -> None:
    error = translate_exception(exc, provider="p", model="m", timeout_s=2.0, secret=KEY)
    assert type(error) is expected
    assert error.status is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(12, 12), ("34", 34), (5.0, 5), (None, 0), ("x", 0), (-3, 0), (True, 0), ([1], 0)],
)
def test_token_counts_from_replies_are_tolerant(value: object, expected: int) -> None:
    assert as_int(value) == expected
