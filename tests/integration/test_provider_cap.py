"""Issue 5: a provider's global daily cap, split over the partitions, against a real broker.

Each request partition may spend its share (cap / partitions) of the provider's day; the
share is enforced by reservation like a tenant's cap, so the spend of a partition never
exceeds it, over-cap requests get ``rejected/budget_exceeded`` with the day's reset time
and a dead letter, other partitions are unaffected, and a SIGKILLed worker's successor
remembers the spend (the ledger row is restored from the table's changelog).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx

from connectors.client import ChatResponse, SluicegateClient
from streams import dlq
from tests.integration.conftest import PARTITIONS, Stack, wait_until

SHARE = 2_000  # micro-dollars per partition; one request reserves about 450
BUSY, QUIET = "t1", "t2"  # on partitions 3 and 0 (murmur2 of the key, 4 partitions)
BUSY_PARTITION = 3


def _provider_cap(config: dict[str, Any]) -> None:
    config["providers"]["sim"]["daily_budget_usd"] = SHARE * PARTITIONS / 1_000_000


def _ask(tenant: str, i: int) -> dict[str, Any]:
    return {
        "tenant": tenant,
        "model": "chat",
        "max_tokens": 40,
        "cache_mode": "bypass",
        "messages": [{"role": "user", "content": f"provider cap request {i}"}],
    }


def _provider_row(stack: Stack, partition: int) -> dict[str, Any] | None:
    """The busy partition's provider-day row from whichever worker owns it."""
    for worker in stack.live_workers():
        try:
            view = httpx.get(f"http://127.0.0.1:{worker.port}/budgets", timeout=5).json()
        except httpx.HTTPError:
            continue
        entry = view.get(f"__provider__:sim/p{partition}")
        if entry:
            row: dict[str, Any] = entry["windows"][0]
            return row
    return None


async def _until_refused(client: SluicegateClient, start: int) -> list[ChatResponse]:
    """One request at a time until the share refuses one with nothing else in flight."""
    out = []
    for i in range(start, start + 20):
        response = await client.complete(timeout=30, **_ask(BUSY, i))
        out.append(response)
        if response.status == "rejected":
            return out
    raise AssertionError(f"never refused: {[(r.status, r.cost_micros) for r in out]}")


async def test_a_partition_spends_at_most_its_share_of_the_provider_cap(make_stack: Any) -> None:
    stack = make_stack(_provider_cap)
    worker = stack.start_worker()
    async with SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client:
        burst = await asyncio.gather(
            *(client.complete(timeout=60, **_ask(BUSY, i)) for i in range(30))
        )
        by_status = Counter(r.status for r in burst)
        assert by_status["ok"] > 0 and by_status["rejected"] > 0, by_status
        rejected = [r for r in burst if r.status == "rejected"]
        assert {r.reason for r in rejected} == {"budget_exceeded"}
        assert all("provider_day budget of sim" in r.detail for r in rejected)
        assert all(r.retry_after_ms and 0 < r.retry_after_ms <= 86_400_000 for r in rejected)
        serial = await _until_refused(client, 100)
        # Another partition has its own share: untouched by the busy one.
        quiet = await client.complete(timeout=30, **_ask(QUIET, 0))
        assert quiet.status == "ok", quiet.record

    answered = [*burst, *serial]
    spent = sum(r.cost_micros for r in answered)
    assert 0 < spent <= SHARE, f"partition {BUSY_PARTITION} spent {spent} of its share {SHARE}"

    def settled_row() -> dict[str, Any] | None:
        row = _provider_row(stack, BUSY_PARTITION)
        return row if row and row["reserved_micros"] == 0 else None

    row = wait_until(settled_row, 20, "the provider ledger to settle")
    assert row["spent_micros"] == spent  # the ledger agrees with the responses
    assert (row["cap_micros"], row["global_cap_micros"]) == (SHARE, SHARE * PARTITIONS)

    # Every refusal has its dead letter on <prefix>.deadletter.shed.
    refused_ids = {r.request_id for r in answered if r.status == "rejected"}

    def letters() -> set[str] | None:
        records = dlq.read_topics(stack.bootstrap, [f"{stack.prefix}.deadletter.shed"])
        found, _ = dlq.decode_letters(records)
        ids = {x.record["request_id"] for x in found if x.record["reason"] == "budget_exceeded"}
        return ids if ids >= refused_ids else None

    assert wait_until(letters, 20, "the dead letters") == refused_ids

    # A SIGKILLed worker's successor restores the ledger: the spend is not forgotten.
    worker.kill()
    stack.start_worker("w2")
    async with SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client:
        after = await client.complete(timeout=60, **_ask(BUSY, 500))
    assert (after.status, after.reason) == ("rejected", "budget_exceeded"), after.record
    row = wait_until(lambda: _provider_row(stack, BUSY_PARTITION), 20, "the restored row")
    assert row["spent_micros"] == spent
