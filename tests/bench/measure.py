"""Shared measurements for the core scenarios: drains, open-loop rounds, worker profiles.

- ``drain``: pre-produce a backlog and time how fast a stack answers it (saturation);
  CPU per request counts the worker's follow-up work until it is quiet again.
- ``open_loop_round``: one fixed-rate phase against a target, latency from intended times.
- ``profile_worker``: py-spy on the single stack's worker while a schedule runs.
- ``require_answers``: fail a scenario, with the workers' log tails, when a stack stopped
  answering (a crashed agent wedges a Faust worker).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tests.bench import profile
from tests.bench.analysis import steady_rate
from tests.bench.framework import Context, Result, Spread
from tests.bench.harness import Stack, wait_quiet
from tests.bench.loadgen import (
    CACHE_MISS,
    Phase,
    RequestShape,
    Schedule,
    Target,
    cpu_meter,
    new_histogram,
    percentiles,
)


@dataclass
class Drain:
    requests: int
    rps: float  # requests / time until all their work was done (answers and follow-up)
    answer_rps: float  # answers per second over the middle 80% of the answers
    worker_cpu_us: float  # worker CPU per request, all workers of the stack
    worker_util_pct: float  # worker CPU seconds / wall seconds, % of one core
    sim_cpu_us: float
    generator_cpu_pct: float
    unanswered: int
    statuses: dict[str, int]
    series: tuple[list[float], list[float]]


class StackFailure(RuntimeError):
    """The gateway under test stopped answering; ``retryable`` when its log shows the known
    start-up race (a fresh stack usually works), not for a hang of the worker's own."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def require_answers(stack: Stack, phase: Phase, what: str, at_least: float = 0.99) -> None:
    """Fail the scenario (with the workers' log tails) when the gateway stopped answering."""
    sent = phase.sent
    if sent and (sent - phase.unanswered()) >= at_least * sent:
        return
    troubles = [f"worker {w.name}: {w.trouble()}" for w in stack.workers if w.trouble()]
    tails = "\n".join(
        f"--- worker {w.name} ({'alive' if w.alive() else 'exited'}), {w.log_path}:\n"
        + w.log_tail(15)
        for w in stack.workers
    )
    status = "\n".join(f"--- worker {w.name} /status: {w.status()}" for w in stack.live_workers())
    raise StackFailure(
        f"{what}: only {sent - phase.unanswered()} of {sent} requests were answered"
        + (f" ({'; '.join(troubles)})" if troubles else " (no crash in the worker logs)")
        + f"\n{tails}\n{status}",
        retryable=bool(troubles),
    )


def drain(
    ctx: Context,
    stack: Stack,
    requests: int,
    shape: RequestShape = CACHE_MISS,
    expected_rps: float | None = None,
) -> Drain:
    """Pre-produce ``requests`` at once and measure how fast the stack answers them.

    Gives up after five times the expected drain time (or 20 s, or 10 s without an answer).
    """
    target = ctx.kafka(stack)
    workers = [w.pid for w in stack.live_workers()]
    meter = cpu_meter([*workers, ctx.simulator.pid])
    phase = target.run(Schedule.backlog(requests), shape=shape)
    timeout = max(10.0, 5 * requests / expected_rps) if expected_rps else max(20.0, requests / 50)
    phase.wait_answered(timeout=timeout, stall_s=10)
    busy = meter()  # while answering: how much of a core the workers got
    quiet_at = wait_quiet(workers)  # the follow-up work counts too: usage tables, commits
    use = meter()
    require_answers(stack, phase, f"draining {requests} requests")
    return Drain(
        requests,
        requests / max(1e-3, quiet_at - phase.t0_ns / 1e9),
        steady_rate(phase.answer_times_s()),
        use.total(workers) / requests * 1e6,
        100 * busy.total(workers) / busy.wall_s / max(1, len(workers)),
        use.total([ctx.simulator.pid]) / requests * 1e6,
        100 * busy.generator_s / busy.wall_s,
        phase.unanswered(),
        dict(phase.status_counts()),
        phase.rate_series(0.5),
    )


def probe_saturation(ctx: Context) -> float:
    """A short drain against one worker, for scenarios run without ``saturation``."""
    with ctx.step("probing one worker's saturation throughput", seconds=5):
        return drain(ctx, ctx.stack("single"), 2000).rps


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
    ctx: Context,
    target: Target,
    rate: float,
    seconds: float,
    pids: list[int],
    text: str,
    stack: Stack | None = None,
) -> LatencyRound:
    warm = ctx.pick(quick=0.15, full=0.5)
    with ctx.step(text, seconds=seconds + 0.5):
        meter = cpu_meter([*pids, ctx.simulator.pid])
        phase = target.run(Schedule.constant(rate, seconds))
        phase.wait_answered(60, stall_s=10)
        if pids:
            wait_quiet(pids)
        use = meter()
    if stack is not None:
        require_answers(stack, phase, text)
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


def merged(rounds: list[LatencyRound], attr: str = "hist") -> dict[str, float]:
    merged = new_histogram()
    for r in rounds:
        merged.add(getattr(r, attr))
    return percentiles(merged)


def profile_worker(
    ctx: Context, result: Result, what: str, schedule: Schedule, seconds: float
) -> profile.ProfileSummary | None:
    """Run ``schedule`` (not measured) against the single stack while py-spy samples."""
    stack = ctx.stack("single")
    out = ctx.run_dir / f"worker-profile-{what.replace(' ', '-').replace('%', 'pct')}.txt"
    with ctx.step(f"{what}: py-spy profile of the worker", seconds=seconds + 2):
        phase = ctx.kafka(stack).run(schedule, background=True)
        time.sleep(0.5)
        try:
            profile.record(stack.workers[0].pid, seconds, out)
        except Exception as exc:  # permission, missing binary: report, do not fail the run
            result.notes.append(f"py-spy could not profile the worker: {exc}")
            return None
        finally:
            phase.wait_answered(120, stall_s=10)
            wait_quiet([stack.workers[0].pid])
    return profile.summarize(out.read_text())


def profile_tables(
    result: Result, summary: profile.ProfileSummary, whose: str, top: bool = False
) -> None:
    result.table(
        f"Where {whose}'s CPU goes, by component (py-spy, {summary.samples} samples; each "
        "sample charged to the innermost frame of a known package, standard library frames "
        "to their caller)",
        ["component", "% of samples"],
        [[name, pct] for name, pct in summary.by_component],
    )
    result.table(
        f"Cross-cutting costs in {whose} (share of samples with such a frame anywhere in "
        "the stack)",
        ["cost", "% of samples"],
        [[name, pct] for name, pct in summary.cross_cutting],
    )
    if top:
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


def one_series(
    series: tuple[list[float], list[float]],
) -> tuple[list[float], dict[str, list[float]]]:
    return series[0], {"answers/s": series[1]}


def statuses_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "n/a"


def spread_text(s: Spread, unit: str = "") -> str:
    if s.median != s.median:
        return "n/a"
    return f"{s.median:.3g}{unit} [{s.low:.3g}-{s.high:.3g}]"


def minus(a: float | None, b: float | None) -> float:
    return a - b if a is not None and b is not None else float("nan")


def round_json(r: LatencyRound) -> dict[str, Any]:
    return {k: v for k, v in r.__dict__.items() if k not in ("hist", "worker_hist")}
