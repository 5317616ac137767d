"""The provider limiter: window arithmetic, what it learns from responses, AIMD and share."""

from __future__ import annotations

import heapq
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.policies.clock import ManualClock
from streams.policies.provider_limit import ProviderLimitConfig, ProviderLimiter

WINDOW = 60_000
T0 = 1_700_000_000_000


def limiter(rpm: int | None = None, tpm: int | None = None, **kw: float) -> ProviderLimiter:
    return ProviderLimiter(ProviderLimitConfig(rpm=rpm, tpm=tpm, **kw))  # type: ignore[arg-type]


def admit(lim: ProviderLimiter, now: int, tokens: int) -> int:
    """try_acquire for a call that ends at once (when admitted): its slot counts from ``now``."""
    wait = lim.try_acquire(now, tokens)
    if wait == 0:
        lim.finish(now, tokens, tokens)
    return wait


def most_seen_in_any_window(calls: list[tuple[int, int, int]]) -> tuple[int, int]:
    """Calls (admitted_at, finished_at, tokens), each received by the provider at any moment
    of [admitted_at, finished_at]: the most requests and tokens the provider can receive
    within one WINDOW. A window [x, x + WINDOW) can hold every call admitted before x + WINDOW
    that finished at or after x; the worst x is some call's finished_at."""
    most_requests = most_tokens = 0
    for _, x, _ in calls:
        inside = [tokens for a, f, tokens in calls if a < x + WINDOW and f >= x]
        most_requests = max(most_requests, len(inside))
        most_tokens = max(most_tokens, sum(inside))
    return most_requests, most_tokens


ASK, THROTTLE, FINISH = 2, 1, 0  # at one instant: ends first, then 429s, then admissions


@settings(max_examples=60, deadline=None, database=None)
@given(
    rpm=st.integers(1, 40),
    tpm=st.integers(100, 4_000),
    share=st.sampled_from([1.0, 0.5, 0.3]),
    arrivals=st.lists(
        st.tuples(st.integers(0, 240_000), st.integers(0, 300), st.integers(0, 3_000)),
        min_size=1,
        max_size=150,
    ),
    throttled_at=st.lists(st.integers(0, 240_000), max_size=5),
)
def test_provider_never_receives_more_than_rpm_or_tpm_in_any_sliding_window(
    rpm: int,
    tpm: int,
    share: float,
    arrivals: list[tuple[int, int, int]],
    throttled_at: list[int],
) -> None:
    lim = limiter(rpm, tpm, share=share)
    rpm_share, tpm_share = max(1, math.floor(rpm * share)), max(1, math.floor(tpm * share))
    # Each request asks again when told to, until admitted; its call then lasts `duration`
    # (the provider may receive it at any moment of that); 429s shrink the rate meanwhile.
    events = [(T0 + t, ASK, i) for i, (t, _, _) in enumerate(arrivals)]
    events += [(T0 + t, THROTTLE, -1) for t in throttled_at]
    heapq.heapify(events)
    admitted_at: dict[int, int] = {}
    calls: list[tuple[int, int, int]] = []
    while events:
        now, kind, i = heapq.heappop(events)
        tokens, duration = min(arrivals[i][1], tpm_share), arrivals[i][2]
        if kind == THROTTLE:
            lim.observe(now, rate_limited=True)
        elif kind == FINISH:
            lim.finish(now, tokens, tokens)
            lim.observe(now, rate_limited=False)
            calls.append((admitted_at[i], now, tokens))
        else:
            wait = lim.try_acquire(now, tokens)
            if wait == 0:
                admitted_at[i] = now
                heapq.heappush(events, (now + duration, FINISH, i))
            else:
                assert wait > 0
                # Ask again 1 ms early first, to probe the window's edge.
                heapq.heappush(events, (now + max(1, wait - 1), ASK, i))
    assert len(calls) == len(arrivals)  # everyone gets in eventually
    most_requests, most_tokens = most_seen_in_any_window(calls)
    assert most_requests <= rpm_share
    assert most_tokens <= tpm_share


