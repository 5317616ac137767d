"""Prometheus metrics for one worker: read from the gateway at scrape time, plus two histograms.

Almost everything is gathered when ``/metrics`` is scraped: ``GatewayCollector`` reads the
gateway's own bookkeeping (``status()``, ``budgets()``, the provider caller's breaker
transitions) and turns it into metric families, so the request path pays nothing for it.
Only what cannot be rebuilt later is recorded as it happens, by one call in
``Gateway.finish``: ``observe_response`` counts the response by priority, status and
reason, adds its cost to the tenant's spend and puts its end-to-end and queue-wait times
into histograms (a dictionary lookup, a counter increment and two bucket searches).

Consumer lag per request topic is the broker's log-end offset minus the group's committed
offset, summed over the partitions this worker owns. The end offsets come from one
ListOffsets round trip (``app.consumer.highwaters``), made by the async views before they
render and reused for ``LAG_MAX_AGE_S``; the committed offsets are what the consumer last
committed (Faust's monitor and consumer bookkeeping, no broker call). Offsets are committed
only after a request's terminal response, so the lag includes work in flight.

Each app gets its own ``CollectorRegistry`` (``install_metrics``), so several apps can live
in one process (tests). Cost of a scrape: O(tenants x budget windows + models + topics).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram as PromHistogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

log = logging.getLogger("sluicegate.metrics")

# Seconds; from a cache hit (a few ms) to a long provider call with retries.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip
LAG_MAX_AGE_S = 1.0  # a scrape and a dashboard poll in the same second share one lookup
LAG_TIMEOUT_S = 2.0
BREAKER_CODES = {"closed": 0, "half_open": 1, "open": 2}
MICROS_PER_USD = 1_000_000


class GatewayMetrics:
    """One app's registry: the scrape-time collector, the observed series and the lag."""

    def __init__(self, gateway: Any, app: Any = None, request_topics: Sequence[str] = ()) -> None:
        self.gateway = gateway
        self.registry = CollectorRegistry()
        self.requests = PromCounter(
            "sluicegate_requests",
            "Terminal responses by request priority, status and reason.",
            ["priority", "status", "reason"],
            registry=self.registry,
        )
        self.spend = PromCounter(
            "sluicegate_spend_usd",
            "What this worker's responses cost, per tenant (USD).",
            ["tenant"],
            registry=self.registry,
        )
        self.latency = PromHistogram(
            "sluicegate_request_latency_seconds",
            "End to end: from the request's created_at to its terminal response.",
            ["priority"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = PromHistogram(
            "sluicegate_queue_wait_seconds",
            "From intake to dispatch (0 for requests answered at intake).",
            ["priority"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.transitions = TransitionCounter()
        self.lag = ConsumerLag(app, request_topics)
        self.registry.register(GatewayCollector(self))

    def observe(
        self,
        priority: str,
        status: str,
        reason: str,
        tenant: str,
        cost_micros: int,
        e2e_ms: int,
        queue_ms: int,
    ) -> None:
        self.requests.labels(priority, status, reason).inc()
        if cost_micros:
            self.spend.labels(tenant).inc(cost_micros / MICROS_PER_USD)
        self.latency.labels(priority).observe(max(0, e2e_ms) / 1000)
        self.queue_wait.labels(priority).observe(max(0, queue_ms) / 1000)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# Keyed by gateway, so the worker's one-line hook needs nothing but ``self``.
_BY_GATEWAY: weakref.WeakKeyDictionary[Any, GatewayMetrics] = weakref.WeakKeyDictionary()


def metrics_for(gateway: Any) -> GatewayMetrics | None:
    return _BY_GATEWAY.get(gateway)


def observe_response(
    gateway: Any, request: Mapping[str, Any], outcome: Any, queue_ms: int, now_ms: int
) -> None:
    """The hook in ``Gateway.finish``: count one terminal response (no-op when not installed)."""
    metrics = _BY_GATEWAY.get(gateway)
    if metrics is None:
        return
    created = int(request.get("created_at") or now_ms)
    metrics.observe(
        str(request.get("priority") or "unknown"),
        str(outcome.status),
        str(outcome.reason) or "none",
        str(request.get("tenant") or ""),
        int(outcome.cost_micros or 0),
        now_ms - created,
        queue_ms,
    )


def install_metrics(app: Any, gateway: Any, request_topics: Sequence[str] = ()) -> GatewayMetrics:
    """Create the app's registry and serve it at ``/metrics``."""
    from faust.web import Request, Response, View

    metrics = GatewayMetrics(gateway, app, request_topics)
    _BY_GATEWAY[gateway] = metrics

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            await metrics.lag.refresh()
            return self.bytes(metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics


# -- breaker transitions ------------------------------------------------------------------


class TransitionCounter:
    """Counts breaker transitions from the provider caller's bounded history.

    The history is a list of ``(model, Transition)`` trimmed to its last entries; the
    counter remembers the last entry it counted (by identity) and counts what follows.
    If that entry was trimmed away between two reads, everything still listed is counted
    (more transitions than the history holds between two scrapes are undercounted).
    """

    def __init__(self) -> None:
        self.totals: Counter[tuple[str, str, str]] = Counter()
        self._last: object | None = None

    def update(self, history: Sequence[tuple[str, Any]]) -> None:
        start = 0
        if self._last is not None:
            for i in range(len(history) - 1, -1, -1):
                if history[i][1] is self._last:
                    start = i + 1
                    break
        for name, t in history[start:]:
            self.totals[name, _state(t.from_state), _state(t.to_state)] += 1
        if history:
            self._last = history[-1][1]


def _state(value: Any) -> str:
    return str(getattr(value, "value", value))


# -- consumer lag -------------------------------------------------------------------------


def lag_by_topic(
    ends: Mapping[Any, int | None], committed: Mapping[Any, int | None], topics: Iterable[str]
) -> dict[str, int]:
    """Sum over partitions of (log-end offset - committed offset), per topic.

    A partition never committed counts from offset 0; an unknown end offset counts 0.
    Every topic in ``topics`` gets an entry, 0 when this worker owns none of it.
    """
    out = dict.fromkeys(topics, 0)
    for tp, end in ends.items():
        if end is None or tp.topic not in out:
            continue
        out[tp.topic] += max(0, end - (committed.get(tp) or 0))
    return out


class ConsumerLag:
    """The request topics' lag, refreshed at most once per ``LAG_MAX_AGE_S``."""

    def __init__(
        self, app: Any, topics: Sequence[str], clock: Callable[[], float] = time.monotonic
    ):
        self.app = app
        self.topics = tuple(topics)
        self.by_topic: dict[str, int] = dict.fromkeys(self.topics, 0)
        self.ok = False  # False until a lookup succeeded (and after one failed)
        self._clock = clock
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def refresh(self) -> dict[str, int]:
        if self.app is None or not self.topics:
            return self.by_topic
        async with self._lock:
            now = self._clock()
            if self._fetched_at is not None and now - self._fetched_at < LAG_MAX_AGE_S:
                return self.by_topic
            self._fetched_at = now
            try:
                consumer = self.app.consumer
                owned = [tp for tp in consumer.assignment() if tp.topic in self.topics]
                ends = await asyncio.wait_for(consumer.highwaters(*owned), LAG_TIMEOUT_S)
                self.by_topic = lag_by_topic(ends, self._committed(consumer), self.topics)
                self.ok = True
            except Exception as exc:  # a rebalance or a broker away: keep the last figures
                log.debug("consumer lag lookup failed: %r", exc)
                self.ok = False
        return self.by_topic

    def _committed(self, consumer: Any) -> dict[Any, int | None]:
        # The consumer's own record covers partitions seeked to their committed offset at
        # assignment; the monitor's, every commit since (both are Faust 0.15 internals).
        committed: dict[Any, int | None] = dict(getattr(consumer, "_committed_offset", {}))
        monitor = getattr(self.app, "monitor", None)
        committed.update(getattr(monitor, "tp_committed_offsets", None) or {})
        return committed


# -- the scrape-time collector ------------------------------------------------------------


class GatewayCollector(Collector):
    """Turns the gateway's status, budgets and breaker history into metric families."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        gateway = self.metrics.gateway
        sections: list[tuple[str, Callable[[], Iterable[Metric]]]] = [
            ("status", lambda: _status_metrics(gateway.status())),
            ("budgets", lambda: _budget_metrics(gateway.budgets())),
            ("breakers", lambda: self._transition_metrics(gateway)),
            ("lag", lambda: _lag_metrics(self.metrics.lag)),
        ]
        for name, section in sections:
            try:
                yield from list(section())
            except Exception:  # one broken section must not hide the others
                log.warning("metrics section %r failed", name, exc_info=True)

    def _transition_metrics(self, gateway: Any) -> Iterable[Metric]:
        counter = self.metrics.transitions
        counter.update(list(gateway.providers.transitions))
        family = CounterMetricFamily(
            "sluicegate_breaker_transitions",
            "Circuit breaker state changes per provider model.",
            labels=["provider", "model", "from_state", "to_state"],
        )
        for (name, before, after), n in sorted(counter.totals.items()):
            family.add_metric([*_split_model(name), before, after], n)
        yield family


def _split_model(name: str) -> tuple[str, str]:
    provider, _, model = name.partition("/")
    return provider, model


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _status_metrics(status: Mapping[str, Any]) -> Iterator[Metric]:
    counts: Mapping[str, int] = status.get("counts", {})
    yield _gauge(
        "sluicegate_uptime_seconds", "Seconds since the worker started.", status["uptime_s"]
    )
    yield _counter("sluicegate_received", "Request records consumed.", counts.get("received", 0))
    yield _counter(
        "sluicegate_coalesced",
        "Requests answered by an identical in-flight request's call.",
        counts.get("coalesced", 0),
    )
    yield _counter(
        "sluicegate_budget_alerts",
        "Budget alert thresholds crossed.",
        counts.get("budget_alerts", 0),
    )
    by_status = CounterMetricFamily(
        "sluicegate_responses", "Terminal responses by status.", labels=["status"]
    )
    by_reason = CounterMetricFamily(
        "sluicegate_response_reasons", "Terminal responses by reason (non-ok).", labels=["reason"]
    )
    for key, n in sorted(counts.items()):
        kind, _, label = key.partition(".")
        if kind == "status":
            by_status.add_metric([label], n)
        elif kind == "reason":
            by_reason.add_metric([label], n)
    yield by_status
    yield by_reason

    yield _gauge("sluicegate_in_flight", "Provider calls in flight.", status.get("in_flight", 0))
    yield _gauge(
        "sluicegate_pending_acks",
        "Consumed records whose offsets are not yet released for commit.",
        status.get("pending_acks", 0),
    )
    yield from _scheduler_metrics(status.get("scheduler", {}))
    yield from _cache_metrics(status.get("cache", {}))
    yield from _provider_metrics(status)


def _scheduler_metrics(s: Mapping[str, Any]) -> Iterator[Metric]:
    if not s:
        return
    yield _gauge("sluicegate_queue_capacity", "Scheduler capacity (items).", s["capacity"])
    yield _gauge("sluicegate_queue_fill_ratio", "Scheduler fill, 0..1.", s["fill"])
    depth = GaugeMetricFamily(
        "sluicegate_queue_depth", "Requests waiting in the scheduler.", labels=["priority"]
    )
    paused = GaugeMetricFamily(
        "sluicegate_intake_paused",
        "1 while a priority's intake is paused (backpressure).",
        labels=["priority"],
    )
    paused_now = set(s.get("paused", ()))
    for priority, n in s.get("depth", {}).items():
        depth.add_metric([priority], n)
        paused.add_metric([priority], 1 if priority in paused_now else 0)
    yield depth
    yield paused
    in_flight = GaugeMetricFamily(
        "sluicegate_in_flight_by_model",
        "Provider calls in flight per route's primary model.",
        labels=["provider", "model"],
    )
    for route, n in s.get("in_flight", {}).items():
        in_flight.add_metric(_split_model(route), n)
    yield in_flight
    service = GaugeMetricFamily(
        "sluicegate_service_time_seconds",
        "Smoothed provider call time per model (EWMA).",
        labels=["provider", "model"],
    )
    for route, ms in s.get("service_ms", {}).items():
        service.add_metric(_split_model(route), ms / 1000)
    yield service
    shed = CounterMetricFamily(
        "sluicegate_shed",
        "Requests the scheduler shed, by reason and priority.",
        labels=["reason", "priority"],
    )
    for reason, per_priority in s.get("shed", {}).items():
        for priority, n in per_priority.items():
            shed.add_metric([reason, priority], n)
    yield shed
    yield _counter(
        "sluicegate_scheduler_admitted", "Requests admitted to the queue.", s.get("admitted", 0)
    )
    yield _counter(
        "sluicegate_scheduler_dispatched", "Requests dispatched.", s.get("dispatched", 0)
    )


def _cache_metrics(cache: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    labels = ["tenant"]
    hits = CounterMetricFamily("sluicegate_cache_hits", "Exact cache hits.", labels=labels)
    misses = CounterMetricFamily(
        "sluicegate_cache_misses", "Cache reads without an exact hit.", labels=labels
    )
    served = CounterMetricFamily(
        "sluicegate_cache_served",
        "Responses served from cache, by kind (exact, semantic, stale).",
        labels=["tenant", "kind"],
    )
    saved = CounterMetricFamily(
        "sluicegate_cache_savings_usd",
        "What cached answers would have cost (USD).",
        labels=labels,
    )
    stored = CounterMetricFamily("sluicegate_cache_stores", "Answers written.", labels=labels)
    ratio = GaugeMetricFamily(
        "sluicegate_cache_hit_ratio", "hits / (hits + misses).", labels=labels
    )
    for tenant, c in sorted(cache.items()):
        hits.add_metric([tenant], c.get("hits", 0))
        misses.add_metric([tenant], c.get("misses", 0))
        saved.add_metric([tenant], c.get("saved_micros", 0) / MICROS_PER_USD)
        stored.add_metric([tenant], c.get("stored", 0))
        ratio.add_metric([tenant], c.get("hit_rate", 0))
        for key, n in sorted(c.items()):
            if key.startswith("served."):
                served.add_metric([tenant, key.removeprefix("served.")], n)
    yield from (hits, misses, served, saved, stored, ratio)


def _provider_metrics(status: Mapping[str, Any]) -> Iterator[Metric]:
    calls = status.get("provider_calls", {})
    yield _counter(
        "sluicegate_provider_calls", "Provider calls (every attempt).", calls.get("calls", 0)
    )
    yield _counter("sluicegate_provider_retries", "Provider call retries.", calls.get("retries", 0))
    errors = CounterMetricFamily(
        "sluicegate_provider_errors", "Failed provider calls by kind.", labels=["kind"]
    )
    for kind, n in sorted(calls.get("errors", {}).items()):
        errors.add_metric([kind], n)
    yield errors
    state = GaugeMetricFamily(
        "sluicegate_breaker_state",
        "1 for the breaker's current state, 0 for the others.",
        labels=["provider", "model", "state"],
    )
    code = GaugeMetricFamily(
        "sluicegate_breaker_state_code",
        "Breaker state as a number: 0 closed, 1 half open, 2 open.",
        labels=["provider", "model"],
    )
    for name, current in sorted(status.get("breakers", {}).items()):
        provider, model = _split_model(name)
        for option in BREAKER_CODES:
            state.add_metric([provider, model, option], 1 if option == current else 0)
        code.add_metric([provider, model], BREAKER_CODES.get(current, -1))
    yield state
    yield code
    rpm = GaugeMetricFamily(
        "sluicegate_provider_limit_rpm",
        "This worker's effective requests-per-minute allowance per model.",
        labels=["provider", "model"],
    )
    for name, limiter in sorted(status.get("limiters", {}).items()):
        if limiter.get("effective_rpm") is not None:
            rpm.add_metric(_split_model(name), limiter["effective_rpm"])
    yield rpm


def _budget_metrics(budgets: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    labels = ["tenant", "scope", "feature"]
    spent = GaugeMetricFamily(
        "sluicegate_budget_spent_usd", "Spend in the current budget window (USD).", labels=labels
    )
    reserved = GaugeMetricFamily(
        "sluicegate_budget_reserved_usd", "Open reservations in the window (USD).", labels=labels
    )
    cap = GaugeMetricFamily("sluicegate_budget_cap_usd", "The window's cap (USD).", labels=labels)
    used = GaugeMetricFamily(
        "sluicegate_budget_used_ratio", "(spent + reserved) / cap.", labels=labels
    )
    for tenant, view in sorted(budgets.items()):
        for row in view.get("windows", ()):
            key = [tenant, row["scope"], row.get("feature") or ""]
            spent.add_metric(key, row["spent_micros"] / MICROS_PER_USD)
            reserved.add_metric(key, row["reserved_micros"] / MICROS_PER_USD)
            if row.get("cap_micros"):
                cap.add_metric(key, row["cap_micros"] / MICROS_PER_USD)
                committed = row["spent_micros"] + row["reserved_micros"]
                used.add_metric(key, committed / row["cap_micros"])
    yield from (spent, reserved, cap, used)


def _lag_metrics(lag: ConsumerLag) -> Iterator[Metric]:
    family = GaugeMetricFamily(
        "sluicegate_consumer_lag",
        "Records not yet committed on this worker's partitions of a request topic.",
        labels=["topic"],
    )
    for topic, n in sorted(lag.by_topic.items()):
        family.add_metric([topic], n)
    yield family


# -- reading the observed series back (for the dashboard) --------------------------------


def counter_values(counter: PromCounter) -> dict[tuple[str, ...], float]:
    """A labelled counter's current values, keyed by label values."""
    out: dict[tuple[str, ...], float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out[tuple(sample.labels.values())] = sample.value
    return out


def histogram_buckets(histogram: PromHistogram) -> dict[str, list[tuple[float, float]]]:
    """Cumulative ``(upper bound, count)`` per first label value, ``+Inf`` last."""
    out: dict[str, list[tuple[float, float]]] = {}
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                labels = dict(sample.labels)
                bound = float(labels.pop("le"))
                key = next(iter(labels.values()), "")
                out.setdefault(key, []).append((bound, sample.value))
    for rows in out.values():
        rows.sort()
    return out


def merge_buckets(series: Iterable[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    total: dict[float, float] = {}
    for rows in series:
        for bound, n in rows:
            total[bound] = total.get(bound, 0) + n
    return sorted(total.items())


def quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """Estimate a quantile from cumulative buckets, interpolating inside the bucket (the
    way PromQL's histogram_quantile does); the last finite bound when it falls in +Inf."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound
