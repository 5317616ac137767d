"""The audit report: what was asked, answered, cached, shed, and what it cost, for a range.

Computed in one pass over the joined entries (recording.py) into plain data:

- counts by status and by (status, reason); requests with no response, listed one by one;
- spend (cost, cache savings, tokens) by tenant, feature, model and provider. Money comes
  from the usage event, the accounting record (the response when no usage event exists),
  counted once per request id;
- cache hits by kind, and their share of all requests;
- latency percentiles (nearest rank) of ``total_ms`` and ``queue_ms``, overall for answered
  requests and per status;
- degradations by ``degradation_reason``; the most expensive requests;
- time series per bucket: spend per feature, status mix, and prompt size per feature (the
  raw token estimate of the message text, available for every request whatever happened
  to it). Buckets are epoch-aligned, sized so that the range has at most ``MAX_BUCKETS``.

Cost: O(n log n) for n requests (the percentiles sort); memory O(n) for latencies.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from streams.replay.recording import STATUSES, UNANSWERED, Entry, Recording

SUCCESS = ("ok", "cached", "degraded")
PERCENTILES = (50, 90, 95, 99)
MAX_BUCKETS = 48
_NICE_SECONDS = (1, 5, 10, 30, 60, 300, 600, 900, 1800, 3600, 10800, 21600, 43200, 86400, 604800)
NICE_BUCKETS_MS = tuple(s * 1000 for s in _NICE_SECONDS)
TOP_DEFAULT = 10


@dataclass
class SpendRow:
    key: str
    requests: int = 0
    cost_micros: int = 0
    saved_micros: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Latency:
    count: int
    p50: int
    p90: int
    p95: int
    p99: int
    max: int


@dataclass
class RequestRow:
    """One request in a listing (most expensive, unanswered)."""

    request_id: str
    at_ms: int
    tenant: str
    feature: str
    priority: str
    status: str
    model: str | None
    cost_micros: int
    prompt_tokens: int
    completion_tokens: int
    total_ms: int | None


@dataclass
class TrendPoint:
    requests: int
    mean_tokens: float
    p95_tokens: int


@dataclass
class AuditReport:
    prefix: str
    from_ms: int
    to_ms: int
    requests: int
    answered: int
    by_status: dict[str, int]
    by_reason: list[tuple[str, str, int]]  # (status, reason, count), most frequent first
    total_cost_micros: int
    total_saved_micros: int
    spend: dict[str, list[SpendRow]]  # "tenant" | "feature" | "model" | "provider" -> rows
    cache_hits: dict[str, int]  # cache kind -> hits
    latency: dict[str, Latency]  # "total_ms" | "queue_ms" | "total_ms <status>" -> figures
    degradations: list[tuple[str, int]]
    top_expensive: list[RequestRow]
    unanswered: list[RequestRow]
    bucket_ms: int
    buckets: list[int]  # bucket start times
    spend_over_time: dict[str, list[int]]  # feature -> cost per bucket
    status_over_time: dict[str, list[int]]  # status -> requests per bucket
    prompt_trends: dict[str, list[TrendPoint | None]]  # feature -> per bucket
    duplicate_responses: int = 0
    undecodable: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def cache_hit_share(self) -> float:
        return sum(self.cache_hits.values()) / self.requests if self.requests else 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["cache_hit_share"] = round(self.cache_hit_share, 6)
        return out


def percentile(ordered: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of an ascending sequence (0 when empty)."""
    if not ordered:
        return 0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency(values: Iterable[int]) -> Latency:
    ordered = sorted(values)
    p50, p90, p95, p99 = (percentile(ordered, q) for q in PERCENTILES)
    return Latency(len(ordered), p50, p90, p95, p99, ordered[-1] if ordered else 0)


def bucket_size(from_ms: int, to_ms: int, max_buckets: int = MAX_BUCKETS) -> int:
    """The smallest nice bucket (1 s, 5 s, ... 1 week) giving at most ``max_buckets``."""
    span = max(1, to_ms - from_ms + 1)
    for size in NICE_BUCKETS_MS:
        if math.ceil(span / size) + 1 <= max_buckets:
            return size
    return NICE_BUCKETS_MS[-1]


def row(entry: Entry) -> RequestRow:
    total = int(entry.response["total_ms"]) if entry.response else None
    return RequestRow(
        entry.request_id,
        entry.at_ms,
        entry.tenant,
        entry.feature,
        entry.priority,
        entry.status,
        entry.model,
        entry.cost_micros,
        entry.prompt_tokens,
        entry.completion_tokens,
        total,
    )


