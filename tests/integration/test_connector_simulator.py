"""Connectors against the simulator over real HTTP on loopback (no Kafka needed)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from connectors.providers import (
    AnthropicProvider,
    AuthError,
    BadRequestError,
    ChatCall,
    OpenAICompatProvider,
    OverloadedError,
    Provider,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
    SpendLimitError,
    UnavailableError,
    build_provider,
)
from connectors.simulator import ModelProfile, SimulatorConfig, SimulatorServer, serve

KEY = "sk-test-0123456789-SECRET"


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    server = await serve(SimulatorConfig(seed=1))
    yield server
    await server.close()


@pytest.fixture
async def openai(sim: SimulatorServer) -> AsyncIterator[OpenAICompatProvider]:
    provider = OpenAICompatProvider("sim", f"{sim.base_url}/v1", KEY, timeout_s=5)
    yield provider
    await provider.aclose()


@pytest.fixture
async def anthropic(sim: SimulatorServer) -> AsyncIterator[AnthropicProvider]:
    provider = AnthropicProvider("sim-anthropic", sim.base_url, KEY, timeout_s=5)
    yield provider
    await provider.aclose()


def call(text: str = "Tell me about rivers", **kw: Any) -> ChatCall:
    return ChatCall(model=kw.pop("model", "m"), messages=[{"role": "user", "content": text}], **kw)


async def admin(sim: SimulatorServer, method: str, path: str, body: Any = None) -> Any:
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        response = await client.request(method, path, json=body)
        response.raise_for_status()
        return response.json()


async def test_content_is_deterministic_in_the_request(openai: OpenAICompatProvider) -> None:
    first = await openai.complete(call("What is a sluice gate?"))
    again = await openai.complete(call("What is a sluice gate?"))
    other = await openai.complete(call("What is a weir?"))
    assert first.content == again.content
    assert other.content != first.content
    assert "What is a sluice gate?" in first.content
    assert first.finish_reason == "stop"


async def test_usage_grows_with_prompt_and_is_capped_by_max_tokens(
    openai: OpenAICompatProvider,
) -> None:
    short = await openai.complete(call("hi"))
    long = await openai.complete(call("hi " * 500))
    capped = await openai.complete(call("hi", max_tokens=4))
    assert long.prompt_tokens > short.prompt_tokens + 300
    assert short.completion_tokens > 4
    assert (capped.completion_tokens, capped.finish_reason) == (4, "length")
    assert short.total_tokens == short.prompt_tokens + short.completion_tokens


@pytest.mark.parametrize(
    ("fault", "expected", "status"),
    [
        ({"kind": "rate_limit", "retry_after_s": 1.5}, RateLimitedError, 429),
        ({"kind": "quota"}, SpendLimitError, 429),
        ({"kind": "error"}, UnavailableError, 500),
        ({"kind": "error", "status": 502}, UnavailableError, 502),
        ({"kind": "unavailable"}, OverloadedError, 503),
        ({"kind": "overloaded", "retry_after_s": 3}, OverloadedError, 529),
        ({"kind": "outage", "duration_s": 60}, OverloadedError, 503),
        ({"kind": "error", "status": 400}, BadRequestError, 400),
        ({"kind": "error", "status": 404}, BadRequestError, 404),
    ],
)
async def test_each_fault_maps_to_its_error_class(
    sim: SimulatorServer,
    openai: OpenAICompatProvider,
    fault: dict[str, Any],
    expected: type[ProviderError],
    status: int,
) -> None:
    await admin(sim, "POST", "/admin/faults", {"faults": [{"model": "m", **fault}]})
    with pytest.raises(expected) as caught:
        await openai.complete(call())
    assert caught.value.status == status
    if "retry_after_s" in fault:
        assert caught.value.retry_after_ms == fault["retry_after_s"] * 1000
    assert (await openai.complete(call(model="unaffected"))).content


async def test_rate_limit_fault_sends_openai_ratelimit_headers(
    sim: SimulatorServer, openai: OpenAICompatProvider
) -> None:
    await admin(sim, "POST", "/admin/faults", {"model": "m", "kind": "rate_limit"})
    with pytest.raises(RateLimitedError) as caught:
        await openai.complete(call())
    info = caught.value.ratelimit
    assert (info.retry_after_ms, info.remaining_requests, info.reset_requests_ms) == (1000, 0, 1000)


async def test_hang_past_the_timeout_is_a_timeout(
    sim: SimulatorServer, openai: OpenAICompatProvider
) -> None:
    await admin(sim, "POST", "/admin/faults", {"model": "m", "kind": "hang", "hang_s": 30})
    with pytest.raises(ProviderTimeoutError):
        await openai.complete(call(timeout_s=0.2))
    for _ in range(50):  # the simulator stops hanging once the client has gone
        counts = await admin(sim, "GET", "/admin/counts")
        if counts["in_flight"] == 0:
            break
        await asyncio.sleep(0.05)
    assert counts["by_status"] == {"499": 1}
    await admin(sim, "DELETE", "/admin/faults")
    assert (await openai.complete(call())).content  # the pool recovered


async def test_faults_change_at_run_time(
    sim: SimulatorServer, openai: OpenAICompatProvider
) -> None:
    assert (await openai.complete(call())).content
    installed = await admin(sim, "POST", "/admin/faults", {"model": "m", "kind": "overloaded"})
    assert [(f["kind"], f["status"], f["active"]) for f in installed["faults"]] == [
        ("overloaded", 529, True)
    ]
    with pytest.raises(OverloadedError):
        await openai.complete(call())
    assert (await admin(sim, "GET", "/admin/faults"))["faults"]
    await admin(sim, "DELETE", "/admin/faults?model=m")
    assert (await openai.complete(call())).content


async def test_outage_window_ends(sim: SimulatorServer, openai: OpenAICompatProvider) -> None:
    await admin(sim, "POST", "/admin/faults", {"model": "*", "kind": "outage", "duration_s": 0.3})
    with pytest.raises(OverloadedError):
        await openai.complete(call())
    await asyncio.sleep(0.35)
    assert (await openai.complete(call())).content


async def test_counters_count_models_statuses_and_request_ids(
    sim: SimulatorServer, openai: OpenAICompatProvider
) -> None:
    for i in range(3):
        await openai.complete(call(f"q{i}", request_id=f"req-{i}"))
    await admin(sim, "POST", "/admin/faults", {"model": "m", "kind": "error"})
    with pytest.raises(UnavailableError):
        await openai.complete(call(request_id="req-failed"))
    counts = await admin(sim, "GET", "/admin/counts")
    assert counts["received"] == 4
    assert counts["models"]["m"]["by_status"] == {"200": 3, "500": 1}
    assert counts["max_per_60s"] == 4
    assert (await admin(sim, "GET", "/admin/requests?id=req-1"))["seen"] == 1
    assert (await admin(sim, "GET", "/admin/requests?id=never"))["seen"] == 0
    await admin(sim, "POST", "/admin/reset")
    assert (await admin(sim, "GET", "/admin/counts"))["received"] == 0


async def test_enforced_rpm_rejects_past_the_limit(
    sim: SimulatorServer, openai: OpenAICompatProvider
) -> None:
    await admin(sim, "POST", "/admin/models", {"model": "m", "rpm": 2})
    ok = await openai.complete(call())
    assert (ok.ratelimit.limit_requests, ok.ratelimit.remaining_requests) == (2, 1)
    await openai.complete(call())
    with pytest.raises(RateLimitedError) as caught:
        await openai.complete(call())
    assert caught.value.retry_after_ms is not None
    assert 55_000 < caught.value.retry_after_ms <= 60_000
    counts = await admin(sim, "GET", "/admin/counts")
    assert counts["models"]["m"]["by_status"] == {"200": 2, "429": 1}


async def test_max_concurrency_makes_requests_wait(
    sim: SimulatorServer, openai: OpenAICompatProvider
) -> None:
    profile = {"model": "m", "max_concurrency": 2, "latency_ms": 50}
    await admin(sim, "POST", "/admin/models", profile)
    started = asyncio.get_running_loop().time()
    results = await asyncio.gather(*(openai.complete(call(f"q{i}")) for i in range(6)))
    elapsed = asyncio.get_running_loop().time() - started
    assert len({r.content for r in results}) == 6
    assert elapsed >= 0.14  # three waves of 50 ms: a lower bound only
    assert (await admin(sim, "GET", "/admin/counts"))["max_in_flight"] == 6


async def test_openai_stream_matches_complete(openai: OpenAICompatProvider) -> None:
    whole = await openai.complete(call("stream me"))
    chunks = [c async for c in openai.stream(call("stream me"))]
    assert len(chunks) > 2
    assert "".join(c.delta for c in chunks) == whole.content
    last = chunks[-1]
    assert last.done and last.finish_reason == "stop"
    assert (last.prompt_tokens, last.completion_tokens) == (
        whole.prompt_tokens,
        whole.completion_tokens,
    )


async def test_stream_errors_are_translated(
    sim: SimulatorServer, openai: OpenAICompatProvider
) -> None:
    await admin(sim, "POST", "/admin/faults", {"model": "m", "kind": "rate_limit"})
    with pytest.raises(RateLimitedError):
        async for _ in openai.stream(call()):
            pass


async def test_anthropic_shape(sim: SimulatorServer, anthropic: AnthropicProvider) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a river"},
    ]
    result = await anthropic.complete(ChatCall(model="claude", messages=messages, max_tokens=200))
    assert "Name a river" in result.content
    assert result.finish_reason == "stop"
    assert result.prompt_tokens > 0 and result.completion_tokens > 0
    capped = await anthropic.complete(ChatCall(model="claude", messages=messages, max_tokens=2))
    assert (capped.finish_reason, capped.completion_tokens) == ("length", 2)
    chunks = [c async for c in anthropic.stream(ChatCall(model="claude", messages=messages))]
    assert (
        "".join(c.delta for c in chunks)
        == (await anthropic.complete(ChatCall(model="claude", messages=messages))).content
    )
    assert chunks[-1].completion_tokens == result.completion_tokens


async def test_anthropic_overloaded_and_rate_limited(
    sim: SimulatorServer, anthropic: AnthropicProvider
) -> None:
    await admin(sim, "POST", "/admin/faults", {"model": "claude", "kind": "overloaded"})
    with pytest.raises(OverloadedError) as overloaded:
        await anthropic.complete(call(model="claude"))
    assert (overloaded.value.status, overloaded.value.code) == (529, "overloaded_error")
    await admin(sim, "POST", "/admin/faults", {"model": "claude", "kind": "rate_limit"})
    with pytest.raises(RateLimitedError) as limited:
        await anthropic.complete(call(model="claude"))
    assert limited.value.retry_after_ms == 1000
    assert limited.value.ratelimit.remaining_requests == 0


async def test_wrong_key_is_an_auth_error_without_the_key() -> None:
    server = await serve(SimulatorConfig(require_key="sk-the-right-one"))
    providers: list[Provider] = [
        OpenAICompatProvider("o", f"{server.base_url}/v1", KEY),
        AnthropicProvider("a", server.base_url, KEY),
    ]
    try:
        for provider in providers:
            with pytest.raises(AuthError) as caught:
                await provider.complete(call())
            assert caught.value.status == 401
            assert KEY not in str(caught.value) and KEY not in repr(caught.value)
        right = OpenAICompatProvider("o", f"{server.base_url}/v1", "sk-the-right-one")
        providers.append(right)
        assert (await right.complete(call())).content
    finally:
        for provider in providers:
            await provider.aclose()
        await server.close()


async def test_connection_refused_is_unavailable_without_the_key() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once the socket is closed
    provider = OpenAICompatProvider("down", f"http://127.0.0.1:{port}/v1", KEY, timeout_s=5)
    try:
        with pytest.raises(UnavailableError) as caught:
            await provider.complete(call())
        assert caught.value.status is None
        assert KEY not in str(caught.value)
    finally:
        await provider.aclose()


async def test_invalid_request_is_a_bad_request(openai: OpenAICompatProvider) -> None:
    with pytest.raises(BadRequestError) as caught:
        await openai.complete(ChatCall(model="m", messages=[]))
    assert caught.value.status == 400


async def test_build_provider_reads_the_key_from_the_environment(
    sim: SimulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.state.config = SimulatorConfig(require_key=KEY)
    monkeypatch.setenv("SIM_TEST_KEY", KEY)
    for kind, url in (("openai", f"{sim.base_url}/v1"), ("anthropic", sim.base_url)):
        provider = build_provider(kind, kind, url, "SIM_TEST_KEY", 5.0, 10)
        try:
            assert (await provider.complete(call())).content
        finally:
            await provider.aclose()
    with pytest.raises(ValueError):
        build_provider("grpc", "x", sim.base_url, None, 5.0, 10)


async def test_models_endpoint_lists_configured_models() -> None:
    server = await serve(SimulatorConfig(models={"gpt-sim": ModelProfile()}))
    try:
        body = await admin(server, "GET", "/v1/models")
        assert [m["id"] for m in body["data"]] == ["gpt-sim"]
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/admin/faults", {"latency": {"m": {"fixed_ms": 300}}}),
        ("/admin/faults", {"model": "m", "kind": "explode"}),
        ("/admin/faults", {"faults": [{"kind": "error", "probabilty": 0.5}]}),
        ("/admin/models", {"model": "m", "latency": {"kind": "weibull"}}),
        ("/admin/models", {"latency_ms": 5}),
    ],
)
async def test_admin_refuses_bad_settings_loudly(
    sim: SimulatorServer, path: str, body: dict[str, Any]
) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        response = await client.post(path, json=body)
    assert response.status_code == 400
    assert (await admin(sim, "GET", "/admin/faults"))["faults"] == []
