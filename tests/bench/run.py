"""Run the benchmark scenarios and write docs/benchmarks.md, its JSON and charts.

    python -m tests.bench.run --mode quick|full [--only saturation,burst] [--list]

Needs a broker at ``KAFKA_BOOTSTRAP_SERVERS`` (scripts/bench.sh starts one). Starts the
simulator and the workers it needs, shows progress while the scenarios run, prints a
summary table, and stops everything it started, on failure and Ctrl-C too. A scenario that
fails is reported as failed and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from tests.bench import framework, report
from tests.bench.harness import ROOT, machine_facts


class RichSteps(framework.Progress):
    """The framework's step display on a rich progress bar (time-based per step)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID = progress.add_task("starting", total=1)
        self.stack: list[tuple[str, float, float]] = []
        self.log: list[tuple[str, float, float]] = []  # (step, planned s, took s)
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self._ticker.start()

    def step_started(self, text: str, seconds: float) -> None:
        if not self.progress.console.is_terminal:  # a log, not a live display: one line each
            self.progress.console.print(f"[{time.strftime('%H:%M:%S')}] {text}", highlight=False)
        self.stack.append((text, max(seconds, 0.1), time.monotonic()))
        self.progress.update(self.task, description=text, total=max(seconds, 0.1), completed=0)

    def step_finished(self) -> None:
        if self.stack:
            text, seconds, started = self.stack.pop()
            self.log.append((text, round(seconds, 1), round(time.monotonic() - started, 1)))
        if self.stack:
            text, seconds, _ = self.stack[-1]
            self.progress.update(self.task, description=text, total=seconds)

    def _tick(self) -> None:
        while not self._stop.wait(0.2):
            if self.stack:
                _, seconds, started = self.stack[-1]
                elapsed = min(seconds, time.monotonic() - started)
                self.progress.update(self.task, completed=elapsed)

    def close(self) -> None:
        self._stop.set()


def _terminate_as_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["quick", "full"], default="quick")
    parser.add_argument("--only", help="comma-separated scenario keys (default: all)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--docs", default=str(ROOT / "docs"), help="where benchmarks.md goes")
    parser.add_argument("--command", help="the command line to print in the report")
    args = parser.parse_args(argv)

    scenarios = framework.discover()
    if args.list:
        for sc in scenarios:
            print(f"{sc.key:24} {sc.title}{'  (full only)' if sc.full_only else ''}")
        return 0
    mode = framework.QUICK if args.mode == "quick" else framework.FULL
    if args.only:
        wanted = {k.strip() for k in args.only.split(",")}
        unknown = wanted - {sc.key for sc in scenarios}
        if unknown:
            parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
        scenarios = [sc for sc in scenarios if sc.key in wanted]
    if mode is framework.QUICK:
        scenarios = [sc for sc in scenarios if not sc.full_only]
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        parser.error("KAFKA_BOOTSTRAP_SERVERS is not set (scripts/bench.sh starts a broker)")

    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    # Ctrl-C must stop the run even when the shell started us with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    console = Console() if sys.stdout.isatty() else Console(width=150)
    started = time.monotonic()
    now = dt.datetime.now().astimezone()
    run_dir = ROOT / ".run" / "bench" / now.strftime("%Y%m%d-%H%M%S")
    command = args.command or f"python -m tests.bench.run --mode {mode.name}"
    run: dict[str, Any] = {
        "date": now.date().isoformat(),
        "started_at": now.isoformat(timespec="seconds"),
        "mode": mode.name,
        "rounds": mode.rounds,
        "command": command,
        "machine": machine_facts(bootstrap, os.environ.get("BENCH_BROKER_STARTED") == "1"),
        "scenarios": [],
    }
    failed = interrupted = False
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        overall = progress.add_task("scenarios", total=len(scenarios))
        steps = RichSteps(progress)
        ctx = framework.Context(mode, bootstrap, run_dir, steps)
        try:
            for sc in scenarios:
                progress.update(overall, description=f"scenario {sc.key}: {sc.title}")
                t0 = time.monotonic()
                entry: dict[str, Any] = {"key": sc.key, "title": sc.title, "module": sc.module}
                for attempt in (1, 2):  # a failure is retried once, on fresh workers
                    try:
                        entry["result"] = sc.func(ctx).to_json()
                        entry.pop("error", None)
                        break
                    except KeyboardInterrupt:
                        raise
                    except Exception as exc:
                        entry["error"] = traceback.format_exc()
                        console.print(
                            f"[red]scenario {sc.key} failed (attempt {attempt}):[/red]\n"
                            f"{entry['error']}"
                        )
                        ctx.retire_all_stacks()
                        if not getattr(exc, "retryable", True):
                            break  # a hang of the worker's own: a retry would hang too
                        entry.setdefault("failures", []).append(entry["error"])
                failed = failed or "error" in entry
                entry["seconds"] = round(time.monotonic() - t0, 1)
                run["scenarios"].append(entry)
                progress.advance(overall)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: stopping everything this run started[/yellow]")
            interrupted = True
        finally:
            steps.close()
            with progress.console.status("stopping workers and the simulator"):
                ctx.close()
    run["incidents"] = ctx.incidents
    run["steps"] = steps.log
    if interrupted:
        return 130
    run["duration_s"] = round(time.monotonic() - started, 1)
    run["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    stem = run["date"] if mode is framework.FULL else f"{run['date']}-quick"
    paths = report.write_all(run, Path(args.docs), stem)
    report.print_summary(report.clean(run), console)
    for kind, path in paths.items():
        console.print(
            f"wrote {kind}: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}"
        )
    console.print(f"total {run['duration_s']:.0f} s; logs in {run_dir.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
