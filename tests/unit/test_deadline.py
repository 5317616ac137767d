"""Deadlines: effective deadline per priority, the shed/proceed check, the time left."""

from __future__ import annotations

import pytest

from streams.policies.clock import ManualClock
from streams.policies.deadline import (
    DeadlineConfig,
    check,
    effective_deadline_ms,
    remaining_ms,
)
from streams.policies.scheduler import Priority
from streams.policies.verdict import Reason

CREATED = 1_700_000_000_000
CONFIG = DeadlineConfig()


@pytest.mark.parametrize(
    ("priority", "default_ms"),
    [("critical", 30_000), ("high", 60_000), ("normal", 120_000), ("low", 300_000)],
)
def test_missing_deadline_defaults_by_priority(priority: str, default_ms: int) -> None:
    assert effective_deadline_ms(CREATED, None, priority, CONFIG) == CREATED + default_ms


@pytest.mark.parametrize("requested", [None, 0, -5])
def test_zero_or_negative_requested_deadline_means_not_given(requested: int | None) -> None:
    assert effective_deadline_ms(CREATED, requested, "normal", CONFIG) == CREATED + 120_000


def test_priority_enum_and_mixed_case_names_are_accepted() -> None:
    assert effective_deadline_ms(CREATED, None, Priority.HIGH, CONFIG) == CREATED + 60_000
    assert effective_deadline_ms(CREATED, None, " Low ", CONFIG) == CREATED + 300_000


def test_requested_deadline_wins_over_the_default() -> None:
    asked = CREATED + 5_000
    assert effective_deadline_ms(CREATED, asked, "low", CONFIG) == asked


def test_requested_deadline_is_capped_at_max_after_creation() -> None:
    config = DeadlineConfig(max_ms=600_000)
    far = CREATED + 10 * 3_600_000
    assert effective_deadline_ms(CREATED, far, "low", config) == CREATED + 600_000


def test_requested_deadline_in_the_past_is_kept_so_it_gets_shed() -> None:
    past = CREATED - 1
    deadline = effective_deadline_ms(CREATED, past, "critical", CONFIG)
    assert deadline == past
    assert check(CREATED, deadline).reason is Reason.DEADLINE_EXPIRED


def test_unknown_priority_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="urgent"):
        effective_deadline_ms(CREATED, None, "urgent", CONFIG)


@pytest.mark.parametrize(
    ("advance_ms", "proceed", "remaining"),
    [(0, True, 1_000), (999, True, 1), (1_000, False, 0), (5_000, False, 0)],
)
def test_check_proceeds_until_the_deadline_then_sheds(
    advance_ms: int, proceed: bool, remaining: int
) -> None:
    clock = ManualClock(CREATED)
    deadline = CREATED + 1_000
    clock.advance(advance_ms)
    verdict = check(clock.now_ms(), deadline)
    assert verdict.proceed is proceed
    assert verdict.reason is (Reason.NONE if proceed else Reason.DEADLINE_EXPIRED)
    assert verdict.remaining_ms == remaining


@pytest.mark.parametrize(
    ("expected_wait_ms", "proceed"), [(0, True), (999, True), (1_000, False), (4_000, False)]
)
def test_check_sheds_when_the_expected_wait_reaches_the_deadline(
    expected_wait_ms: int, proceed: bool
) -> None:
    verdict = check(CREATED, CREATED + 1_000, expected_wait_ms)
    assert verdict.proceed is proceed
    assert verdict.expected_wait_ms == expected_wait_ms


@pytest.mark.parametrize(
    ("now_offset", "left"), [(-200, 1_200), (0, 1_000), (9, 991), (1_000, 0), (5_000, 0)]
)
def test_remaining_ms_counts_down_and_stops_at_zero(now_offset: int, left: int) -> None:
    assert remaining_ms(CREATED + now_offset, CREATED + 1_000) == left


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_ms": 0},
        {"default_ms_by_priority": {"low": 0}},
        {"default_ms_by_priority": {"low": 7_200_000}},
        {"default_ms_by_priority": {"LOW": 1_000}},
    ],
)
def test_bad_deadline_config_is_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DeadlineConfig(**kwargs)  # type: ignore[arg-type]
