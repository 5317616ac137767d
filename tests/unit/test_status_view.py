"""`sluicegate status` tables, rendered from a worker's /status JSON (no worker needed)."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from streams.status_view import print_status, status_tables

STATUS: dict[str, Any] = {
    "uptime_s": 12.5,
    "queued": 700,
    "in_flight": 20,
    "pending_acks": 731,
    "paused": ["normal", "low"],
    "counts": {"received": 4100, "status.ok": 3300, "status.shed": 11, "reason.overloaded": 7},
    "scheduler": {
        "capacity": 1000,
        "queued": 700,
        "fill": 0.7,
        "depth": {"critical": 3, "high": 240, "normal": 81, "low": 376},
        "in_flight": {"sim/sim-large": 20},
        "service_ms": {"sim/sim-large": 213.8},
        "service_rate_per_s": {"sim/sim-large": 93.554},
        "shed": {"deadline_expired": {"low": 4}, "overloaded": {"low": 6, "normal": 1}},
        "paused": ["normal", "low"],
        "admitted": 4100,
        "dispatched": 3400,
    },
    "cache": {"t1": {"hits": 3, "misses": 1, "hit_rate": 0.75}},
    "breakers": {"sim/sim-large": "closed", "sim/sim-small": "open"},
    "breaker_transitions": [
        {"model": "sim/sim-small", "at_ms": 1, "from": "closed", "to": "open", "reason": "5/10"}
    ],
    "limiters": {
        "sim/sim-large": {"effective_rpm": 600, "effective_tpm": None, "blocked_until_ms": 0}
    },
    "provider_calls": {"calls": 3400, "first_attempts": 3390, "retries": 10, "errors": {}},
    "limit_share": 0.5,
    "lag": {"sg.requests.critical": 0, "sg.requests.high": 2, "sg.requests.low": 4200},
    "dashboard": {"url": "/dashboard"},
}


def render(status: dict[str, Any]) -> str:
    console = Console(record=True, width=200, color_system=None)
    print_status(status, console)
    return console.export_text()


def row(text: str, first_cell: str) -> list[str]:
    """The cells of the table row starting with ``first_cell``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").strip("│ ").split("│")]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{text}")


def test_priorities_show_depth_pause_lag_and_shed_counts_by_reason() -> None:
    text = render(STATUS)
    header = row(text, "priority")
    assert header[1:] == [
        "queued",
        "intake",
        "consumer lag",
        "shed: deadline_expired",
        "shed: overloaded",
        "shed total",
    ]
    assert row(text, "critical")[1:] == ["3", "open", "0", "0", "0", "0"]
    assert row(text, "normal")[1:] == ["81", "paused", "0", "0", "1", "1"]
    assert row(text, "low")[1:] == ["376", "paused", "4200", "4", "6", "10"]


def test_worker_summary_shows_fill_pending_acks_and_paused_priorities() -> None:
    text = render(STATUS)
    assert row(text, "queued")[1] == "700 of 1000 (70% full)"
    assert row(text, "taken, not yet committed")[1] == "731"
    assert row(text, "paused intake")[1] == "normal, low"
    assert row(text, "share of provider limits")[1] == "50%"


def test_models_show_in_flight_service_time_breaker_and_limiter() -> None:
    text = render(STATUS)
    assert row(text, "sim/sim-large")[1:] == ["20", "213.8", "93.554", "closed", "rpm 600"]
    assert row(text, "sim/sim-small")[1:] == ["0", "-", "-", "open", "-"]


def test_unknown_keys_are_shown_flattened() -> None:
    assert row(render(STATUS), "dashboard.url")[1] == "/dashboard"


@pytest.mark.parametrize(
    ("status", "titles"),
    [
        ({}, ["worker", "priorities"]),
        ({"queued": 0, "scheduler": {"depth": {}}}, ["worker", "priorities"]),
        (STATUS, ["worker", "priorities", "models", "outcomes", "breaker", "cache", "other"]),
    ],
)
def test_tables_appear_only_when_their_data_is_there(
    status: dict[str, Any], titles: list[str]
) -> None:
    shown = [str(t.title).split()[0] for t in status_tables(status)]
    assert shown == titles


def test_without_lag_there_is_no_lag_column() -> None:
    status = {k: v for k, v in STATUS.items() if k != "lag"}
    assert "consumer lag" not in row(render(status), "priority")
