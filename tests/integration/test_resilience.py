"""Issue 4 acceptance: provider resilience end to end (breaker, limiter, retries, fallbacks).

Real broker, real worker processes, the simulator over real HTTP. Every test uses model
names of its own, so the simulator's per-model counters and faults belong to it alone
(and its faults are removed at the end). The helpers at the top (offered load, response
collection, a recording proxy) are shared with test_chaos.py.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import ClientSession, ClientTimeout, web

from connectors.client import SluicegateClient, build_request
from tests.integration.conftest import (
    Simulator,
    Stack,
    Worker,
    client_and_collector,
    wait_until,
)

PRICES = {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}
# One tenant per request partition (4 partitions, murmur2 of the key), so that with two
# workers both of them get traffic.
TENANTS_BY_PARTITION = ("t2", "t6", "t4", "t1")


# -- helpers shared with test_chaos.py ------------------------------------------------------


def unique(kind: str) -> str:
    """A model name no other test uses: the simulator's counters for it are this test's."""
    return f"res-{kind}-{uuid.uuid4().hex[:8]}"


def clear_faults(simulator: Simulator, *models: str) -> None:
    for model in models:
        httpx.delete(f"{simulator.url}/admin/faults", params={"model": model}, timeout=5)


def model_counts(simulator: Simulator, model: str) -> dict[str, Any]:
    return dict(simulator.counts()["models"].get(model) or {"received": 0, "by_status": {}})


def add_tenant_t6(config: dict[str, Any]) -> None:
    config["tenants"]["t6"] = {"max_priority": "critical"}


def chat(route: str, i: int, *, deadline_s: float, tenant: str | None = None) -> dict[str, Any]:
    """A distinct (never cached, never coalesced) request with an explicit deadline."""
    now_ms = int(time.time() * 1000)
    return build_request(
        tenant=tenant or TENANTS_BY_PARTITION[i % 4],
        model=route,
        priority="high",
        messages=[{"role": "user", "content": f"request {i} {uuid.uuid4().hex}"}],
        max_tokens=16,
        deadline_ms=now_ms + int(deadline_s * 1000),
    )


@dataclass
class Load:
    """What an offered load published: every record, and which publishes were acknowledged."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def by_id(self) -> dict[str, dict[str, Any]]:
        return {r["request_id"]: r for r in self.requests}


async def offer_load(
    client: SluicegateClient,
    make: Callable[[int], dict[str, Any]],
    rate: float,
    duration_s: float,
    *,
    publish_timeout_s: float = 60.0,
    on_tick: Callable[[int], Any] | None = None,
    stop: Callable[[], bool] | None = None,
) -> Load:
    """Publish ``make(i)`` at a steady ``rate`` per second for ``duration_s`` or until
    ``stop()`` (open loop: a slow publish does not delay the next one); ``on_tick(i)`` runs
    before each. Waits for every publish to be acknowledged or to fail."""
    load = Load()
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def publish(record: dict[str, Any]) -> None:
        try:
            await asyncio.wait_for(client.publish_record(record), publish_timeout_s)
            load.acked.add(record["request_id"])
        except Exception as exc:  # not acknowledged: the gateway owes it nothing
            load.errors[record["request_id"]] = repr(exc)

    tasks = []
    for i in range(int(rate * duration_s)):
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        if stop is not None and stop():
            break
        if on_tick is not None:
            on_tick(i)
        record = make(i)
        load.requests.append(record)
        tasks.append(asyncio.create_task(publish(record)))
    await asyncio.gather(*tasks)
    return load


@dataclass
class ProxiedCall:
    request_id: str
    arrived: float  # epoch seconds
    answered: float
    status: int
    retry_after_ms: int | None


