"""Turn a benchmark run (its JSON) into docs/benchmarks.md, PNG charts and a console table.

The JSON is the record; the markdown and the charts are generated from it alone, so
``python -m tests.bench.report docs/benchmarks/<date>.json`` regenerates them. Charts:
latency percentiles per scenario (log scale) and throughput over time (one panel per
timeline a scenario reported).
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table as RichTable

from tests.bench.framework import Check

PERCENTILES = ("p50", "p90", "p99", "p99.9")


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return "n/a" if math.isnan(value) else "∞"
        text = f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    else:
        text = str(value)
    return f"{text} {unit}".strip() if unit else text


def _range(fig: dict[str, Any]) -> str:
    if fig.get("low") is None or fig.get("high") is None:
        return ""
    return f"{fmt(fig['low'])}-{fmt(fig['high'])}"


def error_line(trace: str) -> str:
    """The exception line of a traceback (not the worker log tail appended to it)."""
    lines = trace.split("\n--- worker", 1)[0].strip().splitlines()
    exception = re.compile(r"^[\w.]+(Error|Exception|Timeout|Mismatch|Failure)\w*:")
    found = [x for x in lines if exception.match(x)]
    return (found[-1] if found else lines[-1] if lines else "")[:120]


def summary_rows(run: dict[str, Any], name: str = "title") -> list[list[str]]:
    rows = []
    for sc in run["scenarios"]:
        res = sc.get("result") or {}
        if sc.get("error"):
            error = error_line(sc["error"])
            rows.append([sc[name], "failed", error, "", "", "", ""])
            continue
        if sc.get("failures"):
            first = error_line(sc["failures"][0])
            rows.append([sc[name], "failed once, retried", first, "", "", "", ""])
        if res.get("skipped"):
            rows.append([sc[name], "skipped", res["skipped"], "", "", "", ""])
            continue
        for fig in res.get("figures", []):
            rows.append(
                [
                    sc[name],
                    fig["label"],
                    fmt(fig["value"], fig["unit"]),
                    _range(fig),
                    fmt(fig.get("worker_cpu_us")),
                    fmt(fig.get("generator_cpu_pct")),
                    fig.get("detail", ""),
                ]
            )
    return rows


SUMMARY_COLUMNS = [
    "scenario",
    "figure",
    "value",
    "min-max",
    "worker CPU µs/req",
    "generator CPU %",
    "note",
]


def all_checks(run: dict[str, Any]) -> list[Check]:
    return [
        Check(**c) for sc in run["scenarios"] for c in (sc.get("result") or {}).get("checks", [])
    ]


def _bound(check: Check) -> str:
    return f"{'<=' if check.lower_is_better else '>='} {fmt(check.limit, check.unit)}"


def print_summary(run: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = RichTable(title=f"Sluicegate benchmark ({run['mode']}, {run['date']})")
    for col in SUMMARY_COLUMNS:
        table.add_column(col, overflow="fold")
    last = None
    for row in summary_rows(run, "key"):
        table.add_row(row[0] if row[0] != last else "", *row[1:])
        last = row[0]
    console.print(table)
    targets = RichTable(title="Targets")
    for col in ("target", "measured", "limit", "verdict"):
        targets.add_column(col, overflow="fold")
    for c in all_checks(run):
        style = {True: "green", False: "red", None: "yellow"}[c.met]
        targets.add_row(c.name, fmt(c.value, c.unit), _bound(c), f"[{style}]{c.verdict()}")
    console.print(targets)


# -- charts ---------------------------------------------------------------------------------


def write_charts(run: dict[str, Any], out_dir: Path, stem: str) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: dict[str, str] = {}
    groups = [
        (sc["title"], sc["result"]["latency"])
        for sc in run["scenarios"]
        if sc.get("result") and sc["result"].get("latency")
    ]
    if groups:
        fig, axes = plt.subplots(len(groups), 1, figsize=(9, 3.2 * len(groups)), squeeze=False)
        for ax, (title, latency) in zip(axes[:, 0], groups, strict=True):
            for label, stats in latency.items():
                ys = [stats.get(p) for p in PERCENTILES]
                if all(y is not None for y in ys):
                    ax.plot(PERCENTILES, ys, marker="o", label=label)
            ax.set_yscale("log")
            ax.set_ylabel("ms (log)")
            ax.set_title(title, fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
        fig.suptitle(f"Latency percentiles from the intended send time ({run['date']})")
        fig.tight_layout()
        name = f"{stem}-latency.png"
        fig.savefig(out_dir / name, dpi=90)
        plt.close(fig)
        written["latency"] = name

    timelines = [
        (sc["title"], tl)
        for sc in run["scenarios"]
        if sc.get("result")
        for tl in sc["result"].get("timelines", [])
    ]
    if timelines:
        fig, axes = plt.subplots(
            len(timelines), 1, figsize=(9, 2.8 * len(timelines)), squeeze=False
        )
        for ax, (_title, tl) in zip(axes[:, 0], timelines, strict=True):
            for label, ys in tl["series"].items():
                # Each value stands for the interval that starts at its time stamp.
                ax.step(tl["t"][: len(ys)], ys, where="post", label=label, linewidth=1.2)
            for x, text in tl.get("markers", []):
                ax.axvline(x, color="grey", linestyle="--", linewidth=0.8)
                ax.annotate(text, (x, 0), xytext=(3, 3), textcoords="offset points", fontsize=7)
            ax.set_title(tl["title"], fontsize=10)
            ax.set_xlabel("s")
            ax.set_ylabel(tl.get("unit", ""))
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"Throughput and backlog over time ({run['date']})")
        fig.tight_layout()
        name = f"{stem}-throughput.png"
        fig.savefig(out_dir / name, dpi=90)
        plt.close(fig)
        written["throughput"] = name
    return written


# -- markdown -------------------------------------------------------------------------------


def md_table(columns: list[str], rows: list[list[str]]) -> str:
    def esc(cell: Any) -> str:
        return str(cell).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(c) for c in columns) + " |"]
    lines.append("|" + "|".join(" --- " for _ in columns) + "|")
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _scenario(run: dict[str, Any], key: str) -> dict[str, Any]:
    for sc in run["scenarios"]:
        if sc["key"] == key and sc.get("result") and not sc.get("error"):
            return dict(sc["result"])
    return {}


def _figure(result: dict[str, Any], starts: str) -> dict[str, Any] | None:
    return next((f for f in result.get("figures", []) if f["label"].startswith(starts)), None)


def limits_section(run: dict[str, Any]) -> list[str]:
    """What limits throughput, and why targets were missed, from the run's own numbers."""
    out: list[str] = []
    sat = _scenario(run, "saturation")
    util = _figure(sat, "worker CPU use while saturated")
    cpu = _figure(sat, "worker CPU per cache-miss")
    rps = _figure(sat, "throughput at saturation")
    if util and cpu and rps:
        ceiling = 1e6 / cpu["value"] if cpu["value"] else float("nan")
        m = run["machine"]
        if util["value"] >= 85:
            out.append(
                f"- While draining a backlog the worker used **{fmt(util['value'])}% of one "
                f"core** at {fmt(cpu['value'])} µs of CPU per request: it is CPU-bound. A "
                "worker is one Python process with one event loop, so one core gives at most "
                f"1 s / {fmt(cpu['value'])} µs = {fmt(ceiling)} req/s; it sustained "
                f"{fmt(rps['value'])} req/s with all work done."
            )
        else:
            out.append(
                f"- While draining a backlog the worker used only **{fmt(util['value'])}% of "
                f"one core**: the machine was busy (load average {m['load_average'][0]} at "
                f"the start, {(run.get('load_average_end') or ['?'])[0]} at the end, on "
                f"{m['nproc']} cores), so part of the time it waited for a CPU. CPU time per "
                f"request does not depend on that: at {fmt(cpu['value'])} µs, one core gives "
                f"at most 1 s / {fmt(cpu['value'])} µs = {fmt(ceiling)} req/s (it sustained "
                f"{fmt(rps['value'])} req/s here)."
            )
    prof = sat.get("data", {}).get("profile")
    if prof and prof.get("samples"):
        acts = ", ".join(f"{name} {pct}%" for name, pct in prof["by_component"][:6])
        pkgs = ", ".join(f"{name} {pct}%" for name, pct in prof["by_package"][:6])
        cross = ", ".join(f"{name} {pct}%" for name, pct in prof.get("cross_cutting", []))
        out.append(
            f"- py-spy on the saturated worker ({prof['samples']} samples), by component: "
            f"{acts}. Self time by package: {pkgs}. Cross-cutting: {cross}. "
            "The tables under (a) list the hottest functions."
        )
    lat = _scenario(run, "added-latency")
    for table in lat.get("tables", []):
        if table["title"].startswith("Where the time goes"):
            for row in table["rows"]:
                if row[0] == "50%":
                    out.append(
                        f"- At 50% load the end-to-end p50 through Kafka is {row[1]} ms, of "
                        f"which the worker's own `total_ms` (request created -> response "
                        f"written) is {row[2]} ms; delivering the response (producer, broker, "
                        f"the generator's fetch) is the remaining {row[3]} ms."
                    )
    prof50 = lat.get("data", {}).get("profile_50pct")
    if prof50 and prof50.get("samples"):
        acts = ", ".join(f"{name} {pct}%" for name, pct in prof50["by_component"][:5])
        cross = ", ".join(f"{name} {pct}%" for name, pct in prof50.get("cross_cutting", []))
        out.append(
            f"- py-spy on the worker at 50% load ({prof50['samples']} samples): {acts}. "
            f"Cross-cutting: {cross}. With few requests per Kafka round trip, the fixed cost "
            "of each fetch, produce and commit is shared by few requests, so CPU per request "
            "is higher than at saturation and the event loop is busy with Kafka client work."
        )
    kill = _scenario(run, "worker-kill")
    for table in kill.get("tables", []):
        if table["title"] == "Worker kill" and table["rows"]:
            row = table["rows"][0]
            out.append(
                f"- After the SIGKILL (at {row[2]} s) the survivor owned every partition at "
                f"{row[3]} s: the group waits for the session timeout (10 s, "
                "`broker_session_timeout` in streams/app.py) before it rebalances, which "
                "sets a floor under the recovery time."
            )
    return out


