"""(b) Added latency: through the gateway vs straight to the simulator, same offered load.

Open-loop arrivals at 10%, 50% and 80% of one worker's saturation (scenario ``saturation``),
in interleaved rounds: via Kafka, direct, via Kafka, direct ... Latency runs from each
request's intended send time to its answer. The added latency is the per-round difference
of the percentiles; the worker's own ``total_ms`` splits the Kafka path into "in the worker"
and "delivering the response". In full mode py-spy samples the worker at 50% load.
"""

from __future__ import annotations

from tests.bench import profile
from tests.bench.framework import Context, Result, Spread, interleave, scenario
from tests.bench.loadgen import Schedule
from tests.bench.measure import (
    LatencyRound,
    merged,
    minus,
    open_loop_round,
    profile_tables,
    profile_worker,
    round_json,
    spread_text,
)

ADDED_P50_TARGET_MS = 3.0
ADDED_P99_TARGET_MS = 10.0


@scenario("added-latency", "(b) Added latency vs calling the simulator directly", order=20)
def added_latency(ctx: Context) -> Result:
    result = Result()
    stack = ctx.stack("single")
    kafka, direct = ctx.kafka(stack), ctx.direct()
    saturated = ctx.saturation_rps()
    seconds = ctx.pick(quick=0.7, full=5.0)
    workers = [w.pid for w in stack.live_workers()]
    rows, breakdown = [], []
    for load in (0.1, 0.5, 0.8):
        rate = load * saturated
        pct = f"{load:.0%}"
        text = f"added latency {pct} load ({rate:.0f}/s)"

        def via_kafka(r: int, rate: float = rate, text: str = text) -> LatencyRound:
            label = f"{text}: via Kafka, round {r + 1}"
            return open_loop_round(ctx, kafka, rate, seconds, workers, label, stack)

        def straight(r: int, rate: float = rate, text: str = text) -> LatencyRound:
            label = f"{text}: direct, round {r + 1}"
            return open_loop_round(ctx, direct, rate, seconds, [], label)

        rounds = interleave(ctx.mode.rounds, {"kafka": via_kafka, "direct": straight})
        via, base = rounds["kafka"], rounds["direct"]
        add50 = Spread.of([a.p50 - b.p50 for a, b in zip(via, base, strict=True)])
        add99 = Spread.of([a.p99 - b.p99 for a, b in zip(via, base, strict=True)])
        ratio50 = Spread.of([a.p50 / b.p50 for a, b in zip(via, base, strict=True) if b.p50])
        cpu = Spread.of([a.worker_cpu_us for a in via])
        gen = Spread.of([a.generator_cpu_pct for a in via + base])
        result.latency[f"{pct} load via Kafka"] = merged(via)
        result.latency[f"{pct} load direct"] = merged(base)
        rows.append(
            [
                pct,
                rate,
                Spread.of([a.p50 for a in via]).median,
                Spread.of([a.p99 for a in via]).median,
                Spread.of([b.p50 for b in base]).median,
                Spread.of([b.p99 for b in base]).median,
                spread_text(add50),
                spread_text(add99),
                spread_text(ratio50, "x"),
                cpu.median,
                gen.median,
                sum(a.unanswered for a in via),
            ]
        )
        worker = merged(via, "worker_hist")
        e2e = result.latency[f"{pct} load via Kafka"]
        breakdown.append(
            [
                pct,
                e2e.get("p50"),
                worker.get("p50"),
                minus(e2e.get("p50"), worker.get("p50")),
                e2e.get("p99"),
                worker.get("p99"),
            ]
        )
        result.figure(
            f"offered load {pct} of saturation",
            rate,
            "req/s",
            worker_cpu_us=cpu.median,
            generator_cpu_pct=gen.median,
        )
        result.figure(f"added latency p50 at {pct} load", add50, "ms")
        result.figure(f"added latency p99 at {pct} load", add99, "ms")
        result.data[pct] = {
            "rate": rate,
            "added_p50_ms": add50.__dict__,
            "added_p99_ms": add99.__dict__,
            "ratio_p50": ratio50.__dict__,
            "kafka": [round_json(a) for a in via],
            "direct": [round_json(b) for b in base],
        }
        if load == 0.5:
            result.check("added latency p50 at 50% load", add50.median, ADDED_P50_TARGET_MS, "ms")
            result.check("added latency p99 at 50% load", add99.median, ADDED_P99_TARGET_MS, "ms")
    if profile.available() and not ctx.quick:
        seconds_p = 8.0
        summary = profile_worker(
            ctx,
            result,
            "added latency 50% load",
            Schedule.constant(0.5 * saturated, seconds_p + 3),
            seconds_p,
        )
        if summary is not None:
            result.data["profile_50pct"] = summary.__dict__
            profile_tables(result, summary, "the worker at 50% load")
    result.table(
        "Latency through the gateway vs straight to the simulator (ms, median of rounds; "
        "added = per-round difference, median [min-max])",
        [
            "load",
            "offered req/s",
            "Kafka p50",
            "Kafka p99",
            "direct p50",
            "direct p99",
            "added p50",
            "added p99",
            "ratio p50",
            "worker CPU µs/req",
            "generator CPU %",
            "unanswered",
        ],
        rows,
    )
    result.table(
        "Where the time goes on the Kafka path (ms, all rounds merged): the worker's own "
        "`total_ms` (request created -> response written) vs end to end",
        [
            "load",
            "end-to-end p50",
            "worker total_ms p50",
            "response delivery p50 (difference)",
            "end-to-end p99",
            "worker total_ms p99",
        ],
        breakdown,
    )
    result.notes.append(
        f"Method: open-loop arrivals at a fixed rate for {seconds:g} s per round, latency from "
        "each request's intended send time to its answer, the first "
        f"{ctx.pick(quick=0.15, full=0.5)} s of each round not counted; rounds alternate "
        f"Kafka, direct, Kafka, direct ... ({ctx.mode.rounds} of each). Direct = aiohttp "
        "POST /v1/chat/completions to the same simulator with the same body the connector "
        "sends. Worker CPU per request includes its idle cost at that rate."
    )
    return result