class RecordingProxy:
    """A pass-through HTTP proxy in front of the simulator that records every provider call:
    request id, arrival and answer times, status and Retry-After. The simulator counts calls
    but keeps no per-call timing; this does, from outside the worker."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.calls: list[ProxiedCall] = []
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None
        self.url = ""

    async def __aenter__(self) -> RecordingProxy:
        self._session = ClientSession(timeout=ClientTimeout(total=60))
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("POST", "/{path:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None and self._session is not None
        await self._runner.cleanup()
        await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        arrived = time.time()
        body = await request.read()
        keep = ("content-type", "authorization", "x-api-key", "anthropic-version")
        headers = {k: v for k, v in request.headers.items() if k.lower() in keep}
        request_id = request.headers.get("x-sluicegate-request-id", "")
        if request_id:
            headers["x-sluicegate-request-id"] = request_id
        async with self._session.post(
            f"{self.target}/{request.match_info['path']}", data=body, headers=headers
        ) as upstream:
            payload = await upstream.read()
            out = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower().startswith(("retry-after", "x-ratelimit", "anthropic-ratelimit"))
                or k.lower() in ("content-type", "x-request-id")
            }
            status = upstream.status
            retry_after = upstream.headers.get("retry-after-ms")
        self.calls.append(
            ProxiedCall(
                request_id, arrived, time.time(), status, int(retry_after) if retry_after else None
            )
        )
        return web.Response(body=payload, status=status, headers=out)


def wait_for_share(workers: list[Worker], share: float, timeout: float = 30) -> None:
    """Wait until every worker has taken its share of the provider limits (a 2 s timer)."""

    def settled() -> bool:
        shares = [(w.status() or {}).get("limit_share") for w in workers]
        return all(s is not None and abs(s - share) < 1e-9 for s in shares)

    wait_until(settled, timeout, f"every worker's limit share to be {share}")


def breaker_transitions(worker: Worker, model: str) -> list[dict[str, Any]]:
    status = worker.status() or {}
    return [t for t in status.get("breaker_transitions", []) if t["model"] == model]


# -- outage: the breaker opens, the fallback serves, the breaker closes --------------------

BREAKER = {"minimum_calls": 5, "window_size": 10, "open_s": 2.0, "half_open_probes": 2}


async def run_outage(
    make_stack: Callable[..., Stack],
    simulator: Simulator,
    *,
    rate: float,
    duration_s: float,
    outage_at_s: float,
    outage_s: float,
    deadline_s: float = 8.0,
) -> dict[str, Any]:
    """Steady load on primary -> fallback with an outage (503s) of the primary in the middle.

    Asserts, for the breaker settings in BREAKER:
    - every published request gets a terminal response before its deadline (0 hanging);
    - each response is ok from the primary or degraded from the fallback, with a reason;
    - the breaker opens soon after the outage starts, after at most window_size failed
      calls (plus in-flight stragglers), and no call reaches the primary while it is open;
    - after the outage the breaker closes within open_s + the probes' time, and later
      traffic is served by the primary again.
    """
    large, small = unique("large"), unique("small")
    primary = f"sim/{large}"

    def customize(config: dict[str, Any]) -> None:
        config["providers"]["sim"]["models"] = {large: PRICES, small: PRICES}
        config["routes"] = {"chat": {"primary": primary, "fallbacks": [f"sim/{small}"]}}
        config["resilience"] = {"breaker": dict(BREAKER)}
        add_tenant_t6(config)

    stack = make_stack(customize)
    worker = stack.start_worker()
    try:
        async with client_and_collector(stack) as (client, got):
            t0 = time.time()
            outage_start, outage_end = t0 + outage_at_s, t0 + outage_at_s + outage_s
            simulator.set_faults(
                {"kind": "outage", "model": large, "start_at": outage_start, "end_at": outage_end}
            )
            load = await offer_load(
                client, lambda i: chat("chat", i, deadline_s=deadline_s), rate, duration_s
            )
            await got.wait_for(load.acked, timeout=deadline_s + 60)
        transitions = breaker_transitions(worker, primary)
        final_state = (worker.status() or {}).get("breakers", {}).get(primary)
        counts = model_counts(simulator, large)
    finally:
        clear_faults(simulator, large, small)

    # Every request answered, before its deadline, by the primary or by the fallback.
    assert not load.errors, load.errors
    responses = got.first
    assert got.missing(load.acked) == set()
    requests = load.by_id
    late = [
        rid for rid, r in responses.items() if r.record["created_at"] > requests[rid]["deadline_ms"]
    ]
    assert late == [], f"{len(late)} answers came after their deadline"
    statuses = Counter((r.status, r.model, r.degradation_reason) for r in responses.values())
    print(f"outage: {len(responses)} requests, {dict(statuses)}, duplicates {got.duplicates}")
    for r in responses.values():
        if r.status == "ok":
            assert r.model == large, r
        else:
            assert r.status == "degraded" and r.model == small, r
            assert r.degradation_reason in ("breaker_open", "unavailable"), r
    reasons = Counter(r.degradation_reason for r in responses.values() if r.status == "degraded")
    assert reasons["breaker_open"] > 0, "no request was routed around an open breaker"

    # The breaker opened soon after the outage began, after at most window_size failures.
    assert transitions, "the breaker never changed state"
    opened = transitions[0]
    assert (opened["from"], opened["to"]) == ("closed", "open"), transitions
    opened_s = opened["at_ms"] / 1000
    assert outage_start - 0.5 <= opened_s <= outage_start + 3.0, (outage_start, opened)
    reopened = sum(1 for t in transitions if (t["from"], t["to"]) == ("half_open", "open"))
    failed_calls = int(counts["by_status"].get("503", 0))
    stragglers = 5  # calls already on the wire when the breaker opened
    print(f"outage: primary 503s {failed_calls}, re-opens {reopened}, transitions {transitions}")
    assert failed_calls <= BREAKER["window_size"] + reopened * BREAKER["half_open_probes"] + (
        stragglers
    )

    # Nothing reached the primary during whole seconds in which the breaker was open.
    per_second = {int(s): n for s, n in counts["per_second"].items()}
    for t in transitions:
        if t["to"] != "open":
            continue
        start = math.ceil(t["at_ms"] / 1000 + 0.05)
        end = math.floor(t["at_ms"] / 1000 + BREAKER["open_s"])
        for second in range(start, end):
            assert per_second.get(second, 0) == 0, (second, t, per_second)

    # Recovery: closed again within open_s (+ the time the probes take) after the outage.
    closed = [t for t in transitions if (t["from"], t["to"]) == ("half_open", "closed")]
    assert closed, f"the breaker did not close again: {transitions}"
    closed_s = closed[-1]["at_ms"] / 1000
    assert closed_s >= outage_end - 0.5
    assert closed_s <= outage_end + BREAKER["open_s"] + 1.5, (outage_end, closed[-1])
    assert final_state == "closed"
    after = [
        r for rid, r in responses.items() if requests[rid]["created_at"] / 1000 > closed_s + 0.5
    ]
    assert all(r.status == "ok" and r.model == large for r in after), after
    return {"responses": responses, "after_recovery": len(after), "transitions": transitions}


async def test_outage_opens_the_breaker_serves_the_fallback_and_recovers(
    make_stack: Callable[..., Stack], simulator: Simulator
) -> None:
    result = await run_outage(
        make_stack, simulator, rate=20, duration_s=15, outage_at_s=4, outage_s=5
    )
    assert result["after_recovery"] >= 20, "too little traffic after recovery to tell"


# -- provider RPM: no 60 s window over the limit, at 5x the offered load --------------------


@pytest.mark.parametrize("workers", [1, 2])
async def test_rpm_is_never_exceeded_in_any_60_s_window_at_5x_offered_load(
    make_stack: Callable[..., Stack], simulator: Simulator, workers: int
) -> None:
    """[providers.sim.models.M] rpm = 60 with 5 req/s offered (300/min) for 24 s: the
    simulator sees at most 60 calls in any 60 s window, whether one worker holds every
    partition or two workers share them (each takes its share of the limit); the limit is
    used (>= 80 % of it), and every request is still answered (queued, then ok or shed)."""
    model, rpm = unique("rpm"), 60

    def customize(config: dict[str, Any]) -> None:
        config["providers"]["sim"]["models"][model] = {**PRICES, "rpm": rpm}
        config["routes"]["limited"] = {"primary": f"sim/{model}"}
        add_tenant_t6(config)

    stack = make_stack(customize)
    started = [stack.start_worker(f"w{i}") for i in range(workers)]
    for worker in started:  # the first worker gives up half its partitions to the second
        worker.wait_ready(16 // workers)
    await asyncio.to_thread(wait_for_share, started, 1 / workers)
    deadline_s = 12.0
    try:
        async with client_and_collector(stack) as (client, got):
            load = await offer_load(
                client, lambda i: chat("limited", i, deadline_s=deadline_s), 5, 24
            )
            await got.wait_for(load.acked, timeout=deadline_s + 60)
        counts = model_counts(simulator, model)
    finally:
        clear_faults(simulator, model)

    assert not load.errors and got.missing(load.acked) == set()
    statuses = Counter((r.status, r.reason) for r in got.first.values())
    print(
        f"rpm, {workers} worker(s): {len(load.requests)} requests, {dict(statuses)}; simulator "
        f"received {counts['received']}, max in 60 s {counts['max_per_60s']}"
    )
    assert counts["max_per_60s"] <= rpm
    assert counts["received"] >= 0.8 * rpm, "the limiter held back more than its limit"
    # Beyond the limit: queued, then shed (or degraded); never failed, never lost.
    assert {status for status, _ in statuses} <= {"ok", "shed", "degraded"}, statuses
    assert statuses[("ok", "")] == counts["received"]


# -- 429 storm: Retry-After is honoured, retries stay within the budget ---------------------

RETRY = {
    "max_attempts": 4,
    "base_ms": 100,
    "cap_ms": 2000,
    "budget_ratio": 0.1,
    "budget_min_per_s": 0.2,
}
BUDGET_WINDOW_S = 10  # RetryBudgetConfig.window_s


async def test_429_storm_honours_retry_after_and_the_retry_budget(
    make_stack: Callable[..., Stack], simulator: Simulator
) -> None:
    """The simulator answers 80 % of calls with 429 + Retry-After 1 s for 6 s, under 10 req/s.
    A recording proxy between worker and simulator timestamps every call. Guarantees:
    - no request is retried earlier than its 429 said (per request id);
    - after any 429, the worker sends nothing to that model until Retry-After has passed
      (the limiter blocks the whole model; a small grace for calls already on the wire);
    - retries <= budget_ratio x first attempts + budget_min_per_s x window per 10 s window;
    - every request is answered: ok, or failed/provider_rate_limited when retries ran out.
    """
    model = unique("storm")
    route = f"proxied/{model}"
    async with RecordingProxy(simulator.url) as proxy:

        def customize(config: dict[str, Any]) -> None:
            config["providers"]["proxied"] = {
                "kind": "openai",
                "base_url": f"{proxy.url}/v1",
                "timeout_s": 10,
                "models": {model: PRICES},
            }
            config["routes"]["storm"] = {"primary": route}
            config["resilience"] = {"retry": dict(RETRY)}
            add_tenant_t6(config)

        stack = make_stack(customize)
        stack.start_worker()
        try:
            async with client_and_collector(stack) as (client, got):
                t0 = time.time()
                storm_end = t0 + 7
                simulator.set_faults(
                    {
                        "kind": "rate_limit",
                        "model": model,
                        "probability": 0.8,
                        "retry_after_s": 1,
                        "start_at": t0 + 1,
                        "end_at": storm_end,
                    }
                )
                load = await offer_load(client, lambda i: chat("storm", i, deadline_s=20), 10, 10)
                await got.wait_for(load.acked, timeout=80)
        finally:
            clear_faults(simulator, model)
        calls = sorted(proxy.calls, key=lambda c: c.arrived)

    assert not load.errors and got.missing(load.acked) == set()
    responses = got.first
    statuses = Counter((r.status, r.reason) for r in responses.values())
    limited = [c for c in calls if c.status == 429]
    assert len(limited) >= 20, f"the storm did not happen ({len(limited)} 429s)"
    assert all(c.retry_after_ms == 1000 for c in limited)

    # Per request: the next attempt comes no earlier than the Retry-After of the last 429.
    by_request: dict[str, list[ProxiedCall]] = {}
    for c in calls:
        by_request.setdefault(c.request_id, []).append(c)
    pairs = 0
    for rid, attempts in by_request.items():
        for before, after in itertools.pairwise(attempts):
            if before.status == 429:
                pairs += 1
                waited_ms = (after.arrived - before.answered) * 1000
                assert waited_ms >= (before.retry_after_ms or 0) - 20, (rid, waited_ms, attempts)
    assert pairs >= 1, "no request was retried after a 429: nothing was tested"

    # Model-wide: after a 429, nothing new is sent until its Retry-After has passed.
    grace_s = 0.3  # admitted just before the 429 came back, still on its way
    for c in limited:
        told_s = (c.retry_after_ms or 0) / 1000
        quiet_from, quiet_to = c.answered + grace_s, c.answered + told_s - 0.02
        early = [d for d in calls if quiet_from < d.arrived < quiet_to]
        assert early == [], f"{len(early)} calls within Retry-After of the 429 at {c.answered}"

    # Retry amplification within the budget (ratio of first attempts + the per-second reserve).
    firsts = len(by_request)
    retries = len(calls) - firsts
    span_s = calls[-1].arrived - calls[0].arrived
    windows = math.ceil((span_s + 1) / BUDGET_WINDOW_S) + 1
    allowed = RETRY["budget_ratio"] * firsts + RETRY["budget_min_per_s"] * BUDGET_WINDOW_S * windows
    print(
        f"429 storm: {len(load.requests)} requests, {len(calls)} provider calls, "
        f"{len(limited)} 429s, {retries} retries (allowed {allowed:.1f}), "
        f"amplification {len(calls) / len(load.requests):.2f}, {dict(statuses)}"
    )
    assert firsts <= len(load.requests)
    assert retries <= allowed
    assert len(calls) / len(load.requests) <= 1 + allowed / len(load.requests)

    # Everyone answered: ok, or failed because the provider kept rate limiting.
    assert set(statuses) <= {("ok", ""), ("failed", "provider_rate_limited")}, statuses
    late = [r for r in load.requests if r["created_at"] / 1000 > storm_end + 1.5]
    assert late and all(responses[r["request_id"]].status == "ok" for r in late)


# -- an Anthropic-style provider on the route's primary --------------------------------------


async def test_a_route_whose_primary_is_an_anthropic_provider_works_end_to_end(
    make_stack: Callable[..., Stack], simulator: Simulator
) -> None:
    """kind = "anthropic", base_url = the simulator's root: requests (with a system prompt and
    stop sequences, which the connector translates) are answered ok by that provider, with
    usage and cost, and each reached the simulator's Messages API with its request id."""
    model = unique("claude")

    def customize(config: dict[str, Any]) -> None:
        config["providers"]["anth"] = {
            "kind": "anthropic",
            "base_url": simulator.url,
            "timeout_s": 10,
            "models": {model: {"input_usd_per_mtok": 3.0, "output_usd_per_mtok": 15.0}},
        }
        config["routes"]["claude"] = {"primary": f"anth/{model}", "fallbacks": ["sim/sim-small"]}

    stack = make_stack(customize)
    stack.start_worker()
    async with SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client:
        answers = await asyncio.gather(
            *(
                client.complete(
                    tenant="t1",
                    model="claude",
                    messages=[
                        {"role": "system", "content": "You are terse."},
                        {"role": "user", "content": f"Name a river, number {i}."},
                    ],
                    stop=["\n\n"],
                    max_tokens=30,
                    timeout=60,
                )
                for i in range(5)
            )
        )
    for answer in answers:
        assert answer.status == "ok", answer
        assert (answer.provider, answer.model) == ("anth", model)
        assert answer.content and answer.prompt_tokens > 0 and answer.completion_tokens > 0
        assert answer.cost_micros > 0
        seen = httpx.get(
            f"{simulator.url}/admin/requests", params={"id": answer.request_id}, timeout=5
        ).json()
        assert seen["seen"] == 1
    assert model_counts(simulator, model)["by_status"] == {"200": 5}


