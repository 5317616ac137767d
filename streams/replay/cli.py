"""``sluicegate replay report|whatif|run`` and ``sluicegate trace``: the command line.

    sluicegate replay report --from 2025-05-01T00:00Z --to 2025-05-02T00:00Z --out audit/
    sluicegate replay whatif --from 1d --config-alt cheaper.toml --tenant acme
    sluicegate replay run    --from 2h --tenant acme --start-worker --start-simulator
    sluicegate trace 6f1c...e2

Times are ISO 8601 (naive = UTC) or a duration ago (``90s``, ``30m``, ``2h``, ``1d``).
Heavy imports stay inside the command functions so that ``sluicegate --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

PRIORITIES = ("critical", "high", "normal", "low")
STATUSES = ("ok", "cached", "degraded", "rejected", "shed", "failed", "unanswered")
_DURATION = re.compile(r"(?:\d+[smhd])+")
_PART = re.compile(r"(\d+)([smhd])")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration(text: str) -> int:
    """``90s``, ``10m``, ``1h30m`` -> milliseconds."""
    if not _DURATION.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 10m, 1h)")
    return sum(int(n) * _UNIT_MS[u] for n, u in _PART.findall(text))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _range(args: argparse.Namespace) -> tuple[int, int]:
    from streams.dlq import parse_time
    from streams.replay.reader import ReplayReadError

    now = _now_ms()
    start = parse_time(args.from_, now)
    end = parse_time(args.to, now) if args.to else now
    if start > end:
        raise ReplayReadError("--from is after --to: the range is empty")
    return start, end


def _selection(args: argparse.Namespace) -> Any:
    from streams.replay.recording import Selection

    return Selection(
        tenants=frozenset(args.tenant or ()),
        features=frozenset(args.feature or ()),
        priorities=frozenset(args.priority or ()),
        statuses=frozenset(args.status or ()),
    )


def _load(args: argparse.Namespace, config: Any, keep_messages: bool) -> Any:
    """Read the range with a progress bar on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from streams.replay.recording import load_recording

    start, end = _range(args)
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
        tasks: dict[str, Any] = {}

        def on_progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(f"reading {phase}", total=total)
            progress.update(tasks[phase], completed=done, total=total)

        return load_recording(
            config.kafka.bootstrap_servers,
            config.kafka.topic_prefix,
            start,
            end,
            _selection(args),
            grace_ms=args.grace,
            keep_messages=keep_messages,
            on_progress=on_progress,
        )


def _warn(recording: Any) -> None:
    for warning in recording.warnings:
        print(f"sluicegate: warning: {warning}", file=sys.stderr)


# -- report ---------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    from rich.console import Console

    from streams.cli import effective_config
    from streams.replay.render import print_report, write_outputs
    from streams.replay.report import build_report

    config = effective_config(args.config)
    recording = _load(args, config, keep_messages=False)
    report = build_report(recording, top=args.top)
    if args.json:
        _warn(recording)  # the terminal tables show them otherwise
        print(json.dumps(report.to_json(), indent=2))
    else:
        print_report(report, Console(), limit=args.limit)
    if args.out:
        for path in write_outputs(report, recording.entries, Path(args.out)):
            print(f"wrote {path}", file=sys.stderr)
    return 0


# -- what-if --------------------------------------------------------------------------------


def _arrow(before: Any, after: Any) -> str:
    return str(before) if before == after else f"{before} -> {after}"


def print_comparison(comparison: Any, console: Any, changes: int) -> None:
    from rich.table import Table

    from streams.replay.render import usd

    table = Table(title="What would have changed (recorded -> what-if)", title_justify="left")
    columns = ["tenant", "feature", "requests", "spend", "estimated", "admitted", "cached"]
    for i, column in enumerate([*columns, "rejected", "shed", "cache hits"]):
        table.add_column(column, justify="left" if i < 2 else "right")
    for g in [*comparison.groups, comparison.total]:
        rec, alt = g.recorded, g.whatif
        table.add_row(
            g.tenant,
            g.feature,
            str(rec.requests),
            _arrow(usd(rec.cost_micros), usd(alt.cost_micros)),
            usd(alt.estimated_micros) if alt.estimated_micros else "-",
            *(
                _arrow(rec.categories[c], alt.categories[c])
                for c in ("admitted", "cached", "rejected", "shed")
            ),
            _arrow(f"{rec.cache_hit_share:.1%}", f"{alt.cache_hit_share:.1%}"),
            end_section=g is comparison.groups[-1] if comparison.groups else False,
        )
    console.print(table)
    if comparison.total.recorded.categories["unanswered"]:
        console.print(
            f"{comparison.total.recorded.categories['unanswered']} request(s) had no recorded "
            "response; their what-if cost is an upper-bound estimate (column 'estimated')."
        )
    console.print(f"{len(comparison.changes)} requests would have a different outcome.")
    if comparison.changes and changes:
        listing = Table(title=f"Changed outcomes (first {changes})", title_justify="left")
        for column in ("request id", "tenant", "feature", "recorded", "what-if", "why"):
            listing.add_column(column, overflow="fold")
        for c in comparison.changes[:changes]:
            listing.add_row(c.request_id, c.tenant, c.feature, c.recorded, c.whatif, c.detail)
        console.print(listing)


