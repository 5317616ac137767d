"""Tenant rate limits: sliding minute, calendar day, exact retry_after_ms, stored state."""

from __future__ import annotations

import json
import random
from datetime import datetime

import pytest

from streams.policies.clock import ManualClock
from streams.policies.rate_limit import (
    RateLimitConfig,
    RateLimitState,
    adjust_tokens,
    check,
    combine,
    rate_limit_key,
    record,
)
from streams.policies.verdict import Reason

T0 = 1_800_000_000_000  # a whole second, mid-day UTC


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def admit(
    state: RateLimitState, clock: ManualClock, tokens: int, config: RateLimitConfig
) -> tuple[bool, RateLimitState]:
    decision = check(state, clock.now_ms(), tokens, config)
    if decision.allowed:
        state = record(state, clock.now_ms(), tokens, config)
    return decision.allowed, state


def test_requests_over_rpm_are_refused_with_reason_and_limit() -> None:
    config, clock, state = RateLimitConfig(rpm=3), ManualClock(T0), RateLimitState()
    for _ in range(3):
        allowed, state = admit(state, clock, 0, config)
        assert allowed
    decision = check(state, clock.now_ms(), 0, config)
    assert not decision.allowed
    assert decision.reason is Reason.RATE_LIMITED
    assert (decision.limit_name, decision.limit, decision.remaining) == ("rpm", 3, 0)


@pytest.mark.parametrize(
    ("config", "arrivals"),
    [
        (RateLimitConfig(rpm=3), [(0, 0), (10_000, 0), (20_500, 0)]),
        (RateLimitConfig(rpm=3), [(0, 0), (0, 0), (59_999, 0)]),
        (RateLimitConfig(tpm=1_000), [(0, 600), (30_000, 300), (45_000, 100)]),
        (RateLimitConfig(rpm=10, tpm=1_000, bucket_ms=250), [(0, 900), (1_100, 50)]),
    ],
)
def test_retry_after_is_honoured_exactly(
    config: RateLimitConfig, arrivals: list[tuple[int, int]]
) -> None:
    clock, state = ManualClock(T0), RateLimitState()
    for offset, tokens in arrivals:
        clock.set(T0 + offset)
        state = record(state, clock.now_ms(), tokens, config)
    denied = check(state, clock.now_ms(), 200, config)
    assert not denied.allowed and denied.retry_after_ms is not None
    retry_at = clock.now_ms() + denied.retry_after_ms
    assert not check(state, retry_at - 1, 200, config).allowed  # not a millisecond earlier
    clock.set(retry_at)
    assert check(state, clock.now_ms(), 200, config).allowed


def test_retry_after_honoured_under_random_traffic() -> None:
    rng = random.Random(5)
    config = RateLimitConfig(rpm=20, tpm=5_000, rpd=400)
    clock, state = ManualClock(T0), RateLimitState()
    refusals = 0
    for _ in range(3_000):
        clock.advance(rng.randrange(0, 3_000))
        tokens = rng.randrange(0, 1_500)
        decision = check(state, clock.now_ms(), tokens, config)
        if decision.allowed:
            state = record(state, clock.now_ms(), tokens, config)
            continue
        refusals += 1
        assert decision.retry_after_ms is not None and decision.retry_after_ms > 0
        retry_at = clock.now_ms() + decision.retry_after_ms
        assert check(state, retry_at, tokens, config).allowed
        assert not check(state, retry_at - 1, tokens, config).allowed
    assert refusals > 100  # the limits were actually hit


def test_no_sixty_second_interval_exceeds_the_limits() -> None:
    rng = random.Random(9)
    config = RateLimitConfig(rpm=30, tpm=4_000)
    clock, state = ManualClock(T0), RateLimitState()
    admitted: list[tuple[int, int]] = []
    for _ in range(5_000):
        clock.advance(rng.choice([0, 0, 50, 400, 1_999, 7_000]))
        tokens = rng.randrange(0, 600)
        allowed, state = admit(state, clock, tokens, config)
        if allowed:
            admitted.append((clock.now_ms(), tokens))
    for end, _ in admitted:  # every window (end - 60 s, end] that ends on an admission
        inside = [t for at, t in admitted if end - 60_000 < at <= end]
        assert len(inside) <= 30
        assert sum(inside) <= 4_000
    assert len(admitted) > 1_000


def test_request_larger_than_a_limit_can_never_fit() -> None:
    decision = check(RateLimitState(), T0, 2_001, RateLimitConfig(tpm=2_000))
    assert not decision.allowed
    assert decision.retry_after_ms is None
    assert decision.limit_name == "tpm"