# -- deadlines: a call cut short by its request's deadline says nothing about the provider ---


async def test_timeouts_cut_short_by_request_deadlines_do_not_open_the_breaker(
    make_stack: Callable[..., Stack], simulator: Simulator
) -> None:
    """A healthy model that answers in 1.5 s gets 20 requests whose deadlines are 0.6 s away:
    each call is given only the time left, and times out. Those timeouts end the requests as
    shed/deadline_expired, but they are not provider failures: the breaker (5 calls minimum)
    stays closed, and a request with time to wait is answered ok by that model."""
    model = unique("slow")
    simulator.set_model(model, latency_ms=1_500)

    def customize(config: dict[str, Any]) -> None:
        config["providers"]["sim"]["models"][model] = PRICES
        config["routes"]["patient"] = {"primary": f"sim/{model}"}
        config["resilience"] = {"breaker": dict(BREAKER), "retry": {"max_attempts": 1}}
        add_tenant_t6(config)

    stack = make_stack(customize)
    worker = stack.start_worker()
    try:
        async with client_and_collector(stack) as (client, got):
            load = await offer_load(
                client, lambda i: chat("patient", i, deadline_s=0.6), rate=5, duration_s=4
            )
            await got.wait_for(load.acked, timeout=60)
            rushed_calls = model_counts(simulator, model)["received"]
            patient_request = chat("patient", 1_000, deadline_s=30)
            await client.publish_record(patient_request)
            patient = await client.wait_for(patient_request["request_id"], timeout=60)
        transitions = breaker_transitions(worker, f"sim/{model}")
        state = (worker.status() or {}).get("breakers", {}).get(f"sim/{model}")
    finally:
        clear_faults(simulator, model)
        simulator.set_model(model, latency_ms=0)

    assert not load.errors and got.missing(load.acked) == set()
    rushed = [got.first[rid] for rid in load.acked]
    statuses = Counter((r.status, r.reason) for r in rushed)
    print(f"deadline-cut timeouts: {rushed_calls} calls, {dict(statuses)}, {transitions}")
    assert set(statuses) == {("shed", "deadline_expired")}, statuses
    assert rushed_calls >= BREAKER["minimum_calls"], "too few calls reached the model to tell"
    assert transitions == [] and state == "closed", (transitions, state)
    assert (patient.status, patient.model) == ("ok", model), patient
