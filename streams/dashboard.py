"""The worker's web extras: ``/metrics`` and a live dashboard at ``/dashboard``.

``install_web(app, gateway)`` registers, on the worker's own Faust web server:

- ``/metrics``: Prometheus exposition (streams/metrics.py);
- ``/dashboard``: one page of plain HTML, CSS and JavaScript (streams/dashboard_static/,
  no build step, no CDN) that polls ``/dashboard/data`` every 2 s and draws its charts as
  inline SVG; every number on it carries a stable ``data-metric`` attribute;
- ``/dashboard/data``: one compact JSON document with everything the page shows, built by
  ``dashboard_data`` from ``gateway.status()``, ``gateway.budgets()`` and the metrics
  registry's observed series. Rates are computed by the page from successive documents.

Views only read (RocksDB tables may not be written from a view); the consumer-lag lookup is
shared with ``/metrics`` and made at most once a second.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from streams.config import PRIORITIES
from streams.metrics import (
    MICROS_PER_USD,
    GatewayMetrics,
    counter_values,
    histogram_buckets,
    install_metrics,
    merge_buckets,
    quantile,
)

STATUSES = ("ok", "cached", "degraded", "rejected", "shed", "failed")
STATIC_FILES = {
    "dashboard.js": "application/javascript",
    "dashboard.css": "text/css",
}
TRANSITIONS_SHOWN = 8


def install_web(app: Any, gateway: Any) -> GatewayMetrics:
    """Serve ``/metrics``, ``/dashboard`` and ``/dashboard/data`` from the worker."""
    from faust.web import Request, Response, View

    config = gateway.config
    metrics = install_metrics(app, gateway, [config.request_topic(p) for p in PRIORITIES])

    @app.page("/dashboard")
    class DashboardView(View):
        async def get(self, request: Request) -> Response:
            return self.html(_static("dashboard.html"))

    @app.page("/dashboard/static/{name}")
    class DashboardStaticView(View):
        async def get(self, request: Request, name: str) -> Response:
            content_type = STATIC_FILES.get(name)
            if content_type is None:
                return self.error(404, "no such file")
            return self.text(_static(name), content_type=content_type)

    @app.page("/dashboard/data")
    class DashboardDataView(View):
        async def get(self, request: Request) -> Response:
            await metrics.lag.refresh()
            return self.json(dashboard_data(gateway, metrics))

    return metrics


def _static(name: str) -> str:
    return resources.files("streams").joinpath("dashboard_static", name).read_text("utf-8")


def dashboard_data(gateway: Any, metrics: GatewayMetrics) -> dict[str, Any]:
    """Everything the dashboard shows, as one JSON-ready document."""
    status = gateway.status()
    counts: dict[str, int] = status.get("counts", {})
    scheduler: dict[str, Any] = status.get("scheduler", {})
    config = gateway.config
    by_status = {s: int(counts.get(f"status.{s}", 0)) for s in STATUSES}
    observed = counter_values(metrics.requests)

    by_priority: dict[str, dict[str, int]] = {
        p: {**dict.fromkeys(STATUSES, 0), "total": 0} for p in PRIORITIES
    }
    outcomes: dict[str, dict[str, int]] = {}
    for (priority, state, reason), n in observed.items():
        row = by_priority.setdefault(priority, {**dict.fromkeys(STATUSES, 0), "total": 0})
        row[state] = row.get(state, 0) + int(n)
        row["total"] += int(n)
        if reason != "none":
            per_reason = outcomes.setdefault(state, {})
            per_reason[reason] = per_reason.get(reason, 0) + int(n)

    topic_of = {config.request_topic(p): p for p in PRIORITIES}
    lag = {topic_of[t]: n for t, n in metrics.lag.by_topic.items() if t in topic_of}
    return {
        "generated_at_ms": int(time.time() * 1000),
        "worker": {
            "app_id": config.worker.app_id,
            "topic_prefix": config.kafka.topic_prefix,
            "uptime_s": status.get("uptime_s", 0),
            "received": int(counts.get("received", 0)),
            "in_flight": status.get("in_flight", 0),
            "queued": status.get("queued", 0),
            "pending_acks": status.get("pending_acks", 0),
            "capacity": scheduler.get("capacity", 0),
            "fill": scheduler.get("fill", 0),
        },
        "responses": {
            "total": sum(by_status.values()),
            "by_status": by_status,
            "by_priority": by_priority,
        },
        "reasons": {
            k.removeprefix("reason."): n for k, n in counts.items() if k.startswith("reason.")
        },
        "outcomes": outcomes,
        "queue": {
            "depth": {p: scheduler.get("depth", {}).get(p, 0) for p in PRIORITIES},
            "paused": list(status.get("paused", [])),
            "lag": {p: lag.get(p, 0) for p in PRIORITIES},
            "lag_total": sum(lag.values()),
            "lag_ok": metrics.lag.ok,
        },
        "breakers": _breakers(status, metrics),
        "transitions": status.get("breaker_transitions", [])[-TRANSITIONS_SHOWN:],
        "providers": status.get("provider_calls", {}),
        "cache": _cache(status.get("cache", {}), int(counts.get("coalesced", 0))),
        "tenants": _tenants(gateway.budgets(), counter_values(metrics.spend)),
        "latency": {
            "e2e": _latency(metrics.latency),
            "queue": _latency(metrics.queue_wait),
        },
    }


def _breakers(status: dict[str, Any], metrics: GatewayMetrics) -> list[dict[str, Any]]:
    metrics.transitions.update(list(metrics.gateway.providers.transitions))
    moves: dict[str, int] = {}
    for (name, _, _), n in metrics.transitions.totals.items():
        moves[name] = moves.get(name, 0) + n
    return [
        {"model": name, "state": state, "transitions": moves.get(name, 0)}
        for name, state in sorted(status.get("breakers", {}).items())
    ]


def _cache(per_tenant: dict[str, dict[str, Any]], coalesced: int) -> dict[str, Any]:
    tenants = {}
    for tenant, c in sorted(per_tenant.items()):
        tenants[tenant] = {
            "hits": c.get("hits", 0),
            "misses": c.get("misses", 0),
            "hit_rate": c.get("hit_rate", 0),
            "served": sum(n for k, n in c.items() if k.startswith("served.")),
            "saved_usd": c.get("saved_micros", 0) / MICROS_PER_USD,
        }
    hits = sum(t["hits"] for t in tenants.values())
    misses = sum(t["misses"] for t in tenants.values())
    return {
        "hits": hits,
        "misses": misses,
        "hit_rate": round(hits / (hits + misses), 4) if hits + misses else 0,
        "served": sum(t["served"] for t in tenants.values()),
        "saved_usd": sum(t["saved_usd"] for t in tenants.values()),
        "coalesced": coalesced,
        "tenants": tenants,
    }


def _tenants(
    budgets: dict[str, dict[str, Any]], spend: dict[tuple[str, ...], float]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for (tenant,), usd in spend.items():
        out[tenant] = {"spend_usd": usd, "windows": []}
    for tenant, view in budgets.items():
        row = out.setdefault(tenant, {"spend_usd": 0.0, "windows": []})
        row["windows"] = [
            {
                "scope": w["scope"],
                "feature": w.get("feature") or "",
                "window": w.get("window", ""),
                "spent_usd": w["spent_micros"] / MICROS_PER_USD,
                "reserved_usd": w["reserved_micros"] / MICROS_PER_USD,
                "cap_usd": w["cap_micros"] / MICROS_PER_USD if w.get("cap_micros") else None,
                "percent": w.get("percent"),
            }
            for w in view.get("windows", ())
        ]
    return dict(sorted(out.items()))


def _latency(histogram: Any) -> dict[str, dict[str, Any]]:
    """count and p50/p95/p99 in ms, per priority and over all ("all")."""
    per = histogram_buckets(histogram)
    per["all"] = merge_buckets(per.values())
    out = {}
    for key, buckets in per.items():
        count = int(buckets[-1][1]) if buckets else 0
        out[key] = {
            "count": count,
            **{
                name: None if (v := quantile(buckets, q)) is None else round(v * 1000, 1)
                for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
            },
        }
    return out
