"""The circuit breaker: every transition, driven by a manual clock."""

from __future__ import annotations

from typing import Any

import pytest

from streams.policies.breaker import (
    ALLOWED_TRANSITIONS,
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    Transition,
)
from streams.policies.clock import ManualClock

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
T0 = 1_700_000_000_000
FAST, SLOW = 100, 5_000


def make(**kw: Any) -> tuple[CircuitBreaker, ManualClock]:
    defaults: dict[str, Any] = {
        "window_type": "count",
        "window_size": 10,
        "minimum_calls": 5,
        "failure_rate_threshold": 0.5,
        "slow_call_duration_ms": 1_000,
        "slow_call_rate_threshold": 0.5,
        "open_duration_ms": 10_000,
        "half_open_probes": 2,
        "probe_timeout_ms": 60_000,
    }
    return CircuitBreaker(BreakerConfig(**(defaults | kw))), ManualClock(T0)


def feed(cb: CircuitBreaker, clock: ManualClock, outcomes: str, step_ms: int = 10) -> None:
    """Record outcomes: 'S' success, 'F' failure, 'L' slow success, 'X' slow failure."""
    for o in outcomes:
        assert cb.allow(clock.now_ms())
        cb.record(clock.now_ms(), success=o in "SL", duration_ms=SLOW if o in "LX" else FAST)
        clock.advance(step_ms)


def open_breaker(cb: CircuitBreaker, clock: ManualClock) -> None:
    feed(cb, clock, "FFFFF")
    assert cb.state is OPEN


def test_transition_table_is_the_resilience4j_cycle() -> None:
    assert {
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
        (HALF_OPEN, OPEN),
    } == ALLOWED_TRANSITIONS


@pytest.mark.parametrize(
    ("outcomes", "state"),
    [
        ("FFFF", CLOSED),  # 100 % failures but only 4 calls: no verdict before minimum_calls
        ("SSSFF", CLOSED),  # 40 % < 50 %
        ("SSFFF", OPEN),  # 60 %
        ("SSSFF" + "F", OPEN),  # 3 of 6 = 50 %: at the threshold opens
        ("LLLL", CLOSED),  # all slow, but before minimum_calls
        ("SSLLL", OPEN),  # 60 % slow
        ("SSSLL", CLOSED),  # 40 % slow
        ("SSSLX", CLOSED),  # 40 % slow, 20 % failed
        ("SSXXX", OPEN),  # slow failures count as both
    ],
)
def test_closed_opens_only_on_rates_at_or_over_threshold_after_minimum_calls(
    outcomes: str, state: BreakerState
) -> None:
    cb, clock = make()
    feed(cb, clock, outcomes)
    assert cb.state is state


def test_open_reason_names_the_rate_that_tripped() -> None:
    cb, clock = make()
    feed(cb, clock, "SSLLL")
    assert cb.transitions[-1].reason.startswith("slow_call_rate 0.60")
    cb2, clock2 = make()
    feed(cb2, clock2, "SSFFF")
    assert cb2.transitions[-1].reason.startswith("failure_rate 0.60")


def test_count_window_forgets_the_oldest_call() -> None:
    cb, clock = make(window_size=4, minimum_calls=4)
    feed(cb, clock, "SSSSSSF")  # window S S S F: 25 %
    assert cb.state is CLOSED
    feed(cb, clock, "F")  # window S S F F: 50 %, although only 2 of 8 calls ever failed
    assert cb.state is OPEN


@pytest.mark.parametrize(("third_failure_after_ms", "state"), [(9_999, OPEN), (10_000, CLOSED)])
def test_time_window_expires_whole_second_buckets(
    third_failure_after_ms: int, state: BreakerState
) -> None:
    cb, clock = make(window_type="time", window_size=10, minimum_calls=3)
    clock.set(T0 - T0 % 1_000)  # start of an epoch second
    feed(cb, clock, "FF", step_ms=0)
    clock.advance(third_failure_after_ms)
    feed(cb, clock, "F")
    assert cb.state is state


def test_time_window_drops_old_successes_so_recent_failures_dominate() -> None:
    cb, clock = make(window_type="time", window_size=10, minimum_calls=4)
    feed(cb, clock, "SSSSSS", step_ms=0)
    clock.advance(5_000)
    feed(cb, clock, "FF", step_ms=0)  # 2 of 8: closed
    assert cb.state is CLOSED
    clock.advance(6_000)  # the successes leave the window
    feed(cb, clock, "FS", step_ms=0)  # 3 of 4 failed
    assert cb.state is OPEN


def test_time_window_survives_a_long_gap() -> None:
    cb, clock = make(window_type="time", window_size=10, minimum_calls=3)
    feed(cb, clock, "FF")
    clock.advance(3_600_000)
    feed(cb, clock, "FS")
    assert cb.snapshot(clock.now_ms()).calls == 2
    assert cb.state is CLOSED


def test_open_fails_fast_until_open_duration_has_passed() -> None:
    cb, clock = make(open_duration_ms=10_000)
    open_breaker(cb, clock)
    opened_at = cb.transitions[-1].at_ms
    clock.set(opened_at + 9_999)
    assert not cb.allow(clock.now_ms())
    assert cb.retry_after_ms(clock.now_ms()) == 1
    assert cb.state is OPEN
    clock.advance(1)
    assert cb.allow(clock.now_ms())
    assert cb.state is HALF_OPEN


