"""Inline SVG charts for the HTML report: a line chart and a stacked bar chart, no dependencies.

Each function returns one ``<svg>`` element as text: a plot area with a y axis of "nice"
ticks (1, 2, 2.5 or 5 times a power of ten), up to six time labels on the x axis, and a
legend on the right. Text is XML-escaped. Cost: O(series x points).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from html import escape

WIDTH, HEIGHT = 760, 280
LEFT, RIGHT, TOP, BOTTOM = 70, 170, 34, 40
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
STATUS_COLOURS = {
    "ok": "#2ca02c",
    "cached": "#1f77b4",
    "degraded": "#ff7f0e",
    "rejected": "#d62728",
    "shed": "#9467bd",
    "failed": "#8c564b",
    "unanswered": "#7f7f7f",
}
MAX_SERIES = 10  # more series are summed into "other"


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Ticks from 0 to at least ``top`` with a round step."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    n = math.ceil(top / step - 1e-9)
    return [i * step for i in range(n + 1)]


def time_label(ms: int, span_ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    if span_ms <= 120_000:
        return moment.strftime("%H:%M:%S")
    if span_ms <= 2 * 86_400_000:
        return moment.strftime("%H:%M")
    return moment.strftime("%m-%d %H:%M")


def top_series(series: Mapping[str, Sequence[float | None]]) -> dict[str, list[float | None]]:
    """At most MAX_SERIES series: the largest by total, the rest summed into "other"."""
    ranked = sorted(series.items(), key=lambda kv: (-sum(v or 0 for v in kv[1]), kv[0]))
    kept = {name: list(values) for name, values in ranked[: MAX_SERIES - 1]}
    rest = ranked[MAX_SERIES - 1 :]
    if len(rest) == 1:
        kept[rest[0][0]] = list(rest[0][1])
    elif rest:
        columns = zip(*(values for _, values in rest), strict=True)
        kept["other"] = [sum(v or 0 for v in column) for column in columns]
    return kept


def _frame(
    title: str, times: Sequence[int], top: float, fmt: Callable[[float], str]
) -> tuple[list[str], Callable[[int], float], Callable[[float], float], float]:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    ticks = nice_ticks(top)
    y_max = ticks[-1] or 1.0
    n = max(1, len(times))

    def x(i: int) -> float:
        return LEFT + plot_w * (i + 0.5) / n

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / y_max)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
        f'<text x="{LEFT}" y="18" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    for t in ticks:
        parts.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(t):.1f}" y2="{y(t):.1f}" '
            'stroke="#ddd"/>'
            f'<text x="{LEFT - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{escape(fmt(t))}</text>'
        )
    span = (times[-1] - times[0]) if len(times) > 1 else 0
    step = max(1, math.ceil(len(times) / 6))
    for i in range(0, len(times), step):
        parts.append(
            f'<text x="{x(i):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
            f"{escape(time_label(times[i], span))}</text>"
        )
    parts.append(
        f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#333"/>'
        f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{TOP + plot_h}" y2="{TOP + plot_h}" '
        'stroke="#333"/>'
    )
    return parts, x, y, plot_w / n


def _legend(names: Sequence[str], colour: Callable[[int, str], str]) -> list[str]:
    out = []
    for i, name in enumerate(names):
        ly = TOP + 14 * i
        out.append(
            f'<rect x="{WIDTH - RIGHT + 12}" y="{ly}" width="10" height="10" '
            f'fill="{colour(i, name)}"/>'
            f'<text x="{WIDTH - RIGHT + 27}" y="{ly + 9}">{escape(name[:24])}</text>'
        )
    return out


def line_chart(
    title: str,
    times: Sequence[int],
    series: Mapping[str, Sequence[float | None]],
    fmt: Callable[[float], str] = lambda v: f"{v:g}",
) -> str:
    """One line per series over the bucket ``times``; ``None`` (no data) leaves a gap."""
    shown = top_series(series)
    top = max((v for values in shown.values() for v in values if v is not None), default=0.0)
    parts, x, y, _ = _frame(title, times, top, fmt)
    for i, (name, values) in enumerate(shown.items()):
        colour = PALETTE[i % len(PALETTE)]
        for run in _runs(values):
            points = " ".join(f"{x(j):.1f},{y(v):.1f}" for j, v in run)
            parts.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}">'
                f"<title>{escape(name)}</title></polyline>"
            )
            if len(run) == 1:  # a lone point would be invisible as a line
                j, v = run[0]
                parts.append(f'<circle cx="{x(j):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"/>')
    parts += _legend(list(shown), lambda i, _: PALETTE[i % len(PALETTE)])
    parts.append("</svg>")
    return "".join(parts)


def _runs(values: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    """Consecutive (index, value) stretches without a None."""
    runs: list[list[tuple[int, float]]] = [[]]
    for j, v in enumerate(values):
        if v is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((j, v))
    return [run for run in runs if run]


def stacked_bars(
    title: str,
    times: Sequence[int],
    series: Mapping[str, Sequence[int]],
    colours: Mapping[str, str] = STATUS_COLOURS,
) -> str:
    """Per bucket, one bar stacked from the series in order (e.g. the status mix)."""
    names = list(series)
    totals = [sum(series[n][i] for n in names) for i in range(len(times))]
    parts, x, y, slot = _frame(title, times, max(totals, default=0), lambda v: f"{v:g}")
    width = max(1.0, slot * 0.8)

    def colour(i: int, name: str) -> str:
        return colours.get(name, PALETTE[i % len(PALETTE)])

    for i in range(len(times)):
        base = 0
        for k, name in enumerate(names):
            value = series[name][i]
            if not value:
                continue
            top_y, bottom_y = y(base + value), y(base)
            parts.append(
                f'<rect x="{x(i) - width / 2:.1f}" y="{top_y:.1f}" width="{width:.1f}" '
                f'height="{bottom_y - top_y:.1f}" fill="{colour(k, name)}">'
                f"<title>{escape(name)}: {value}</title></rect>"
            )
            base += value
    parts += _legend(names, colour)
    parts.append("</svg>")
    return "".join(parts)
