"""The one place where connectors touch the network: the HTTP client and error translation.

A connector sends ``httpx.Request``s through ``AiohttpPoolTransport``, an httpx transport over
one ``aiohttp.ClientSession``. httpx's own connection pool costs O(pool size^2) per request under
high concurrency (encode/httpx#3215): with one client at 50 in flight it managed ~100 req/s here,
while an aiohttp pool holds thousands. A provider call is the worker's hottest path, so the per-call
work is cut to what a connector needs: ``Endpoint`` builds a request from a URL and headers merged
once (``make_client``'s ``httpx.AsyncClient`` supplies them, as ``client.post`` would) and hands it
straight to the transport, skipping the client's auth, redirect, cookie, event-hook and logging
steps; the transport reuses the parsed aiohttp URL, one timeout object and a cookie-less session,
and reads a whole reply in one piece. This halved the connector's CPU per call
(``tests/bench/bench_connector.py``) compared with ``client.post`` over
``httpx_aiohttp.AiohttpTransport``. Timeouts are enforced by the caller with ``asyncio.timeout``
(one deadline for the whole call) rather than httpx's per-phase timeouts; a request that carries
httpx timeouts (streams) gets them as aiohttp socket timeouts.

Proxies from the environment (``HTTPS_PROXY``, ``NO_PROXY``) are honoured, looked up once
per host; cookies a provider sets are dropped (API calls need none).

``translate_exception`` and ``error_from_response`` turn foreign failures into the
``errors.py`` tree, keeping the provider's status and code and redacting the API key.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import httpx
import yarl

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
    base_url: str, transport: AiohttpPoolTransport, headers: Mapping[str, str]
) -> httpx.AsyncClient:
    """The httpx client of a connector: base URL, default and fixed headers, and ``transport``.

    Connectors build requests from it once per endpoint (``Endpoint``) and close it (which closes
    the transport); requests go straight to the transport.
    """
    return httpx.AsyncClient(
        base_url=base_url,
        transport=transport,
        headers=dict(headers),
        timeout=None,  # the connector wraps each call in asyncio.timeout
    )


class Endpoint:
    """POST requests to one URL of a client, built and sent with the least work per call.

    The URL is joined and parsed once, and the fixed headers (``Host``, httpx's defaults, content
    type, API key) are merged once, in the order ``client.post`` would send them; a call adds
    only its own headers (replacing a fixed one of the same name) and the body's length.
    Requests carry an explicit "no timeout" (the caller's ``asyncio.timeout`` bounds the call)
    unless given one. Requests go straight to the transport, skipping the client's per-request
    auth, redirect, cookie, event-hook and logging steps: connectors use none of them.
    """

    def __init__(
        self, client: httpx.AsyncClient, transport: AiohttpPoolTransport, path: str
    ) -> None:
        self.url = client.build_request("POST", path).url
        self._transport = transport
        self._fixed = [(b"Host", self.url.netloc), *client.headers.raw]
        self._fixed_names = {name.lower() for name, _ in self._fixed}

    def request(
        self, body: bytes, headers: Mapping[str, str], timeout: httpx.Timeout | None = None
    ) -> httpx.Request:
        """A POST of ``body`` with ``headers`` added (and ``timeout``'s socket timeouts)."""
        added = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        fixed = self._fixed
        if any(name in self._fixed_names for name, _ in added):  # e.g. a stream's "accept"
            replaced = {name for name, _ in added}
            fixed = [(k, v) for k, v in fixed if k.lower() not in replaced]
        added.append((b"Content-Length", str(len(body)).encode()))
        request = httpx.Request(
            "POST",
            self.url,
            headers=fixed + added,
            stream=httpx.ByteStream(body),
            extensions=(
                _NO_TIMEOUT_EXTENSIONS if timeout is None else {"timeout": timeout.as_dict()}
            ),
        )
        request.read()  # the body is in memory already: this only records it as read
        return request

    async def send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        """The reply to ``request``: read whole, or with its body still to read if ``stream``."""
        if stream:
            return await self._transport.handle_async_request(request)
        return await self._transport.fetch(request)


_NO_TIMEOUT_EXTENSIONS = {"timeout": httpx.Timeout(None).as_dict()}

# Failures raised by aiohttp, as the httpx exception a transport is expected to raise
# (most specific first). ``translate_exception`` classifies by the aiohttp cause.
_HTTPX_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.InvalidUrlClientError, httpx.UnsupportedProtocol),
    (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
    (aiohttp.ClientProxyConnectionError, httpx.ProxyError),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (TimeoutError, httpx.TimeoutException),
    (aiohttp.ClientError, httpx.NetworkError),
    (OSError, httpx.NetworkError),
)
_NO_TIMEOUT = aiohttp.ClientTimeout()
_URL_CACHE_SIZE = 64  # distinct URLs remembered; a connector uses one or two


def as_httpx_error(exc: BaseException) -> httpx.TransportError | None:
    """The httpx exception for an aiohttp (or socket) failure; ``None`` for anything else."""
    for cause, error in _HTTPX_ERRORS:
        if isinstance(exc, cause):
            return error(str(exc) or type(exc).__name__)
    return None


class AiohttpPoolTransport(httpx.AsyncBaseTransport):
    """httpx's transport seam over one aiohttp session of ``max_connections`` keep-alive sockets.

    The session is created on first use (it needs the running loop). No cookies are kept, no
    redirects followed and bodies are passed on undecoded (httpx decodes them), as with httpx's
    own transport. Failures are raised as httpx exceptions caused by aiohttp's.
    """

    def __init__(self, max_connections: int, keepalive_s: float = 30.0) -> None:
        self._max_connections = max_connections
        self._keepalive_s = keepalive_s
        self._ssl = httpx.create_ssl_context()  # httpx's verification (certifi bundle)
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, yarl.URL] = {}
        self._proxies: dict[str, str | None] = {}  # scheme://host -> proxy URL or None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """The reply with its body still to read (httpx's transport contract)."""
        response = await self._open(request)
        return _httpx_response(response, request, _ResponseBody(response))

    async def fetch(self, request: httpx.Request) -> httpx.Response:
        """The reply with its body read whole, in one piece from aiohttp."""
        response = await self._open(request)
        try:
            body = await response.read()
        except (aiohttp.ClientError, OSError) as exc:
            raise (as_httpx_error(exc) or exc) from exc
        finally:
            response.release()
        reply = _httpx_response(response, request, httpx.ByteStream(body))
        reply.read()  # decodes a compressed body, as reading a stream would
        return reply

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _open(self, request: httpx.Request) -> aiohttp.ClientResponse:
        """Send ``request`` and wait for the reply's status line and headers."""
        session = self._session or self._open_session()
        try:
            body: bytes | None = request.content or None
        except httpx.RequestNotRead:
            body = await request.aread() or None
        timeout = request.extensions.get("timeout")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        url = self._url(request.url)
        try:
            return await session.request(
                request.method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=_aiohttp_timeout(timeout) if timeout else _NO_TIMEOUT,
                proxy=self._proxy(url),
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise (as_httpx_error(exc) or exc) from exc

    def _open_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, keepalive_timeout=self._keepalive_s, ssl=self._ssl
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=_NO_TIMEOUT,
            auto_decompress=False,
        )
        return self._session

    def _proxy(self, url: yarl.URL) -> str | None:
        """The proxy for ``url``'s host from the environment (``HTTPS_PROXY``, ``NO_PROXY``),
        looked up once per host. (aiohttp's ``trust_env`` looks it up, with ``.netrc``, on
        every request in a thread: a third of the worker's CPU at saturation.)"""
        key = f"{url.scheme}://{url.host}"
        if key not in self._proxies:
            bypass = url.host is not None and urllib.request.proxy_bypass(url.host)
            self._proxies[key] = None if bypass else urllib.request.getproxies().get(url.scheme)
        return self._proxies[key]

    def _url(self, url: httpx.URL) -> yarl.URL:
        """The aiohttp URL of ``url`` (already percent-encoded by httpx), parsed once."""
        text = str(url)
        parsed = self._urls.get(text)
        if parsed is None:
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()
            parsed = self._urls[text] = yarl.URL(text, encoded=True)
        return parsed