def cmd_whatif(args: argparse.Namespace) -> int:
    from rich.console import Console

    from streams.cli import effective_config
    from streams.config import load_config
    from streams.replay import whatif

    config = effective_config(args.config)
    alternative = load_config(args.config_alt)
    recording = _load(args, config, keep_messages=True)
    _warn(recording)
    prefix = config.kafka.topic_prefix
    comparison = whatif.compare(whatif.replay(recording.entries, alternative, prefix))
    out: dict[str, Any] = comparison.to_json()
    if args.fidelity:
        baseline = whatif.compare(whatif.replay(recording.entries, config, prefix))
        recorded = baseline.total.recorded
        answered = recorded.requests - recorded.categories["unanswered"]
        out["fidelity"] = {
            "requests": answered,  # those with a recorded decision to compare with
            "reproduced": answered - len(baseline.changes),
            "changes": [vars(c) for c in baseline.changes],
        }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        console = Console()
        print_comparison(comparison, console, args.changes)
        if args.fidelity:
            f = out["fidelity"]
            console.print(
                f"Under the live configuration the replay reproduces {f['reproduced']} of "
                f"{f['requests']} recorded decisions."
            )
    if args.out:
        path = Path(args.out)
        path.mkdir(parents=True, exist_ok=True)
        (path / "whatif.json").write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {path / 'whatif.json'}", file=sys.stderr)
    return 0


# -- run ------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    from streams.cli import effective_config
    from streams.replay import run

    config = effective_config(args.config)
    recording = _load(args, config, keep_messages=True)
    _warn(recording)
    namespace = args.namespace or f"{config.kafka.topic_prefix}-replay"
    options = run.RunOptions(
        namespace=namespace,
        work_dir=Path(args.work_dir or f".run/replay-{namespace}"),
        start_worker=args.start_worker,
        start_simulator=args.start_simulator,
        provider_url=None if args.provider == "config" else args.sim_url,
        pace=args.pace,
        speed=args.speed,
        timeout_s=args.timeout,
    )
    err = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err) as bar:

        class Shown(run.Progress):
            task: Any = None

            def phase(self, name: str, total: int) -> None:
                self.task = bar.add_task(name, total=total)

            def advance(self) -> None:
                bar.advance(self.task)

        if not args.start_worker:
            err.print(f"answers come from a worker started with: {namespace_hint(options)}")
        result = run.execute(args.config, config, recording.entries, options, Shown())
    out = {"run_id": result.run_id, "namespace": namespace, **result.diff.to_json()}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        console = Console()
        table = Table(title=f"Replay {result.run_id} in {namespace!r}", title_justify="left")
        table.add_column("figure")
        table.add_column("value", justify="right")
        for name, value in result.diff.counts().items():
            table.add_row(name, str(value))
        lat = result.diff.latency()
        for which in ("recorded", "replay"):
            table.add_row(f"{which} p50 / p95 ms", f"{lat[which]['p50']} / {lat[which]['p95']}")
        for change, n in result.diff.cache_changes.items():
            table.add_row(f"cache: {change}", str(n))
        console.print(table)
        differing = [r for r in result.diff.rows if r.differs][: args.changes]
        if differing:
            listing = Table(title="Differences", title_justify="left")
            for column in ("recorded id", "replay id", "status", "content", "cost"):
                listing.add_column(column, overflow="fold")
            for r in differing:
                listing.add_row(
                    r.recorded_id,
                    r.replay_id,
                    _arrow(r.recorded_status, r.replay_status),
                    "same" if r.same_content else "different",
                    _arrow(r.recorded_cost_micros, r.replay_cost_micros),
                )
            console.print(listing)
    if args.out:
        path = Path(args.out)
        path.mkdir(parents=True, exist_ok=True)
        (path / "replay-diff.json").write_text(json.dumps(out, indent=2) + "\n")
    return 1 if args.fail_on_diff and result.diff.differences else 0


