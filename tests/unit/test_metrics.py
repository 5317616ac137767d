"""Worker metrics and the dashboard document, against a stand-in gateway (no broker, no web)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.config import parse_config
from streams.dashboard import STATIC_FILES, _static, dashboard_data
from streams.metrics import (
    LAG_MAX_AGE_S,
    ConsumerLag,
    GatewayMetrics,
    TransitionCounter,
    lag_by_topic,
    metrics_for,
    observe_response,
    quantile,
)
from streams.policies.breaker import BreakerState, Transition
from streams.policies.verdict import Reason, Status
from streams.records import Outcome

CONFIG = parse_config(
    {
        "kafka": {"topic_prefix": "sg"},
        "worker": {"app_id": "unit-app"},
        "providers": {
            "sim": {
                "kind": "openai",
                "base_url": "http://127.0.0.1:1/v1",
                "models": {"m": {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}},
            }
        },
        "tenants": {"t1": {}, "t2": {}},
    }
)


@dataclass
class FakeGateway:
    """The parts of streams.worker.Gateway the metrics read."""

    config: Any = CONFIG
    counts: Counter[str] = field(default_factory=Counter)
    transitions: list[tuple[str, Transition]] = field(default_factory=list)
    budget_rows: dict[str, Any] = field(default_factory=dict)
    broken_budgets: bool = False

    def __post_init__(self) -> None:
        self.providers = SimpleNamespace(transitions=self.transitions)

    def __hash__(self) -> int:
        return id(self)

    def status(self) -> dict[str, Any]:
        return {
            "uptime_s": 12.5,
            "queued": 3,
            "in_flight": 2,
            "pending_acks": 4,
            "paused": ["low"],
            "counts": dict(self.counts),
            "scheduler": {
                "capacity": 100,
                "queued": 3,
                "fill": 0.03,
                "depth": {"critical": 0, "high": 1, "normal": 0, "low": 2},
                "in_flight": {"sim/m": 2},
                "service_ms": {"sim/m": 250.0},
                "shed": {"overloaded": {"low": 5}},
                "paused": ["low"],
                "admitted": 20,
                "dispatched": 17,
            },
            "cache": {
                "t1": {
                    "hits": 3,
                    "misses": 1,
                    "saved_micros": 1500,
                    "served.exact": 3,
                    "served.semantic": 1,
                    "stored": 1,
                    "hit_rate": 0.75,
                }
            },
            "breakers": {"sim/m": "open", "sim/n": "closed"},
            "breaker_transitions": [],
            "limiters": {"sim/m": {"effective_rpm": 60, "effective_tpm": None}},
            "provider_calls": {
                "calls": 9,
                "first_attempts": 7,
                "retries": 2,
                "errors": {"server_error": 2},
            },
            "limit_share": 1.0,
        }

    def budgets(self) -> dict[str, Any]:
        if self.broken_budgets:
            raise RuntimeError("table not ready")
        return self.budget_rows


def _window(scope: str, spent: int, reserved: int, cap: int | None) -> dict[str, Any]:
    return {
        "scope": scope,
        "feature": "",
        "window": "2026-01-01",
        "key": "k",
        "spent_micros": spent,
        "reserved_micros": reserved,
        "cap_micros": cap,
        "percent": round(100 * (spent + reserved) / cap, 2) if cap else None,
        "reset_at_ms": 0,
    }


def _samples(metrics: GatewayMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.exposition().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def _outcome(status: Status, reason: Reason = Reason.NONE, cost: int = 0) -> Outcome:
    return Outcome(status, reason, cost_micros=cost)


def _request(priority: str, tenant: str = "t1", created_at: int = 1_000) -> dict[str, Any]:
    return {"priority": priority, "tenant": tenant, "created_at": created_at}


def _installed(gateway: FakeGateway) -> GatewayMetrics:
    from streams import metrics as module

    metrics = GatewayMetrics(gateway)
    module._BY_GATEWAY[gateway] = metrics
    return metrics


def test_scrape_turns_gateway_status_into_metric_families() -> None:
    gateway = FakeGateway()
    gateway.counts.update(
        {"received": 30, "status.ok": 20, "status.shed": 5, "reason.overloaded": 5}
    )
    gateway.budget_rows = {
        "t1": {"tenant": "t1", "windows": [_window("tenant_day", 2_000_000, 500_000, 10_000_000)]}
    }
    s = _samples(GatewayMetrics(gateway))

    assert _value(s, "sluicegate_received_total") == 30
    assert _value(s, "sluicegate_responses_total", status="ok") == 20
    assert _value(s, "sluicegate_response_reasons_total", reason="overloaded") == 5
    assert _value(s, "sluicegate_queue_depth", priority="low") == 2
    assert _value(s, "sluicegate_intake_paused", priority="low") == 1
    assert _value(s, "sluicegate_intake_paused", priority="high") == 0
    assert _value(s, "sluicegate_in_flight") == 2
    assert _value(s, "sluicegate_shed_total", reason="overloaded", priority="low") == 5
    assert _value(s, "sluicegate_cache_hits_total", tenant="t1") == 3
    assert _value(s, "sluicegate_cache_served_total", tenant="t1", kind="semantic") == 1
    assert _value(s, "sluicegate_cache_savings_usd_total", tenant="t1") == pytest.approx(0.0015)
    assert _value(s, "sluicegate_breaker_state", provider="sim", model="m", state="open") == 1
    assert _value(s, "sluicegate_breaker_state", provider="sim", model="m", state="closed") == 0
    assert _value(s, "sluicegate_breaker_state_code", provider="sim", model="m") == 2
    assert _value(s, "sluicegate_breaker_state_code", provider="sim", model="n") == 0
    assert _value(s, "sluicegate_provider_calls_total") == 9
    assert _value(s, "sluicegate_provider_retries_total") == 2
    assert _value(s, "sluicegate_provider_errors_total", kind="server_error") == 2
    day = {"tenant": "t1", "scope": "tenant_day", "feature": ""}
    assert _value(s, "sluicegate_budget_spent_usd", **day) == pytest.approx(2.0)
    assert _value(s, "sluicegate_budget_cap_usd", **day) == pytest.approx(10.0)
    assert _value(s, "sluicegate_budget_used_ratio", **day) == pytest.approx(0.25)


def test_a_failing_section_does_not_hide_the_others() -> None:
    gateway = FakeGateway(broken_budgets=True)
    gateway.counts["received"] = 7
    s = _samples(GatewayMetrics(gateway))
    assert _value(s, "sluicegate_received_total") == 7
    assert not any(name.startswith("sluicegate_budget_spent") for name, _ in s)


def test_observe_response_counts_by_priority_status_reason_and_records_latency() -> None:
    gateway = FakeGateway()
    metrics = _installed(gateway)
    observe_response(
        gateway, _request("high", created_at=1_000), _outcome(Status.OK, cost=250_000), 40, 1_300
    )
    observe_response(gateway, _request("high", "t2", 1_000), _outcome(Status.OK, cost=0), 0, 1_020)
    observe_response(gateway, _request("low"), _outcome(Status.SHED, Reason.OVERLOADED), 0, 1_005)
    s = _samples(metrics)

    assert _value(s, "sluicegate_requests_total", priority="high", status="ok", reason="none") == 2
    assert (
        _value(s, "sluicegate_requests_total", priority="low", status="shed", reason="overloaded")
        == 1
    )
    assert _value(s, "sluicegate_spend_usd_total", tenant="t1") == pytest.approx(0.25)
    assert ("sluicegate_spend_usd_total", frozenset({("tenant", "t2")})) not in s
    assert _value(s, "sluicegate_request_latency_seconds_count", priority="high") == 2
    assert _value(s, "sluicegate_request_latency_seconds_sum", priority="high") == pytest.approx(
        0.32
    )
    assert _value(s, "sluicegate_queue_wait_seconds_sum", priority="high") == pytest.approx(0.04)
    assert _value(s, "sluicegate_request_latency_seconds_bucket", priority="high", le="0.025") == 1


def test_observe_response_is_a_no_op_for_a_gateway_without_metrics() -> None:
    gateway = FakeGateway()
    observe_response(gateway, _request("high"), _outcome(Status.OK), 0, 2_000)
    assert metrics_for(gateway) is None


def test_each_app_gets_its_own_registry() -> None:
    first, second = FakeGateway(), FakeGateway()
    a, b = _installed(first), _installed(second)
    observe_response(first, _request("normal"), _outcome(Status.OK), 0, 2_000)
    assert a.registry is not b.registry
    assert ("sluicegate_requests_total", frozenset()) not in _samples(b)
    assert not any(name == "sluicegate_requests_total" for name, _ in _samples(b))
    assert any(name == "sluicegate_requests_total" for name, _ in _samples(a))


def _t(at: int, before: BreakerState, after: BreakerState) -> Transition:
    return Transition(at, before, after, "test")


def test_breaker_transitions_are_counted_once_across_scrapes() -> None:
    closed, open_, half = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
    history = [("sim/m", _t(1, closed, open_))]
    counter = TransitionCounter()
    counter.update(history)
    counter.update(history)
    history += [("sim/m", _t(2, open_, half)), ("sim/m", _t(3, half, open_))]
    counter.update(history)
    assert counter.totals == {
        ("sim/m", "closed", "open"): 1,
        ("sim/m", "open", "half_open"): 1,
        ("sim/m", "half_open", "open"): 1,
    }


def test_breaker_transitions_trimmed_since_the_last_scrape_count_what_remains() -> None:
    closed, open_ = BreakerState.CLOSED, BreakerState.OPEN
    counter = TransitionCounter()
    counter.update([("a/x", _t(1, closed, open_))])
    counter.update([("a/x", _t(5, open_, closed)), ("a/x", _t(6, closed, open_))])
    assert sum(counter.totals.values()) == 3


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


@pytest.mark.parametrize(
    ("ends", "committed", "expected"),
    [
        ({TP("a", 0): 10, TP("a", 1): 5}, {TP("a", 0): 7, TP("a", 1): 5}, {"a": 3, "b": 0}),
        ({TP("a", 0): 10}, {}, {"a": 10, "b": 0}),  # never committed: from offset 0
        ({TP("a", 0): None, TP("b", 0): 4}, {TP("b", 0): 1}, {"a": 0, "b": 3}),
        ({TP("other", 0): 9}, {}, {"a": 0, "b": 0}),  # not a request topic
        ({TP("a", 0): 3}, {TP("a", 0): 5}, {"a": 0, "b": 0}),  # end behind commit: never < 0
    ],
)
def test_lag_is_end_offset_minus_committed_per_topic(
    ends: dict[Any, int | None], committed: dict[Any, int | None], expected: dict[str, int]
) -> None:
    assert lag_by_topic(ends, committed, ["a", "b"]) == expected


class FakeConsumer:
    def __init__(self, ends: dict[TP, int], committed: dict[TP, int]) -> None:
        self.ends = ends
        self._committed_offset = committed
        self.lookups = 0
        self.fail = False

    def assignment(self) -> set[TP]:
        return set(self.ends)

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        self.lookups += 1
        if self.fail:
            raise ConnectionError("broker away")
        return {tp: self.ends[tp] for tp in tps}


async def test_lag_lookups_are_shared_within_max_age_and_failures_keep_last_figures() -> None:
    consumer = FakeConsumer({TP("sg.requests.low", 0): 12}, {TP("sg.requests.low", 0): 2})
    monitor = SimpleNamespace(tp_committed_offsets={})
    now = [100.0]
    lag = ConsumerLag(
        SimpleNamespace(consumer=consumer, monitor=monitor), ["sg.requests.low"], lambda: now[0]
    )
    assert await lag.refresh() == {"sg.requests.low": 10} and lag.ok
    consumer.ends[TP("sg.requests.low", 0)] = 20
    assert await lag.refresh() == {"sg.requests.low": 10}  # cached
    assert consumer.lookups == 1
    now[0] += LAG_MAX_AGE_S
    monitor.tp_committed_offsets = {TP("sg.requests.low", 0): 15}  # a commit since
    assert await lag.refresh() == {"sg.requests.low": 5}
    consumer.fail = True
    now[0] += LAG_MAX_AGE_S
    assert await lag.refresh() == {"sg.requests.low": 5}
    assert not lag.ok


@pytest.mark.parametrize(
    ("buckets", "q", "expected"),
    [
        ([(0.1, 0), (0.2, 10), (float("inf"), 10)], 0.5, 0.15),
        ([(0.1, 5), (0.2, 10), (float("inf"), 10)], 0.5, 0.1),
        ([(0.1, 10), (float("inf"), 10)], 0.5, 0.05),  # first bucket: from 0
        ([(0.1, 0), (float("inf"), 4)], 0.99, 0.1),  # beyond the last finite bound
        ([(0.1, 0), (float("inf"), 0)], 0.5, None),  # nothing observed
        ([], 0.5, None),
    ],
)
def test_quantile_interpolates_within_the_bucket(
    buckets: list[tuple[float, float]], q: float, expected: float | None
) -> None:
    got = quantile(buckets, q)
    assert got == (None if expected is None else pytest.approx(expected))


def test_dashboard_document_combines_status_observed_series_budgets_and_lag() -> None:
    gateway = FakeGateway()
    gateway.counts.update({"received": 4, "status.ok": 2, "status.rejected": 1, "status.shed": 1})
    gateway.counts.update({"reason.rate_limited": 1, "reason.overloaded": 1, "coalesced": 1})
    gateway.budget_rows = {
        "t2": {"tenant": "t2", "windows": [_window("tenant_month", 1_000_000, 0, 4_000_000)]}
    }
    metrics = _installed(gateway)
    metrics.lag.by_topic = {"sg.requests.high": 7, "sg.requests.low": 1}
    observe_response(gateway, _request("high"), _outcome(Status.OK, cost=500_000), 10, 1_100)
    observe_response(gateway, _request("high"), _outcome(Status.OK), 0, 1_050)
    observe_response(
        gateway, _request("low"), _outcome(Status.REJECTED, Reason.RATE_LIMITED), 0, 1_001
    )
    observe_response(gateway, _request("low"), _outcome(Status.SHED, Reason.OVERLOADED), 0, 1_001)
    gateway.transitions.append(("sim/m", _t(1, BreakerState.CLOSED, BreakerState.OPEN)))

    d = dashboard_data(gateway, metrics)

    assert d["worker"]["app_id"] == "unit-app" and d["worker"]["received"] == 4
    assert d["responses"]["total"] == 4
    assert d["responses"]["by_status"]["ok"] == 2 and d["responses"]["by_status"]["failed"] == 0
    assert d["responses"]["by_priority"]["high"]["ok"] == 2
    assert d["responses"]["by_priority"]["low"]["total"] == 2
    assert d["responses"]["by_priority"]["critical"]["total"] == 0
    assert d["outcomes"] == {"rejected": {"rate_limited": 1}, "shed": {"overloaded": 1}}
    assert d["reasons"] == {"rate_limited": 1, "overloaded": 1}
    assert d["queue"]["lag"] == {"critical": 0, "high": 7, "normal": 0, "low": 1}
    assert d["queue"]["lag_total"] == 8
    assert d["queue"]["depth"]["low"] == 2 and d["queue"]["paused"] == ["low"]
    assert d["breakers"][0] == {"model": "sim/m", "state": "open", "transitions": 1}
    assert d["cache"]["hits"] == 3 and d["cache"]["hit_rate"] == 0.75
    assert d["cache"]["served"] == 4 and d["cache"]["coalesced"] == 1
    assert d["tenants"]["t1"]["spend_usd"] == pytest.approx(0.5)
    month = d["tenants"]["t2"]["windows"][0]
    assert (month["spent_usd"], month["cap_usd"], month["percent"]) == (1.0, 4.0, 25.0)
    assert d["latency"]["e2e"]["all"]["count"] == 4
    assert d["latency"]["e2e"]["high"]["p50"] is not None


def test_dashboard_page_and_its_assets_ship_with_the_package() -> None:
    html = _static("dashboard.html")
    for name in STATIC_FILES:
        assert f"/dashboard/static/{name}" in html
        assert _static(name).strip()
    assert "/dashboard/data" in _static("dashboard.js")
