"""The one place where connectors touch the network: the HTTP client and error translation.

``make_client`` builds an ``httpx.AsyncClient`` over aiohttp (``httpx_aiohttp.AiohttpTransport``).
httpx's own connection pool costs O(pool size^2) per request under high concurrency
(encode/httpx#3215): with one client at 50 in flight it managed ~100 req/s here, while the
aiohttp-backed transport holds thousands. Timeouts are enforced by the caller with
``asyncio.timeout`` (one deadline for the whole call) rather than httpx's per-phase timeouts.

``translate_exception`` and ``error_from_response`` turn foreign failures into the
``errors.py`` tree, keeping the provider's status and code and redacting the API key.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from connectors.providers.errors import (
    SPEND_CODES,
    ProviderError,
    ProviderTimeoutError,
    UnavailableError,
    classify_status,
)
from connectors.providers.ratelimit_headers import RateLimitInfo, parse_ratelimit_headers

# Failures of the connection or the exchange, as raised by httpx and (unmapped) by aiohttp.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    httpx.HTTPError,
    aiohttp.ClientError,
    OSError,
    TimeoutError,
)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def as_int(value: object) -> int:
    """A token count from a reply: an int, or 0 when missing or malformed."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0
    try:
        return max(0, int(value))
    except (ValueError, OverflowError):
        return 0


def make_client(
    base_url: str, max_connections: int, headers: Mapping[str, str]
) -> httpx.AsyncClient:
    """An httpx client on an aiohttp pool of ``max_connections`` keep-alive sockets."""
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=30.0,
    )
    return httpx.AsyncClient(
        base_url=base_url,
        transport=AiohttpTransport(limits=limits),
        headers=dict(headers),
        timeout=None,  # the connector wraps each call in asyncio.timeout
    )


def translate_exception(
    exc: BaseException, *, provider: str, model: str, timeout_s: float, secret: str | None
) -> ProviderError:
    """A transport failure (no HTTP response) as a ``ProviderError``."""
    if isinstance(exc, ProviderError):
        return exc
    # httpx_aiohttp maps every aiohttp connection error to a "timeout"; look at the real cause.
    cause = exc.__cause__ if isinstance(exc, httpx.HTTPError) and exc.__cause__ else exc
    if isinstance(cause, TimeoutError) or (
        isinstance(exc, httpx.TimeoutException) and exc.__cause__ is None
    ):
        return ProviderTimeoutError(
            f"no complete answer within {timeout_s:g}s",
            provider=provider,
            model=model,
            code="timeout",
            secret=secret,
        )
    detail = str(cause) or type(cause).__name__
    return UnavailableError(
        f"{type(cause).__name__}: {detail}",
        provider=provider,
        model=model,
        code="connection_error",
        secret=secret,
    )


def _error_fields(body: bytes) -> tuple[str | None, str]:
    """(code, message) of an OpenAI ``{"error": {...}}`` or Anthropic ``{"type": "error"...}``."""
    try:
        data = json.loads(body)
    except ValueError:
        return None, body[:200].decode("utf-8", "replace") or "(empty body)"
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None, str(data)[:200]
    code, kind = error.get("code"), error.get("type")
    if kind in SPEND_CODES:  # OpenAI puts "insufficient_quota" in both; be sure to keep it
        code = kind
    code = code if isinstance(code, str) and code else kind if isinstance(kind, str) else None
    return code, str(error.get("message") or "")


def error_from_response(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    provider: str,
    model: str,
    secret: str | None,
) -> ProviderError:
    """An HTTP error response as the matching ``ProviderError`` subclass."""
    code, message = _error_fields(body)
    cls = classify_status(status, code)
    return cls(
        message or f"HTTP {status}",
        provider=provider,
        model=model,
        status=status,
        code=code,
        ratelimit=parse_ratelimit_headers(headers, now_ms()),
        secret=secret,
    )


def ratelimit_of(response: httpx.Response) -> RateLimitInfo:
    return parse_ratelimit_headers(response.headers, now_ms())


def decode_json(response: httpx.Response, *, provider: str, model: str) -> dict[str, Any]:
    """The JSON object of a 200 reply, or ``UnavailableError`` when it is not one."""
    try:
        data = json.loads(response.content)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise UnavailableError(
            "reply is not a JSON object",
            provider=provider,
            model=model,
            status=response.status_code,
        )
    return data


async def sse_data(
    response: httpx.Response, on_error: Callable[[BaseException], ProviderError]
) -> AsyncGenerator[str, None]:
    """The ``data:`` payloads of a server-sent-events reply, transport errors translated."""
    try:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                yield line[5:].strip()
    except TRANSPORT_ERRORS as exc:
        raise on_error(exc) from exc


async def read_error_body(
    response: httpx.Response, on_error: Callable[[BaseException], ProviderError]
) -> None:
    """Read a streamed error reply's body so that its error code can be classified."""
    try:
        await response.aread()
    except TRANSPORT_ERRORS as exc:
        raise on_error(exc) from exc
