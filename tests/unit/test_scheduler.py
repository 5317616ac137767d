"""The priority scheduler: order, fairness, shedding, eviction, expiry, routes, pausing, stats."""

from __future__ import annotations

import pytest

from streams.policies.clock import ManualClock
from streams.policies.scheduler import (
    Dispatch,
    Expired,
    Priority,
    Queued,
    Scheduler,
    SchedulerConfig,
)
from streams.policies.verdict import Reason

FAR = 10**12
C, H, N, L = Priority.CRITICAL, Priority.HIGH, Priority.NORMAL, Priority.LOW
NO_LOAD_SHEDDING = {"low_shed_watermark": None, "normal_shed_watermark": None}


def work(
    name: str,
    priority: Priority = N,
    *,
    tenant: str = "t1",
    route: str = "r",
    now: int = 0,
    deadline: int = FAR,
) -> Queued[str]:
    return Queued(name, tenant, priority, now, deadline, route)


def sched(**overrides: object) -> Scheduler[str]:
    return Scheduler(SchedulerConfig(**overrides))  # type: ignore[arg-type]


def offer_all(s: Scheduler[str], *items: Queued[str], now: int = 0) -> None:
    for q in items:
        assert s.offer(now, q).admitted, q.item


def dispatch_all(s: Scheduler[str], now: int = 0) -> list[str]:
    """Names in dispatch order until nothing is dispatchable (expired items fail the test)."""
    out = []
    while (d := s.next(now)) is not None:
        assert isinstance(d, Dispatch), d
        out.append(d.queued.item)
    return out


@pytest.mark.parametrize(("name", "priority"), [("critical", C), ("High", H), (" low ", L)])
def test_priority_from_name_ignores_case_and_spaces(name: str, priority: Priority) -> None:
    assert Priority.from_name(name) is priority


def test_unknown_priority_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="urgent"):
        Priority.from_name("urgent")


def test_highest_priority_is_dispatched_first_under_a_backlog() -> None:
    s = sched(**NO_LOAD_SHEDDING)
    offer_all(s, work("l1", L), work("n1", N), work("h1", H), work("c1", C), work("l2", L))
    offer_all(s, work("h2", H), work("c2", C))
    assert dispatch_all(s) == ["c1", "c2", "h1", "h2", "n1", "l1", "l2"]


def test_one_tenant_is_served_in_arrival_order_across_routes() -> None:
    s = sched()
    names = [f"a{i}" for i in range(6)]
    offer_all(s, *(work(n, route="x" if i % 3 else "y") for i, n in enumerate(names)))
    assert dispatch_all(s) == names


@pytest.mark.parametrize(("flood_route", "light_route"), [("r", "r"), ("x", "y")])
def test_light_tenant_is_served_within_bounded_dispatches_during_a_flood(
    flood_route: str, light_route: str
) -> None:
    s = sched(max_in_flight_per_route=1_000)
    flood = [work(f"big{i}", tenant="big", route=flood_route) for i in range(100)]
    light = [work(f"small{i}", tenant="small", route=light_route) for i in range(3)]
    offer_all(s, *flood, *light)
    order = dispatch_all(s)
    assert [order.index(q.item) for q in light] == [1, 3, 5]  # every other dispatch
    assert [n for n in order if n.startswith("big")] == [q.item for q in flood]


@pytest.mark.parametrize(
    ("critical_waiting", "priority", "admitted"),
    [
        (4, L, True),
        (5, L, False),  # fill 0.5 >= low watermark
        (5, N, True),
        (7, N, True),
        (8, N, False),  # fill 0.8 >= normal watermark
        (8, H, True),  # high: no watermark by default
        (9, H, True),
        (9, C, True),
    ],
)
def test_load_sheds_low_then_normal_but_not_high_or_critical(
    critical_waiting: int, priority: Priority, admitted: bool
) -> None:
    s = sched(capacity=10)
    offer_all(s, *(work(f"c{i}", C) for i in range(critical_waiting)))
    admission = s.offer(0, work("x", priority))
    assert admission.admitted is admitted
    assert admission.reason is (Reason.NONE if admitted else Reason.OVERLOADED)
    assert admission.fill == critical_waiting / 10
    assert admission.depth["critical"] == critical_waiting


