"""Provider calls and deadlines: the call's timeout, the floor, what a timeout tells the breaker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from connectors.providers import ChatCall, ChatResult, ProviderTimeoutError
from connectors.providers.base import StreamChunk
from streams.config import parse_config
from streams.policies.breaker import BreakerState
from streams.policies.clock import ManualClock
from streams.policies.degradation import ModelRef, RouteConfig
from streams.policies.verdict import Reason, Status
from streams.provider_calls import MIN_CALL_MS, ProviderCaller, timeout_is_provider_failure
from streams.records import Outcome

T0 = 1_700_000_000_000
PROVIDER_TIMEOUT_S = 30
SLOW_CALL_S = 10
MINIMUM_CALLS = 5
MODEL = ModelRef("p", "big")
ROUTE = RouteConfig("chat", MODEL, (), use_stale_cache=False, static_message=None)


class FakeProvider:
    """Answers after ``latency_ms`` of the manual clock, or hangs until the call's timeout."""

    name = "p"

    def __init__(self, clock: ManualClock, *, hang: bool, latency_ms: int = 100) -> None:
        self.clock = clock
        self.hang = hang
        self.latency_ms = latency_ms
        self.calls: list[ChatCall] = []

    async def complete(self, call: ChatCall) -> ChatResult:
        self.calls.append(call)
        if self.hang:
            assert call.timeout_s is not None
            self.clock.advance(int(call.timeout_s * 1000))
            raise ProviderTimeoutError("no answer", provider="p", model=call.model, code="timeout")
        self.clock.advance(self.latency_ms)
        return ChatResult("hi", call.model, "stop", prompt_tokens=3, completion_tokens=2)

    def stream(self, call: ChatCall) -> AsyncIterator[StreamChunk]:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


def caller(clock: ManualClock, provider: Any) -> ProviderCaller:
    config = parse_config(
        {
            "providers": {
                "p": {
                    "base_url": "http://unused",
                    "timeout_s": PROVIDER_TIMEOUT_S,
                    "models": {
                        "big": {"input_usd_per_mtok": 1, "output_usd_per_mtok": 2, "rpm": 1_000}
                    },
                }
            },
            "tenants": {"acme": {}},
            "resilience": {
                "breaker": {
                    "window_size": 10,
                    "minimum_calls": MINIMUM_CALLS,
                    "slow_call_s": SLOW_CALL_S,
                },
                "retry": {"max_attempts": 1},  # no backoff sleeps in these tests
            },
        }
    )
    calls = ProviderCaller(config, clock)
    calls._providers["p"] = provider  # the one network seam, replaced
    return calls


def request(i: int) -> dict[str, Any]:
    return {"request_id": f"r{i}", "messages": [{"role": "user", "content": "hello"}]}


async def ask(calls: ProviderCaller, clock: ManualClock, i: int, time_left_ms: int) -> Outcome:
    return await calls.call_route(request(i), ROUTE, clock.now_ms() + time_left_ms, [], 10)


@pytest.mark.parametrize(
    ("given_ms", "counts"),
    [
        (30_000, True),  # the provider's full timeout
        (5_000, True),  # half the slow-call duration: a healthy call is long done
        (4_999, False),
        (40, False),  # a request that waited in the queue and had a few ms left
    ],
)
def test_a_timeout_is_a_provider_failure_only_when_the_call_had_time(
    given_ms: int, counts: bool
) -> None:
    assert timeout_is_provider_failure(given_ms, 30_000, 10_000) is counts


def test_the_full_timeout_counts_even_below_half_the_slow_call_duration() -> None:
    assert timeout_is_provider_failure(2_000, 2_000, 10_000)


