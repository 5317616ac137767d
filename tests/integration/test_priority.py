"""Issue 3: priority scheduling, tenant fair share, deadlines, load shedding and backpressure.

Real broker, real worker processes, the simulator over real HTTP. The simulator's model is
slowed down (200 ms a call, at most 5 at once) and the worker may keep 5 calls in flight on
it, so the gateway can serve about 25 requests/s and anything published faster waits in the
worker's scheduler or, behind a closed intake gate, in Kafka. Completion order is read from
each response's ``created_at`` (the worker's clock when it wrote the answer).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition

from connectors.client import ChatResponse, SluicegateClient, build_request
from schemas import registry
from tests.integration.conftest import (
    PARTITIONS,
    Simulator,
    Stack,
    Worker,
    client_and_collector,
    until,
)

PRIORITIES = ("critical", "high", "normal", "low")
TENANTS = ("t1", "t2", "t3", "t4", "t5")
SLOTS = 5  # calls in flight on the slow model: the worker's limit and the simulator's
LATENCY_MS = 200


# -- helpers ----------------------------------------------------------------------------------


def _slow_model(
    scheduler: dict[str, Any] | None = None, **worker: Any
) -> Callable[[dict[str, Any]], None]:
    """A stack config: at most SLOTS calls in flight on the route's model, plus overrides."""

    def customize(config: dict[str, Any]) -> None:
        config["scheduler"] = {"max_in_flight_per_model": SLOTS, **(scheduler or {})}
        config["worker"].update(worker)

    return customize


def _slow_simulator(simulator: Simulator) -> None:
    simulator.set_model("sim-large", latency_ms=LATENCY_MS, max_concurrency=SLOTS)


def _request(
    tenant: str, priority: str, note: str = "", model: str = "chat", **fields: Any
) -> dict[str, Any]:
    rid = f"{priority[0]}-{tenant}-{uuid.uuid4().hex[:12]}"
    return build_request(
        request_id=rid,
        tenant=tenant,
        priority=priority,
        model=model,
        messages=[{"role": "user", "content": f"{priority} work for {tenant} {rid} {note}"}],
        temperature=1.0,
        max_tokens=16,
        cache_mode="bypass",
        **fields,
    )


def _batch(
    priority: str, per_tenant: int, tenants: Iterable[str] = TENANTS
) -> list[dict[str, Any]]:
    return [_request(t, priority) for _ in range(per_tenant) for t in tenants]


async def _publish(client: SluicegateClient, requests: list[dict[str, Any]]) -> None:
    await asyncio.gather(*(client.publish_record(r) for r in requests))


def _completion_order(responses: Iterable[ChatResponse]) -> list[ChatResponse]:
    """By the worker's write time; ties keep arrival order."""
    return sorted(responses, key=lambda r: r.record["created_at"])


def _ids(requests: Iterable[dict[str, Any]]) -> list[str]:
    return [r["request_id"] for r in requests]


def _seen_by_simulator(simulator: Simulator, request_id: str) -> int:
    body = httpx.get(f"{simulator.url}/admin/requests", params={"id": request_id}, timeout=5)
    return int(body.json()["seen"])


