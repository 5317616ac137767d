"""The connectors' HTTP seam: requests built per endpoint, and the aiohttp-backed transport.

The transport runs against a real aiohttp server on loopback, started in the test's loop.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest
import yarl
from aiohttp import web

from connectors.providers import (
    AnthropicProvider,
    OpenAICompatProvider,
    Provider,
    ProviderTimeoutError,
)
from connectors.providers.transport import (
    AiohttpPoolTransport,
    Endpoint,
    make_client,
    translate_exception,
)

KEY = "sk-test-transport-SECRET"
BODY = b'{"answer": "' + b"x" * 5000 + b'"}'


async def _gzipped(request: web.Request) -> web.Response:
    return web.Response(
        body=gzip.compress(BODY), headers={"Content-Encoding": "gzip"}, content_type="text/plain"
    )


async def _echo(request: web.Request) -> web.Response:
    headers = "\n".join(f"{k.lower()}: {v}" for k, v in request.headers.items())
    return web.Response(text=f"{request.path}\n{headers}\n\n{(await request.read()).decode()}")


async def _stall_body(request: web.Request) -> web.StreamResponse:
    """Headers at once, then one chunk, then nothing until the client goes away."""
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"data: first\n\n")
    await asyncio.Event().wait()
    return response


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/gzip", _gzipped)
    app.router.add_post("/{path:.*}", _echo)
    app.router.add_get("/stall", _stall_body)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.fixture
async def transport() -> AsyncIterator[AiohttpPoolTransport]:
    pool = AiohttpPoolTransport(max_connections=1)
    yield pool
    await pool.aclose()


def _client(base_url: str, transport: AiohttpPoolTransport) -> httpx.AsyncClient:
    return make_client(base_url, transport, {"content-type": "application/json", "x-key": KEY})


@pytest.mark.parametrize(
    ("base_url", "path", "headers"),
    [
        ("http://h:1/v1", "chat/completions", {"x-sluicegate-request-id": "r1"}),
        ("http://h:1/v1/", "chat/completions", {}),
        ("https://h/", "v1/messages", {"x-sluicegate-request-id": "r2"}),
        (
            "http://h:1/v1",
            "chat/completions",
            {"x-sluicegate-request-id": "r3", "accept": "text/event-stream"},
        ),
    ],
)
async def test_endpoint_builds_what_client_post_would(
    base_url: str, path: str, headers: dict[str, str]
) -> None:
    pool = AiohttpPoolTransport(max_connections=1)
    client = _client(base_url, pool)
    endpoint = Endpoint(client, pool, path)
    body = b'{"model": "m"}'
    built = endpoint.request(body, headers)
    expected = client.build_request("POST", path, content=body, headers=headers)
    assert built.url == expected.url
    assert sorted(built.headers.multi_items()) == sorted(expected.headers.multi_items())
    assert built.content == body
    assert built.extensions["timeout"] == {
        "connect": None,
        "read": None,
        "write": None,
        "pool": None,
    }
    await client.aclose()


async def test_endpoint_request_carries_a_given_timeout() -> None:
    pool = AiohttpPoolTransport(max_connections=1)
    client = _client("http://h:1/v1", pool)
    request = Endpoint(client, pool, "x").request(b"", {}, httpx.Timeout(2.5))
    assert request.extensions["timeout"] == httpx.Timeout(2.5).as_dict()
    await client.aclose()


async def test_requests_reach_the_server_with_their_headers_and_body(
    server: str, transport: AiohttpPoolTransport
) -> None:
    client = _client(f"{server}/v1", transport)
    endpoint = Endpoint(client, transport, "chat/completions")
    reply = await endpoint.send(endpoint.request(b'{"q": 1}', {"x-sluicegate-request-id": "r9"}))
    path, _, rest = reply.text.partition("\n")
    headers, _, body = rest.partition("\n\n")
    assert path == "/v1/chat/completions"
    assert body == '{"q": 1}'
    lines = set(headers.splitlines())
    assert {"x-sluicegate-request-id: r9", f"x-key: {KEY}", "content-length: 8"} <= lines
    assert "content-type: application/json" in lines


async def test_a_compressed_reply_is_decoded_read_whole_or_streamed(
    server: str, transport: AiohttpPoolTransport
) -> None:
    whole = await transport.fetch(httpx.Request("GET", f"{server}/gzip"))
    assert whole.content == BODY
    streamed = await transport.handle_async_request(httpx.Request("GET", f"{server}/gzip"))
    assert await streamed.aread() == BODY


async def test_a_call_cancelled_mid_body_gives_its_connection_back(
    server: str, transport: AiohttpPoolTransport
) -> None:
    # The pool has one connection: a second request only goes out if the first freed it.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await transport.fetch(httpx.Request("GET", f"{server}/stall"))
    async with asyncio.timeout(5):
        reply = await transport.fetch(httpx.Request("GET", f"{server}/gzip"))
    assert reply.content == BODY


async def test_a_stream_read_past_its_timeout_is_a_provider_timeout(
    server: str, transport: AiohttpPoolTransport
) -> None:
    request = httpx.Request("GET", f"{server}/stall", extensions={"timeout": {"read": 0.2}})
    response = await transport.handle_async_request(request)
    chunks: list[bytes] = []
    with pytest.raises(httpx.ReadTimeout) as caught:
        async with asyncio.timeout(5):
            async for chunk in response.aiter_raw():
                chunks.append(chunk)
    assert chunks == [b"data: first\n\n"]
    error = translate_exception(caught.value, provider="p", model="m", timeout_s=0.2, secret=KEY)
    assert isinstance(error, ProviderTimeoutError)


async def test_a_refused_connection_is_an_httpx_connect_error_caused_by_aiohttp(
    transport: AiohttpPoolTransport,
) -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()  # nothing listens on the port any more
    with pytest.raises(httpx.ConnectError) as caught:
        await transport.fetch(httpx.Request("GET", f"http://127.0.0.1:{port}/"))
    assert isinstance(caught.value.__cause__, aiohttp.ClientConnectorError)


async def test_connectors_and_endpoints_do_not_show_the_key() -> None:
    providers: list[Provider] = [
        OpenAICompatProvider("o", "http://h:1/v1", KEY),
        AnthropicProvider("a", "http://h:1", KEY),
    ]
    pool = AiohttpPoolTransport(max_connections=1)
    client = _client("http://h:1/v1", pool)
    endpoint = Endpoint(client, pool, "x")
    shown = [*map(repr, providers), repr(client), repr(endpoint), repr(endpoint.request(b"", {}))]
    assert all(KEY not in text for text in shown)
    for provider in providers:
        await provider.aclose()
    await client.aclose()


def test_the_proxy_comes_from_the_environment_once_per_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "local.example")
    transport = AiohttpPoolTransport(max_connections=1)
    assert transport._proxy(yarl.URL("https://api.example.com/v1")) == "http://proxy.internal:3128"
    assert transport._proxy(yarl.URL("https://local.example/v1")) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://other:1")
    # looked up once: a worker does not read the environment on every call
    assert transport._proxy(yarl.URL("https://api.example.com/v2")) == "http://proxy.internal:3128"