def test_a_call_sent_late_keeps_the_next_minute_at_the_limit() -> None:
    """The benchmark's 610 calls at 600 RPM: one call admitted at t reaches the provider at
    t + 0.8 s; counting from admission, 600 more were admitted at t + 60 s, within one minute
    of it. Now its slot is held until a minute after it ended."""
    clock = ManualClock(T0)
    lim = limiter(rpm=600)
    sent_at: list[int] = []
    assert all(lim.try_acquire(clock.now_ms(), 1) == 0 for _ in range(600))
    clock.advance(100)  # 599 calls were sent at once and have answered
    for _ in range(599):
        lim.finish(clock.now_ms(), 1, 1)
        sent_at.append(T0)
    sent_at.append(T0 + 800)  # the late one: sent at t + 0.8 s, answered at t + 0.9 s
    clock.advance(800)
    lim.finish(clock.now_ms(), 1, 1)

    clock.set(T0 + WINDOW)
    assert lim.try_acquire(clock.now_ms(), 1) == 100  # nothing before a minute after the ends
    clock.set(T0 + WINDOW + 100)
    while (wait := lim.try_acquire(clock.now_ms(), 1)) == 0:
        sent_at.append(clock.now_ms())
        lim.finish(clock.now_ms(), 1, 1)
    assert len(sent_at) == 600 + 599
    assert wait == 800  # the 600th waits for the late call's slot: t + 60.9 s
    clock.advance(wait)
    assert lim.try_acquire(clock.now_ms(), 1) == 0
    sent_at.append(clock.now_ms())
    sent_at.sort()
    most = max(sum(1 for s in sent_at if x <= s < x + WINDOW) for x in sent_at)
    assert most == 600


def test_a_call_in_flight_holds_its_slot_however_long_it_lasts() -> None:
    lim = limiter(rpm=1, tpm=1_000)
    assert lim.try_acquire(T0, 400) == 0
    assert lim.snapshot(T0 + 5 * WINDOW).requests_available == 0
    assert lim.snapshot(T0 + 5 * WINDOW).tokens_available == 600
    # Nothing can be admitted before the call ends, and then not for a whole window.
    assert lim.try_acquire(T0 + 5 * WINDOW, 1) == WINDOW
    lim.finish(T0 + 5 * WINDOW + 10, 400, 400)
    assert lim.in_flight == 0
    assert lim.try_acquire(T0 + 6 * WINDOW + 9, 1) == 1
    assert lim.try_acquire(T0 + 6 * WINDOW + 10, 1) == 0


def test_tokens_held_by_a_call_in_flight_wait_a_whole_window() -> None:
    lim = limiter(tpm=1_000)
    assert lim.try_acquire(T0, 900) == 0
    assert lim.try_acquire(T0 + 1_000, 200) == WINDOW


def test_finish_gives_back_overestimated_tokens() -> None:
    lim = limiter(tpm=1_000)
    assert lim.try_acquire(T0, 800) == 0
    lim.finish(T0 + 5_000, tokens_estimated=800, tokens_actual=300)
    assert lim.snapshot(T0 + 5_000).tokens_available == 700
    assert lim.try_acquire(T0 + 5_000, 700) == 0


def test_finish_of_an_underestimate_charges_the_actual_count_from_the_end() -> None:
    lim = limiter(tpm=1_000)
    assert lim.try_acquire(T0, 500) == 0
    lim.finish(T0 + 5_000, tokens_estimated=500, tokens_actual=900)
    assert lim.snapshot(T0 + 5_000).tokens_available == 100
    assert lim.try_acquire(T0 + 5_000, 200) == WINDOW  # freed a window after the call ended


def test_a_failed_call_keeps_its_request_slot_but_no_tokens() -> None:
    lim = limiter(rpm=1, tpm=1_000)
    assert lim.try_acquire(T0, 500) == 0
    lim.finish(T0 + 200, tokens_estimated=500, tokens_actual=0)
    snap = lim.snapshot(T0 + 200)
    assert (snap.requests_available, snap.tokens_available) == (0, 1_000)
    assert lim.try_acquire(T0 + 200, 1) == WINDOW


def test_finish_without_a_call_in_flight_is_a_bug() -> None:
    lim = limiter(rpm=10)
    with pytest.raises(RuntimeError):
        lim.finish(T0, 1, 1)


