"""Core-pipeline scenarios (issue 9): saturation, added latency, burst, scaling, worker kill.

All use the zero-latency simulator and the cache-miss request shape (temperature 1.0,
``cache_mode=bypass``), so they measure the gateway's own cost on the provider path.

- saturation: drain a pre-produced backlog with one worker; throughput over the middle 80%
  of the answers, worker CPU per request; a py-spy profile of one extra drain.
- saturation-cache-hit: the same on the cache-hit path (``CACHE_HIT``), run only once the
  worker answers repeated temperature-0 requests from its cache (the hook for that work).
- added-latency: open-loop at 10/50/80% of saturation, through Kafka vs straight to the
  simulator, interleaved rounds; latency from the intended send time.
- burst: 10x the base rate for a while, mixed priorities; lag, per-priority p99, sheds,
  recovery, peak RSS.
- scaling: drains against one worker and against two, interleaved.
- worker-kill: two workers at 50% load, SIGKILL one; recovery, missing and duplicates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tests.bench import profile
from tests.bench.analysis import backlog_size, recovery_time, steady_rate
from tests.bench.framework import Context, Result, Spread, Timeline, interleave, scenario
from tests.bench.harness import PARTITIONS, Stack
from tests.bench.loadgen import (
    CACHE_HIT,
    CACHE_MISS,
    PriorityMix,
    RequestShape,
    Schedule,
    Target,
    cpu_meter,
    new_histogram,
    percentiles,
)
from tests.bench.monitor import Monitor

CPU_MISS_TARGET_US = 600.0
CPU_HIT_TARGET_US = 200.0
ADDED_P50_TARGET_MS = 3.0
ADDED_P99_TARGET_MS = 10.0
RECOVERY_TARGET_S = 15.0
BURST_MIX = PriorityMix({"critical": 0.1, "high": 0.2, "normal": 0.4, "low": 0.3})


# -- draining a backlog: throughput at saturation ----------------------------------------------


@dataclass
class Drain:
    requests: int
    rps: float
    worker_cpu_us: float  # worker CPU per request, all workers of the stack
    worker_util_pct: float  # worker CPU seconds / wall seconds, % of one core
    sim_cpu_us: float
    generator_cpu_pct: float
    unanswered: int
    statuses: dict[str, int]
    series: tuple[list[float], list[float]]


def drain(
    ctx: Context, stack: Stack, requests: int, shape: RequestShape = CACHE_MISS, label: str = ""
) -> Drain:
    """Pre-produce ``requests`` at once and measure how fast the stack answers them."""
    target = ctx.kafka(stack)
    workers = [w.pid for w in stack.live_workers()]
    meter = cpu_meter([*workers, ctx.simulator.pid])
    phase = target.run(Schedule.backlog(requests), shape=shape, label=label)
    phase.wait_answered(timeout=max(60.0, requests / 50))
    use = meter()
    worker_s = use.total(workers)
    return Drain(
        requests,
        steady_rate(phase.answer_times_s()),
        worker_s / requests * 1e6,
        100 * worker_s / use.wall_s / max(1, len(workers)),
        use.total([ctx.simulator.pid]) / requests * 1e6,
        100 * use.generator_s / use.wall_s,
        phase.unanswered(),
        dict(phase.status_counts()),
        phase.rate_series(0.5),
    )


def probe_saturation(ctx: Context) -> float:
    """A short drain against one worker, for scenarios run without ``saturation``."""
    with ctx.step("probing one worker's saturation throughput", seconds=5):
        return drain(ctx, ctx.stack("single"), 2000).rps


def measure_saturation(
    ctx: Context, shape: RequestShape, result: Result, what: str, cpu_target_us: float
) -> list[Drain]:
    stack = ctx.stack("single")
    seconds = ctx.pick(quick=3.0, full=8.0)
    with ctx.step(f"{what}: warm-up drain", seconds=5):
        estimate = drain(ctx, stack, 1500, shape).rps
    rounds: list[Drain] = []
    for r in range(ctx.mode.rounds):
        n = backlog_size(estimate, seconds)
        with ctx.step(f"{what}: drain {n} requests, round {r + 1}/{ctx.mode.rounds}", n / estimate):
            rounds.append(drain(ctx, stack, n, shape))
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
    result.figure(f"worker CPU per {shape.name} request", cpu, "µs")
    util = Spread.of([d.worker_util_pct for d in rounds])
    result.figure("worker CPU use while saturated", util, "% of a core")
    result.check(
        f"worker CPU per {shape.name} request (at saturation)", cpu.median, cpu_target_us, "µs"
    )
    result.table(
        f"{what}: rounds (backlog drained by one worker)",
        ["round", "requests", "req/s", "worker CPU µs/req", "worker CPU % of a core",
         "simulator CPU µs/req", "generator CPU %", "statuses", "unanswered"],
        [
            [i + 1, d.requests, d.rps, d.worker_cpu_us, d.worker_util_pct, d.sim_cpu_us,
             d.generator_cpu_pct, _statuses(d.statuses), d.unanswered]
            for i, d in enumerate(rounds)
        ],
    )
    last = rounds[-1].series
    result.timelines.append(Timeline(f"{what}: answers/s while draining (last round)", *_one(last)))
    result.data["rounds"] = [d.__dict__ | {"series": None} for d in rounds]
    return rounds


def _one(series: tuple[list[float], list[float]]) -> tuple[list[float], dict[str, list[float]]]:
    return series[0], {"answers/s": series[1]}


def _statuses(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "–"


@scenario("saturation", "(a) Throughput at saturation: cache-miss path, one worker", order=10)
def saturation(ctx: Context) -> Result:
    result = Result()
    rounds = measure_saturation(ctx, CACHE_MISS, result, "saturation", CPU_MISS_TARGET_US)
    ctx.findings["saturation_rps"] = Spread.of([d.rps for d in rounds]).median
    result.notes.append(
        "Method: a backlog of about "
        f"{ctx.pick(quick=3, full=8)} s of work is produced at once (the offered rate is "
        "effectively infinite) and one worker drains it; throughput counts the middle 80% "
        "of the answers. CPU per request is the worker's CPU time (/proc/<pid>/stat) from "
        "the first request produced to the last answer, divided by the requests."
    )
    if profile.available():
        profile_saturated_worker(ctx, result, ctx.findings["saturation_rps"])
    else:
        result.notes.append(
            "No profile: py-spy is not installed (`.venv/bin/pip install py-spy`)."
        )
    return result


def profile_saturated_worker(ctx: Context, result: Result, rate: float) -> None:
    """An extra, unmeasured drain while py-spy samples the worker: where the CPU goes."""
    stack = ctx.stack("single")
    seconds = ctx.pick(quick=4.0, full=10.0)
    out = ctx.run_dir / "worker-profile.txt"
    target = ctx.kafka(stack)
    with ctx.step("saturation: py-spy profile of the worker", seconds=seconds + 2):
        phase = target.run(Schedule.backlog(backlog_size(rate, seconds + 3)), background=True)
        time.sleep(1.0)
        try:
            profile.record(stack.workers[0].pid, seconds, out)
        except Exception as exc:  # permission, missing binary: report, do not fail the run
            result.notes.append(f"py-spy could not profile the worker: {exc}")
            phase.wait_answered(120)
            return
        phase.wait_answered(120)
    summary = profile.summarize(out.read_text())
    result.data["profile"] = summary.__dict__
    result.table(
        f"Where the saturated worker's CPU goes: activities (py-spy, {summary.samples} "
        "samples; inclusive, a stack counts for every activity it touches)",
        ["activity", "% of samples"],
        [[name, pct] for name, pct in summary.by_activity],
    )
    result.table(
        "Self time by package (innermost frame)",
        ["package", "% of samples"],
        [[name, pct] for name, pct in summary.by_package],
    )
    result.table(
        "Functions with the most self time",
        ["function (file)", "% of samples"],
        [[f"`{name}`", pct] for name, pct in summary.top_functions[:12]],
    )


def cache_serves_hits(ctx: Context, stack: Stack) -> bool:
    """Does the worker answer repeated identical temperature-0 requests from its cache?"""
    target = ctx.kafka(stack)
    phase = target.run(Schedule.constant(10, 1.0), shape=CACHE_HIT)
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


# -- added latency --------------------------------------------------------------------------


@dataclass
class LatencyRound:
    p50: float
    p99: float
    hist: Any
    worker_hist: Any
    worker_cpu_us: float
    generator_cpu_pct: float
    sim_cpu_us: float
    unanswered: int


def open_loop_round(
    ctx: Context, target: Target, rate: float, seconds: float, pids: list[int], text: str
) -> LatencyRound:
    warm = ctx.pick(quick=0.25, full=0.5)
    with ctx.step(text, seconds=seconds + 0.5):
        meter = cpu_meter([*pids, ctx.simulator.pid])
        phase = target.run(Schedule.constant(rate, seconds))
        phase.wait_answered(60)
        use = meter()
    hist = phase.histogram(start_s=warm)
    stats = percentiles(hist)
    n = max(1, phase.sent)
    return LatencyRound(
        stats.get("p50", float("nan")),
        stats.get("p99", float("nan")),
        hist,
        phase.worker_histogram(start_s=warm),
        use.total(pids) / n * 1e6 if pids else float("nan"),
        100 * use.generator_s / use.wall_s,
        use.total([ctx.simulator.pid]) / n * 1e6,
        phase.unanswered(),
    )


def _merged(rounds: list[LatencyRound], attr: str = "hist") -> dict[str, float]:
    merged = new_histogram()
    for r in rounds:
        merged.add(getattr(r, attr))
    return percentiles(merged)


@scenario("added-latency", "(b) Added latency vs calling the simulator directly", order=20)
def added_latency(ctx: Context) -> Result:
    result = Result()
    stack = ctx.stack("single")
    kafka, direct = ctx.kafka(stack), ctx.direct()
    saturated = ctx.saturation_rps()
    seconds = ctx.pick(quick=1.5, full=5.0)
    workers = [w.pid for w in stack.live_workers()]
    rows, breakdown = [], []
    for load in (0.1, 0.5, 0.8):
        rate = load * saturated
        pct = f"{load:.0%}"
        rounds = interleave(
            ctx.mode.rounds,
            {
                "kafka": lambda r, rate=rate, pct=pct: open_loop_round(
                    ctx, kafka, rate, seconds, workers,
                    f"added latency {pct} load ({rate:.0f}/s): via Kafka, round {r + 1}",
                ),
                "direct": lambda r, rate=rate, pct=pct: open_loop_round(
                    ctx, direct, rate, seconds, [],
                    f"added latency {pct} load ({rate:.0f}/s): direct, round {r + 1}",
                ),
            },
        )
        via, base = rounds["kafka"], rounds["direct"]
        add50 = Spread.of([a.p50 - b.p50 for a, b in zip(via, base, strict=True)])
        add99 = Spread.of([a.p99 - b.p99 for a, b in zip(via, base, strict=True)])
        ratio50 = Spread.of([a.p50 / b.p50 for a, b in zip(via, base, strict=True) if b.p50])
        cpu = Spread.of([a.worker_cpu_us for a in via])
        gen = Spread.of([a.generator_cpu_pct for a in via + base])
        result.latency[f"{pct} load via Kafka"] = _merged(via)
        result.latency[f"{pct} load direct"] = _merged(base)
        rows.append(
            [pct, rate, Spread.of([a.p50 for a in via]).median, Spread.of([a.p99 for a in via]).median,
             Spread.of([b.p50 for b in base]).median, Spread.of([b.p99 for b in base]).median,
             _spread(add50), _spread(add99), _spread(ratio50, "x"), cpu.median, gen.median,
             sum(a.unanswered for a in via)]
        )
        worker = _merged(via, "worker_hist")
        e2e = result.latency[f"{pct} load via Kafka"]
        breakdown.append(
            [pct, e2e.get("p50"), worker.get("p50"), _minus(e2e.get("p50"), worker.get("p50")),
             e2e.get("p99"), worker.get("p99")]
        )
        result.figure(f"offered load {pct} of saturation", rate, "req/s", worker_cpu_us=cpu.median,
                      generator_cpu_pct=gen.median)
        result.figure(f"added latency p50 at {pct} load", add50, "ms")
        result.figure(f"added latency p99 at {pct} load", add99, "ms")
        result.data[pct] = {
            "rate": rate,
            "added_p50_ms": add50.__dict__,
            "added_p99_ms": add99.__dict__,
            "ratio_p50": ratio50.__dict__,
            "kafka": [_round_json(a) for a in via],
            "direct": [_round_json(b) for b in base],
        }
        if load == 0.5:
            result.check("added latency p50 at 50% load", add50.median, ADDED_P50_TARGET_MS, "ms")
            result.check("added latency p99 at 50% load", add99.median, ADDED_P99_TARGET_MS, "ms")
    result.table(
        "Latency through the gateway vs straight to the simulator (ms, median of rounds; "
        "added = per-round difference, median [min–max])",
        ["load", "offered req/s", "Kafka p50", "Kafka p99", "direct p50", "direct p99",
         "added p50", "added p99", "ratio p50", "worker CPU µs/req", "generator CPU %",
         "unanswered"],
        rows,
    )
    result.table(
        "Where the time goes on the Kafka path (ms, all rounds merged): the worker's own "
        "`total_ms` (request created -> response written) vs end to end",
        ["load", "end-to-end p50", "worker total_ms p50", "response delivery p50 (difference)",
         "end-to-end p99", "worker total_ms p99"],
        breakdown,
    )
    result.notes.append(
        f"Method: open-loop arrivals at a fixed rate for {seconds:g} s per round, latency from "
        "each request's intended send time to its answer, the first "
        f"{ctx.pick(quick=0.25, full=0.5)} s of each round not counted; rounds alternate "
        f"Kafka, direct, Kafka, direct ... ({ctx.mode.rounds} of each). Direct = aiohttp "
        "POST /v1/chat/completions to the same simulator with the same body the connector "
        "sends. Worker CPU per request includes its idle cost at that rate."
    )
    return result


def _spread(s: Spread, unit: str = "") -> str:
    if s.median != s.median:
        return "–"
    return f"{s.median:.3g}{unit} [{s.low:.3g}–{s.high:.3g}]"


def _minus(a: float | None, b: float | None) -> float:
    return a - b if a is not None and b is not None else float("nan")


def _round_json(r: LatencyRound) -> dict[str, Any]:
    return {k: v for k, v in r.__dict__.items() if k not in ("hist", "worker_hist")}


# -- burst ----------------------------------------------------------------------------------


@scenario("burst", "(c) A 10x burst, then back", order=30)
def burst(ctx: Context) -> Result:
    result = Result()
    stack = ctx.stack("single")
    target = ctx.kafka(stack)
    base = 0.2 * ctx.saturation_rps()
    pre, during, post = ctx.pick(quick=(5.0, 8.0, 15.0), full=(20.0, 30.0, 60.0))
    schedule = Schedule(((pre, base), (during, 10 * base), (post, base)))
    worker = stack.workers[0]
    meter = cpu_meter([worker.pid])
    phase = target.run(schedule, mix=BURST_MIX, background=True)
    monitor = Monitor(stack).start(t0=phase.t0_ns / 1e9)
    with ctx.step(
        f"burst: {base:.0f}/s, {10 * base:.0f}/s for {during:g} s, back", pre + during + post
    ):
        phase.wait()
    with ctx.step("burst: waiting for the last answers", seconds=10):
        phase.wait_answered(ctx.pick(quick=60, full=120))
    monitor.stop()
    use = meter()
    windows = {
        "before": (1.0, pre),
        "during": (pre, pre + during),
        "after": (pre + during, pre + during + post),
    }
    rows = []
    for priority in BURST_MIX.weights:
        row: list[Any] = [priority]
        for name, (lo, hi) in windows.items():
            stats = phase.latency(start_s=lo, end_s=hi, priority=priority)
            row.append(stats.get("p99", float("nan")))
            if name != "before":
                result.latency[f"burst {name}: {priority}"] = stats
        counts = phase.status_counts(priority=priority)
        row += [counts.get("shed", 0), counts.get("ok", 0), counts.get("unanswered", 0)]
        rows.append(row)
    result.table(
        "Per-priority p99 latency (ms) by when the request was sent, and outcomes",
        ["priority", "p99 before", "p99 during burst", "p99 after", "shed", "ok", "unanswered"],
        rows,
    )
    peak_total, peak_per = monitor.peak_lag()
    t_out, outstanding = phase.outstanding(0.25)
    settled = max(
        [v for ti, v in zip(t_out, outstanding, strict=True) if 1.0 <= ti < pre] or [0]
    )
    recover = recovery_time(
        t_out, outstanding, pre + during, lambda v: v <= 1.5 * settled + 20, hold=4
    )
    hwm_mb = monitor.peak_hwm_kb() / 1024
    counts = phase.status_counts()
    result.figure("peak consumer lag (committed offsets)", peak_total, "messages")
    result.figure(
        "time to recover after the burst",
        recover if recover is not None else float("nan"),
        "s",
        detail="until requests in flight are back to the pre-burst level"
        if recover is not None
        else "did not recover within the run",
    )
    result.figure("requests shed", counts.get("shed", 0), "requests")
    result.figure("worker peak RSS (VmHWM)", hwm_mb, "MiB")
    result.figure(
        "burst throughput offered",
        10 * base,
        "req/s",
        worker_cpu_us=use.total([worker.pid]) / max(1, phase.sent) * 1e6,
        detail=f"base {base:.0f} req/s (20% of saturation), x10 for {during:g} s",
    )
    result.table(
        "Burst summary",
        ["base req/s", "burst req/s", "requests", "peak lag", "peak lag per priority",
         "peak in flight", "in flight before", "recovery s", "peak RSS MiB", "statuses"],
        [[base, 10 * base, phase.sent, peak_total,
          ", ".join(f"{p} {n}" for p, n in peak_per.items()), max(outstanding or [0]), settled,
          recover if recover is not None else "not recovered", hwm_mb, _statuses(dict(counts))]],
    )
    t, rates = phase.rate_series(1.0)
    offered = [schedule.rate_at(x) for x in t]
    markers = [(pre, "burst starts"), (pre + during, "burst ends")]
    result.timelines.append(
        Timeline("burst: answers/s vs offered", t, {"answers/s": rates, "offered/s": offered},
                 markers=markers)
    )
    series = monitor.series()
    result.timelines.append(
        Timeline("burst: consumer lag and requests in flight", series["t"],
                 {"consumer lag (committed)": series["lag"]}, unit="messages", markers=markers)
    )
    result.timelines.append(
        Timeline("burst: requests in flight (sent, not answered)", t_out,
                 {"in flight": [float(v) for v in outstanding]}, unit="requests", markers=markers)
    )
    result.data["monitor"] = series
    result.notes.append(
        "Method: open-loop arrivals with priorities mixed 10% critical, 20% high, 40% normal, "
        "30% low; the base rate is 20% of one worker's saturation, so the burst offers twice "
        "what the worker can do. Recovery: the time after the burst ends until the requests "
        "in flight (sent, not yet answered) are back within 1.5x (+20) of the pre-burst level "
        "for a second. Lag is the broker's view (committed offsets), behind by up to one "
        "commit interval."
    )
    return result


# -- scaling --------------------------------------------------------------------------------


@scenario("scaling", "(e) Scaling from one worker to two", order=40)
def scaling(ctx: Context) -> Result:
    result = Result()
    single, pair = ctx.stack("single"), ctx.stack("pair")
    rate = ctx.saturation_rps()
    seconds = ctx.pick(quick=3.0, full=8.0)
    n = backlog_size(rate, seconds)
    drains = interleave(
        ctx.mode.rounds,
        {
            "1 worker": lambda r: _step_drain(ctx, single, n, f"scaling: 1 worker, round {r + 1}", rate),
            "2 workers": lambda r: _step_drain(ctx, pair, int(n * 1.5), f"scaling: 2 workers, round {r + 1}", rate * 1.5),
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
        ["round", "1 worker req/s", "2 workers req/s", "ratio", "1 worker CPU µs/req",
         "2 workers CPU µs/req (sum)", "worker CPU % of a core (1 / 2, each)"],
        [
            [i + 1, a.rps, b.rps, b.rps / a.rps if a.rps else float("nan"), a.worker_cpu_us,
             b.worker_cpu_us, f"{a.worker_util_pct:.0f} / {b.worker_util_pct:.0f}"]
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
        return drain(ctx, stack, n)


def _nproc() -> int:
    import os

    return os.cpu_count() or 0


# -- a worker killed ------------------------------------------------------------------------


@scenario("worker-kill", "(d) SIGKILL one of two workers at 50% load", order=50)
def worker_kill(ctx: Context) -> Result:
    result = Result()
    pair = ctx.stack("pair")
    target = ctx.kafka(pair)
    rate = 0.5 * ctx.saturation_rps()
    steady, after = ctx.pick(quick=(6.0, 24.0), full=(15.0, 45.0))
    victim, survivor = pair.workers[0], pair.workers[1]
    phase = target.run(Schedule.constant(rate, steady + after), background=True)
    with ctx.step(f"worker kill: {rate:.0f}/s on two workers, SIGKILL at {steady:g} s", steady):
        time.sleep(max(0.0, phase.t0_ns / 1e9 + steady - time.monotonic()))
        victim.kill()
        killed_at = time.monotonic() - phase.t0_ns / 1e9
    rebalanced_at = None
    with ctx.step("worker kill: waiting for the survivor to take over", after):
        while not phase.done.is_set():
            if rebalanced_at is None and survivor.owned_partitions() == 4 * PARTITIONS:
                rebalanced_at = time.monotonic() - phase.t0_ns / 1e9
            time.sleep(0.2)
    with ctx.step("worker kill: waiting for the last answers", seconds=10):
        phase.wait_answered(ctx.pick(quick=45, full=90))
    step = 0.5
    t, rates = phase.rate_series(step)
    recover = recovery_time(t, rates, killed_at, lambda v: v >= 0.95 * rate, hold=2, step=step)
    missing, duplicates = phase.unanswered(), phase.duplicates()
    result.figure(
        "recovery after SIGKILL (throughput back to 95%)",
        recover if recover is not None else float("nan"),
        "s",
        detail="" if recover is not None else "not back to 95% within the run",
    )
    result.figure("missing responses", missing, "requests")
    result.figure("duplicate responses", duplicates, "requests")
    result.figure(
        "offered load, 2 workers", rate, "req/s",
        detail="50% of one worker's saturation",
    )
    # Never back to 95% within the run: charge the whole observation window.
    charged = recover if recover is not None else after + steady - killed_at
    result.check("recovery after SIGKILL", charged, RECOVERY_TARGET_S, "s")
    result.check("missing responses after SIGKILL", float(missing), 0.0, "requests")
    before = phase.latency(start_s=1.0, end_s=killed_at)
    around = phase.latency(start_s=killed_at, end_s=killed_at + 15)
    result.latency["kill: before"] = before
    result.latency["kill: 15 s after"] = around
    result.table(
        "Worker kill",
        ["offered req/s", "requests", "killed at s", "survivor owns all partitions at s",
         "recovery s", "missing", "duplicates", "p99 before ms", "p99 in the 15 s after ms"],
        [[rate, phase.sent, killed_at,
          rebalanced_at if rebalanced_at is not None else "not seen", recover, missing,
          duplicates, before.get("p99"), around.get("p99")]],
    )
    result.timelines.append(
        Timeline("worker kill: answers/s vs offered", t,
                 {"answers/s": rates, "offered/s": [rate if x < steady + after else 0 for x in t]},
                 markers=[(killed_at, "SIGKILL")])
    )
    result.notes.append(
        "Method: two workers share the partitions; open-loop load at half of one worker's "
        "saturation; one worker gets SIGKILL. Recovery is the time from the kill until "
        f"answers per {step:g} s bucket are back to 95% of the offered rate for two buckets "
        "(end of the first good bucket). The session timeout (10 s in streams/app.py) bounds "
        "how soon the group notices the dead worker. Missing: requests the broker accepted "
        "that never got an answer; duplicates: extra answers for one request id (requests "
        "in flight at the kill, re-read from the last committed offset)."
    )
    ctx.retire_stack("pair")  # one of its workers is dead
    return result
