"""Throughput at saturation: (a) cache miss, (a') cache hit, (e) one worker vs two.

A backlog of a few seconds of work is produced at once (the offered rate is effectively
infinite) and the stack drains it; throughput counts the middle 80% of the answers and
CPU per request is the workers' CPU time divided by the requests. (a) also measures the
idle worker and profiles one extra drain with py-spy. (a') is the hook for the cache-hit
path: it runs by itself once repeated identical temperature-0 requests come back
``cached``. (e) alternates drains against a one-worker and a two-worker stack.
"""

from __future__ import annotations

import os
import time
from typing import Any

from tests.bench import profile
from tests.bench.analysis import backlog_size
from tests.bench.framework import Context, Result, Spread, Timeline, interleave, scenario
from tests.bench.harness import Stack
from tests.bench.loadgen import CACHE_HIT, CACHE_MISS, RequestShape, Schedule, cpu_meter
from tests.bench.measure import (
    Drain,
    drain,
    one_series,
    profile_tables,
    profile_worker,
    statuses_text,
)

CPU_MISS_TARGET_US = 600.0
CPU_HIT_TARGET_US = 200.0


def measure_saturation(
    ctx: Context, shape: RequestShape, result: Result, what: str, cpu_target_us: float
) -> list[Drain]:
    stack = ctx.stack("single")
    seconds = ctx.pick(quick=1.5, full=8.0)
    with ctx.step(f"{what}: warm-up drain", seconds=3):
        estimate = drain(ctx, stack, ctx.pick(quick=400, full=1500), shape).rps
    idle_pct = None
    if shape is CACHE_MISS:
        with ctx.step(f"{what}: the worker's CPU while idle", seconds=2):
            meter = cpu_meter([stack.workers[0].pid])
            time.sleep(ctx.pick(quick=2.0, full=3.0))
            use = meter()
        idle_pct = 100 * use.total([stack.workers[0].pid]) / use.wall_s
    rounds: list[Drain] = []
    for r in range(ctx.mode.rounds):
        n = backlog_size(estimate, seconds, low=500)
        with ctx.step(f"{what}: drain {n} requests, round {r + 1}/{ctx.mode.rounds}", n / estimate):
            rounds.append(drain(ctx, stack, n, shape, estimate))
    rps = Spread.of([d.rps for d in rounds])
    cpu = Spread.of([d.worker_cpu_us for d in rounds])
    gen = Spread.of([d.generator_cpu_pct for d in rounds])
    result.figure(
        f"throughput at saturation, {shape.name}, 1 worker",
        rps,
        "req/s",
        worker_cpu_us=cpu.median,
        generator_cpu_pct=gen.median,
    )
    result.figure(
        "answers/s while draining (follow-up work deferred)",
        Spread.of([d.answer_rps for d in rounds]),
        "req/s",
        detail="answers go out faster than the worker finishes each request's follow-up "
        "work (usage aggregation); not sustainable",
    )
    result.figure(f"worker CPU per {shape.name} request", cpu, "µs")
    util = Spread.of([d.worker_util_pct for d in rounds])
    result.figure("worker CPU use while saturated", util, "% of a core")
    if idle_pct is not None:
        result.figure("worker CPU use while idle", idle_pct, "% of a core")
    result.check(
        f"worker CPU per {shape.name} request (at saturation)", cpu.median, cpu_target_us, "µs"
    )
    result.table(
        f"{what}: rounds (backlog drained by one worker)",
        [
            "round",
            "requests",
            "req/s (all work done)",
            "answers/s (middle 80%)",
            "worker CPU µs/req",
            "worker CPU % of a core",
            "simulator CPU µs/req",
            "generator CPU %",
            "statuses",
            "unanswered",
        ],
        [
            [
                i + 1,
                d.requests,
                d.rps,
                d.answer_rps,
                d.worker_cpu_us,
                d.worker_util_pct,
                d.sim_cpu_us,
                d.generator_cpu_pct,
                statuses_text(d.statuses),
                d.unanswered,
            ]
            for i, d in enumerate(rounds)
        ],
    )
    last = rounds[-1].series
    result.timelines.append(
        Timeline(f"{what}: answers/s while draining (last round)", *one_series(last))
    )
    result.data["rounds"] = [d.__dict__ | {"series": None} for d in rounds]
    return rounds


@scenario("saturation", "(a) Throughput at saturation: cache-miss path, one worker", order=10)
def saturation(ctx: Context) -> Result:
    result = Result()
    rounds = measure_saturation(ctx, CACHE_MISS, result, "saturation", CPU_MISS_TARGET_US)
    ctx.findings["saturation_rps"] = Spread.of([d.rps for d in rounds]).median
    result.notes.append(
        "Method: a backlog of about "
        f"{ctx.pick(quick=1.5, full=8)} s of work is produced at once (the offered rate is "
        "effectively infinite) and one worker drains it. Throughput is the requests divided "
        "by the time until all their work is done: the answers and the worker's follow-up "
        "work (the usage agent aggregates each answer's usage event later, so answers can "
        "go out faster than that for a while; that rate is shown separately and is not "
        "sustainable). CPU per request is the worker's CPU time (/proc/<pid>/stat) from "
        "the first request produced until the worker is quiet again after the last answer "
        "(its follow-up work, such as usage aggregation, included), divided by the requests. "
        "'CPU use while saturated' is the worker's CPU time over the wall time until the last "
        "answer: near 100% means the worker is CPU-bound; well below it, on a busy machine, "
        "means it waited for a core."
    )
    if profile.available():
        profile_saturated_worker(ctx, result, ctx.findings["saturation_rps"])
    else:
        result.notes.append("No profile: py-spy is not installed (`.venv/bin/pip install py-spy`).")
    return result