def test_full_window_blocks_for_a_whole_minute_not_a_refill_interval() -> None:
    clock = ManualClock(T0)
    lim = limiter(rpm=60)
    assert all(admit(lim, clock.now_ms(), 1) == 0 for _ in range(60))
    clock.advance(30_000)  # a bucket refilled at 1/s would admit 30 more here
    assert admit(lim, clock.now_ms(), 1) == 30_000
    clock.advance(29_999)
    assert admit(lim, clock.now_ms(), 1) == 1
    clock.advance(1)
    assert admit(lim, clock.now_ms(), 1) == 0


def test_wait_is_until_enough_tokens_leave_the_window() -> None:
    lim = limiter(tpm=1_000)
    assert admit(lim, T0, 600) == 0
    assert admit(lim, T0 + 10_000, 300) == 0
    # 200 more needs 100 freed: the first entry leaves at T0 + 60 s.
    assert admit(lim, T0 + 20_000, 200) == 40_000
    assert admit(lim, T0 + 20_000, 100) == 0
    # Now 1,000 are in: 600 must go, freeing 600 at T0 + 60 s and the whole 900 only at + 70 s.
    assert admit(lim, T0 + 30_000, 700) == 40_000


def test_request_larger_than_tpm_is_admitted_alone_into_an_empty_window() -> None:
    lim = limiter(tpm=1_000)
    assert admit(lim, T0, 10) == 0
    assert admit(lim, T0 + 1, 5_000) == WINDOW - 1  # waits until the window is empty
    assert admit(lim, T0 + WINDOW, 5_000) == 0
    assert admit(lim, T0 + WINDOW + 1, 1) == WINDOW - 1


def test_no_limits_admit_everything() -> None:
    lim = limiter()
    assert all(admit(lim, T0, 10**6) == 0 for _ in range(1_000))


def test_retry_after_blocks_everything_until_it_has_passed() -> None:
    lim = limiter(rpm=1_000, tpm=1_000_000)
    lim.observe(T0, rate_limited=True, retry_after_ms=5_000)
    assert admit(lim, T0, 1) == 5_000
    assert admit(lim, T0 + 4_999, 1) == 1
    assert admit(lim, T0 + 5_000, 1) == 0
    assert lim.snapshot(T0 + 5_000).blocked_until_ms == T0 + 5_000


def test_shorter_retry_after_does_not_shorten_an_earlier_one() -> None:
    lim = limiter(rpm=1_000)
    lim.observe(T0, rate_limited=True, retry_after_ms=5_000)
    lim.observe(T0 + 1_000, rate_limited=True, retry_after_ms=1_000)
    assert admit(lim, T0 + 2_000, 1) == 3_000


def test_remaining_requests_zero_waits_for_the_reset() -> None:
    lim = limiter(rpm=1_000)
    lim.observe(T0, rate_limited=False, remaining_requests=0, reset_requests_ms=2_000)
    assert admit(lim, T0 + 500, 1) == 1_500
    assert admit(lim, T0 + 2_000, 1) == 0


def test_remaining_requests_are_spent_before_waiting_for_the_reset() -> None:
    lim = limiter(rpm=1_000)
    lim.observe(T0, rate_limited=False, remaining_requests=2, reset_requests_ms=2_000)
    assert admit(lim, T0, 1) == 0
    assert admit(lim, T0, 1) == 0
    assert admit(lim, T0, 1) == 2_000


def test_remaining_tokens_admit_only_requests_that_fit_until_the_reset() -> None:
    lim = limiter(tpm=100_000)
    lim.observe(T0, rate_limited=False, remaining_tokens=500, reset_tokens_ms=3_000)
    assert admit(lim, T0, 600) == 3_000
    assert admit(lim, T0, 400) == 0
    assert admit(lim, T0, 200) == 3_000  # 100 left
    assert admit(lim, T0 + 3_000, 200) == 0


def test_remaining_zero_without_reset_waits_the_default_reset() -> None:
    lim = limiter(rpm=1_000, default_reset_ms=1_500)
    lim.observe(T0, rate_limited=True, remaining_requests=0)
    assert admit(lim, T0, 1) == 1_500


