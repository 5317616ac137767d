"""The audit report's numbers, and its terminal, Markdown, JSON, CSV and HTML forms."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from streams.policies.verdict import Reason, Status
from streams.records import Outcome, response_record, usage_record
from streams.replay import charts
from streams.replay.recording import Entry, Recording
from streams.replay.render import markdown, print_report, sparkline, usd, write_outputs
from streams.replay.report import bucket_size, build_report, percentile

T0 = 1_750_000_000_000  # aligned to the minute


def make(
    i: int,
    *,
    tenant: str = "t1",
    feature: str = "search",
    status: Status = Status.OK,
    reason: Reason = Reason.NONE,
    cost: int = 0,
    saved: int = 0,
    total_ms: int = 100,
    at: int = T0,
    answered: bool = True,
    model: str | None = "sim-large",
    cache_kind: str | None = None,
    degradation: str | None = None,
    prompt_chars: int = 40,
) -> Entry:
    request = {
        "request_id": f"r{i}",
        "tenant": tenant,
        "feature": feature,
        "priority": "normal",
        "created_at": at,
        "model": "chat",
    }
    entry = Entry(request, "sg.requests.normal", 0, i, at, prompt_chars // 4)
    if answered:
        outcome = Outcome(
            status,
            reason,
            content="x",
            model=model,
            provider="sim" if model else None,
            prompt_tokens=10,
            completion_tokens=5,
            cost_micros=cost,
            cost_saved_micros=saved,
            cache_kind=cache_kind,
            degradation_reason=degradation,
        )
        done = at + total_ms
        entry.response = response_record(request, outcome, queue_ms=total_ms // 2, now_ms=done)
        entry.usage = usage_record(request, outcome, now_ms=done)
    return entry


def recording(entries: list[Entry], span_ms: int = 600_000) -> Recording:
    return Recording("sg", T0, T0 + span_ms, entries, warnings=["old data gone"])


MIX = [
    make(1, cost=1000, total_ms=100),
    make(2, cost=3000, total_ms=300, tenant="t2", feature="chat", at=T0 + 400_000),
    make(3, status=Status.CACHED, saved=1000, total_ms=5, cache_kind="exact", model="sim-large"),
    make(4, status=Status.REJECTED, reason=Reason.BUDGET_EXCEEDED, model=None, total_ms=1),
    make(5, status=Status.REJECTED, reason=Reason.BUDGET_EXCEEDED, model=None, total_ms=1),
    make(6, status=Status.SHED, reason=Reason.OVERLOADED, model=None, total_ms=2),
    make(7, status=Status.DEGRADED, cost=200, model="sim-small", degradation="budget_exceeded"),
    make(8, answered=False, tenant="t2"),
]


def test_counts_spend_and_cache_savings_add_up() -> None:
    report = build_report(recording(MIX))
    assert report.requests == 8 and report.answered == 7
    assert report.by_status == {
        "ok": 2,
        "cached": 1,
        "degraded": 1,
        "rejected": 2,
        "shed": 1,
        "unanswered": 1,
    }
    assert report.by_reason[:2] == [("ok", "", 2), ("rejected", "budget_exceeded", 2)]
    assert ("shed", "overloaded", 1) in report.by_reason
    assert report.total_cost_micros == 4200 and report.total_saved_micros == 1000
    by_tenant = {r.key: (r.requests, r.cost_micros) for r in report.spend["tenant"]}
    assert by_tenant == {"t1": (6, 1200), "t2": (2, 3000)}
    by_model = {r.key: r.cost_micros for r in report.spend["model"]}
    assert by_model["sim/sim-large"] == 4000 and by_model["sim/sim-small"] == 200
    assert report.cache_hits == {"exact": 1}
    assert report.degradations == [("budget_exceeded", 1)]
    assert [r.request_id for r in report.top_expensive] == ["r2", "r1", "r7"]
    assert [r.request_id for r in report.unanswered] == ["r8"]
    assert report.warnings == ["old data gone"]


def test_latency_percentiles_cover_answered_requests_by_nearest_rank() -> None:
    report = build_report(recording(MIX))
    total = report.latency["total_ms"]  # ok, cached, degraded: 100, 300, 5, 100
    assert (total.count, total.p50, total.p99, total.max) == (4, 100, 300, 300)
    assert report.latency["total_ms rejected"].count == 2


def test_time_series_put_spend_and_statuses_in_their_buckets() -> None:
    report = build_report(recording(MIX))
    assert report.bucket_ms == 30_000  # 10 minutes in at most 48 buckets
    late = (T0 + 400_000 - report.buckets[0]) // report.bucket_ms
    assert report.spend_over_time["chat"][late] == 3000
    assert sum(report.spend_over_time["search"]) == 1200
    assert sum(sum(v) for v in report.status_over_time.values()) == 8
    assert report.prompt_trends["chat"][late] is not None


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 50, 0),
        ([7], 99, 7),
        ([1, 2, 3, 4], 50, 2),
        ([1, 2, 3, 4], 75, 3),
        ([1, 2, 3, 4], 76, 4),
    ],
)
def test_percentile_is_nearest_rank(values: list[int], q: float, expected: int) -> None:
    assert percentile(values, q) == expected


@pytest.mark.parametrize(
    ("span_ms", "size"),
    [(10_000, 1000), (600_000, 30_000), (86_400_000, 3_600_000), (30 * 86_400_000, 86_400_000)],
)
def test_bucket_size_is_the_smallest_nice_one(span_ms: int, size: int) -> None:
    assert bucket_size(T0, T0 + span_ms) == size


@pytest.mark.parametrize(
    ("micros", "text"), [(0, "$0.000000"), (1_234_567, "$1.234567"), (-5, "-$0.000005")]
)
def test_money_is_shown_exactly(micros: int, text: str) -> None:
    assert usd(micros) == text


def test_sparkline_spans_low_to_high_and_keeps_gaps() -> None:
    assert sparkline([1.0, None, 8.0]) == "▁ █"


def test_terminal_output_lists_statuses_spend_and_unanswered() -> None:
    console = Console(record=True, width=200)
    print_report(build_report(recording(MIX)), console)
    text = console.export_text()
    for expected in ("budget_exceeded", "$0.004200", "r8", "Spend by provider", "old data gone"):
        assert expected in text


def test_files_hold_the_same_figures(tmp_path: Path) -> None:
    report = build_report(recording(MIX))
    written = write_outputs(report, MIX, tmp_path / "out")
    assert {p.name for p in written} == {
        "report.md",
        "report.json",
        "report.html",
        "requests.csv",
        "spend.csv",
    }
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["total_cost_micros"] == 4200 and data["by_status"]["unanswered"] == 1
    rows = list(csv.DictReader((tmp_path / "out" / "requests.csv").open()))
    assert [r["request_id"] for r in rows] == [f"r{i}" for i in range(1, 9)]
    assert sum(int(r["cost_micros"]) for r in rows) == 4200
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("<svg") == 3 and "Spend over time per feature" in html
    assert "| r8 |" in markdown(report)


def _svg(text: str) -> Any:
    return ET.fromstring(text)


def test_line_chart_is_valid_svg_with_one_line_per_series() -> None:
    svg = _svg(charts.line_chart("a < b", [T0, T0 + 60_000], {"x": [1, 2], "y&z": [0, 3]}))
    lines = svg.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 2


def test_stacked_bars_stack_every_nonzero_value() -> None:
    svg = _svg(charts.stacked_bars("mix", [T0, T0 + 1000], {"ok": [2, 0], "shed": [1, 1]}))
    assert len(svg.findall("{http://www.w3.org/2000/svg}rect")) == 3 + 2  # bars + legend


def test_many_series_are_folded_into_other() -> None:
    series = {f"f{i}": [float(i)] for i in range(15)}
    kept = charts.top_series(series)
    assert len(kept) == charts.MAX_SERIES and kept["other"] == [sum(range(6))]


def test_nice_ticks_reach_the_top_with_round_steps() -> None:
    assert charts.nice_ticks(9.3) == [0, 2, 4, 6, 8, 10]


def test_line_chart_leaves_gaps_where_there_is_no_data() -> None:
    svg = _svg(
        charts.line_chart("prompt", [T0 + i for i in range(5)], {"f": [1, None, 2, 3, None]})
    )
    ns = "{http://www.w3.org/2000/svg}"
    assert len(svg.findall(f"{ns}polyline")) == 2
    assert len(svg.findall(f"{ns}circle")) == 1  # the lone first point stays visible
