"""Issue 5: tenant rate limits and budgets, enforced by the worker against a real broker."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx

from connectors.client import SluicegateClient
from tests.integration.conftest import wait_until


def _limits(config: dict) -> None:
    config["tenants"]["limited"] = {"max_priority": "high", "rpm": 5}
    config["tenants"]["capped"] = {"max_priority": "high", "daily_budget_usd": 0.01}
    config["tenants"]["thrifty"] = {
        "max_priority": "high",
        "daily_budget_usd": 0.002,
        "on_exceed": "downgrade",
        "downgrade_to": "sim/sim-small",
    }


def _ask(tenant: str, i: int) -> dict:
    return {
        "tenant": tenant,
        "model": "chat",
        "max_tokens": 40,
        "cache_mode": "bypass",
        "messages": [{"role": "user", "content": f"request {i} for {tenant}"}],
    }


async def _rate_limited(client: SluicegateClient) -> None:
    first = [await client.complete(timeout=30, **_ask("limited", i)) for i in range(7)]
    statuses = [r.status for r in first]
    assert statuses[:5] == ["ok"] * 5
    assert statuses[5:] == ["rejected"] * 2
    refused = first[5]
    assert refused.reason == "rate_limited"
    assert refused.retry_after_ms is not None and 0 < refused.retry_after_ms <= 61_000
    # Honouring retry_after_ms succeeds (the wait is what the response told us).
    await asyncio.sleep(refused.retry_after_ms / 1000 + 0.2)
    again = await client.complete(timeout=30, **_ask("limited", 99))
    assert again.status == "ok", again.record


async def _capped(client: SluicegateClient, stack) -> None:
    cap = 10_000  # micro-dollars
    responses = await asyncio.gather(
        *(client.complete(timeout=60, **_ask("capped", i)) for i in range(80))
    )
    by_status = Counter(r.status for r in responses)
    spent = sum(r.cost_micros for r in responses)
    assert by_status["ok"] > 0 and by_status["rejected"] > 0, by_status
    assert spent <= cap, f"overshoot: spent {spent} of {cap}"
    rejected = [r for r in responses if r.status == "rejected"]
    assert {r.reason for r in rejected} == {"budget_exceeded"}
    assert all(r.retry_after_ms and r.retry_after_ms > 0 for r in rejected)  # the day's reset
    # The ledger in the worker's table agrees with the responses to the micro-dollar.
    worker = stack.workers[0]

    def ledger_day_spend() -> int | None:
        budgets = httpx.get(f"http://127.0.0.1:{worker.port}/budgets", timeout=5).json()
        windows = budgets.get("capped", {}).get("windows", [])
        day = [w for w in windows if w["scope"] == "tenant_day"]
        return day[0]["spent_micros"] if day and day[0]["reserved_micros"] == 0 else None

    assert wait_until(ledger_day_spend, 20, "the ledger to settle") == spent


async def _downgraded(client: SluicegateClient) -> None:
    responses = [await client.complete(timeout=30, **_ask("thrifty", i)) for i in range(12)]
    models = [r.model for r in responses if r.ok]
    assert models[0] == "sim-large"
    assert "sim-small" in models, [(r.status, r.model, r.reason) for r in responses]
    downgraded = [r for r in responses if r.model == "sim-small"]
    assert all(r.status == "degraded" for r in downgraded)
    assert all(r.degradation_reason == "budget_exceeded" for r in downgraded)


async def test_rate_limits_budgets_and_downgrades_are_enforced(make_stack):
    stack = make_stack(_limits)
    stack.start_worker()
    started = time.monotonic()
    async with SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client:
        await asyncio.gather(_rate_limited(client), _capped(client, stack), _downgraded(client))
    assert time.monotonic() - started < 120


async def test_aggregated_spend_equals_the_responses_and_counts_a_request_once(make_stack):
    """Usage tables (minute/hour/day windows) and the budget ledger agree with the sum of
    response costs to the micro-dollar; a usage event delivered twice is counted once."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    stack = make_stack(lambda c: c["tenants"]["t1"].update(daily_budget_usd=100.0))
    worker = stack.start_worker()
    async with SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client:
        asks = [
            _ask("t1", i) | {"feature": f"f{i % 3}", "temperature": 0.0, "cache_mode": "default"}
            for i in range(30)
        ]
        asks += asks[:10]  # repeats: cache hits, cost 0, savings recorded
        responses = await asyncio.gather(*(client.complete(timeout=60, **a) for a in asks))
    assert {r.status for r in responses} == {"ok", "cached"}
    spent = sum(r.cost_micros for r in responses)
    saved = sum(r.cost_saved_micros for r in responses)
    by_feature: Counter[str] = Counter()
    for ask, response in zip(asks, responses, strict=True):
        by_feature[ask["feature"]] += response.cost_micros

    def costs(window: str) -> dict:
        return httpx.get(
            f"http://127.0.0.1:{worker.port}/costs", params={"window": window}, timeout=5
        ).json()

    def totals_settled(window: str) -> dict | None:
        rows = {r["feature"]: r for r in costs(window)["rows"] if r["tenant"] == "t1"}
        total = rows.get("*")
        return rows if total and total["requests"] == len(asks) else None

    for window in ("minute", "hour", "day"):
        rows = wait_until(lambda w=window: totals_settled(w), 30, f"{window} totals")
        assert rows["*"]["cost_micros"] == spent
        assert rows["*"]["saved_micros"] == saved
        assert rows["*"]["cache_hits"] == sum(r.cached for r in responses) >= 5
        assert {f: rows[f]["cost_micros"] for f in by_feature} == dict(by_feature)
    day = [w for w in costs("day")["budgets"]["t1"]["windows"] if w["scope"] == "tenant_day"]
    assert day[0]["spent_micros"] == spent

    # Deliver one usage event a second time, as a crash between produce and commit would.
    usage_topic = f"{stack.prefix}.usage"
    consumer = Consumer(
        {
            "bootstrap.servers": stack.bootstrap,
            "group.id": "dup-reader",
            "auto.offset.reset": "earliest",
        }
    )
    partitions = consumer.list_topics(usage_topic, timeout=10).topics[usage_topic].partitions
    consumer.assign([TopicPartition(usage_topic, p, 0) for p in partitions])
    message = None
    while message is None or message.error():
        message = consumer.poll(5)
    consumer.close()
    producer = Producer({"bootstrap.servers": stack.bootstrap, "partitioner": "murmur2_random"})
    producer.produce(usage_topic, message.value(), key=message.key())
    producer.flush(10)
    wait_until(lambda: costs("day")["duplicates_dropped"] >= 1, 30, "the duplicate to be seen")
    rows = totals_settled("day")
    assert rows is not None and rows["*"]["cost_micros"] == spent