@pytest.mark.parametrize(
    ("tz", "now", "reset"),
    [
        ("UTC", "2026-11-27T22:00:00Z", "2026-11-28T00:00:00Z"),
        ("Asia/Kolkata", "2026-11-27T17:00:00Z", "2026-11-27T18:30:00Z"),
        ("America/New_York", "2026-11-27T17:00:00Z", "2026-11-28T05:00:00Z"),
    ],
)
def test_daily_limit_resets_at_local_midnight(tz: str, now: str, reset: str) -> None:
    config = RateLimitConfig(rpd=2, tz=tz)
    clock, state = ManualClock(ms(now)), RateLimitState()
    state = record(record(state, clock.now_ms(), 0, config), clock.now_ms(), 0, config)
    clock.advance(3_600_000)  # an hour later, the minute is long gone but the day is not
    decision = check(state, clock.now_ms(), 0, config)
    assert not decision.allowed and decision.limit_name == "rpd"
    assert decision.reset_ms == ms(reset)
    assert decision.retry_after_ms == ms(reset) - clock.now_ms()
    clock.set(ms(reset))
    allowed, state = admit(state, clock, 0, config)
    assert allowed
    assert state.day_requests == 1


def test_tokens_per_day_count_across_minutes() -> None:
    config, clock, state = RateLimitConfig(tpd=1_000), ManualClock(T0), RateLimitState()
    for _ in range(4):
        allowed, state = admit(state, clock, 250, config)
        assert allowed
        clock.advance(120_000)
    assert not check(state, clock.now_ms(), 1, config).allowed


def test_allowed_decision_reports_the_tightest_limit_after_this_request() -> None:
    config = RateLimitConfig(rpm=100, tpm=1_000)
    state = record(RateLimitState(), T0, 700, config)
    decision = check(state, T0 + 10, 200, config)
    assert decision.allowed and decision.retry_after_ms == 0
    assert (decision.limit_name, decision.remaining) == ("tpm", 100)
    assert decision.reset_ms == T0 + 61_000  # the 700 tokens stop counting after 60 s + 1 bucket


def test_no_configured_limit_admits_everything() -> None:
    decision = check(RateLimitState(), T0, 10**9, RateLimitConfig())
    assert decision.allowed and decision.limit is None


def test_adjust_tokens_corrects_the_admission_estimate() -> None:
    config = RateLimitConfig(tpm=1_000, tpd=10_000)
    state = record(RateLimitState(), T0, 900, config)  # estimate: prompt + max_tokens
    assert not check(state, T0 + 5_000, 200, config).allowed
    state = adjust_tokens(state, T0, -700, config)  # the request really used 200
    assert check(state, T0 + 5_000, 200, config).allowed
    assert state.day_tokens == 200
    assert adjust_tokens(state, T0, -10_000, config).day_tokens == 0  # never negative


def test_record_forgets_buckets_older_than_the_window() -> None:
    config, state = RateLimitConfig(rpm=1_000), RateLimitState()
    for i in range(300):
        state = record(state, T0 + i * 1_000, 1, config)
    assert len(state.buckets) <= 61
    assert check(state, T0 + 299_000, 0, config).remaining == 1_000 - 61 - 1


def test_record_does_not_modify_its_input() -> None:
    config, state = RateLimitConfig(rpm=5), RateLimitState()
    record(state, T0, 10, config)
    assert state == RateLimitState()


def test_state_survives_a_json_round_trip() -> None:
    config, state = RateLimitConfig(rpm=5, tpd=100), RateLimitState()
    state = record(record(state, T0, 10, config), T0 + 1_500, 20, config)
    restored = RateLimitState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert restored == state
    assert check(restored, T0 + 2_000, 0, config) == check(state, T0 + 2_000, 0, config)


def test_combine_refuses_when_any_scope_refuses() -> None:
    tenant = check(RateLimitState(), T0, 10, RateLimitConfig(rpm=10))
    feature_state = record(RateLimitState(), T0, 0, RateLimitConfig(rpm=1))
    feature = check(feature_state, T0, 10, RateLimitConfig(rpm=1))
    combined = combine(tenant, feature)
    assert not combined.allowed and combined.retry_after_ms == feature.retry_after_ms
    assert combine(tenant, tenant).allowed


def test_keys_carry_tenant_feature_and_version() -> None:
    assert rate_limit_key("acme") == "ratelimit/v1/acme"
    assert rate_limit_key("acme", "search/v2") == "ratelimit/v1/acme/feature/search%2Fv2"


@pytest.mark.parametrize("kwargs", [{"rpm": 0}, {"tpd": -1}, {"bucket_ms": 7_000}])
def test_bad_config_is_rejected(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        RateLimitConfig(**kwargs)  # type: ignore[arg-type]