def test_at_its_watermark_a_normal_arrival_displaces_waiting_low_work() -> None:
    s = sched(capacity=10)
    offer_all(s, *(work(f"l{i}", L) for i in range(3)))
    offer_all(s, *(work(f"h{i}", H) for i in range(5)))
    normal = s.offer(0, work("n", N))  # fill 0.8: normal's shed watermark
    assert normal.admitted
    assert [e.item for e in normal.evicted] == ["l2"]
    assert (s.depth(N), s.depth(L), len(s)) == (1, 2, 8)


def test_configured_high_watermark_sheds_high_but_never_critical() -> None:
    s = sched(capacity=10, high_shed_watermark=0.9)
    offer_all(s, *(work(f"c{i}", C) for i in range(9)))
    high = s.offer(0, work("h", H))
    assert (high.admitted, high.reason, high.watermark) == (False, Reason.OVERLOADED, 0.9)
    assert "watermark 90%" in high.message
    assert s.offer(0, work("c9", C)).admitted


def test_full_queue_evicts_the_newest_item_of_the_lowest_priority_below() -> None:
    s = sched(capacity=4, **NO_LOAD_SHEDDING)
    offer_all(s, work("low1", L), work("low2", L), work("normal1", N), work("normal2", N))
    steps = [
        (work("high1", H), True, ["low2"]),
        (work("crit1", C), True, ["low1"]),
        (work("high2", H), True, ["normal2"]),
        (work("low3", L), False, []),  # nothing lower to displace
        (work("crit2", C), True, ["normal1"]),
        (work("crit3", C), True, ["high2"]),
        (work("high3", H), False, []),
    ]
    for queued, admitted, evicted in steps:
        admission = s.offer(0, queued)
        assert admission.admitted is admitted, queued.item
        assert [q.item for q in admission.evicted] == evicted, queued.item
    assert dispatch_all(s) == ["crit1", "crit2", "crit3", "high1"]
    assert s.stats()["shed"] == {"overloaded": {"high": 2, "normal": 2, "low": 3}}


def test_critical_is_never_shed_by_load_while_lower_work_can_make_room() -> None:
    s = sched(capacity=5, **NO_LOAD_SHEDDING)
    offer_all(s, *(work(f"l{i}", L) for i in range(5)))
    for i in range(5):
        admission = s.offer(0, work(f"c{i}", C))
        assert admission.admitted and admission.fill == 1.0
    assert s.depth(C) == 5 and s.depth(L) == 0


def _busy_route(s: Scheduler[str], clock: ManualClock, service_ms: int) -> None:
    """Measure one call of ``service_ms`` on route r, then leave one call in flight there."""
    offer_all(s, work("first"), now=clock.now_ms())
    assert isinstance(s.next(clock.now_ms()), Dispatch)
    s.finished(clock.now_ms(), "r", service_ms)
    offer_all(s, work("busy"), now=clock.now_ms())
    assert isinstance(s.next(clock.now_ms()), Dispatch)


def test_expected_wait_beyond_the_deadline_is_shed_at_intake() -> None:
    clock = ManualClock(1_000_000)
    s = sched(max_in_flight_per_route=1)
    _busy_route(s, clock, service_ms=1_000)
    now = clock.now_ms()
    offer_all(s, *(work(f"w{i}", now=now) for i in range(4)), now=now)
    # 4 waiting + 1 in flight on a 1-slot route: 5 completions of 1 s each before a slot
    late = s.offer(now, work("late", now=now, deadline=now + 5_000))
    assert (late.admitted, late.reason, late.expected_wait_ms) == (
        False,
        Reason.DEADLINE_EXPIRED,
        5_000,
    )
    assert s.offer(now, work("in_time", now=now, deadline=now + 5_001)).admitted
    # critical work only waits behind critical work and the call in flight
    assert s.expected_wait_ms(C, "r") == 1_000
    assert s.offer(now, work("urgent", C, now=now, deadline=now + 1_500)).admitted
    assert s.expected_wait_ms(N, "other") == 0  # an idle route: no wait


