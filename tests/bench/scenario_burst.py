"""(c) A 10x burst for a while, then back: lag, per-priority latency, sheds, recovery, RSS.

The base rate is 20% of one worker's saturation with priorities mixed 10/20/40/30%
(critical/high/normal/low); the burst offers ten times that. A monitor samples consumer lag
(committed offsets), the worker's queue and its memory while it runs.
"""

from __future__ import annotations

from typing import Any

from tests.bench.analysis import recovery_time
from tests.bench.framework import Context, Result, Timeline, scenario
from tests.bench.loadgen import PriorityMix, Schedule, cpu_meter
from tests.bench.measure import require_answers, statuses_text
from tests.bench.monitor import Monitor

BURST_MIX = PriorityMix({"critical": 0.1, "high": 0.2, "normal": 0.4, "low": 0.3})


@scenario("burst", "(c) A 10x burst, then back", order=30)
def burst(ctx: Context) -> Result:
    result = Result()
    stack = ctx.stack("single")
    target = ctx.kafka(stack)
    base = 0.2 * ctx.saturation_rps()
    pre, during, post = ctx.pick(quick=(2.0, 4.0, 7.0), full=(20.0, 30.0, 60.0))
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
        phase.wait_answered(ctx.pick(quick=60, full=120), stall_s=10)
    monitor.stop()
    require_answers(stack, phase, "burst", at_least=0.9)
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
    settled = max([v for ti, v in zip(t_out, outstanding, strict=True) if 1.0 <= ti < pre] or [0])
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
        [
            "base req/s",
            "burst req/s",
            "requests",
            "peak lag",
            "peak lag per priority",
            "peak in flight",
            "in flight before",
            "recovery s",
            "peak RSS MiB",
            "statuses",
        ],
        [
            [
                base,
                10 * base,
                phase.sent,
                peak_total,
                ", ".join(f"{p} {n}" for p, n in peak_per.items()),
                max(outstanding or [0]),
                settled,
                recover if recover is not None else "not recovered",
                hwm_mb,
                statuses_text(dict(counts)),
            ]
        ],
    )
    t, rates = phase.rate_series(1.0)
    offered = [schedule.rate_at(x) for x in t]
    markers = [(pre, "burst starts"), (pre + during, "burst ends")]
    result.timelines.append(
        Timeline(
            "burst: answers/s vs offered",
            t,
            {"answers/s": rates, "offered/s": offered},
            markers=markers,
        )
    )
    series = monitor.series()
    result.timelines.append(
        Timeline(
            "burst: consumer lag and requests in flight",
            series["t"],
            {"consumer lag (committed)": series["lag"]},
            unit="messages",
            markers=markers,
        )
    )
    result.timelines.append(
        Timeline(
            "burst: requests in flight (sent, not answered)",
            t_out,
            {"in flight": [float(v) for v in outstanding]},
            unit="requests",
            markers=markers,
        )
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