def _read_topic(bootstrap: str, topic: str, expect: int, timeout: float = 30) -> list[bytes]:
    """Every record of ``topic`` from the beginning, once ``expect`` of them are there."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-read-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])  # 0: OFFSET_BEGINNING
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(values) < expect and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=0.5):
                if message.error() is None:
                    values.append(message.value() or b"")
        return values
    finally:
        consumer.close()


def _consumer_lag(stack: Stack, priority: str) -> int:
    """The broker's view: end offsets minus the worker group's committed offsets."""
    topic = f"{stack.prefix}.requests.{priority}"
    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": "lag-probe"})
    try:
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(PARTITIONS)
        }
    finally:
        consumer.close()
    from streams.topics import admin_client

    group = str(stack.config["worker"]["app_id"])
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in ends])]
    committed = {p: 0 for p in ends}
    admin = admin_client(stack.bootstrap)  # keep a reference: its futures die with it
    for future in admin.list_consumer_group_offsets(request).values():
        for tp in future.result(timeout=10).topic_partitions:
            committed[tp.partition] = max(0, tp.offset)
    return sum(end - committed[p] for p, end in ends.items())


def _rss_kb(worker: Worker) -> int:
    for line in Path(f"/proc/{worker.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for worker {worker.name}")


# -- strict priority ---------------------------------------------------------------------------


async def test_higher_priorities_complete_first_under_a_backlog(
    make_stack: Callable[..., Stack], simulator: Simulator
) -> None:
    """Low is published first, then normal, high and critical (25 each) to a worker that
    serves 5 at a time. Asserted, for each priority P: between P's first and last
    completion, at most SLOTS requests of lower priority complete (the ones already in
    flight when P arrived); so criticals finish before the high backlog, highs before
    the normal one, normals before the low one."""
    stack = make_stack(_slow_model())
    _slow_simulator(simulator)
    try:
        stack.start_worker()
        batches = {p: _batch(p, 5) for p in reversed(PRIORITIES)}  # low first
        ids = [i for b in batches.values() for i in _ids(b)]
        async with client_and_collector(stack) as (client, seen):
            for batch in batches.values():
                await _publish(client, batch)
            got = await seen.wait_for(ids, timeout=90)
    finally:
        simulator.reset()
    assert Counter(r.status for r in got.values()) == {"ok": len(ids)}
    order = _completion_order(got[i] for i in ids)
    rank = {p: i for i, p in enumerate(PRIORITIES)}
    sequence = [r.record["priority"] for r in order]
    for priority in PRIORITIES[:-1]:
        times = [r.record["created_at"] for r in order if r.record["priority"] == priority]
        first, last = min(times), max(times)
        overtakers = [
            r
            for r in order
            if rank[r.record["priority"]] > rank[priority] and first < r.record["created_at"] < last
        ]
        assert len(overtakers) <= SLOTS, (
            f"{len(overtakers)} lower-priority requests completed while {priority} work "
            f"waited; completion order: {''.join(p[0] for p in sequence)}"
        )
    print(f"completion order: {''.join(p[0] for p in sequence)}")
    # The low backlog, published first, is overtaken: most of it completes last.
    assert sequence[-15:] == ["low"] * 15, "".join(p[0] for p in sequence)


# -- fair share across tenants -----------------------------------------------------------------


async def test_a_small_tenant_is_served_promptly_behind_another_tenants_flood(
    make_stack: Callable[..., Stack], simulator: Simulator
) -> None:
    """t1 floods 100 normal requests; once they are queued t2 sends 5. Asserted: all of
    t2's requests are among the first 20 completions after t2 published (FIFO would put
    them behind ~90 of t1's), while t1 still has at least half its flood waiting."""
    stack = make_stack(_slow_model())
    _slow_simulator(simulator)
    try:
        worker = stack.start_worker()
        flood = [_request("t1", "normal", f"flood {i}") for i in range(100)]
        small = [_request("t2", "normal", f"small {i}") for i in range(5)]
        async with client_and_collector(stack) as (client, seen):
            await _publish(client, flood)
            await until(
                lambda: (worker.status() or {}).get("queued", 0) >= 80,
                30,
                "the flood to be queued",
            )
            published_ms = int(time.time() * 1000)
            await _publish(client, small)
            await seen.wait_for(_ids(small), timeout=60)
            got = seen.first
            t1_waiting = 100 - seen.answered(_ids(flood))
    finally:
        simulator.reset()
    assert all(got[i].status == "ok" for i in _ids(small))
    after = _completion_order(r for r in got.values() if r.record["created_at"] >= published_ms)
    positions = [n for n, r in enumerate(after) if r.record["tenant"] == "t2"]
    assert len(positions) == 5
    assert positions[-1] < 20, [r.record["tenant"] for r in after]
    assert t1_waiting >= 50, f"only {t1_waiting} of t1's flood were still waiting"


# -- deadlines ---------------------------------------------------------------------------------