def build_report(recording: Recording, top: int = TOP_DEFAULT) -> AuditReport:
    entries = recording.entries
    by_status: Counter[str] = Counter()
    by_reason: Counter[tuple[str, str]] = Counter()
    spend: dict[str, dict[str, SpendRow]] = {d: {} for d in ("tenant", "feature", "model")}
    spend["provider"] = {}
    cache_hits: Counter[str] = Counter()
    degradations: Counter[str] = Counter()
    totals: list[int] = []
    queues: list[int] = []
    per_status: dict[str, list[int]] = defaultdict(list)
    bucket_ms = bucket_size(recording.from_ms, recording.to_ms)
    first = recording.from_ms // bucket_ms * bucket_ms
    buckets = list(range(first, recording.to_ms + 1, bucket_ms))
    spend_series: dict[str, list[int]] = defaultdict(lambda: [0] * len(buckets))
    status_series: dict[str, list[int]] = defaultdict(lambda: [0] * len(buckets))
    prompts: dict[str, list[list[int]]] = defaultdict(lambda: [[] for _ in buckets])
    for e in entries:
        status = e.status
        by_status[status] += 1
        if e.response is not None:
            by_reason[(status, e.reason)] += 1
            total = int(e.response.get("total_ms") or 0)
            per_status[status].append(total)
            if status in SUCCESS:
                totals.append(total)
                queues.append(int(e.response.get("queue_ms") or 0))
            reason = e.response.get("degradation_reason")
            if status == "degraded":
                degradations[str(reason or "unspecified")] += 1
            if status == "cached" or e.cache_kind:
                cache_hits[str(e.cache_kind or "exact")] += 1
        cost, saved = e.cost_micros, e.saved_micros
        model = e.model or "-"
        keys = {
            "tenant": e.tenant,
            "feature": e.feature,
            "model": model,
            "provider": e.provider or "-",
        }
        for dimension, key in keys.items():
            r = spend[dimension].get(key)
            if r is None:
                r = spend[dimension][key] = SpendRow(key)
            r.requests += 1
            r.cost_micros += cost
            r.saved_micros += saved
            r.prompt_tokens += e.prompt_tokens
            r.completion_tokens += e.completion_tokens
        i = min(len(buckets) - 1, max(0, (e.at_ms - first) // bucket_ms))
        spend_series[e.feature][i] += cost
        status_series[status][i] += 1
        prompts[e.feature][i].append(e.prompt_estimate)
    ordered_status = [s for s in (*STATUSES, UNANSWERED) if by_status[s]]
    ordered_status += sorted(s for s in by_status if s not in ordered_status)
    expensive = sorted(
        (e for e in entries if e.cost_micros > 0), key=lambda e: (-e.cost_micros, e.at_ms)
    )
    lat = {"total_ms": latency(totals), "queue_ms": latency(queues)}
    lat.update({f"total_ms {s}": latency(per_status[s]) for s in ordered_status if per_status[s]})
    return AuditReport(
        prefix=recording.prefix,
        from_ms=recording.from_ms,
        to_ms=recording.to_ms,
        requests=len(entries),
        answered=len(entries) - by_status[UNANSWERED],
        by_status={s: by_status[s] for s in ordered_status},
        by_reason=[(s, r, n) for (s, r), n in _most_common(by_reason)],
        total_cost_micros=sum(r.cost_micros for r in spend["tenant"].values()),
        total_saved_micros=sum(r.saved_micros for r in spend["tenant"].values()),
        spend={
            d: sorted(rows.values(), key=lambda r: (-r.cost_micros, r.key))
            for d, rows in spend.items()
        },
        cache_hits=dict(_most_common(cache_hits)),
        latency=lat,
        degradations=_most_common(degradations),
        top_expensive=[row(e) for e in expensive[:top]],
        unanswered=[row(e) for e in entries if e.response is None],
        bucket_ms=bucket_ms,
        buckets=buckets,
        spend_over_time=dict(sorted(spend_series.items())),
        status_over_time={s: status_series[s] for s in ordered_status},
        prompt_trends={f: [_trend(v) for v in per] for f, per in sorted(prompts.items())},
        duplicate_responses=recording.duplicate_responses,
        undecodable=recording.undecodable,
        warnings=list(recording.warnings),
    )


def _most_common(counter: Counter[Any]) -> list[tuple[Any, int]]:
    return sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))


def _trend(values: list[int]) -> TrendPoint | None:
    if not values:
        return None
    ordered = sorted(values)
    return TrendPoint(len(values), sum(values) / len(values), percentile(ordered, 95))