def _aiohttp_timeout(timeout: Mapping[str, float | None]) -> aiohttp.ClientTimeout:
    connect, read, pool = timeout.get("connect"), timeout.get("read"), timeout.get("pool")
    if connect is None and read is None and pool is None:
        return _NO_TIMEOUT
    return aiohttp.ClientTimeout(sock_connect=connect, sock_read=read, connect=pool)


def _httpx_response(
    response: aiohttp.ClientResponse, request: httpx.Request, body: httpx.AsyncByteStream
) -> httpx.Response:
    reason = response.reason.encode("latin-1", "replace") if response.reason else b""
    return httpx.Response(
        status_code=response.status,
        headers=response.raw_headers,
        stream=body,
        request=request,
        extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
    )


class _ResponseBody(httpx.AsyncByteStream):
    """A streamed aiohttp response body as httpx reads it: each chunk as soon as it arrives."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, OSError) as exc:
            raise (as_httpx_error(exc) or exc) from exc

    async def aclose(self) -> None:
        self._response.release()
        await self._response.wait_for_close()


def translate_exception(
    exc: BaseException, *, provider: str, model: str, timeout_s: float, secret: str | None
) -> ProviderError:
    """A transport failure (no HTTP response) as a ``ProviderError``."""
    if isinstance(exc, ProviderError):
        return exc
    # The transport raises httpx errors caused by aiohttp's: classify by the real cause.
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
