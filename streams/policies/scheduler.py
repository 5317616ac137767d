"""A bounded priority scheduler: admission, load shedding, fair dispatch and backpressure.

The scheduler is pure: it stores opaque items and returns decisions. The Faust glue
applies them: it sheds what ``offer`` refuses or evicts, dispatches what ``next``
returns, sheds what ``next`` reports expired, and pauses the request topics that
``paused_priorities`` names.

Admission (``offer``), in order:
1. deadline already passed, or the expected queue wait reaches it -> shed ``deadline_expired``;
2. queue fill at or above the priority's shed watermark (low 0.5, normal 0.8, high and
   critical never), or queue full -> displace the newest item of the lowest priority
   below the arrival (it is shed ``overloaded`` and returned in ``Admission.evicted``);
   nothing lower -> the arrival is shed ``overloaded``. So lower work always goes first.
Expected wait for an item on route r at priority p: with ``a`` items waiting on r at p or
higher, ``f`` in flight on r, ``m`` the route's max in flight and ``s`` the EWMA service
time on r, the item waits for ``a + f - m + 1`` completions, i.e. ``(a + f - m + 1) * s / m``
ms (0 while a slot is free). Until a service time is measured the wait counts as 0.

Dispatch (``next``): first any waiting item whose deadline has passed comes back as
``Expired`` (one per call; it is never dispatched). Otherwise the highest priority with an
item on a dispatchable route wins (a route is dispatchable below its max in flight and when
``can_dispatch`` agrees; blocked routes are skipped, their items keep their place). Within
a priority, each route holds a round-robin ring of tenants, each with its own FIFO: a
flooding tenant gets one turn per round like everyone else. Across routes, the front
tenants compete by least recently served, then oldest item, so one tenant's items come
out in arrival order. ``next`` counts the dispatched item in flight on its route.

Backpressure (``paused_priorities``): a priority pauses when fill reaches its pause
watermark (low 0.4, normal 0.7, high and critical when full); normal and low also pause
while ``urgent_pause_depth`` critical/high items wait; a lower priority is paused whenever
a higher one is. It resumes only below ``watermark - resume_gap``, with no critical/high
item waiting, and after ``min_pause_ms`` paused: hysteresis, so intake does not flap.
Except while urgent work waits, a priority whose shed watermark is reached is not paused
but read: its arrivals are shed ``overloaded`` at once unless lower work can make room
(step 2 above), so its clients get a terminal answer with a retry hint instead of waiting
in Kafka for their deadline to pass.

Cost (n items waiting, R routes with work waiting, a handful of models in practice):
``offer`` O(R + log n); ``next`` O(R + log n) amortized; ``expire`` O(k log n) for k
expired; ``started``/``finished``/``paused_priorities`` O(1); ``stats`` O(R); ``drain`` O(n).
Removed items are dropped lazily from the internal queues; a compaction after as many
removals as live items keeps memory O(n) and the bounds above amortized.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Generic, TypeVar

from streams.policies.deadline import check
from streams.policies.verdict import Reason

T = TypeVar("T")

_COMPACT_SLACK = 64


class Priority(IntEnum):
    """Request priority; a smaller value is served first."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3

    @classmethod
    def from_name(cls, name: str) -> Priority:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            known = ", ".join(p.label for p in cls)
            raise ValueError(f"unknown priority {name!r} (known: {known})") from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class SchedulerConfig:
    """Capacity, shedding and pause watermarks (fractions of capacity), per-route concurrency."""

    capacity: int = 1_000
    low_shed_watermark: float | None = 0.5
    normal_shed_watermark: float | None = 0.8
    high_shed_watermark: float | None = None  # critical is never shed by load
    low_pause_watermark: float = 0.4
    normal_pause_watermark: float = 0.7  # high and critical pause when full
    resume_gap: float = 0.1
    urgent_pause_depth: int = 1  # critical+high items waiting that pause normal/low; 0 = off
    min_pause_ms: int = 250
    max_in_flight_per_route: int = 16
    route_max_in_flight: Mapping[str, int] = field(default_factory=dict)
    service_ewma_alpha: float = 0.2
    initial_service_ms: float | None = None

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {self.capacity}")
        for p in Priority:
            mark = self.shed_watermark(p)
            if mark is not None and not 0.0 < mark <= 1.0:
                raise ValueError(f"{p.label} shed watermark must be in (0, 1], got {mark}")
            if not 0.0 < self.pause_watermark(p) <= 1.0:
                raise ValueError(f"{p.label} pause watermark must be in (0, 1]")
        if not 0.0 <= self.resume_gap < 1.0:
            raise ValueError(f"resume_gap must be in [0, 1), got {self.resume_gap}")
        if self.urgent_pause_depth < 0 or self.min_pause_ms < 0:
            raise ValueError("urgent_pause_depth and min_pause_ms must not be negative")
        limits = [self.max_in_flight_per_route, *self.route_max_in_flight.values()]
        if min(limits) < 1:
            raise ValueError("max in flight per route must be at least 1")
        if not 0.0 < self.service_ewma_alpha <= 1.0:
            raise ValueError(f"service_ewma_alpha must be in (0, 1], got {self.service_ewma_alpha}")
        if self.initial_service_ms is not None and self.initial_service_ms <= 0:
            raise ValueError("initial_service_ms must be positive or None")

    def shed_watermark(self, priority: Priority) -> float | None:
        return {
            Priority.CRITICAL: None,
            Priority.HIGH: self.high_shed_watermark,
            Priority.NORMAL: self.normal_shed_watermark,
            Priority.LOW: self.low_shed_watermark,
        }[priority]

    def pause_watermark(self, priority: Priority) -> float:
        if priority is Priority.LOW:
            return self.low_pause_watermark
        return self.normal_pause_watermark if priority is Priority.NORMAL else 1.0

    def resume_watermark(self, priority: Priority) -> float:
        # rounded so that 0.4 - 0.1 is 0.3, not 0.30000000000000004
        return round(self.pause_watermark(priority) - self.resume_gap, 9)

    def max_in_flight(self, route_key: str) -> int:
        return self.route_max_in_flight.get(route_key, self.max_in_flight_per_route)