async def test_requests_whose_deadline_passes_while_waiting_are_shed_and_never_sent(
    make_stack: Callable[..., Stack], simulator: Simulator
) -> None:
    """t1 queues 20 normal requests, then 10 more with a deadline 3 s after creation; then
    150 high requests (6 s of work) take the provider first, so those 10 expire in the
    worker's queue. 5 normal requests with a 1 s deadline published behind the high
    backlog wait in Kafka (normal intake is paused) and are past it when read. Asserted:
    all 15 are shed ``deadline_expired`` with a dead letter, the 10 after waiting in the
    queue; the simulator never received any of them; every other request is ok."""
    stack = make_stack(_slow_model())
    _slow_simulator(simulator)
    try:
        worker = stack.start_worker()
        now = int(time.time() * 1000)
        backlog = [_request("t1", "normal", f"backlog {i}") for i in range(20)]
        doomed = [_request("t1", "normal", "3s", deadline_ms=now + 3_000) for _ in range(10)]
        urgent = _batch("high", 30)
        async with client_and_collector(stack) as (client, seen):
            await _publish(client, backlog)
            await _publish(client, doomed)
            # The reader takes the most urgent priority first: let the doomed requests be
            # queued before the high ones arrive, or they are refused at the door instead.
            await until(
                lambda: ((worker.status() or {}).get("counts") or {}).get("received", 0) >= 30,
                10,
                "the backlog and the doomed requests to be taken in",
            )
            await _publish(client, urgent)
            await until(
                lambda: "normal" in (worker.status() or {}).get("paused", []),
                10,
                "normal intake to pause behind the high backlog",
            )
            late_now = int(time.time() * 1000)
            late = [_request(t, "normal", "1s", deadline_ms=late_now + 1_000) for t in TENANTS]
            await _publish(client, late)
            ids = _ids(backlog + doomed + urgent + late)
            got = await seen.wait_for(ids, timeout=90)
        expired = _ids(doomed + late)
        never_sent = {rid: _seen_by_simulator(simulator, rid) for rid in expired}
        sent = {rid: _seen_by_simulator(simulator, rid) for rid in _ids(urgent[:5])}
    finally:
        simulator.reset()
    for rid in expired:
        assert (got[rid].status, got[rid].reason) == ("shed", "deadline_expired"), got[rid].record
    for rid in _ids(doomed):  # expired while queued, not refused at the door
        assert got[rid].detail.startswith("deadline passed") and got[rid].detail.endswith("ago")
        assert got[rid].queue_ms >= 1_000, got[rid].record
    assert never_sent == dict.fromkeys(expired, 0)
    assert sent == dict.fromkeys(_ids(urgent[:5]), 1)  # the probe does see sent requests
    others = set(ids) - set(expired)
    assert Counter(got[i].status for i in others) == {"ok": len(others)}
    letters = [
        registry.decode(registry.DEAD_LETTER, v)
        for v in _read_topic(stack.bootstrap, f"{stack.prefix}.deadletter.shed", len(expired))
    ]
    assert {d["request_id"]: d["reason"] for d in letters} == dict.fromkeys(
        expired, "deadline_expired"
    )


# -- load shedding -----------------------------------------------------------------------------