def test_429_halves_the_rate_once_per_cooldown_down_to_the_floor() -> None:
    lim = limiter(rpm=100, decrease_cooldown_ms=1_000, min_rate_factor=0.1)
    lim.observe(T0, rate_limited=True)
    assert lim.snapshot(T0).effective_rpm == 50
    lim.observe(T0 + 999, rate_limited=True)  # same burst of 429s
    assert lim.snapshot(T0 + 999).effective_rpm == 50
    lim.observe(T0 + 1_000, rate_limited=True)
    assert lim.snapshot(T0 + 1_000).effective_rpm == 25
    for i in range(2, 10):
        lim.observe(T0 + i * 1_000, rate_limited=True)
    assert lim.snapshot(T0 + 10_000).effective_rpm == 10


def test_decreased_rate_is_enforced() -> None:
    lim = limiter(rpm=10)
    lim.observe(T0, rate_limited=True)
    assert [admit(lim, T0, 1) for _ in range(6)] == [0] * 5 + [WINDOW]


def test_successes_raise_the_rate_linearly_back_to_configured() -> None:
    lim = limiter(rpm=100, increase_per_s=0.02)
    lim.observe(T0, rate_limited=True)
    lim.observe(T0 + 10_000, rate_limited=False)
    assert lim.snapshot(T0 + 10_000).effective_rpm == 70
    lim.observe(T0 + 12_500, rate_limited=False)
    assert lim.snapshot(T0 + 12_500).effective_rpm == 75
    lim.observe(T0 + 60_000, rate_limited=False)
    assert lim.snapshot(T0 + 60_000).rate_factor == 1.0


def test_time_blocked_by_retry_after_does_not_count_as_recovery() -> None:
    lim = limiter(rpm=100, increase_per_s=0.02)
    lim.observe(T0, rate_limited=True, retry_after_ms=10_000)
    lim.observe(T0 + 10_000, rate_limited=False)
    assert lim.snapshot(T0 + 10_000).effective_rpm == 50
    lim.observe(T0 + 15_000, rate_limited=False)
    assert lim.snapshot(T0 + 15_000).effective_rpm == 60


@pytest.mark.parametrize(
    ("share", "rpm_admitted", "tpm_available"),
    [(1.0, 100, 10_000), (0.5, 50, 5_000), (0.25, 25, 2_500), (0.0, 1, 1)],
)
def test_share_scales_both_limits(share: float, rpm_admitted: int, tpm_available: int) -> None:
    lim = limiter(rpm=100, tpm=10_000, share=share)
    assert lim.snapshot(T0).tokens_available == tpm_available
    admitted = 0
    while admit(lim, T0, 0) == 0:
        admitted += 1
    assert admitted == rpm_admitted


def test_set_share_on_rebalance_changes_the_limit() -> None:
    lim = limiter(rpm=100, share=0.25)
    assert sum(admit(lim, T0, 1) == 0 for _ in range(100)) == 25
    lim.set_share(0.5)
    assert sum(admit(lim, T0, 1) == 0 for _ in range(100)) == 25
    assert lim.snapshot(T0).share == 0.5
    with pytest.raises(ValueError):
        lim.set_share(1.5)


def test_snapshot_reports_what_is_left() -> None:
    lim = limiter(rpm=10, tpm=1_000)
    admit(lim, T0, 300)
    snap = lim.snapshot(T0)
    assert (snap.effective_rpm, snap.requests_available) == (10, 9)
    assert (snap.effective_tpm, snap.tokens_available) == (1_000, 700)
    assert lim.snapshot(T0 + WINDOW).requests_available == 10


def test_a_clock_stepping_backwards_does_not_reopen_the_window() -> None:
    lim = limiter(rpm=2)
    assert admit(lim, T0, 1) == 0
    assert admit(lim, T0 + 1_000, 1) == 0
    assert admit(lim, T0 + 500, 1) == WINDOW - 1_000


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rpm": 0, "tpm": None},
        {"rpm": None, "tpm": -1},
        {"rpm": 10, "tpm": None, "share": 1.1},
        {"rpm": 10, "tpm": None, "decrease_factor": 1.0},
        {"rpm": 10, "tpm": None, "min_rate_factor": 0.0},
        {"rpm": 10, "tpm": None, "window_ms": 0},
    ],
)
def test_bad_config_is_refused(kwargs: dict[str, float | None]) -> None:
    with pytest.raises(ValueError):
        ProviderLimitConfig(**kwargs)  # type: ignore[arg-type]


def test_negative_tokens_are_a_bug() -> None:
    with pytest.raises(ValueError):
        limiter(tpm=10).try_acquire(T0, -1)