@dataclass(frozen=True, slots=True)
class Queued(Generic[T]):
    """One unit of work: an opaque item and what the scheduler needs to know about it."""

    item: T
    tenant: str
    priority: Priority
    enqueued_ms: int
    deadline_ms: int
    route_key: str
    est_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Admission(Generic[T]):
    """``offer``'s answer: admitted or shed (with a reason), the figures, and any evictions."""

    admitted: bool
    reason: Reason
    depth: Mapping[str, int]  # waiting items per priority label, before this offer
    fill: float
    expected_wait_ms: int
    watermark: float | None
    evicted: tuple[Queued[T], ...] = ()

    @property
    def message(self) -> str:
        wait = f"expected wait {self.expected_wait_ms} ms"
        fill = f"queue {self.fill:.0%} full"
        if self.admitted:
            return f"admitted; {fill}; {wait}"
        if self.reason is Reason.DEADLINE_EXPIRED:
            return f"deadline passed or would pass while queued; {wait}; {fill}"
        if self.watermark is not None and self.fill >= self.watermark:
            return f"overloaded: {fill} >= shed watermark {self.watermark:.0%}; {wait}"
        return f"overloaded: {fill}, no lower-priority work to displace"


@dataclass(frozen=True, slots=True)
class Dispatch(Generic[T]):
    """Send this now; it is already counted in flight on its route."""

    queued: Queued[T]
    waited_ms: int


@dataclass(frozen=True, slots=True)
class Expired(Generic[T]):
    """Its deadline passed while it waited: shed it with ``deadline_expired``, never send it."""

    queued: Queued[T]
    waited_ms: int


class _Entry(Generic[T]):
    __slots__ = ("alive", "queued", "seq")

    def __init__(self, queued: Queued[T], seq: int) -> None:
        self.queued = queued
        self.seq = seq
        self.alive = True


_Ring = OrderedDict[str, deque[_Entry[T]]]


def _ewma(old: float | None, sample: float, alpha: float) -> float:
    return sample if old is None else old + alpha * (sample - old)


