"""A SIGKILLed worker's held reservations: charged if their attempt was sent, else released.

One tenant, one slow model limited to one call at a time: r1 is calling the provider (its
reservation marked sent), r2 waits in the queue (reserved, not sent). Once the changelog
shows both, the worker gets SIGKILL; its successor re-reads both requests, charges r1's
held reservation, releases r2's, and reserves anew for each.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
from confluent_kafka import Consumer

from connectors.client import SluicegateClient
from tests.integration.conftest import Simulator, Stack, wait_until

TENANT, PARTITION = "t1", 3  # murmur2 of the key, 4 partitions
SLOW_MS = 15_000  # r1's first call outlives the kill


def _config(config: dict[str, Any]) -> None:
    config["tenants"][TENANT] = {"max_priority": "critical", "daily_budget_usd": 1.0}
    config["providers"]["sim"]["daily_budget_usd"] = 100.0
    config["providers"]["sim"]["timeout_s"] = 30
    config["providers"]["sim"]["models"]["sim-large"]["max_in_flight"] = 1
    config["routes"]["chat"] = {"primary": "sim/sim-large"}


def _ask(i: int) -> dict[str, Any]:
    return {
        "request_id": f"recovery-{i}-{uuid.uuid4().hex[:8]}",
        "tenant": TENANT,
        "model": "chat",
        "max_tokens": 40,
        "cache_mode": "bypass",
        "messages": [{"role": "user", "content": f"held reservation {i}"}],
    }


def _tenant_rows(stack: Stack, deadline_s: float, done: Any) -> dict[str, Any]:
    """Read the tenant-state changelog until ``done(latest row of TENANT)`` holds."""
    consumer = Consumer(
        {
            "bootstrap.servers": stack.bootstrap,
            "group.id": f"probe-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([f"{stack.prefix}-app-tenant-state-changelog"])
    latest: dict[str, Any] = {}
    end = time.monotonic() + deadline_s
    try:
        while time.monotonic() < end:
            message = consumer.poll(0.5)
            if message is None or message.error() or message.value() is None:
                continue
            if json.loads(message.key()) == TENANT:
                latest = json.loads(message.value())
                if done(latest):
                    return latest
    finally:
        consumer.close()
    raise AssertionError(f"the changelog never showed the expected row: {latest}")


def _settled_days(stack: Stack) -> tuple[int, int] | None:
    """Today's spend of the tenant and of its partition's provider row, once nothing is
    reserved any more."""
    for worker in stack.live_workers():
        try:
            view = httpx.get(f"http://127.0.0.1:{worker.port}/budgets", timeout=5).json()
        except httpx.HTTPError:
            continue
        windows = view.get(TENANT, {}).get("windows", [])
        day = [w for w in windows if w["scope"] == "tenant_day"]
        provider = (view.get(f"__provider__:sim/p{PARTITION}") or {}).get("windows", [])
        if day and provider and day[0]["reserved_micros"] == provider[0]["reserved_micros"] == 0:
            return day[0]["spent_micros"], provider[0]["spent_micros"]
    return None


async def test_a_successor_charges_sent_attempts_and_releases_queued_ones(
    make_stack: Any, simulator: Simulator
) -> None:
    stack = make_stack(_config)
    simulator.set_model("sim-large", latency_ms=SLOW_MS)
    try:
        worker = stack.start_worker()
        first, second = _ask(1), _ask(2)
        async with SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client:
            await client.publish(**first)
            await client.publish(**second)

            def both_held(row: dict[str, Any]) -> bool:
                held = row["ledger"]["reservations"]
                return (
                    first["request_id"] in held
                    and second["request_id"] in held
                    and (len(held[first["request_id"]]) == 5 and held[first["request_id"]][4])
                )

            row = _tenant_rows(stack, 30, both_held)
            held = row["ledger"]["reservations"]
            sent_amount = held[first["request_id"]][0]
            assert held[second["request_id"]][4] is False  # queued behind r1: not sent
            worker.kill()
            simulator.set_model("sim-large", latency_ms=0)
            stack.start_worker("w2")
            a = await client.wait_for(first["request_id"], timeout=90)
            b = await client.wait_for(second["request_id"], timeout=90)
        assert (a.status, b.status) == ("ok", "ok"), (a.record, b.record)
        tenant_spent, provider_spent = wait_until(
            lambda: _settled_days(stack), 30, "the ledgers to settle"
        )
        # r1's first attempt charged at its reservation; r2's never-sent one released.
        # (The route has one model, so the provider reserved the same amounts.)
        assert tenant_spent == sent_amount + a.cost_micros + b.cost_micros
        assert provider_spent == tenant_spent
    finally:
        simulator.set_model("sim-large", latency_ms=0)