def test_no_expected_wait_shedding_before_a_service_time_is_measured() -> None:
    s = sched(max_in_flight_per_route=1)
    offer_all(s, *(work(f"w{i}") for i in range(50)))
    assert s.offer(0, work("tight", deadline=1)).admitted


def test_initial_service_time_enables_expected_wait_before_any_measurement() -> None:
    s = sched(max_in_flight_per_route=2, initial_service_ms=100.0)
    offer_all(s, *(work(f"w{i}") for i in range(9)))
    assert s.expected_wait_ms(N, "r") == 400  # (9 - 2 + 1) * 100 / 2


@pytest.mark.parametrize("deadline", [0, 999, 1_000])
def test_deadline_already_passed_is_shed_at_intake(deadline: int) -> None:
    s = sched()
    admission = s.offer(1_000, work("stale", C, now=1_000, deadline=deadline))
    assert (admission.admitted, admission.reason) == (False, Reason.DEADLINE_EXPIRED)
    assert len(s) == 0
    assert s.stats()["shed"] == {"deadline_expired": {"critical": 1}}


def test_item_expiring_while_waiting_is_returned_expired_and_never_dispatched() -> None:
    clock = ManualClock()
    s = sched(max_in_flight_per_route=1)
    offer_all(s, work("running"), work("short", deadline=100), work("long"))
    assert dispatch_all(s) == ["running"]
    clock.advance(100)
    expired = s.next(clock.now_ms())
    assert isinstance(expired, Expired)
    assert (expired.queued.item, expired.waited_ms) == ("short", 100)
    assert s.next(clock.now_ms()) is None  # the route is still busy
    s.finished(clock.now_ms(), "r", 100)
    assert dispatch_all(s, clock.now_ms()) == ["long"]
    assert s.stats()["shed"] == {"deadline_expired": {"normal": 1}}


def test_expire_returns_every_item_past_its_deadline() -> None:
    s = sched()
    offer_all(s, work("a", deadline=50), work("b", H, deadline=10), work("c", deadline=FAR))
    assert s.expire(9) == []
    assert [q.item for q in s.expire(50)] == ["b", "a"]
    assert dispatch_all(s, 50) == ["c"]


def test_max_in_flight_per_route_is_respected() -> None:
    s = sched(route_max_in_flight={"slow": 2})
    offer_all(s, *(work(f"s{i}", route="slow") for i in range(5)), work("f0", route="fast"))
    assert dispatch_all(s) == ["s0", "s1", "f0"]
    assert s.in_flight("slow") == 2
    s.finished(0, "slow", 10)
    assert dispatch_all(s) == ["s2"]


def test_blocked_route_is_skipped_but_its_waiting_work_goes_first_when_it_frees() -> None:
    s = sched(max_in_flight_per_route=1, **NO_LOAD_SHEDDING)
    offer_all(s, work("running", L, route="slow"))
    assert dispatch_all(s) == ["running"]
    offer_all(s, work("crit", C, route="slow"), work("other", L, route="fast"))
    offer_all(s, work("later", L, route="slow"))
    assert dispatch_all(s) == ["other"]
    s.finished(0, "slow", 10)
    assert dispatch_all(s) == ["crit"]