def profile_saturated_worker(ctx: Context, result: Result, rate: float) -> None:
    """An extra, unmeasured drain while py-spy samples the worker: where the CPU goes."""
    seconds = ctx.pick(quick=1.5, full=10.0)
    schedule = Schedule.backlog(backlog_size(rate, seconds + 2))
    summary = profile_worker(ctx, result, "saturation", schedule, seconds)
    if summary is not None:
        result.data["profile"] = summary.__dict__
        profile_tables(result, summary, "the saturated worker", top=True)


def cache_serves_hits(ctx: Context, stack: Stack) -> bool:
    """Does the worker answer repeated identical temperature-0 requests from its cache?"""
    target = ctx.kafka(stack)
    # Tenants take turns (32 of them), and each has its own cache namespace: the second
    # round of tenants can hit.
    phase = target.run(Schedule.constant(32, 1.5), shape=CACHE_HIT)
    phase.wait_answered(20)
    return phase.status_counts().get("cached", 0) > 0


@scenario("saturation-cache-hit", "(a') Throughput at saturation: cache-hit path", order=15)
def saturation_cache_hit(ctx: Context) -> Result:
    """The cache-hit variant of (a); it runs by itself once the cache is on the request path."""
    result = Result()
    with ctx.step("cache-hit: does the worker answer from its cache?", seconds=3):
        serving = cache_serves_hits(ctx, ctx.stack("single"))
    if not serving:
        why = "the cache is not on the request path yet (identical requests were not cached)"
        result.skipped = why
        result.check(
            "worker CPU per cache-hit request (at saturation)",
            None,
            CPU_HIT_TARGET_US,
            "µs",
            why_not_measured=why,
        )
        return result
    measure_saturation(ctx, CACHE_HIT, result, "saturation (cache hit)", CPU_HIT_TARGET_US)
    return result


# -- scaling --------------------------------------------------------------------------


@scenario("scaling", "(e) Scaling from one worker to two", order=40)
def scaling(ctx: Context) -> Result:
    result = Result()
    single, pair = ctx.stack("single"), ctx.stack("pair")
    rate = ctx.saturation_rps()
    seconds = ctx.pick(quick=1.0, full=8.0)
    n = backlog_size(rate, seconds, low=400)
    drains = interleave(
        ctx.mode.rounds,
        {
            "1 worker": lambda r: _step_drain(
                ctx, single, n, f"scaling: 1 worker, round {r + 1}", rate
            ),
            "2 workers": lambda r: _step_drain(
                ctx, pair, int(n * 1.5), f"scaling: 2 workers, round {r + 1}", rate * 1.5
            ),
        },
    )
    one, two = drains["1 worker"], drains["2 workers"]
    ratio = Spread.of([b.rps / a.rps for a, b in zip(one, two, strict=True) if a.rps])
    for name, rounds in drains.items():
        result.figure(
            f"throughput at saturation, {name}",
            Spread.of([d.rps for d in rounds]),
            "req/s",
            worker_cpu_us=Spread.of([d.worker_cpu_us for d in rounds]).median,
            generator_cpu_pct=Spread.of([d.generator_cpu_pct for d in rounds]).median,
        )
    result.figure("scaling ratio, 2 workers / 1 worker", ratio, "x")
    result.table(
        "Drains, interleaved (1 worker, 2 workers, ...)",
        [
            "round",
            "1 worker req/s",
            "2 workers req/s",
            "ratio",
            "1 worker CPU µs/req",
            "2 workers CPU µs/req (sum)",
            "worker CPU % of a core (1 / 2, each)",
        ],
        [
            [
                i + 1,
                a.rps,
                b.rps,
                b.rps / a.rps if a.rps else float("nan"),
                a.worker_cpu_us,
                b.worker_cpu_us,
                f"{a.worker_util_pct:.0f} / {b.worker_util_pct:.0f}",
            ]
            for i, (a, b) in enumerate(zip(one, two, strict=True))
        ],
    )
    result.notes.append(
        f"Both stacks run side by side (separate topics and consumer groups); {ctx.mode.rounds} "
        "rounds alternate between them. This machine has "
        f"{_nproc()} cores shared by the broker, the simulator, the load generator and the "
        "workers, so two workers compete for the same cores: the ratio shows how much of "
        "the second worker's capacity the machine can actually provide."
    )
    return result


def _step_drain(ctx: Context, stack: Stack, n: int, text: str, rate: float) -> Any:
    with ctx.step(text, seconds=n / max(rate, 1.0)):
        return drain(ctx, stack, n, expected_rps=rate)


def _nproc() -> int:
    return os.cpu_count() or 0