async def test_overload_sheds_lowest_priority_first_and_never_critical(
    make_stack: Callable[..., Stack], simulator: Simulator
) -> None:
    """A 40-slot queue is filled in waves: 60 low, 40 normal, 60 high, then 30 critical.
    Asserted: every request gets exactly one response; no critical is shed; lows are shed
    ``overloaded``; every shed request has a dead letter on ``deadletter.shed`` whose load
    figures show no lower-priority work was waiting when it was shed (lowest first); the
    worker's shed counters agree with the responses."""
    capacity = 40
    stack = make_stack(_slow_model(queue_capacity=capacity))
    _slow_simulator(simulator)
    try:
        worker = stack.start_worker()
        waves = {p: _batch(p, n) for p, n in (("low", 12), ("normal", 8), ("high", 12))}
        waves["critical"] = _batch("critical", 6)
        ids = [i for wave in waves.values() for i in _ids(wave)]

        def depth(priority: str) -> int:
            return int(((worker.status() or {}).get("scheduler") or {})["depth"][priority])

        async with client_and_collector(stack) as (client, seen):
            await _publish(client, waves["low"])
            await until(lambda: depth("low") >= 10, 20, "lows to be queued")
            await _publish(client, waves["normal"])
            await until(lambda: depth("normal") >= 8, 20, "normals to be queued")
            await _publish(client, waves["high"])
            await _publish(client, waves["critical"])
            got = await seen.wait_for(ids, timeout=90)
            copies = Counter(r.request_id for r in seen.responses)
            status = worker.status()
    finally:
        simulator.reset()
    assert set(copies) == set(ids) and set(copies.values()) == {1}, "missing or duplicates"
    by_priority = {p: Counter(got[i].status for i in _ids(waves[p])) for p in PRIORITIES}
    assert by_priority["critical"] == {"ok": len(waves["critical"])}, by_priority
    assert by_priority["low"]["shed"] > 0, by_priority
    shed = {i: got[i] for i in ids if got[i].status == "shed"}
    assert {r.reason for r in shed.values()} == {"overloaded"}
    assert set(Counter(got[i].status for i in ids)) <= {"ok", "shed"}
    letters = {
        d["request_id"]: d
        for d in (
            registry.decode(registry.DEAD_LETTER, v)
            for v in _read_topic(stack.bootstrap, f"{stack.prefix}.deadletter.shed", len(shed))
        )
    }
    assert set(letters) == set(shed)
    rank = {p: i for i, p in enumerate(PRIORITIES)}
    for letter in letters.values():
        load = letter["load"]
        assert letter["reason"] == "overloaded"
        assert float(load["fill"]) >= 0.5, load
        assert {f"depth.{p}" for p in PRIORITIES} | {"expected_wait_ms"} <= set(load), load
        lower = [p for p in PRIORITIES if rank[p] > rank[letter["priority"]]]
        assert all(load[f"depth.{p}"] == "0" for p in lower), (letter["priority"], load)
    # Lows were shed while more urgent work waited: low was chosen, not the others.
    low_letters = [d["load"] for d in letters.values() if d["priority"] == "low"]
    assert any(int(x["depth.normal"]) + int(x["depth.high"]) > 0 for x in low_letters)
    counted = status["scheduler"]["shed"].get("overloaded", {})
    assert counted == dict(Counter(got[i].record["priority"] for i in shed)), counted
    print(f"outcomes by priority: { {p: dict(c) for p, c in by_priority.items()} }")


# -- a paused priority must not hold up the others ------------------------------------------


async def test_critical_intake_is_not_held_up_by_a_paused_low_backlog(
    make_stack: Callable[..., Stack], simulator: Simulator
) -> None:
    """Two high requests go to sim-small, allowed one call at a time and answering in 12 s:
    one waits in the queue, so normal and low intake stay paused (urgent work waits). 300
    low requests then arrive and wait in Kafka behind the paused low intake. Then 5 critical
    requests arrive for the fast model, which has free slots. Asserted: every critical
    request completes within 5 s of being published (a call takes 200 ms) -- a paused
    priority's backlog must not block the intake of the others."""

    def customize(config: dict[str, Any]) -> None:
        _slow_model(queue_capacity=100)(config)
        config["providers"]["sim"]["timeout_s"] = 60
        config["providers"]["sim"]["models"]["sim-small"]["max_in_flight"] = 1

    stack = make_stack(customize)
    _slow_simulator(simulator)
    simulator.set_model("sim-small", latency_ms=12_000)
    try:
        worker = stack.start_worker()
        stuck = [_request("t1", "high", model="sim/sim-small") for _ in range(2)]
        lows = _batch("low", 60)
        urgent = [_request(t, "critical", "urgent") for t in TENANTS]
        async with client_and_collector(stack) as (client, seen):
            await _publish(client, stuck)
            await until(
                lambda: "low" in (worker.status() or {}).get("paused", []),
                20,
                "low intake to pause behind the waiting high request",
            )
            await _publish(client, lows)
            await asyncio.sleep(2)  # the low records reach the broker and the fetcher
            published = time.time()
            await _publish(client, urgent)
            got = await seen.wait_for(_ids(urgent), timeout=60, workers=[worker])
    finally:
        simulator.reset()
    waited = {
        rid: round(got[rid].record["created_at"] / 1000 - published, 1) for rid in _ids(urgent)
    }
    print(f"critical completion after publishing (s): {waited}")
    assert all(got[rid].status == "ok" for rid in _ids(urgent))
    assert max(waited.values()) < 5, waited