def test_can_dispatch_callback_closes_routes() -> None:
    s = sched()
    offer_all(s, work("crit", C, route="broken"), work("norm", N, route="ok"))
    assert s.next(0, lambda route: route != "broken") == Dispatch(work("norm", route="ok"), 0)
    assert s.next(0, lambda route: route != "broken") is None
    assert dispatch_all(s) == ["crit"]
    assert s.stats()["in_flight"] == {"broken": 1, "ok": 1}


@pytest.mark.parametrize(
    ("waiting", "paused"),
    [
        ([], set()),
        ([L] * 3, set()),
        ([L] * 4, {L}),  # fill 0.4 >= low pause watermark
        ([N] * 7, {N, L}),  # fill 0.7 >= normal pause watermark
        ([H], {N, L}),  # urgent work waiting pauses normal and low
        ([C] * 10, {C, H, N, L}),  # full
    ],
)
def test_pause_set_stops_lower_priorities_first_and_everything_when_full(
    waiting: list[Priority], paused: set[Priority]
) -> None:
    s = sched(capacity=10, **NO_LOAD_SHEDDING)
    offer_all(s, *(work(f"w{i}", p) for i, p in enumerate(waiting)))
    assert s.paused_priorities(0) == paused


def test_lower_priority_is_paused_whenever_a_higher_one_is() -> None:
    s = sched(
        capacity=10,
        low_pause_watermark=0.9,
        low_shed_watermark=0.9,
        normal_pause_watermark=0.5,
        urgent_pause_depth=0,
    )
    offer_all(s, *(work(f"n{i}", N) for i in range(5)))
    assert s.paused_priorities(0) == {N, L}


def test_a_priority_at_its_shed_watermark_is_read_and_shed_not_paused() -> None:
    s = sched(capacity=10)
    offer_all(s, *(work(f"n{i}", N) for i in range(4)))
    assert s.paused_priorities(0) == {L}  # fill 0.4: low waits in Kafka
    offer_all(s, work("n4", N))
    assert s.paused_priorities(0) == frozenset()  # fill 0.5: low is read again, to be shed
    low = s.offer(0, work("l0", L))
    assert not low.admitted and low.reason == Reason.OVERLOADED
    offer_all(s, *(work(f"n{i}", N) for i in range(5, 8)))
    assert s.paused_priorities(0) == frozenset()  # fill 0.8: normal is shed too


def test_while_urgent_work_waits_nothing_below_high_is_read_even_to_shed_it() -> None:
    s = sched(capacity=10, urgent_pause_depth=1)
    offer_all(s, *(work(f"h{i}", H) for i in range(9)))
    assert s.paused_priorities(0) == {N, L}


def test_pause_resumes_only_below_the_lower_watermark_after_the_hold_time() -> None:
    clock = ManualClock()
    s = sched(capacity=10, max_in_flight_per_route=100, min_pause_ms=1_000)
    offer_all(s, *(work(f"n{i}") for i in range(4)))
    assert s.paused_priorities(clock.now_ms()) == {L}
    steps = [  # (advance ms, items added (+) or dispatched (-), paused after)
        (1_000, -1, {L}),  # fill 0.3: not below the 0.4 - 0.1 resume mark
        (0, -1, set()),  # fill 0.2, held long enough: resume
        (0, +1, set()),  # fill 0.3: below the pause mark, no flapping
        (0, +1, {L}),  # fill 0.4: pause again
        (0, -2, {L}),  # fill 0.2 but paused only just now: hold
        (999, 0, {L}),
        (1, 0, set()),
    ]
    for advance, delta, paused in steps:
        clock.advance(advance)
        for i in range(delta):
            offer_all(s, work(f"more{i}"), now=clock.now_ms())
        for _ in range(-delta):
            assert isinstance(s.next(clock.now_ms()), Dispatch)
        assert s.paused_priorities(clock.now_ms()) == paused, (len(s), clock.now_ms())
    assert s.stats()["paused"] == []


