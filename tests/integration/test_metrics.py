"""Issue 8: the worker's Prometheus metrics at /metrics move as real traffic flows."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from connectors.client import SluicegateClient
from tests.integration.conftest import Simulator, Stack, Worker, chat_kwargs, eventually

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(worker: Worker) -> Samples:
    response = httpx.get(f"http://127.0.0.1:{worker.port}/metrics", timeout=10)
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def _budgeted(config: dict[str, Any]) -> None:
    config["tenants"]["t1"]["daily_budget_usd"] = 5.0


async def test_metrics_parse_and_counters_move_with_traffic(
    make_stack: Callable[..., Stack], simulator: Simulator
) -> None:
    stack: Stack = make_stack(_budgeted)
    worker = stack.start_worker()
    before = scrape(worker)
    assert value(before, "sluicegate_received_total") == 0
    request_topics = {f"{stack.prefix}.requests.{p}" for p in ("critical", "high", "normal", "low")}
    lag_topics = {dict(ls)["topic"] for n, ls in before if n == "sluicegate_consumer_lag"}
    assert lag_topics == request_topics

    plan = [("critical", "one"), ("high", "two"), ("high", "three"), ("low", "four")]
    async with SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client:
        first = await asyncio.gather(
            *(client.complete(**chat_kwargs(q, priority=p)) for p, q in plan)
        )
        again = await client.complete(**chat_kwargs("one", priority="normal"))  # a cache hit
    assert [r.status for r in first] == ["ok"] * 4 and again.status == "cached"

    after = scrape(worker)
    assert value(after, "sluicegate_received_total") == 5
    assert value(after, "sluicegate_responses_total", status="ok") == 4
    assert value(after, "sluicegate_responses_total", status="cached") == 1
    assert value(after, "sluicegate_cache_hits_total", tenant="t1") == 1
    assert value(after, "sluicegate_cache_stores_total", tenant="t1") == 4
    assert value(after, "sluicegate_cache_savings_usd_total", tenant="t1") > 0
    assert value(after, "sluicegate_provider_calls_total") == 4
    ok = {"status": "ok", "reason": "none"}
    assert value(after, "sluicegate_requests_total", priority="high", **ok) == 2
    assert value(after, "sluicegate_requests_total", priority="critical", **ok) == 1
    assert (
        value(after, "sluicegate_requests_total", priority="normal", status="cached", reason="none")
        == 1
    )
    assert total(after, "sluicegate_request_latency_seconds_count") == 5
    assert total(after, "sluicegate_queue_wait_seconds_count") == 5
    assert value(after, "sluicegate_spend_usd_total", tenant="t1") > 0
    day = {"tenant": "t1", "scope": "tenant_day", "feature": ""}
    assert value(after, "sluicegate_budget_cap_usd", **day) == 5.0
    assert 0 < value(after, "sluicegate_budget_spent_usd", **day) < 5.0
    closed = {"provider": "sim", "model": "sim-large", "state": "closed"}
    assert value(after, "sluicegate_breaker_state", **closed) == 1
    assert value(after, "sluicegate_breaker_state_code", provider="sim", model="sim-large") == 0


async def test_in_flight_and_consumer_lag_rise_under_slow_calls_and_drain(
    make_stack: Callable[..., Stack], simulator: Simulator
) -> None:
    stack: Stack = make_stack()
    worker = stack.start_worker()
    simulator.set_model("sim-large", latency_ms=1500)
    try:
        async with SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client:
            ids = [
                await client.publish(**chat_kwargs(f"slow question {i}", tenant="t2"))
                for i in range(8)
            ]

            async def busy() -> Samples | None:
                s = scrape(worker)
                lag = total(s, "sluicegate_consumer_lag")
                return s if lag > 0 and value(s, "sluicegate_in_flight") > 0 else None

            during = await eventually(busy, 30, "calls in flight and uncommitted requests")
            topic = f"{stack.prefix}.requests.normal"
            assert 0 < value(during, "sluicegate_consumer_lag", topic=topic) <= 8
            got = await asyncio.gather(*(client.wait_for(i, 60) for i in ids))
        assert Counter(r.status for r in got) == {"ok": 8}

        async def drained() -> bool:
            s = scrape(worker)
            return (
                total(s, "sluicegate_consumer_lag") == 0 and value(s, "sluicegate_in_flight") == 0
            )

        await eventually(drained, 30, "the lag to drain after the commits")
        final = scrape(worker)
        assert (
            value(final, "sluicegate_requests_total", priority="normal", status="ok", reason="none")
            == 8
        )
        slow = [
            v
            for (n, ls), v in final.items()
            if n == "sluicegate_request_latency_seconds_bucket" and dict(ls).get("le") == "1.0"
        ]
        assert sum(slow) == 0  # every one took at least the simulator's 1.5 s
    finally:
        simulator.reset()
