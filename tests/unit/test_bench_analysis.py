"""The benchmark's pure arithmetic: rates, recovery times, schedules, spreads, target verdicts."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from tests.bench.analysis import backlog_size, recovery_time, steady_rate
from tests.bench.framework import Check, Spread
from tests.bench.loadgen import PriorityMix, Schedule


def test_steady_rate_of_evenly_spaced_answers_is_their_rate() -> None:
    times = [i / 200 for i in range(1000)]  # 200 answers per second
    assert steady_rate(times) == pytest.approx(200, rel=0.01)


def test_steady_rate_ignores_a_slow_start_and_stragglers() -> None:
    ramp = [i * 0.1 for i in range(50)]  # 10/s for 5 s
    steady = [5 + i / 500 for i in range(900)]  # then 500/s
    tail = [20.0, 30.0]
    assert steady_rate(ramp + steady + tail) == pytest.approx(500, rel=0.1)


def test_steady_rate_needs_enough_answers() -> None:
    assert math.isnan(steady_rate([0.1, 0.2, 0.3]))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([10, 10, 10, 10], 0.0),  # never dipped
        ([10, 2, 2, 10, 10, 10], 3.0),  # bad at t=1,2; good from t=3 for two samples
        ([10, 2, 10, 2, 10, 10], 4.0),  # a single good sample does not count
        ([10, 2, 2, 2, 2, 10], None),  # good once at the end: not held
    ],
)
def test_recovery_time_waits_for_the_series_to_stay_good(
    values: list[float], expected: float | None
) -> None:
    t = [float(i) for i in range(len(values))]
    assert recovery_time(t, values, 0.0, lambda v: v >= 9, hold=2) == expected


def test_recovery_time_counts_from_the_event_and_adds_the_bucket_width() -> None:
    t = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    rates = [100, 100, 40, 40, 100, 100, 100]
    # Event at 0.9 s; first good bucket after the dip starts at 2.0 and ends at 2.5.
    assert recovery_time(t, rates, 0.9, lambda v: v >= 95, hold=2, step=0.5) == 1.6


@pytest.mark.parametrize(
    ("rate", "seconds", "expected"),
    [(500.0, 4.0, 2000), (10.0, 1.0, 1000), (1e9, 10.0, 60_000), (math.nan, 5.0, 1000)],
)
def test_backlog_size_is_rate_times_seconds_within_bounds(
    rate: float, seconds: float, expected: int
) -> None:
    assert backlog_size(rate, seconds) == expected


def test_constant_schedule_spaces_arrivals_evenly() -> None:
    offsets = list(Schedule.constant(100, 2.0).offsets_ns())
    assert len(offsets) == 200
    assert offsets[0] == 0
    assert offsets[1] - offsets[0] == 10_000_000
    assert offsets[-1] == 1_990_000_000


def test_burst_schedule_changes_rate_at_segment_boundaries() -> None:
    schedule = Schedule(((1.0, 10.0), (1.0, 100.0), (1.0, 10.0)))
    offsets = list(schedule.offsets_ns())
    assert len(offsets) == 120
    assert schedule.seconds == 3.0
    assert [schedule.rate_at(t) for t in (0.5, 1.5, 2.5, 3.5)] == [10.0, 100.0, 10.0, 0.0]
    assert sum(1 for o in offsets if 1e9 <= o < 2e9) == 100


def test_backlog_schedule_intends_every_request_at_once() -> None:
    assert set(Schedule.backlog(50).offsets_ns()) == {0}
    assert len(list(Schedule.backlog(50).offsets_ns())) == 50


def test_priority_mix_follows_its_weights() -> None:
    mix = PriorityMix({"critical": 0.1, "high": 0.2, "normal": 0.4, "low": 0.3})
    counts = Counter(mix(n) for n in range(1000))
    assert counts == {"critical": 100, "high": 200, "normal": 400, "low": 300}


def test_spread_takes_median_min_max_and_ignores_nan() -> None:
    spread = Spread.of([3.0, math.nan, 1.0, 2.0])
    assert (spread.median, spread.low, spread.high) == (2.0, 1.0, 3.0)
    assert math.isnan(Spread.of([math.nan]).median)


@pytest.mark.parametrize(
    ("value", "met", "verdict_start"),
    [
        (2.0, True, "met, by 1"),
        (6.0, False, "missed, by 3"),
        (None, None, "not measured"),
    ],
)
def test_check_says_whether_a_target_is_met_and_by_how_much(
    value: float | None, met: bool | None, verdict_start: str
) -> None:
    check = Check("added latency p50", value, 3.0, "ms", why_not_measured="no cache")
    assert check.met is met
    assert check.verdict().startswith(verdict_start)