def namespace_hint(options: Any) -> str:
    config = options.work_dir / "worker.toml"
    return f"sluicegate --config {config} worker --namespace {options.namespace}"


# -- trace ----------------------------------------------------------------------------------


def cmd_trace(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from streams.cli import effective_config
    from streams.dlq import iso as iso_ms
    from streams.dlq import parse_time
    from streams.replay.trace import trace_request

    config = effective_config(args.config)
    prefix = args.namespace or config.kafka.topic_prefix
    now = _now_ms()
    since = parse_time(args.since, now) if args.since else 0
    until = parse_time(args.until, now) if args.until else None
    trace = trace_request(config.kafka.bootstrap_servers, prefix, args.request_id, since, until)
    events = trace.sorted_events()
    if args.json:
        payload = {
            "request_id": args.request_id,
            "ids": sorted(trace.ids),
            "events": [vars(e) for e in events],
            "records": trace.records,
        }
        print(json.dumps(payload, indent=2, default=str))
        return 0 if events else 1
    if not events:
        print(f"sluicegate: nothing in {prefix}.* mentions request {args.request_id}")
        return 1
    table = Table(title=f"Request {args.request_id}", title_justify="left")
    for column in ("time", "event", "request id", "topic", "what"):
        table.add_column(column, overflow="fold")
    for e in events:
        shown = "  " + e.summary if e.kind == "decision" else e.summary
        table.add_row(iso_ms(e.at_ms), e.kind, e.request_id, e.topic, shown)
    Console().print(table)
    return 0


# -- registration ---------------------------------------------------------------------------


def _range_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--from", dest="from_", metavar="TIME", required=True, help="ISO 8601 or duration ago"
    )
    p.add_argument("--to", metavar="TIME", help="ISO 8601 or duration ago (default: now)")
    p.add_argument("--tenant", action="append", help="repeatable")
    p.add_argument("--feature", action="append", help="repeatable")
    p.add_argument("--priority", action="append", choices=PRIORITIES, help="repeatable")
    p.add_argument("--status", action="append", choices=STATUSES, help="repeatable")
    p.add_argument(
        "--grace",
        type=parse_duration,
        default=600_000,
        help="read answers this long after --to (default 10m)",
    )


def add_commands(sub: Any) -> None:
    replay = sub.add_parser("replay", help="audit, what-if and re-run recorded traffic")
    commands = replay.add_subparsers(dest="replay_command", required=True)

    p = commands.add_parser("report", help="audit report of a time range")
    _range_arguments(p)
    p.add_argument("--out", help="also write Markdown, JSON, CSV and HTML into this directory")
    p.add_argument("--top", type=int, default=10, help="most expensive requests to list")
    p.add_argument("--limit", type=int, default=20, help="rows per long terminal table")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_report)

    p = commands.add_parser("whatif", help="recorded traffic under another configuration")
    _range_arguments(p)
    p.add_argument("--config-alt", required=True, help="the alternative sluicegate.toml")
    p.add_argument("--changes", type=int, default=20, help="changed requests to list")
    p.add_argument("--fidelity", action="store_true", help="also replay under the live config")
    p.add_argument("--out", help="write whatif.json into this directory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_whatif)

    p = commands.add_parser("run", help="re-run recorded traffic in an isolated namespace")
    _range_arguments(p)
    p.add_argument("--namespace", help="replay topic prefix (default: <prefix>-replay)")
    p.add_argument("--start-worker", action="store_true", help="start the namespace's worker")
    p.add_argument("--start-simulator", action="store_true", help="start a provider simulator")
    p.add_argument("--provider", choices=("sim", "config"), default="sim")
    p.add_argument("--sim-url", default="http://127.0.0.1:8900", help="the simulator's URL")
    p.add_argument("--pace", action="store_true", help="keep the recorded gaps")
    p.add_argument("--speed", type=float, default=1.0, help="with --pace: time compression")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for answers")
    p.add_argument("--work-dir", help="worker config, data and logs (default .run/replay-NS)")
    p.add_argument("--changes", type=int, default=20, help="differences to list")
    p.add_argument("--fail-on-diff", action="store_true", help="exit 1 on any difference")
    p.add_argument("--out", help="write replay-diff.json into this directory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("trace", help="the whole life of one request")
    p.add_argument("request_id")
    p.add_argument("--since", help="ISO 8601 time or duration ago (default: all retained)")
    p.add_argument("--until", help="ISO 8601 time or duration ago")
    p.add_argument("--namespace", help="another topic prefix, e.g. a replay namespace")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_trace)
