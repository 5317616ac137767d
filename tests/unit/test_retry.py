"""Retry decisions: full jitter, caps, deadlines, Retry-After, and the global retry budget."""

from __future__ import annotations

import random

import pytest

from streams.policies.clock import ManualClock
from streams.policies.retry import (
    FailureKind,
    RetryBudget,
    RetryBudgetConfig,
    RetryConfig,
    RetryPolicy,
)
from streams.policies.verdict import Reason

T0 = 1_700_000_000_000


class FixedRandom(random.Random):
    """random() always returns the same fraction of the backoff ceiling."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction

    def random(self) -> float:
        return self.fraction


def policy(
    fraction: float | None = None, budget: RetryBudget | None = None, **kw: int
) -> RetryPolicy:
    config = RetryConfig(**({"max_attempts": 5, "base_ms": 100, "cap_ms": 1_000} | kw))
    rng = random.Random(42) if fraction is None else FixedRandom(fraction)
    return RetryPolicy(config, rng, budget)


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1_000), (40, 1_000)]
)
def test_backoff_ceiling_doubles_up_to_the_cap(attempt: int, ceiling: int) -> None:
    assert policy().backoff_ceiling_ms(attempt) == ceiling


@pytest.mark.parametrize("attempt", [1, 2, 3, 4])
def test_full_jitter_spreads_delays_over_zero_to_ceiling(attempt: int) -> None:
    p = policy(max_attempts=10)
    ceiling = p.backoff_ceiling_ms(attempt)
    delays = [p.decide(T0, attempt, FailureKind.UNAVAILABLE).delay_ms for _ in range(500)]
    assert all(0 <= d <= ceiling for d in delays)
    assert min(delays) < ceiling * 0.1  # full jitter: near zero happens ...
    assert max(delays) > ceiling * 0.9  # ... and so does near the ceiling


def test_same_seed_gives_the_same_delays() -> None:
    a, b = policy(), policy()
    assert [a.decide(T0, 2, FailureKind.TIMEOUT).delay_ms for _ in range(20)] == [
        b.decide(T0, 2, FailureKind.TIMEOUT).delay_ms for _ in range(20)
    ]


@pytest.mark.parametrize(
    "kind", [FailureKind.SPEND_LIMIT, FailureKind.BAD_REQUEST, FailureKind.AUTH]
)
def test_never_retry_kinds_are_not_retried(kind: FailureKind) -> None:
    decision = policy().decide(T0, 1, kind)
    assert (decision.retry, decision.reason) == (False, "not_retryable")


@pytest.mark.parametrize(
    "kind",
    [
        FailureKind.RATE_LIMITED,
        FailureKind.OVERLOADED,
        FailureKind.TIMEOUT,
        FailureKind.UNAVAILABLE,
    ],
)
def test_transient_kinds_are_retried(kind: FailureKind) -> None:
    assert policy().decide(T0, 1, kind).retry


@pytest.mark.parametrize(("attempt", "retry"), [(1, True), (2, True), (3, False), (4, False)])
def test_attempt_cap_counts_the_first_attempt(attempt: int, retry: bool) -> None:
    decision = policy(max_attempts=3).decide(T0, attempt, FailureKind.UNAVAILABLE)
    assert decision.retry is retry
    assert retry or decision.reason == "attempt_cap"


@pytest.mark.parametrize(
    ("deadline_after_ms", "retry"), [(None, True), (1_000, True), (501, True), (500, False)]
)
def test_never_retries_past_the_deadline(deadline_after_ms: int | None, retry: bool) -> None:
    # attempt 4 with fraction 0.625: delay 500 of the 800 ceiling
    deadline = None if deadline_after_ms is None else T0 + deadline_after_ms
    decision = policy(0.625).decide(T0, 4, FailureKind.TIMEOUT, deadline_ms=deadline)
    assert decision.retry is retry
    assert decision.delay_ms == (500 if retry else 0)
    assert retry or decision.reason == "deadline"


def test_an_attempt_needs_min_attempt_ms_before_the_deadline() -> None:
    p = policy(0.0, min_attempt_ms=2_000)
    assert not p.decide(T0, 1, FailureKind.TIMEOUT, deadline_ms=T0 + 2_000).retry
    assert p.decide(T0, 1, FailureKind.TIMEOUT, deadline_ms=T0 + 2_001).retry


@pytest.mark.parametrize(
    ("retry_after", "delay", "reason"),
    [(None, 50, "backoff"), (10, 50, "backoff"), (3_000, 3_000, "retry_after")],
)
def test_retry_after_is_a_floor_on_the_delay(
    retry_after: int | None, delay: int, reason: str
) -> None:
    decision = policy(0.5).decide(T0, 1, FailureKind.RATE_LIMITED, retry_after_ms=retry_after)
    assert (decision.retry, decision.delay_ms, decision.reason) == (True, delay, reason)


def test_retry_after_beyond_the_deadline_gives_up() -> None:
    decision = policy(0.0).decide(
        T0, 1, FailureKind.RATE_LIMITED, retry_after_ms=5_000, deadline_ms=T0 + 4_000
    )
    assert (decision.retry, decision.reason) == (False, "deadline")


def test_absurd_retry_after_gives_up_so_the_chain_can_fall_back() -> None:
    decision = policy(max_retry_after_ms=60_000).decide(
        T0, 1, FailureKind.RATE_LIMITED, retry_after_ms=60_001
    )
    assert (decision.retry, decision.reason) == (False, "retry_after_too_long")


def test_budget_allows_a_ratio_of_first_attempts() -> None:
    budget = RetryBudget(RetryBudgetConfig(ratio=0.2, min_retries_per_s=0, window_s=10))
    for _ in range(10):
        budget.record_first_attempt(T0)
    assert [budget.try_spend(T0) for _ in range(3)] == [True, True, False]


def test_budget_reserve_allows_retries_without_traffic() -> None:
    budget = RetryBudget(RetryBudgetConfig(ratio=0.2, min_retries_per_s=0.5, window_s=10))
    assert sum(budget.try_spend(T0) for _ in range(10)) == 5


def test_budget_refills_as_spent_retries_leave_the_window() -> None:
    clock = ManualClock(T0 - T0 % 1_000)
    budget = RetryBudget(RetryBudgetConfig(ratio=0.0, min_retries_per_s=0.2, window_s=10))
    assert [budget.try_spend(clock.now_ms()) for _ in range(3)] == [True, True, False]
    clock.advance(9_999)
    assert not budget.try_spend(clock.now_ms())
    clock.advance(1)
    assert budget.available(clock.now_ms()) == 2
    assert budget.try_spend(clock.now_ms())


def test_budget_forgets_first_attempts_outside_the_window() -> None:
    budget = RetryBudget(RetryBudgetConfig(ratio=1.0, min_retries_per_s=0, window_s=10))
    for _ in range(5):
        budget.record_first_attempt(T0)
    assert budget.available(T0 + 9_000) == 5
    assert budget.available(T0 + 20_000) == 0


def test_exhausted_budget_stops_retries() -> None:
    budget = RetryBudget(RetryBudgetConfig(ratio=0.0, min_retries_per_s=0.1, window_s=10))
    p = policy(budget=budget)
    assert p.decide(T0, 1, FailureKind.UNAVAILABLE).retry
    decision = p.decide(T0, 1, FailureKind.UNAVAILABLE)
    assert (decision.retry, decision.reason) == (False, "budget_exhausted")


def test_refused_retries_do_not_spend_the_budget() -> None:
    budget = RetryBudget(RetryBudgetConfig(ratio=0.0, min_retries_per_s=0.1, window_s=10))
    p = policy(budget=budget, max_attempts=2)
    assert not p.decide(T0, 1, FailureKind.AUTH).retry
    assert not p.decide(T0, 2, FailureKind.TIMEOUT).retry
    assert budget.available(T0) == 1


@pytest.mark.parametrize(
    ("kind", "retryable", "breaker", "reason"),
    [
        (FailureKind.RATE_LIMITED, True, False, Reason.PROVIDER_RATE_LIMITED),
        (FailureKind.OVERLOADED, True, True, Reason.UNAVAILABLE),
        (FailureKind.SPEND_LIMIT, False, False, Reason.PROVIDER_ERROR),
        (FailureKind.BAD_REQUEST, False, False, Reason.PROVIDER_ERROR),
        (FailureKind.AUTH, False, False, Reason.PROVIDER_ERROR),
        (FailureKind.TIMEOUT, True, True, Reason.TIMEOUT),
        (FailureKind.UNAVAILABLE, True, True, Reason.UNAVAILABLE),
    ],
)
def test_failure_kind_classification(
    kind: FailureKind, retryable: bool, breaker: bool, reason: Reason
) -> None:
    assert (kind.retryable, kind.counts_toward_breaker, kind.reason) == (retryable, breaker, reason)


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"base_ms": -1}, {"cap_ms": -5}])
def test_bad_retry_config_is_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        RetryConfig(**kwargs)


def test_bad_budget_config_is_refused() -> None:
    with pytest.raises(ValueError):
        RetryBudgetConfig(window_s=0)
