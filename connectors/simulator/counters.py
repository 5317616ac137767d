"""What the simulator saw: requests per model, per status, per epoch second, concurrency, ids.

Tests and benchmarks assert on these through ``GET /admin/counts`` ("never more than N requests
in any 60 s window", "this request id never reached the provider", "no more than 20 in flight").
Memory is bounded: per-second buckets for the last ``history_s`` seconds and the last
``recent_ids`` request ids. Recording is O(1) per request; ``snapshot`` is O(buckets).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Tally:
    received: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    per_second: dict[int, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0

    def add_second(self, second: int, keep: int) -> None:
        buckets = self.per_second
        buckets[second] = buckets.get(second, 0) + 1
        if len(buckets) > keep:
            del buckets[next(iter(buckets))]

    def to_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "max_per_60s": max_in_window(self.per_second, 60),
            "per_second": {str(k): v for k, v in self.per_second.items()},
        }


def max_in_window(per_second: dict[int, int], window_s: int) -> int:
    """The largest number of requests within any ``window_s`` consecutive seconds."""
    seconds = sorted(per_second)
    best = total = 0
    lo = 0
    for second in seconds:
        total += per_second[second]
        while seconds[lo] <= second - window_s:
            total -= per_second[seconds[lo]]
            lo += 1
        best = max(best, total)
    return best


class Counters:
    def __init__(self, recent_ids: int = 100_000, history_s: int = 3_600) -> None:
        self._recent_ids = recent_ids
        self._history_s = history_s
        self.total = _Tally()
        self.models: dict[str, _Tally] = {}
        self.ids: dict[str, int] = {}
        self._id_order: deque[str] = deque()

    def reset(self) -> None:
        """Zero everything except the requests still in flight (they will finish later)."""

        def fresh(t: _Tally) -> _Tally:
            return _Tally(in_flight=t.in_flight, max_in_flight=t.in_flight)

        self.total = fresh(self.total)
        self.models = {m: fresh(t) for m, t in self.models.items() if t.in_flight}
        self.ids = {}
        self._id_order = deque()

    def received(self, model: str, now_ms: int, request_id: str | None) -> None:
        """Count an arriving request and mark it in flight (until ``finished``)."""
        second = now_ms // 1000
        tally = self.models.get(model)
        if tally is None:
            tally = self.models[model] = _Tally()
        for t in (self.total, tally):
            t.received += 1
            t.add_second(second, self._history_s)
            t.in_flight += 1
            t.max_in_flight = max(t.max_in_flight, t.in_flight)
        if request_id:
            self._remember(request_id)

    def finished(self, model: str, status: int) -> None:
        """Count the status of a request counted by ``received`` and take it out of flight."""
        for t in (self.total, self.models.setdefault(model, _Tally())):
            t.in_flight -= 1
            t.by_status[status] += 1

    def seen(self, request_id: str) -> int:
        """How many times ``request_id`` arrived (0 if never, or forgotten long ago)."""
        return self.ids.get(request_id, 0)

    def recent_ids(self, limit: int) -> list[str]:
        return list(self._id_order)[-limit:] if limit > 0 else []

    def snapshot(self) -> dict[str, Any]:
        out = self.total.to_dict()
        out["models"] = {m: t.to_dict() for m, t in sorted(self.models.items())}
        out["ids_tracked"] = len(self.ids)
        return out

    def _remember(self, request_id: str) -> None:
        count = self.ids.get(request_id, 0)
        self.ids[request_id] = count + 1
        if count == 0:
            self._id_order.append(request_id)
            if len(self._id_order) > self._recent_ids:
                del self.ids[self._id_order.popleft()]
