"""`sluicegate status`: the worker's /status JSON as terminal tables.

``status_tables(status)`` turns the JSON into rich tables (pure: no I/O, so it is unit
tested); ``print_status`` prints them. Tables, each shown only when its data is there:

- worker: uptime, queue fill against capacity, calls in flight, records taken but not yet
  committed (pending acks), paused priorities, the share of provider limits this worker holds;
- priorities: per priority, requests waiting in the scheduler, whether its intake is paused,
  consumer lag (when the status carries ``lag``), and requests shed, by reason;
- models: per provider/model, calls in flight, service time and rate, breaker state, limiter;
- outcomes: terminal responses by status and by reason, and provider calls;
- recent breaker transitions; cache hit rates per tenant;
- anything else the worker reports, flattened, so a new status key is never hidden.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

PRIORITIES = ("critical", "high", "normal", "low")
_SHOWN = {
    "uptime_s",
    "queued",
    "in_flight",
    "pending_acks",
    "paused",
    "counts",
    "scheduler",
    "breakers",
    "breaker_transitions",
    "limiters",
    "provider_calls",
    "limit_share",
    "cache",
    "lag",
}


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i == 0 else "right")
    return table


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _lag_by_priority(lag: Any) -> dict[str, int]:
    """``lag`` keyed by priority or by request topic (``<prefix>.requests.<priority>``)."""
    out: dict[str, int] = {}
    for key, value in _dict(lag).items():
        priority = str(key).rsplit(".", 1)[-1]
        if priority in PRIORITIES and isinstance(value, int | float):
            out[priority] = out.get(priority, 0) + int(value)
    return out


def worker_table(status: Mapping[str, Any]) -> Table:
    sched = _dict(status.get("scheduler"))
    table = _table("worker", "", "")
    capacity = sched.get("capacity")
    queued = status.get("queued", sched.get("queued", 0))
    fill = f" of {capacity} ({float(sched.get('fill', 0)):.0%} full)" if capacity else ""
    paused = status.get("paused", sched.get("paused")) or []
    rows = [
        ("uptime", f"{status.get('uptime_s', 0)} s"),
        ("queued", f"{queued}{fill}"),
        ("calls in flight", status.get("in_flight", 0)),
        ("taken, not yet committed", status.get("pending_acks", "n/a")),
        ("paused intake", ", ".join(paused) or "none"),
        ("admitted / dispatched", f"{sched.get('admitted', 0)} / {sched.get('dispatched', 0)}"),
    ]
    if "limit_share" in status:
        rows.append(("share of provider limits", f"{float(status['limit_share']):.0%}"))
    for name, value in rows:
        table.add_row(name, str(value))
    return table


def priority_table(status: Mapping[str, Any]) -> Table:
    sched = _dict(status.get("scheduler"))
    depth = _dict(sched.get("depth"))
    paused = set(status.get("paused", sched.get("paused")) or [])
    shed = {reason: _dict(by_p) for reason, by_p in _dict(sched.get("shed")).items()}
    lag = _lag_by_priority(status.get("lag"))
    columns = ["priority", "queued", "intake"]
    if lag:
        columns.append("consumer lag")
    columns += [f"shed: {reason}" for reason in sorted(shed)] + ["shed total"]
    table = _table("priorities", *columns)
    for priority in PRIORITIES:
        row = [priority, str(depth.get(priority, 0)), "paused" if priority in paused else "open"]
        if lag:
            row.append(str(lag.get(priority, 0)))
        counts = [int(shed[reason].get(priority, 0)) for reason in sorted(shed)]
        row += [str(n) for n in counts] + [str(sum(counts))]
        table.add_row(*row)
    return table


def model_table(status: Mapping[str, Any]) -> Table | None:
    sched = _dict(status.get("scheduler"))
    in_flight = _dict(sched.get("in_flight"))
    service_ms = _dict(sched.get("service_ms"))
    rate = _dict(sched.get("service_rate_per_s"))
    breakers = _dict(status.get("breakers"))
    limiters = _dict(status.get("limiters"))
    models = sorted(set(in_flight) | set(service_ms) | set(breakers) | set(limiters))
    if not models:
        return None
    table = _table(
        "models", "provider/model", "in flight", "service ms", "req/s", "breaker", "limiter"
    )
    for model in models:
        limiter = _dict(limiters.get(model))
        limits = [
            f"{name} {limiter[key]}"
            for name, key in (("rpm", "effective_rpm"), ("tpm", "effective_tpm"))
            if limiter.get(key)
        ]
        if limiter.get("blocked_until_ms"):
            limits.append(f"blocked until {limiter['blocked_until_ms']}")
        table.add_row(
            model,
            str(in_flight.get(model, 0)),
            _num(service_ms.get(model)),
            _num(rate.get(model)),
            str(breakers.get(model, "-")),
            ", ".join(limits) or "-",
        )
    return table


def outcome_table(status: Mapping[str, Any]) -> Table | None:
    counts = _dict(status.get("counts"))
    calls = _dict(status.get("provider_calls"))
    if not counts and not calls:
        return None
    table = _table("outcomes", "", "count")
    for key in sorted(counts):
        table.add_row(key.replace(".", ": ", 1), str(counts[key]))
    for key in ("calls", "first_attempts", "retries"):
        if key in calls:
            table.add_row(f"provider {key.replace('_', ' ')}", str(calls[key]))
    for error, n in sorted(_dict(calls.get("errors")).items()):
        table.add_row(f"provider error: {error}", str(n))
    return table


def transition_table(status: Mapping[str, Any], last: int = 5) -> Table | None:
    transitions = [t for t in status.get("breaker_transitions") or [] if isinstance(t, Mapping)]
    if not transitions:
        return None
    table = _table("breaker transitions (latest last)", "model", "at (ms)", "from", "to", "why")
    for t in transitions[-last:]:
        table.add_row(*(str(t.get(k, "")) for k in ("model", "at_ms", "from", "to", "reason")))
    return table


def cache_table(status: Mapping[str, Any]) -> Table | None:
    cache = {t: _dict(v) for t, v in _dict(status.get("cache")).items()}
    if not cache:
        return None
    table = _table("cache", "tenant", "hits", "misses", "hit rate")
    for tenant, c in sorted(cache.items()):
        rate = float(c.get("hit_rate", 0))
        table.add_row(tenant, str(c.get("hits", 0)), str(c.get("misses", 0)), f"{rate:.0%}")
    return table


def other_table(status: Mapping[str, Any]) -> Table | None:
    rest = {k: v for k, v in status.items() if k not in _SHOWN}
    if not rest:
        return None
    table = _table("other", "key", "value")
    for key, value in sorted(_flatten(rest).items()):
        table.add_row(key, value)
    return table


def status_tables(status: Mapping[str, Any]) -> list[Table]:
    """Every table for ``status`` (the worker's /status JSON), in display order."""
    tables = [
        worker_table(status),
        priority_table(status),
        model_table(status),
        outcome_table(status),
        transition_table(status),
        cache_table(status),
        other_table(status),
    ]
    return [t for t in tables if t is not None]


def print_status(status: Mapping[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    for table in status_tables(status):
        console.print(table)


def _num(value: Any) -> str:
    if isinstance(value, int | float):
        return f"{value:g}"
    return "-"


def _flatten(value: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(value, Mapping) and value:
        out: dict[str, str] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list):
        return {prefix: ", ".join(str(v) for v in value)}
    return {prefix: str(value)}
