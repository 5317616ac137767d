"""(g) Overload at 4x the provider's capacity, mixed priorities: who is served, waits, is shed.

The simulator's model answers in 200 ms with at most 20 calls at once (about 100 req/s) and
the worker may keep 20 calls in flight on it. First an unloaded baseline (20 req/s, the same
mix, 20% of capacity), then 400 req/s open-loop for 30 s (10 s in quick mode): 10% critical,
20% high, 30% normal, 40% low, from 5 tenants. Latency is measured from each request's
intended send time; after the load stops the run waits until every request has its answer.

Reported per priority: sent, completed, shed by reason, p50/p99 queue wait (the response's
``queue_ms``: worker intake to dispatch; the time a paused request spends in Kafka is not in
it) and end-to-end latency of completed requests; worker peak RSS and peak consumer lag.
Checks (issue 3): every critical request completes, with p99 within 2x the unloaded p99;
high completes before normal, and normal before low (answers of the lower priority before the
last answer of the higher one, beyond the 20 in flight); low is shed with reasons; no request
is left without an answer.

The stack uses interactive deadlines (critical 10 s, high 30 s, normal 60 s, low 60 s):
with the defaults (up to 300 s) nothing expires and the low backlog is merely served late.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from schemas import registry
from streams.config import PRIORITIES
from tests.bench.framework import Context, Result, Timeline, scenario
from tests.bench.harness import PRIMARY_MODEL, TENANTS, Stack
from tests.bench.loadgen import (
    STATUS_CODE,
    KafkaTarget,
    Phase,
    PriorityMix,
    RequestShape,
    Schedule,
    new_histogram,
    percentiles,
)
from tests.bench.monitor import Monitor

LATENCY_MS = 200
SLOTS = 20  # calls in flight: the simulator's capacity and the worker's per-model limit
OFFERED_RPS = 400.0
BASELINE_RPS = 20.0
MIX = PriorityMix({"critical": 0.1, "high": 0.2, "normal": 0.3, "low": 0.4})
FIVE_TENANTS = TENANTS[:5]
DEADLINES_S = {"critical": 10, "high": 30, "normal": 60, "low": 60}
COMPLETED = ("ok", "degraded", "cached")
DONE_CODES = {STATUS_CODE[s] for s in COMPLETED}


class FiveTenantTarget(KafkaTarget):
    """The harness's Kafka load generator, with requests spread over five tenants."""

    def make_record(
        self, seq: int, when_ns: int, priority: str, shape: RequestShape
    ) -> dict[str, Any]:
        record = super().make_record(seq, when_ns, priority, shape)
        record["tenant"] = FIVE_TENANTS[seq % len(FIVE_TENANTS)]
        return record


def _customize(config: dict[str, Any]) -> None:
    config["scheduler"] = {"max_in_flight_per_model": SLOTS}
    config["deadlines"] = dict(DEADLINES_S)


def _responses(stack: Stack, phase: Phase) -> dict[int, dict[str, Any]]:
    """Every response of this phase's requests (the first per request), read from the topic."""
    topic = f"{stack.prefix}.responses"
    consumer = Consumer(
        {"bootstrap.servers": stack.bootstrap, "group.id": f"{stack.prefix}-overload-audit"}
    )
    out: dict[int, dict[str, Any]] = {}
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        done: set[int] = {p for p, end in ends.items() if end == 0}
        deadline = time.monotonic() + 60
        while len(done) < len(ends) and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.5):
                if message.error() is not None:
                    continue
                partition, offset = message.partition(), message.offset() or 0
                if partition is not None and offset + 1 >= ends[partition]:
                    done.add(partition)
                seq = phase.ledger.seq_of(message.key() or b"")
                if seq is None or seq not in phase.seqs() or seq in out:
                    continue
                out[seq] = registry.decode(registry.CHAT_RESPONSE, message.value() or b"")
    finally:
        consumer.close()
    return out


def _ms(values: list[int]) -> dict[str, float]:
    hist = new_histogram()
    for ms in values:
        hist.record_value(max(1, ms * 1000))
    return percentiles(hist)