def write_markdown(run: dict[str, Any], path: Path, charts: dict[str, str], stem: str) -> None:
    rel = "benchmarks"
    m = run["machine"]
    lines = [
        "# Sluicegate benchmarks",
        "",
        f"_Generated by `{run['command']}` on {run['date']} ({run['mode']} mode, "
        f"{fmt(run['duration_s'] / 60)} min); do not edit: rerun to update. Raw numbers: "
        f"[{rel}/{stem}.json]({rel}/{stem}.json)._",
        "",
        "## Machine",
        "",
        md_table(
            [
                "nproc",
                "memory",
                "CPU",
                "kernel",
                "Python",
                "Kafka",
                "librdkafka",
                "faust",
                "commit",
                "load avg start / end",
            ],
            [
                [
                    m["nproc"],
                    m["memory"],
                    m["cpu_model"],
                    m["kernel"],
                    m["python"],
                    m["kafka"],
                    m["librdkafka"],
                    m["faust"],
                    m["git_commit"],
                    f"{m['load_average']} / {run.get('load_average_end')}",
                ]
            ],
        ),
        "",
        "The machine is shared with other work and has few cores, so absolute numbers are "
        "noisy; comparisons are ratios within one run (interleaved rounds, median with "
        "min-max), and CPU time per request is reported next to throughput.",
        "",
        "## Targets",
        "",
    ]
    checks = all_checks(run)
    lines.append(
        md_table(
            ["target", "measured", "limit", "verdict"],
            [[c.name, fmt(c.value, c.unit), _bound(c), c.verdict()] for c in checks],
        )
    )
    lines += ["", "## What limits throughput and latency", ""]
    lines += limits_section(run) or ["(no saturation data in this run)"]
    lines += ["", "## Summary", "", md_table(SUMMARY_COLUMNS, summary_rows(run)), ""]
    if run.get("incidents"):
        lines += ["## Incidents during the run", ""]
        for incident in run["incidents"]:
            first, _, rest = incident.partition("\n")
            lines += [f"- {first}", ""]
            if rest:
                lines += ["```", rest.strip()[-1500:], "```", ""]
    if charts:
        lines += ["## Charts", ""]
        for kind, name in charts.items():
            lines += [f"![{kind}]({rel}/{name})", ""]
    lines += [
        "## Method",
        "",
        "- Open-loop load: requests are sent at fixed intended times whatever the system "
        "does, and latency is measured from the intended send time to the answer (no "
        "coordinated omission). Histograms are HDR (1 µs to 10 min, 3 significant digits).",
        "- Requests are Avro in the Confluent wire format (`schemas/registry.py`), keyed by "
        "tenant (32 tenants), published with confluent-kafka to "
        "`<prefix>.requests.<priority>`; answers are read from `<prefix>.responses`.",
        "- Cache-miss path: temperature 1.0 and `cache_mode=bypass`; the simulator answers "
        "with zero latency, so the figures are the gateway's own cost.",
        "- Worker and simulator CPU come from /proc/<pid>/stat before and after each phase; "
        "a phase ends when the worker is quiet again (its follow-up work for the answered "
        "requests, such as usage aggregation, is counted). The load generator's own CPU "
        "(all its threads) is reported as % of one core.",
        "- Workers are real processes: `python -m streams.cli --config <generated toml> "
        "worker --web-port P --data-dir D`, 8 partitions per topic.",
        "",
        "## Scenarios",
        "",
    ]
    for sc in run["scenarios"]:
        lines += [f"### {sc['title']}", ""]
        if sc.get("error"):
            lines += ["Failed:", "", "```", sc["error"].strip()[-2000:], "```", ""]
            continue
        res = sc["result"]
        if sc.get("failures"):
            lines += [
                "Failed once and passed on a retry with fresh workers; the first failure:",
                "",
                "```",
                sc["failures"][0].strip()[-1500:],
                "```",
                "",
            ]
        if res.get("skipped"):
            lines += [f"Skipped: {res['skipped']}.", ""]
        for note in res.get("notes", []):
            lines += [note, ""]
        for table in res.get("tables", []):
            lines += [f"**{table['title']}**", "", md_table(table["columns"], table["rows"]), ""]
        lines += [f"_{fmt(sc['seconds'])} s, `{sc['module']}`_", ""]
    lines += [
        "## Running it",
        "",
        "`make bench` (full, about 10-15 minutes) or `make bench-quick` (under 3 minutes). "
        "Either starts a broker on port 29092 (unless `KAFKA_BOOTSTRAP_SERVERS` is set), the "
        "simulator and the workers, and stops them afterwards. "
        "`scripts/bench.sh quick --only saturation,added-latency` runs some scenarios. A new "
        "scenario is one decorated function in a `tests/bench/scenario_<topic>.py` module "
        "(see tests/bench/framework.py).",
        "",
    ]
    path.write_text("\n".join(lines))


def write_all(run: dict[str, Any], docs: Path, stem: str) -> dict[str, Path]:
    out_dir = docs / "benchmarks"
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(clean(run), indent=1, default=str, allow_nan=False))
    charts = write_charts(run, out_dir, stem)
    md = docs / "benchmarks.md"
    write_markdown(run, md, charts, stem)
    return {"json": json_path, "markdown": md, **{k: out_dir / v for k, v in charts.items()}}


def clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null, tuples lists."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


if __name__ == "__main__":
    source = Path(sys.argv[1])
    data = json.loads(source.read_text())
    docs_dir = source.parent.parent
    stem = source.stem
    charts = write_charts(data, source.parent, stem)
    write_markdown(data, docs_dir / "benchmarks.md", charts, stem)
    print(f"wrote {docs_dir / 'benchmarks.md'}")