def test_normal_and_low_stay_paused_while_urgent_work_waits() -> None:
    clock = ManualClock()
    s = sched(max_in_flight_per_route=1, min_pause_ms=250)
    offer_all(s, work("running"))
    assert dispatch_all(s) == ["running"]
    offer_all(s, work("h", H))
    assert s.paused_priorities(clock.now_ms()) == {N, L}
    clock.advance(10_000)
    assert s.paused_priorities(clock.now_ms()) == {N, L}  # h still waits for the route
    s.finished(clock.now_ms(), "r", 10_000)
    assert dispatch_all(s, clock.now_ms()) == ["h"]
    assert s.paused_priorities(clock.now_ms()) == set()


def test_stats_report_depth_in_flight_sheds_and_service_rate() -> None:
    s = sched(capacity=10, route_max_in_flight={"m": 4})
    offer_all(s, work("a", C, route="m"), work("b", L), work("c", L))
    assert dispatch_all(s) == ["a", "b", "c"]
    s.finished(0, "m", 200)
    s.finished(0, "r", 100)
    offer_all(s, work("d", H), work("e", N))
    assert not s.offer(0, work("f", L, deadline=0)).admitted
    stats = s.stats()
    assert stats["depth"] == {"critical": 0, "high": 1, "normal": 1, "low": 0}
    assert (stats["queued"], stats["fill"], stats["capacity"]) == (2, 0.2, 10)
    assert stats["in_flight"] == {"r": 1}
    assert stats["service_ms"] == {"m": 200.0, "r": 100.0}
    assert stats["service_rate_per_s"] == {"m": 20.0, "r": 160.0}
    assert stats["shed"] == {"deadline_expired": {"low": 1}}
    assert (stats["admitted"], stats["dispatched"]) == (5, 3)


def test_service_time_is_an_ewma() -> None:
    s = sched(service_ewma_alpha=0.5)
    for service_ms in (100, 200, 400):
        s.started("r")
        s.finished(0, "r", service_ms)
    assert s.stats()["service_ms"] == {"r": 275.0}  # 100 -> 150 -> 275


def test_finished_without_a_call_in_flight_is_a_bug() -> None:
    s = sched()
    with pytest.raises(ValueError, match="in flight"):
        s.finished(0, "r", 10)


def test_drain_removes_matching_work_without_shedding_it() -> None:
    s = sched()
    offer_all(s, work("a1", tenant="a"), work("b1", H, tenant="b"), work("a2", L, tenant="a"))
    drained = s.drain(lambda q: q.tenant == "a")
    assert [q.item for q in drained] == ["a1", "a2"]
    assert dispatch_all(s) == ["b1"]
    assert s.stats()["shed"] == {}


def test_removed_entries_do_not_accumulate_under_churn() -> None:
    clock = ManualClock()
    s = sched()
    offer_all(s, *(work(f"keep{i}") for i in range(10)))
    for i in range(5_000):
        offer_all(s, work(f"x{i}", deadline=clock.now_ms() + 5), now=clock.now_ms())
        clock.advance(5)
        assert [q.item for q in s.expire(clock.now_ms())] == [f"x{i}"]
    # Internals on purpose: lazily removed entries must be compacted away.
    assert len(s._deadlines) < 200
    assert sum(len(fifo) for ring in s._rings[N].values() for fifo in ring.values()) < 200
    assert dispatch_all(s, clock.now_ms()) == [f"keep{i}" for i in range(10)]


@pytest.mark.parametrize(
    "bad",
    [
        {"capacity": 0},
        {"low_shed_watermark": 0.0},
        {"normal_shed_watermark": 1.5},
        {"low_pause_watermark": 0.0},
        {"resume_gap": 1.0},
        {"max_in_flight_per_route": 0},
        {"route_max_in_flight": {"r": 0}},
        {"service_ewma_alpha": 0.0},
        {"initial_service_ms": 0.0},
        {"min_pause_ms": -1},
    ],
)
def test_bad_scheduler_config_is_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SchedulerConfig(**bad)  # type: ignore[arg-type]