class Scheduler(Generic[T]):
    """Holds waiting work in memory, bounded by ``config.capacity``; see the module docstring."""

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self._config = config or SchedulerConfig()
        # priority -> route -> ring of tenants -> FIFO; may hold removed entries until trimmed
        self._rings: list[dict[str, _Ring[T]]] = [{} for _ in Priority]
        self._arrivals: list[deque[_Entry[T]]] = [deque() for _ in Priority]
        self._deadlines: list[tuple[int, int, _Entry[T]]] = []
        # exact counts of live (waiting) entries
        self._depth = [0 for _ in Priority]
        self._route_depth: list[dict[str, int]] = [{} for _ in Priority]
        self._tenant_depth: dict[str, int] = {}
        self._last_served: dict[str, int] = {}
        self._seq = 0
        self._removed_since_compaction = 0
        self._in_flight: dict[str, int] = {}
        self._service_ms: dict[str, float] = {}
        self._overall_service_ms = self._config.initial_service_ms
        self._paused: dict[Priority, int] = {}  # priority -> paused since (ms)
        self._shed: dict[tuple[Reason, Priority], int] = {}
        self._admitted = 0
        self._dispatched = 0

    # -- figures ---------------------------------------------------------------

    def __len__(self) -> int:
        return sum(self._depth)

    @property
    def fill(self) -> float:
        return len(self) / self._config.capacity

    def depth(self, priority: Priority) -> int:
        return self._depth[priority]

    def in_flight(self, route_key: str) -> int:
        return self._in_flight.get(route_key, 0)

    def expected_wait_ms(self, priority: Priority, route_key: str) -> int:
        """How long a new item of ``priority`` on ``route_key`` would wait for a slot."""
        service_ms = self._service_ms.get(route_key, self._overall_service_ms)
        if service_ms is None:
            return 0
        slots = self._config.max_in_flight(route_key)
        ahead = sum(self._route_depth[p].get(route_key, 0) for p in Priority if p <= priority)
        position = ahead + self.in_flight(route_key) - slots + 1
        return 0 if position <= 0 else math.ceil(position * service_ms / slots)

    # -- intake ----------------------------------------------------------------

    def offer(self, now_ms: int, queued: Queued[T]) -> Admission[T]:
        """Admit ``queued``, or shed it; see the module docstring for the rules."""
        priority = queued.priority
        wait = self.expected_wait_ms(priority, queued.route_key)
        watermark = self._config.shed_watermark(priority)
        depth = {p.label: self._depth[p] for p in Priority}
        fill = self.fill

        def shed(reason: Reason) -> Admission[T]:
            self._count_shed(reason, priority)
            return Admission(False, reason, depth, fill, wait, watermark)

        if not check(now_ms, queued.deadline_ms, wait).proceed:
            return shed(Reason.DEADLINE_EXPIRED)
        evicted: tuple[Queued[T], ...] = ()
        over_watermark = watermark is not None and fill >= watermark
        if over_watermark or len(self) >= self._config.capacity:
            victim = self._evict_below(priority)
            if victim is None:
                return shed(Reason.OVERLOADED)
            evicted = (victim,)
        self._push(queued)
        return Admission(True, Reason.NONE, depth, fill, wait, watermark, evicted)

    def _push(self, queued: Queued[T]) -> None:
        entry = _Entry(queued, self._seq)
        self._seq += 1
        p, route, tenant = queued.priority, queued.route_key, queued.tenant
        ring = self._rings[p].setdefault(route, OrderedDict())
        ring.setdefault(tenant, deque()).append(entry)
        self._arrivals[p].append(entry)
        heapq.heappush(self._deadlines, (queued.deadline_ms, entry.seq, entry))
        self._depth[p] += 1
        self._route_depth[p][route] = self._route_depth[p].get(route, 0) + 1
        self._tenant_depth[tenant] = self._tenant_depth.get(tenant, 0) + 1
        self._admitted += 1

    def _evict_below(self, priority: Priority) -> Queued[T] | None:
        for p in reversed(Priority):
            if p <= priority:
                return None
            if self._depth[p]:
                arrivals = self._arrivals[p]
                while not arrivals[-1].alive:
                    arrivals.pop()
                victim = arrivals.pop()
                self._count_shed(Reason.OVERLOADED, p)
                self._remove(victim)
                return victim.queued
        return None

    # -- dispatch --------------------------------------------------------------

    def next(
        self, now_ms: int, can_dispatch: Callable[[str], bool] | None = None
    ) -> Dispatch[T] | Expired[T] | None:
        """The next expired item, else the next item to send, else ``None``; call until ``None``."""
        expired = self._pop_expired(now_ms)
        if expired is not None:
            return Expired(expired.queued, now_ms - expired.queued.enqueued_ms)
        is_open: dict[str, bool] = {}
        for p in Priority:
            best: tuple[tuple[int, int], _Ring[T], str, _Entry[T]] | None = None
            for route, ring in self._rings[p].items():
                if route not in is_open:
                    is_open[route] = self._route_open(route, can_dispatch)
                if not is_open[route]:
                    continue
                tenant, entry = self._front(ring)
                key = (self._last_served.get(tenant, 0), entry.seq)
                if best is None or key < best[0]:
                    best = (key, ring, tenant, entry)
            if best is not None:
                _, ring, tenant, entry = best
                return self._dispatch(now_ms, ring, tenant, entry)
        return None

    def expire(self, now_ms: int) -> list[Queued[T]]:
        """Remove and return every waiting item whose deadline has passed (shed them)."""
        out: list[Queued[T]] = []
        while (entry := self._pop_expired(now_ms)) is not None:
            out.append(entry.queued)
        return out

    def _route_open(self, route_key: str, can_dispatch: Callable[[str], bool] | None) -> bool:
        if self.in_flight(route_key) >= self._config.max_in_flight(route_key):
            return False
        return can_dispatch is None or can_dispatch(route_key)

    def _front(self, ring: _Ring[T]) -> tuple[str, _Entry[T]]:
        # The route has live work (its ring is deleted when its count reaches 0).
        while True:
            tenant, fifo = next(iter(ring.items()))
            while fifo and not fifo[0].alive:
                fifo.popleft()
            if fifo:
                return tenant, fifo[0]
            del ring[tenant]

    def _dispatch(self, now_ms: int, ring: _Ring[T], tenant: str, entry: _Entry[T]) -> Dispatch[T]:
        fifo = ring[tenant]
        fifo.popleft()
        if fifo:
            ring.move_to_end(tenant)
        else:
            del ring[tenant]
        self._dispatched += 1
        self._last_served[tenant] = self._dispatched
        self.started(entry.queued.route_key)
        self._remove(entry)
        return Dispatch(entry.queued, now_ms - entry.queued.enqueued_ms)

    def _pop_expired(self, now_ms: int) -> _Entry[T] | None:
        while self._deadlines and self._deadlines[0][0] <= now_ms:
            entry = heapq.heappop(self._deadlines)[2]
            if entry.alive:
                self._count_shed(Reason.DEADLINE_EXPIRED, entry.queued.priority)
                self._remove(entry)
                return entry
        return None

    # -- in flight and service time --------------------------------------------

    def started(self, route_key: str) -> None:
        """Count one more call in flight on ``route_key`` (``next`` already does for its items)."""
        self._in_flight[route_key] = self.in_flight(route_key) + 1

    def finished(self, now_ms: int, route_key: str, service_ms: float | None = None) -> None:
        """A call on ``route_key`` ended; ``service_ms`` (if given) feeds the service-time EWMA.

        ``now_ms`` is taken for symmetry with the other calls (replay passes recorded time).
        """
        count = self.in_flight(route_key)
        if count <= 0:
            raise ValueError(f"finished() without a call in flight on route {route_key!r}")
        if count == 1:
            del self._in_flight[route_key]
        else:
            self._in_flight[route_key] = count - 1
        if service_ms is None:
            return
        if service_ms < 0:
            raise ValueError(f"service_ms must not be negative, got {service_ms}")
        alpha = self._config.service_ewma_alpha
        self._service_ms[route_key] = _ewma(self._service_ms.get(route_key), service_ms, alpha)
        self._overall_service_ms = _ewma(self._overall_service_ms, service_ms, alpha)

    # -- backpressure ------------------------------------------------------------

    def paused_priorities(self, now_ms: int) -> frozenset[Priority]:
        """The priorities whose intake (request topics) must be paused now."""
        cfg = self._config
        fill = self.fill
        urgent = self._depth[Priority.CRITICAL] + self._depth[Priority.HIGH]
        for p in Priority:
            by_urgency = p >= Priority.NORMAL and cfg.urgent_pause_depth > 0
            if p in self._paused:
                calm = fill < cfg.resume_watermark(p) and not (by_urgency and urgent > 0)
                if calm and now_ms - self._paused[p] >= cfg.min_pause_ms:
                    del self._paused[p]
            elif fill >= cfg.pause_watermark(p) or (
                by_urgency and urgent >= cfg.urgent_pause_depth
            ):
                self._paused[p] = now_ms
        if self._paused:
            highest = min(self._paused)
            for p in Priority:
                if p > highest:
                    self._paused.setdefault(p, now_ms)
        urgent_waiting = cfg.urgent_pause_depth > 0 and urgent >= cfg.urgent_pause_depth
        return frozenset(p for p in self._paused if urgent_waiting or not self._shedding(p, fill))

    def _shedding(self, priority: Priority, fill: float) -> bool:
        """At its shed watermark a priority is read and shed, not left waiting in Kafka
        (unless urgent work waits: then nothing below high is fetched at all)."""
        watermark = self._config.shed_watermark(priority)
        return watermark is not None and fill >= watermark

    # -- housekeeping ------------------------------------------------------------

    def drain(self, predicate: Callable[[Queued[T]], bool] | None = None) -> list[Queued[T]]:
        """Remove and return waiting items (all, or those matching), oldest first; not shed.

        For a rebalance (drop the revoked tenants' work: its offsets stay uncommitted and the
        new owner re-reads it) or a shutdown.
        """
        live = sorted((e for a in self._arrivals for e in a if e.alive), key=lambda e: e.seq)
        chosen = [e for e in live if predicate is None or predicate(e.queued)]
        for entry in chosen:
            self._remove(entry)
        return [e.queued for e in chosen]

    def stats(self) -> dict[str, object]:
        """Figures for the status endpoint (JSON-ready)."""
        shed: dict[str, dict[str, int]] = {}
        for (reason, p), n in sorted(self._shed.items()):
            shed.setdefault(reason.value, {})[p.label] = n
        return {
            "capacity": self._config.capacity,
            "queued": len(self),
            "fill": round(self.fill, 4),
            "depth": {p.label: self._depth[p] for p in Priority},
            "in_flight": dict(sorted(self._in_flight.items())),
            "service_ms": {r: round(ms, 1) for r, ms in sorted(self._service_ms.items())},
            "service_rate_per_s": {
                r: round(self._config.max_in_flight(r) * 1000 / ms, 3) if ms > 0 else None
                for r, ms in sorted(self._service_ms.items())
            },
            "shed": shed,
            "paused": [p.label for p in sorted(self._paused)],
            "admitted": self._admitted,
            "dispatched": self._dispatched,
        }

    def _count_shed(self, reason: Reason, priority: Priority) -> None:
        self._shed[reason, priority] = self._shed.get((reason, priority), 0) + 1

    def _remove(self, entry: _Entry[T]) -> None:
        entry.alive = False
        q = entry.queued
        p, route, tenant = q.priority, q.route_key, q.tenant
        self._depth[p] -= 1
        left = self._route_depth[p][route] - 1
        if left:
            self._route_depth[p][route] = left
        else:  # only removed entries remain in this route's ring
            del self._route_depth[p][route]
            del self._rings[p][route]
        left = self._tenant_depth[tenant] - 1
        if left:
            self._tenant_depth[tenant] = left
        else:
            del self._tenant_depth[tenant]
            self._last_served.pop(tenant, None)
        self._removed_since_compaction += 1
        if self._removed_since_compaction > len(self) + _COMPACT_SLACK:
            self._compact()

    def _compact(self) -> None:
        self._removed_since_compaction = 0
        self._deadlines = [d for d in self._deadlines if d[2].alive]
        heapq.heapify(self._deadlines)
        for p in Priority:
            self._arrivals[p] = deque(e for e in self._arrivals[p] if e.alive)
            for ring in self._rings[p].values():
                for tenant in list(ring):
                    fifo = deque(e for e in ring[tenant] if e.alive)
                    if fifo:
                        ring[tenant] = fifo
                    else:
                        del ring[tenant]
