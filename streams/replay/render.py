"""The audit report as a terminal table, Markdown, JSON, CSV and a self-contained HTML page.

All formats show the same sections, built once by ``sections()`` as (title, columns, rows)
of strings; each format only lays them out. ``write_outputs`` writes, into one directory:
``report.md``, ``report.json`` (every figure, machine-readable), ``requests.csv`` (one row
per request, the join itself), ``spend.csv`` (every breakdown row) and ``report.html``
(the tables plus inline SVG charts: spend over time per feature, status mix, prompt size
per feature). Money is integer micro-dollars, shown as dollars with six decimals.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from streams.replay import charts
from streams.replay.recording import Entry, iso
from streams.replay.report import AuditReport, RequestRow

SPARKS = "▁▂▃▄▅▆▇█"
DIMENSIONS = ("tenant", "feature", "model", "provider")


def usd(micros: int) -> str:
    """Integer micro-dollars as dollars, exactly: 1234567 -> "$1.234567"."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), 1_000_000)
    return f"{sign}${whole:,}.{frac:06d}"


def sparkline(values: Sequence[float | None]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return ""
    low, high = min(present), max(present)
    scale = (high - low) or 1.0
    return "".join(
        " " if v is None else SPARKS[round((v - low) / scale * (len(SPARKS) - 1))] for v in values
    )


@dataclass
class Section:
    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""


def _request_rows(rows: Iterable[RequestRow]) -> list[list[str]]:
    return [
        [
            r.request_id,
            iso(r.at_ms),
            r.tenant,
            r.feature,
            r.priority,
            r.status,
            r.model or "-",
            usd(r.cost_micros),
            f"{r.prompt_tokens}/{r.completion_tokens}",
            "-" if r.total_ms is None else str(r.total_ms),
        ]
        for r in rows
    ]


REQUEST_COLUMNS = ["request id", "time", "tenant", "feature", "priority", "status", "model"]
REQUEST_COLUMNS += ["cost", "tokens in/out", "total ms"]


def sections(report: AuditReport, limit: int | None = None) -> list[Section]:
    """The report's tables; ``limit`` caps the rows of long listings (None: all)."""

    def cap(rows: list[list[str]]) -> tuple[list[list[str]], str]:
        if limit is None or len(rows) <= limit:
            return rows, ""
        return rows[:limit], f"{len(rows) - limit} more rows in the JSON/CSV output"

    share = f"{report.cache_hit_share:.1%}"
    out = [
        Section(
            "Summary",
            ["figure", "value"],
            [
                ["range", f"{iso(report.from_ms)} .. {iso(report.to_ms)}"],
                ["topics", f"{report.prefix}.*"],
                ["requests", str(report.requests)],
                ["answered", str(report.answered)],
                ["unanswered", str(len(report.unanswered))],
                ["spend", usd(report.total_cost_micros)],
                ["cache savings", usd(report.total_saved_micros)],
                ["answers from cache", f"{sum(report.cache_hits.values())} ({share})"],
                ["duplicate responses (counted once)", str(report.duplicate_responses)],
                ["undecodable request records", str(report.undecodable)],
            ],
        ),
        Section(
            "Status and reason",
            ["status", "reason", "requests", "share"],
            [[s, r or "-", str(n), f"{n / report.requests:.1%}"] for s, r, n in report.by_reason]
            + ([["unanswered", "-", str(len(report.unanswered)), ""]] if report.unanswered else []),
        ),
    ]
    for label in DIMENSIONS:
        rows, note = cap(
            [
                [
                    r.key,
                    str(r.requests),
                    usd(r.cost_micros),
                    usd(r.saved_micros),
                    str(r.prompt_tokens),
                    str(r.completion_tokens),
                ]
                for r in report.spend[label]
            ]
        )
        columns = [label, "requests", "spend", "cache savings", "tokens in", "tokens out"]
        out.append(Section(f"Spend by {label}", columns, rows, note))
    out.append(
        Section(
            "Answers from cache",
            ["kind", "answers", "share of requests"],
            [[k, str(n), f"{n / report.requests:.1%}"] for k, n in report.cache_hits.items()],
        )
    )
    out.append(
        Section(
            "Latency (ms)",
            ["measure", "count", "p50", "p90", "p95", "p99", "max"],
            [
                [name, *(str(v) for v in (s.count, s.p50, s.p90, s.p95, s.p99, s.max))]
                for name, s in report.latency.items()
            ],
        )
    )
    out.append(
        Section(
            "Degradations",
            ["degradation reason", "requests"],
            [[r, str(n)] for r, n in report.degradations],
        )
    )
    out.append(
        Section(
            f"Most expensive requests (top {len(report.top_expensive)})",
            REQUEST_COLUMNS,
            _request_rows(report.top_expensive),
        )
    )
    trend_rows = []
    for feature, points in report.prompt_trends.items():
        present = [p for p in points if p is not None]
        n = sum(p.requests for p in present)
        mean = sum(p.mean_tokens * p.requests for p in present) / n if n else 0.0
        first, last = present[0], present[-1]
        trend_rows.append(
            [
                feature,
                str(n),
                f"{mean:.1f}",
                f"{first.mean_tokens:.1f} -> {last.mean_tokens:.1f}",
                sparkline([p.mean_tokens if p else None for p in points]),
            ]
        )
    out.append(
        Section(
            f"Prompt size per feature (estimated tokens, {report.bucket_ms // 1000} s buckets)",
            ["feature", "requests", "mean", "first -> last bucket", "trend"],
            trend_rows,
        )
    )
    rows, note = cap(_request_rows(report.unanswered))
    out.append(Section("Requests with no response in the range", REQUEST_COLUMNS, rows, note))
    return out


# -- terminal ----------------------------------------------------------------------------------


def print_report(report: AuditReport, console: Any, limit: int = 20) -> None:
    from rich.table import Table

    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {escape_markup(warning)}")
    for section in sections(report, limit):
        if not section.rows:
            continue
        table = Table(title=section.title, title_justify="left", caption=section.note or None)
        for i, column in enumerate(section.columns):
            table.add_column(column, justify="left" if i == 0 else "right", overflow="fold")
        for r in section.rows:
            table.add_row(*r)
        console.print(table)


def escape_markup(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


# -- Markdown ----------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(report: AuditReport) -> str:
    lines = [f"# Audit report: {report.prefix}", ""]
    lines += [f"> **warning:** {w}" for w in report.warnings]
    for section in sections(report):
        lines += ["", f"## {section.title}", ""]
        if not section.rows:
            lines.append("(none)")
            continue
        lines.append("| " + " | ".join(section.columns) + " |")
        lines.append("|" + "---|" * len(section.columns))
        lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in section.rows]
    return "\n".join(lines) + "\n"


# -- HTML --------------------------------------------------------------------------------------

CSS = (
    "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;"
    "margin:0 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
    "th{background:#f3f3f3}td{text-align:right}td:first-child{text-align:left}"
    ".warn{background:#fff3cd;padding:8px;border:1px solid #e0c36a}"
)


def html(report: AuditReport) -> str:
    dollars: dict[str, list[float | None]] = {
        f: [c / 1e6 for c in v] for f, v in report.spend_over_time.items()
    }
    prompt: dict[str, list[float | None]] = {
        f: [p.mean_tokens if p else None for p in points]
        for f, points in report.prompt_trends.items()
    }
    figures = [
        charts.line_chart(
            "Spend over time per feature (USD per bucket)",
            report.buckets,
            dollars,
            lambda v: f"{v:.4g}",
        ),
        charts.stacked_bars("Status mix per bucket", report.buckets, report.status_over_time),
        charts.line_chart(
            "Prompt size per feature (mean estimated tokens)", report.buckets, prompt
        ),
    ]
    body = [f"<h1>Audit report: {escape(report.prefix)}</h1>"]
    body += [f'<p class="warn">{escape(w)}</p>' for w in report.warnings]
    body += [f"<div>{svg}</div>" for svg in figures]
    for section in sections(report):
        body.append(f"<h2>{escape(section.title)}</h2>")
        if not section.rows:
            body.append("<p>(none)</p>")
            continue
        head = "".join(f"<th>{escape(c)}</th>" for c in section.columns)
        rows = "".join(
            "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in section.rows
        )
        body.append(f"<table><tr>{head}</tr>{rows}</table>")
    return (
        '<!doctype html><html><head><meta charset="utf-8">'
        f"<title>Sluicegate audit {escape(report.prefix)}</title><style>{CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


# -- files -------------------------------------------------------------------------------------

ENTRY_COLUMNS = [
    "request_id",
    "original_request_id",
    "time",
    "tenant",
    "feature",
    "priority",
    "model_requested",
    "status",
    "reason",
    "degradation_reason",
    "cache_kind",
    "provider",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "cost_micros",
    "cost_saved_micros",
    "queue_ms",
    "total_ms",
    "prompt_estimate",
    "duplicates",
]


def entry_row(e: Entry) -> list[Any]:
    response = e.response or {}
    return [
        e.request_id,
        e.request.get("original_request_id") or "",
        iso(e.at_ms),
        e.tenant,
        e.feature,
        e.priority,
        e.request.get("model") or "",
        e.status,
        e.reason,
        response.get("degradation_reason") or "",
        e.cache_kind or "",
        e.provider or "",
        (e.model or "").partition("/")[2],
        e.prompt_tokens,
        e.completion_tokens,
        e.cost_micros,
        e.saved_micros,
        response.get("queue_ms", ""),
        response.get("total_ms", ""),
        e.prompt_estimate,
        e.duplicates,
    ]


def write_outputs(report: AuditReport, entries: Iterable[Entry], out: Path) -> list[Path]:
    """Write every format into ``out`` (created); returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        name: out / name
        for name in ("report.md", "report.json", "report.html", "requests.csv", "spend.csv")
    }
    paths["report.md"].write_text(markdown(report))
    paths["report.json"].write_text(json.dumps(report.to_json(), indent=2) + "\n")
    paths["report.html"].write_text(html(report))
    with paths["requests.csv"].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(ENTRY_COLUMNS)
        writer.writerows(entry_row(e) for e in entries)
    with paths["spend.csv"].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dimension", "key", "requests", "cost_micros", "cost_saved_micros"])
        for dimension, rows in report.spend.items():
            writer.writerows(
                [dimension, r.key, r.requests, r.cost_micros, r.saved_micros] for r in rows
            )
    return list(paths.values())