def test_outcomes_recorded_while_open_are_ignored() -> None:
    cb, clock = make()
    open_breaker(cb, clock)
    cb.record(clock.now_ms(), success=True, duration_ms=FAST)
    assert cb.state is OPEN
    assert cb.snapshot(clock.now_ms()).calls == 0


def test_half_open_admits_exactly_the_probe_count() -> None:
    cb, clock = make(half_open_probes=2)
    open_breaker(cb, clock)
    clock.advance(10_000)
    assert [cb.allow(clock.now_ms()) for _ in range(4)] == [True, True, False, False]
    assert cb.state is HALF_OPEN


def test_half_open_closes_after_probes_succeed() -> None:
    cb, clock = make(half_open_probes=2)
    open_breaker(cb, clock)
    clock.advance(10_000)
    feed(cb, clock, "S")
    assert cb.state is HALF_OPEN  # not until every probe has reported
    feed(cb, clock, "S")
    assert cb.state is CLOSED
    assert cb.transitions[-1].reason == "probes_succeeded"
    feed(cb, clock, "FFFF")  # a fresh window: no verdict before minimum_calls again
    assert cb.state is CLOSED


@pytest.mark.parametrize("probes", ["SF", "FS", "LS", "XX"])
def test_half_open_reopens_when_probes_fail_or_are_slow(probes: str) -> None:
    cb, clock = make(half_open_probes=2)
    open_breaker(cb, clock)
    clock.advance(10_000)
    feed(cb, clock, probes)
    assert cb.state is OPEN
    assert cb.transitions[-1].reason.startswith("probes_failed")
    assert not cb.allow(clock.now_ms())
    assert cb.open_until_ms == cb.transitions[-1].at_ms + 10_000


def test_half_open_reopens_when_probes_never_report() -> None:
    cb, clock = make(half_open_probes=1, probe_timeout_ms=60_000)
    open_breaker(cb, clock)
    clock.advance(10_000)
    assert cb.allow(clock.now_ms())  # a probe that is lost
    clock.advance(59_999)
    assert not cb.allow(clock.now_ms())
    assert cb.state is HALF_OPEN
    clock.advance(1)
    assert not cb.allow(clock.now_ms())
    assert cb.state is OPEN
    assert cb.transitions[-1].reason == "probe_timeout"


def test_released_probe_permit_can_be_used_again() -> None:
    cb, clock = make(half_open_probes=1)
    open_breaker(cb, clock)
    clock.advance(10_000)
    assert cb.allow(clock.now_ms())
    assert not cb.allow(clock.now_ms())
    cb.release(clock.now_ms())  # e.g. the call was rate limited: says nothing about health
    assert cb.allow(clock.now_ms())


def test_full_cycle_is_logged_and_reported_to_the_callback() -> None:
    seen: list[Transition] = []
    cb = CircuitBreaker(
        BreakerConfig(minimum_calls=2, window_size=2, half_open_probes=1, open_duration_ms=5),
        on_transition=seen.append,
    )
    for t in (0, 1):
        cb.allow(t)
        cb.record(t, success=False, duration_ms=1)
    cb.allow(6)
    cb.record(7, success=True, duration_ms=1)
    assert [(t.at_ms, t.from_state, t.to_state) for t in seen] == [
        (1, CLOSED, OPEN),
        (6, OPEN, HALF_OPEN),
        (7, HALF_OPEN, CLOSED),
    ]
    assert list(cb.transitions) == seen


def test_force_open_from_closed_and_extending_an_open_breaker() -> None:
    cb, _ = make()
    cb.force_open(T0, T0 + 30_000, reason="remote")
    assert cb.state is OPEN
    assert cb.transitions[-1] == Transition(T0, CLOSED, OPEN, "remote")
    cb.force_open(T0 + 1, T0 + 5_000)  # an earlier deadline does not shorten it
    assert cb.open_until_ms == T0 + 30_000
    cb.force_open(T0 + 2, T0 + 40_000)
    assert not cb.allow(T0 + 39_999)
    assert cb.allow(T0 + 40_000)


def test_force_open_in_the_past_is_ignored() -> None:
    cb, _ = make()
    cb.force_open(T0, T0)
    assert cb.state is CLOSED


def test_snapshot_shows_rates_of_the_current_window() -> None:
    cb, clock = make(window_size=10, minimum_calls=10)
    feed(cb, clock, "SSLF")
    snap = cb.snapshot(clock.now_ms())
    assert (snap.state, snap.calls, snap.failure_rate, snap.slow_call_rate) == (
        CLOSED,
        4,
        0.25,
        0.25,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window_type": "sliding"},
        {"window_size": 0},
        {"minimum_calls": 11, "window_size": 10},
        {"failure_rate_threshold": 0.0},
        {"slow_call_rate_threshold": 1.5},
        {"half_open_probes": 0},
        {"open_duration_ms": -1},
    ],
)
def test_bad_config_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        BreakerConfig(**kwargs)


def test_time_window_may_need_more_calls_than_seconds() -> None:
    assert BreakerConfig(window_type="time", window_size=10, minimum_calls=50).minimum_calls == 50