@scenario(
    "overload",
    "(g) Overload at 4x capacity: priorities, backpressure, shedding",
    order=45,
    full_only=True,  # about 2 minutes (30 s of load, then the drain); quick mode: 75 s
)
def overload(ctx: Context) -> Result:
    result = Result()
    seconds = ctx.pick(quick=10.0, full=30.0)
    sim = ctx.simulator
    stack = Stack.create("overload", ctx.processes, sim.url, ctx.bootstrap, ctx.run_dir, _customize)
    target: FiveTenantTarget | None = None
    try:
        sim.set_model(PRIMARY_MODEL, latency_ms=LATENCY_MS, max_concurrency=SLOTS)
        worker = stack.start_worker("w1")
        with ctx.step("overload: starting the worker", seconds=10):
            stack.wait_balanced()
        target = FiveTenantTarget(stack.bootstrap, stack.prefix)  # topics have leaders now
        base_s = ctx.pick(quick=5.0, full=10.0)
        with ctx.step(f"overload: unloaded baseline, {BASELINE_RPS:.0f} req/s", base_s + 1):
            base = target.run(Schedule.constant(BASELINE_RPS, base_s), mix=MIX)
            base.wait_answered(30)
        baseline = base.latency(start_s=1.0, statuses=COMPLETED)
        monitor = Monitor(stack).start()
        phase = target.run(Schedule.constant(OFFERED_RPS, seconds), mix=MIX, background=True)
        with ctx.step(f"overload: {OFFERED_RPS:.0f} req/s for {seconds:g} s", seconds):
            phase.wait()
        with ctx.step("overload: draining (answers and sheds)", seconds=3 * seconds):
            phase.wait_answered(timeout=max(DEADLINES_S.values()) + 4 * seconds, stall_s=30)
        monitor.stop()
        answers = _responses(stack, phase)
        _report(result, phase, answers, baseline, monitor, worker.status() or {})
        result.notes.append(__doc__.split("\n\n", 1)[1].strip())
    finally:
        if target is not None:
            target.close()
        sim.set_model(PRIMARY_MODEL, latency_ms=0, max_concurrency=0)
        stack.remove()
    return result


