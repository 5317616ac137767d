"""(d) SIGKILL one of two workers at 50% load: recovery time, missing and duplicate answers."""

from __future__ import annotations

import time

from tests.bench.analysis import recovery_time
from tests.bench.framework import Context, Result, Timeline, scenario
from tests.bench.harness import PARTITIONS
from tests.bench.loadgen import Schedule

RECOVERY_TARGET_S = 15.0


@scenario("worker-kill", "(d) SIGKILL one of two workers at 50% load", order=50)
def worker_kill(ctx: Context) -> Result:
    result = Result()
    pair = ctx.stack("pair")
    target = ctx.kafka(pair)
    rate = 0.5 * ctx.saturation_rps()
    steady, after = ctx.pick(quick=(2.5, 17.0), full=(15.0, 45.0))
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
    step = 1.0  # one-second buckets; the rate must hold for three of them
    t, rates = phase.rate_series(step)
    recover = recovery_time(t, rates, killed_at, lambda v: v >= 0.95 * rate, hold=3, step=step)
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
        "offered load, 2 workers",
        rate,
        "req/s",
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
        [
            "offered req/s",
            "requests",
            "killed at s",
            "survivor owns all partitions at s",
            "recovery s",
            "missing",
            "duplicates",
            "p99 before ms",
            "p99 in the 15 s after ms",
        ],
        [
            [
                rate,
                phase.sent,
                killed_at,
                rebalanced_at if rebalanced_at is not None else "not seen",
                recover,
                missing,
                duplicates,
                before.get("p99"),
                around.get("p99"),
            ]
        ],
    )
    result.timelines.append(
        Timeline(
            "worker kill: answers/s vs offered",
            t,
            {"answers/s": rates, "offered/s": [rate if x < steady + after else 0 for x in t]},
            markers=[(killed_at, "SIGKILL")],
        )
    )
    result.notes.append(
        "Method: two workers share the partitions; open-loop load at half of one worker's "
        "saturation; one worker gets SIGKILL. Recovery is the time from the kill until the "
        f"answers per {step:g} s bucket are back to 95% of the offered rate for three "
        "buckets in a row (counted to the end of the first of them). The session timeout "
        "(10 s in streams/app.py) bounds how soon the group notices the dead worker. "
        "Missing: requests the broker accepted that never got an answer; duplicates: extra "
        "answers for one request id (requests in flight at the kill, re-read from the last "
        "committed offset)."
    )
    ctx.retire_stack("pair")  # one of its workers is dead
    return result