async def test_timeouts_cut_short_by_the_deadline_leave_the_breaker_closed() -> None:
    clock = ManualClock(T0)
    provider = FakeProvider(clock, hang=True)
    calls = caller(clock, provider)
    for i in range(4 * MINIMUM_CALLS):
        outcome = await ask(calls, clock, i, time_left_ms=300)
        assert (outcome.status, outcome.reason) == (Status.SHED, Reason.DEADLINE_EXPIRED)
        assert outcome.attempts == 1
    assert [call.timeout_s for call in provider.calls] == [0.3] * (4 * MINIMUM_CALLS)
    snapshot = calls.breaker(MODEL).snapshot(clock.now_ms())
    assert (snapshot.state, snapshot.calls) == (BreakerState.CLOSED, 0)


async def test_timeouts_after_the_full_provider_timeout_open_the_breaker() -> None:
    clock = ManualClock(T0)
    provider = FakeProvider(clock, hang=True)
    calls = caller(clock, provider)
    for i in range(MINIMUM_CALLS):
        assert calls.breaker(MODEL).state is BreakerState.CLOSED
        outcome = await ask(calls, clock, i, time_left_ms=120_000)
        assert (outcome.status, outcome.reason) == (Status.FAILED, Reason.TIMEOUT)
    assert [call.timeout_s for call in provider.calls] == [PROVIDER_TIMEOUT_S] * MINIMUM_CALLS
    assert calls.breaker(MODEL).state is BreakerState.OPEN


async def test_timeouts_cut_by_a_deadline_as_long_as_the_slow_call_duration_still_count() -> None:
    clock = ManualClock(T0)
    calls = caller(clock, FakeProvider(clock, hang=True))
    for i in range(MINIMUM_CALLS):
        await ask(calls, clock, i, time_left_ms=SLOW_CALL_S * 1000)
    assert calls.breaker(MODEL).state is BreakerState.OPEN


@pytest.mark.parametrize("time_left_ms", [MIN_CALL_MS - 1, 1, 0, -500])
async def test_no_call_is_started_with_less_than_the_floor_left(time_left_ms: int) -> None:
    clock = ManualClock(T0)
    provider = FakeProvider(clock, hang=False)
    calls = caller(clock, provider)
    outcome = await ask(calls, clock, 0, time_left_ms)
    assert (outcome.status, outcome.reason, outcome.attempts) == (
        Status.SHED,
        Reason.DEADLINE_EXPIRED,
        0,
    )
    assert provider.calls == []
    assert calls.limiter(MODEL).snapshot(clock.now_ms()).requests_available == 1_000


async def test_a_call_with_the_floor_left_is_made_with_that_timeout() -> None:
    clock = ManualClock(T0)
    provider = FakeProvider(clock, hang=False, latency_ms=20)
    calls = caller(clock, provider)
    outcome = await ask(calls, clock, 0, MIN_CALL_MS)
    assert outcome.status is Status.OK
    assert [call.timeout_s for call in provider.calls] == [MIN_CALL_MS / 1000]


async def test_an_answered_call_holds_its_limiter_slot_until_a_window_after_it_ended() -> None:
    clock = ManualClock(T0)
    calls = caller(clock, FakeProvider(clock, hang=False, latency_ms=700))
    assert (await ask(calls, clock, 0, 10_000)).status is Status.OK
    limiter = calls.limiter(MODEL)
    assert limiter.in_flight == 0
    assert limiter.snapshot(T0 + 60_699).requests_available == 999
    assert limiter.snapshot(T0 + 60_700).requests_available == 1_000


class BlockingProvider(FakeProvider):
    """Starts the call and waits until it is cancelled."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock, hang=False)
        self.started = asyncio.Event()

    async def complete(self, call: ChatCall) -> ChatResult:
        self.calls.append(call)
        self.started.set()
        await asyncio.Event().wait()
        raise AssertionError("not reached")


async def test_a_cancelled_call_ends_its_limiter_slot() -> None:
    clock = ManualClock(T0)
    provider = BlockingProvider(clock)
    calls = caller(clock, provider)
    task = asyncio.create_task(ask(calls, clock, 0, 10_000))
    await asyncio.wait_for(provider.started.wait(), timeout=5)
    assert calls.limiter(MODEL).in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls.limiter(MODEL).in_flight == 0
    assert calls.limiter(MODEL).snapshot(clock.now_ms()).requests_available == 999