def _report(
    result: Result,
    phase: Phase,
    answers: dict[int, dict[str, Any]],
    baseline: dict[str, float],
    monitor: Monitor,
    status: dict[str, Any],
) -> None:
    led = phase.ledger
    rows: list[list[Any]] = []
    shed_reasons: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for priority in PRIORITIES:
        code = PRIORITIES.index(priority)
        seqs = [s for s in phase.seqs() if led.priority[s] == code]
        outcome: Counter[str] = Counter()
        queue_ms: list[int] = []
        for s in seqs:
            record = answers.get(s)
            if record is None:
                outcome["unanswered"] += 1
                continue
            outcome[record["status"]] += 1
            if record["status"] == "shed":
                shed_reasons[priority][record["reason"]] += 1
            if record["status"] in COMPLETED:
                queue_ms.append(int(record["queue_ms"]))
        e2e = phase.latency(priority=priority, statuses=COMPLETED)
        wait = _ms(queue_ms)
        completed = sum(outcome[s] for s in COMPLETED)
        result.latency[f"overload e2e: {priority}"] = e2e
        result.latency[f"overload queue_ms: {priority}"] = wait
        rows.append(
            [
                priority,
                len(seqs),
                completed,
                f"{100 * completed / max(1, len(seqs)):.0f}%",
                ", ".join(f"{r} {n}" for r, n in sorted(shed_reasons[priority].items())) or "0",
                outcome["failed"] + outcome["rejected"] + outcome["other"],
                outcome["unanswered"],
                wait.get("p50", float("nan")),
                wait.get("p99", float("nan")),
                e2e.get("p50", float("nan")),
                e2e.get("p99", float("nan")),
            ]
        )
    result.table(
        f"Per priority at {OFFERED_RPS:.0f} req/s offered (capacity ~{SLOTS * 1000 // LATENCY_MS} "
        "req/s); latencies of completed requests, ms",
        [
            "priority",
            "sent",
            "completed",
            "completed %",
            "shed by reason",
            "failed/rejected",
            "unanswered",
            "queue p50",
            "queue p99",
            "end-to-end p50",
            "end-to-end p99",
        ],
        rows,
    )
    peak_lag, peak_per = monitor.peak_lag()
    hwm_mb = monitor.peak_hwm_kb() / 1024
    peak_queued = max((s.queued for s in monitor.samples), default=0)
    result.figure("worker peak RSS (VmHWM)", hwm_mb, "MiB")
    result.figure(
        "peak consumer lag (committed offsets)",
        peak_lag,
        "messages",
        detail=", ".join(f"{p} {n}" for p, n in peak_per.items()),
    )
    result.figure("peak requests queued in the worker", peak_queued, "requests")
    result.figure("unloaded p99 (baseline, 20 req/s)", baseline.get("p99", float("nan")), "ms")
    by_code = {PRIORITIES.index(p): p for p in PRIORITIES}
    crit = [s for s in phase.seqs() if by_code[led.priority[s]] == "critical"]
    crit_done = sum(1 for s in crit if answers.get(s, {}).get("status") in COMPLETED)
    result.check(
        "critical requests completed",
        100 * crit_done / max(1, len(crit)),
        100.0,
        "%",
        lower_is_better=False,
    )
    crit_p99 = phase.latency(priority="critical", statuses=COMPLETED).get("p99")
    result.check(
        "critical p99 end-to-end vs 2x the unloaded p99",
        crit_p99,
        2 * baseline.get("p99", float("nan")),
        "ms",
        why_not_measured="no critical request completed",
    )

    def answered_ok(priority: str) -> list[int]:
        code = PRIORITIES.index(priority)
        return [
            led.answered_ns[s]
            for s in phase.seqs()
            if led.priority[s] == code and answers.get(s, {}).get("status") in COMPLETED
        ]

    last_high = max(answered_ok("high"), default=0)
    early_normal = sum(1 for t in answered_ok("normal") if t < last_high)
    result.check(
        f"normal answered before the last high answer (in flight: {SLOTS})",
        float(early_normal),
        float(SLOTS),
        "requests",
    )
    last_normal = max(answered_ok("normal"), default=0)
    early_low = sum(1 for t in answered_ok("low") if t < last_normal)
    result.check(
        f"low answered before the last normal answer (in flight: {SLOTS})",
        float(early_low),
        float(SLOTS),
        "requests",
    )
    low_shed = sum(shed_reasons["low"].values())
    result.check(
        "low requests shed (with a reason)", float(low_shed), 1.0, "requests", lower_is_better=False
    )
    result.check("requests without an answer", float(phase.unanswered()), 0.0, "requests")
    result.figure("duplicate answers", phase.duplicates(), "requests")
    _timelines(result, phase, monitor)
    result.data = {
        "baseline": baseline,
        "shed_reasons": {p: dict(c) for p, c in shed_reasons.items()},
        "worker_scheduler": status.get("scheduler"),
        "monitor": monitor.series(),
        "deadlines_s": DEADLINES_S,
    }


def _timelines(result: Result, phase: Phase, monitor: Monitor) -> None:
    led = phase.ledger
    series: dict[str, list[float]] = {}
    end = max((led.answered_ns[s] for s in phase.seqs()), default=phase.t0_ns)
    n = int((end - phase.t0_ns) / 1e9) + 1
    for code, priority in enumerate(PRIORITIES):
        counts = [0.0] * n
        for s in phase.seqs():
            if led.priority[s] == code and led.answered_ns[s] and led.status[s] in DONE_CODES:
                counts[max(0, int((led.answered_ns[s] - phase.t0_ns) / 1e9))] += 1
        series[f"{priority} completed/s"] = counts
    result.timelines.append(
        Timeline(
            "overload: completions per second by priority", [float(i) for i in range(n)], series
        )
    )
    m = monitor.series()
    result.timelines.append(
        Timeline(
            "overload: consumer lag and requests queued in the worker",
            m["t"],
            {
                "consumer lag": [float(x) for x in m["lag"]],
                "queued": [float(x) for x in m["queued"]],
            },
            unit="requests",
        )
    )