# -- backpressure across a rebalance -----------------------------------------------------------


class StatusSampler:
    """Samples each worker's /status every 0.1 s in the background: (seconds, name, status)."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers
        self.samples: list[tuple[float, str, dict[str, Any]]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StatusSampler:
        async def sample() -> None:
            while True:
                for worker in list(self.workers):
                    status = await asyncio.to_thread(worker.status)
                    if status:
                        self.samples.append((time.monotonic(), worker.name, status))
                await asyncio.sleep(0.1)

        self._task = asyncio.create_task(sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_paused_priorities_stay_behind_high_work_across_a_rebalance(
    make_stack: Callable[..., Stack], simulator: Simulator
) -> None:
    """High requests keep arriving a little faster than the provider serves them (6/s
    against 1 s calls, 5 at a time), most waiting in Kafka behind w1's 20-slot queue; 10
    normal and 10 low requests arrive and w1 pauses their intake. A second worker joins
    (rebalance); the high stream stops 3 s after it is ready and the backlog drains.
    Asserted:
    - per tenant (a tenant's requests live on one partition, owned by one worker at a
      time): none of its normal or low requests completes before its last high request
      has completed, whichever worker served it;
    - in every /status sample of either worker, before and after the rebalance: whenever
      high work waits in its queue, its normal and low intake are paused (and such
      samples exist after the second worker is ready);
    - every request is answered; highs all ok (a low or normal taken into a full queue
      may be shed ``overloaded``; duplicates are allowed: work re-read by the new owner).
    """
    stack = make_stack(_slow_model(queue_capacity=20))
    simulator.set_model("sim-large", latency_ms=1000, max_concurrency=SLOTS)
    try:
        w1 = stack.start_worker("w1")
        urgent = _batch("high", 6)
        later = _batch("normal", 2) + _batch("low", 2)
        stop_highs = asyncio.Event()
        async with (
            client_and_collector(stack) as (client, seen),
            StatusSampler([w1]) as sampler,
        ):

            async def keep_high_work_waiting() -> None:
                while not stop_highs.is_set():
                    more = _batch("high", 1)
                    urgent.extend(more)
                    await _publish(client, more)
                    await asyncio.sleep(len(more) / 6)

            await _publish(client, urgent)
            feeder = asyncio.create_task(keep_high_work_waiting())
            await until(lambda: (w1.status() or {}).get("queued", 0) >= 15, 20, "highs")
            await _publish(client, later)
            await until(
                lambda: {"normal", "low"} <= set((w1.status() or {}).get("paused", [])),
                10,
                "w1 to pause normal and low",
            )
            w2 = stack.start_worker("w2", wait=False)
            sampler.workers.append(w2)
            await asyncio.to_thread(w2.wait_ready, 1, 90)
            rebalanced = time.monotonic()
            rebalanced_ms = time.time() * 1000
            high_left = len(urgent) - seen.answered(_ids(urgent))
            await asyncio.sleep(3)
            stop_highs.set()
            await feeder
            ids = _ids(urgent + later)
            got = await seen.wait_for(ids, timeout=60, workers=[w1, w2])
            copies = Counter(r.request_id for r in seen.responses)
    finally:
        simulator.reset()
    print(
        f"highs: {len(urgent)}, unanswered when w2 was ready: {high_left}; "
        f"duplicates: {sum(copies.values()) - len(ids)}"
    )
    assert high_left >= 10, f"the rebalance came too late: {high_left} highs left"
    urgent_waiting = [
        (t, name, s["paused"], s["scheduler"]["depth"])
        for t, name, s in sampler.samples
        if s["scheduler"]["depth"]["high"] + s["scheduler"]["depth"]["critical"] > 0
    ]
    for t, name, paused, depth in urgent_waiting:
        assert {"normal", "low"} <= set(paused), (name, t - rebalanced, paused, depth)
    assert any(t > rebalanced for t, *_ in urgent_waiting), "no high work waited after"
    assert set(copies) == set(ids)
    assert all(got[i].status == "ok" for i in _ids(urgent))
    assert {(r.status, r.reason) for r in got.values()} <= {("ok", ""), ("shed", "overloaded")}
    completed = {rid: r.record["created_at"] for rid, r in got.items() if r.status == "ok"}
    for tenant in TENANTS:
        last_high = max(completed[r["request_id"]] for r in urgent if r["tenant"] == tenant)
        early = [
            (r["priority"], last_high - completed[r["request_id"]])
            for r in later
            if r["tenant"] == tenant and completed.get(r["request_id"], last_high) < last_high
        ]
        when = [
            round(completed[r["request_id"]] - rebalanced_ms)
            for r in later
            if r["tenant"] == tenant and r["request_id"] in completed
        ]
        assert not early, (
            f"{tenant}: completed ahead of its high backlog (ms ahead): {early}; "
            f"its normal/low completed at {when} ms after the second worker was ready"
        )


# -- memory stays bounded while the backlog is in Kafka -----------------------------------------


async def test_worker_memory_stays_bounded_while_a_big_backlog_waits_in_kafka(
    make_stack: Callable[..., Stack], simulator: Simulator
) -> None:
    """5,000 low requests (4 KB each, 20 MB in all) are published to a worker with a
    200-slot queue and a provider that serves ~25 requests/s. Sampled for ~8 s: the
    worker's ``queued`` never exceeds the capacity, its RSS grows by less than 40 MB from
    before the flood, and the consumer lag (end offsets - committed) grows past 4,000."""
    capacity = 200
    stack = make_stack(_slow_model(queue_capacity=capacity))
    _slow_simulator(simulator)
    padding = "x" * 4000
    try:
        worker = stack.start_worker()
        await asyncio.sleep(2)  # settle after start before taking the baseline
        baseline_kb = _rss_kb(worker)
        producer = Producer({"bootstrap.servers": stack.bootstrap, "linger.ms": 20})
        topic = f"{stack.prefix}.requests.low"
        for i in range(5000):
            record = _request(TENANTS[i % 5], "low", padding)
            producer.produce(
                topic,
                registry.encode(registry.CHAT_REQUEST, record),
                key=record["tenant"].encode(),
            )
            if i % 500 == 499:
                producer.poll(0)
        producer.flush(30)
        queued, rss, lag = [], [], []
        sample_until = time.monotonic() + 8
        while time.monotonic() < sample_until:
            status = worker.status() or {}
            queued.append(int(status.get("queued", 0)))
            rss.append(_rss_kb(worker))
            await asyncio.sleep(0.25)
        lag.append(_consumer_lag(stack, "low"))
        peak_status = worker.status() or {}
    finally:
        simulator.reset()
    growth_mb = (max(rss) - baseline_kb) / 1024
    print(
        f"queued max {max(queued)} (capacity {capacity}); RSS baseline "
        f"{baseline_kb / 1024:.0f} MB, peak {max(rss) / 1024:.0f} MB (+{growth_mb:.1f}); "
        f"lag {lag[-1]}; paused {peak_status.get('paused')}"
    )
    assert max(queued) <= capacity
    assert max(queued) > 0, "the worker took no work at all"
    assert lag[-1] >= 4000, f"lag {lag[-1]}: the backlog did not stay in Kafka"
    assert growth_mb < 40, f"RSS grew by {growth_mb:.1f} MB"
