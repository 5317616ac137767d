"""Budgets by reservation: arithmetic, zero overshoot, settle/release, downgrade, alerts."""

from __future__ import annotations

import json
import random
from datetime import datetime

import pytest

from streams.policies.budget import (
    BudgetAction,
    BudgetConfig,
    BudgetLedger,
    BudgetRequest,
    CapScope,
    FeatureBudgetConfig,
    LedgerConfig,
    OnExceed,
    SettleStatus,
    admit,
    charge_held,
    expire_reservations,
    feature_key,
    mark_sent,
    prune_windows,
    release,
    settle,
    tenant_key,
    usage_view,
)
from streams.policies.clock import ManualClock
from streams.policies.verdict import Reason

DOLLAR = 1_000_000
TZ = "America/New_York"


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


NOON = ms("2026-11-27T17:00:00Z")  # 12:00 in New York
MIDNIGHT = ms("2026-11-28T05:00:00Z")  # the next local midnight
DAY_KEY = tenant_key("acme", "day/2026-11-27")
MONTH_KEY = tenant_key("acme", "month/2026-11")

CONFIG = LedgerConfig(
    tenants={
        "acme": BudgetConfig(
            daily_cap_micros=DOLLAR,
            monthly_cap_micros=20 * DOLLAR,
            features={
                "search": FeatureBudgetConfig(
                    daily_cap_micros=300_000, on_exceed=OnExceed.DOWNGRADE, downgrade_model="mini"
                )
            },
            soft_thresholds=(0.5, 0.8),
        ),
        "globex": BudgetConfig(daily_cap_micros=10 * DOLLAR),
    },
    provider_daily_caps_micros={"openai": 3 * DOLLAR},
    tz=TZ,
)


def req(
    rid: str, estimate: int, *, tenant: str = "acme", feature: str = "chat", model: str = "big"
) -> BudgetRequest:
    return BudgetRequest(rid, tenant, feature, "openai", model, estimate)


def committed(ledger: BudgetLedger, key: str) -> int:
    usage = ledger.windows.get(key)
    return 0 if usage is None else usage.spent + usage.reserved


def test_admit_reserves_the_estimate_in_every_window() -> None:
    decision, ledger = admit(BudgetLedger(), NOON, req("r1", 1_000), CONFIG)
    assert decision.action is BudgetAction.ADMIT and decision.reserved_micros == 1_000
    assert set(ledger.reservations["r1"].keys) == {
        DAY_KEY,
        MONTH_KEY,
        feature_key("acme", "chat", "day/2026-11-27"),
        "budget/v1/provider/openai/day/2026-11-27",
    }
    assert all(ledger.windows[k].reserved == 1_000 for k in ledger.reservations["r1"].keys)


def test_admit_does_not_modify_its_input() -> None:
    before = BudgetLedger()
    admit(before, NOON, req("r1", 1_000), CONFIG)
    assert before == BudgetLedger()


@pytest.mark.parametrize(("estimate", "admitted"), [(600_000, True), (600_001, False)])
def test_admits_exactly_up_to_the_cap(estimate: int, admitted: bool) -> None:
    _, ledger = admit(BudgetLedger(), NOON, req("r1", 300_000), CONFIG)
    _, ledger = settle(ledger, NOON, "r1", 300_000)
    _, ledger = admit(ledger, NOON, req("r2", 100_000), CONFIG)  # reserved, not yet spent
    decision, _ = admit(ledger, NOON, req("r3", estimate), CONFIG)
    assert (decision.action is BudgetAction.ADMIT) == admitted


def test_rejection_names_the_cap_its_spend_and_the_local_reset_time() -> None:
    _, ledger = admit(BudgetLedger(), NOON, req("r1", 900_000), CONFIG)
    _, ledger = settle(ledger, NOON, "r1", 800_000)
    decision, after = admit(ledger, NOON, req("r2", 250_000), CONFIG)
    assert decision.action is BudgetAction.REJECT
    assert decision.reason is Reason.BUDGET_EXCEEDED
    assert decision.exceeded is not None
    assert decision.exceeded.scope is CapScope.TENANT_DAY
    assert (decision.exceeded.spent_micros, decision.exceeded.cap_micros) == (800_000, DOLLAR)
    assert decision.reset_at_ms == MIDNIGHT
    assert after == ledger  # nothing reserved


def test_after_the_reset_the_request_is_admitted() -> None:
    _, ledger = admit(BudgetLedger(), NOON, req("r1", DOLLAR), CONFIG)
    decision, _ = admit(ledger, NOON, req("r2", 1), CONFIG)
    assert decision.reset_at_ms is not None
    decision, _ = admit(ledger, decision.reset_at_ms, req("r2", 1), CONFIG)
    assert decision.action is BudgetAction.ADMIT


def test_month_cap_binds_with_the_month_reset() -> None:
    config = LedgerConfig(tenants={"acme": BudgetConfig(monthly_cap_micros=DOLLAR)}, tz=TZ)
    _, ledger = admit(BudgetLedger(), NOON, req("r1", DOLLAR), config)
    _, ledger = settle(ledger, NOON, "r1", DOLLAR)
    decision, _ = admit(ledger, MIDNIGHT + 1, req("r2", 1), config)  # a new day, same month
    assert decision.exceeded is not None and decision.exceeded.scope is CapScope.TENANT_MONTH
    assert decision.reset_at_ms == ms("2026-12-01T05:00:00Z")


def test_when_day_and_month_are_both_exceeded_the_later_reset_is_reported() -> None:
    config = LedgerConfig(
        tenants={"acme": BudgetConfig(daily_cap_micros=DOLLAR, monthly_cap_micros=DOLLAR)}, tz=TZ
    )
    _, ledger = admit(BudgetLedger(), NOON, req("r1", DOLLAR), config)
    decision, _ = admit(ledger, NOON, req("r2", 1), config)
    assert decision.reset_at_ms == ms("2026-12-01T05:00:00Z")


def test_provider_cap_is_shared_by_all_tenants() -> None:
    _, ledger = admit(BudgetLedger(), NOON, req("g1", 2_500_000, tenant="globex"), CONFIG)
    decision, _ = admit(ledger, NOON, req("a1", 600_000), CONFIG)
    assert decision.action is BudgetAction.REJECT
    assert decision.exceeded is not None and decision.exceeded.scope is CapScope.PROVIDER_DAY


def test_feature_cap_downgrades_then_readmits_with_the_cheaper_model() -> None:
    _, ledger = admit(BudgetLedger(), NOON, req("s1", 250_000, feature="search"), CONFIG)
    decision, after = admit(ledger, NOON, req("s2", 100_000, feature="search"), CONFIG)
    assert decision.action is BudgetAction.DOWNGRADE and decision.downgrade_model == "mini"
    assert decision.exceeded is not None and decision.exceeded.scope is CapScope.FEATURE_DAY
    assert after == ledger  # a downgrade reserves nothing
    decision, after = admit(ledger, NOON, req("s2", 40_000, feature="search", model="mini"), CONFIG)
    assert decision.action is BudgetAction.ADMIT
    assert after.reservations["s2"].model == "mini"


def test_a_request_already_on_the_downgrade_model_is_rejected() -> None:
    _, ledger = admit(BudgetLedger(), NOON, req("s1", 300_000, feature="search"), CONFIG)
    decision, _ = admit(ledger, NOON, req("s2", 1, feature="search", model="mini"), CONFIG)
    assert decision.action is BudgetAction.REJECT
    assert decision.reason is Reason.BUDGET_EXCEEDED


def test_feature_without_its_own_policy_follows_the_tenant() -> None:
    budget = BudgetConfig(
        daily_cap_micros=DOLLAR,
        on_exceed=OnExceed.DOWNGRADE,
        downgrade_model="mini",
        features={"chat": FeatureBudgetConfig(daily_cap_micros=100)},
    )
    config = LedgerConfig(tenants={"acme": budget}, tz=TZ)
    decision, _ = admit(BudgetLedger(), NOON, req("r1", 101), config)
    assert (decision.action, decision.downgrade_model) == (BudgetAction.DOWNGRADE, "mini")


def test_admitting_the_same_request_twice_reserves_once() -> None:
    _, ledger = admit(BudgetLedger(), NOON, req("r1", 1_000), CONFIG)
    decision, again = admit(ledger, NOON + 5, req("r1", 1_000), CONFIG)
    assert decision.action is BudgetAction.ADMIT and decision.duplicate
    assert again == ledger
    assert again.windows[DAY_KEY].reserved == 1_000


def test_readmitting_a_downgraded_request_returns_the_model_it_was_reserved_for() -> None:
    _, ledger = admit(BudgetLedger(), NOON, req("r1", 1_000, model="mini"), CONFIG)
    decision, again = admit(ledger, NOON, req("r1", 9_000, model="big"), CONFIG)
    assert (decision.action, decision.downgrade_model) == (BudgetAction.DOWNGRADE, "mini")
    assert decision.duplicate and again == ledger


def test_settle_replaces_the_reservation_with_the_actual_cost() -> None:
    _, ledger = admit(BudgetLedger(), NOON, req("r1", 5_000), CONFIG)
    _, ledger = admit(ledger, NOON, req("r2", 7_000), CONFIG)
    result, ledger = settle(ledger, NOON + 1_000, "r1", 3_200)
    assert result.status is SettleStatus.SETTLED and result.reserved_micros == 5_000
    assert "r1" not in ledger.reservations
    for key in ledger.reservations["r2"].keys:
        assert (ledger.windows[key].spent, ledger.windows[key].reserved) == (3_200, 7_000)


def test_settle_counts_in_the_window_of_the_reservation() -> None:
    late = MIDNIGHT - 1  # 23:59:59.999 local
    _, ledger = admit(BudgetLedger(), late, req("r1", 5_000), CONFIG)
    _, ledger = settle(ledger, MIDNIGHT + 60_000, "r1", 4_000)
    assert ledger.windows[DAY_KEY].spent == 4_000
    assert committed(ledger, tenant_key("acme", "day/2026-11-28")) == 0


def test_duplicate_settle_is_counted_once() -> None:
    _, ledger = admit(BudgetLedger(), NOON, req("r1", 5_000), CONFIG)
    _, ledger = settle(ledger, NOON, "r1", 4_000)
    result, again = settle(ledger, NOON + 10, "r1", 4_000)
    assert result.status is SettleStatus.ALREADY_SETTLED
    assert again == ledger
    assert ledger.windows[DAY_KEY].spent == 4_000


def test_settle_of_an_unknown_request_changes_nothing() -> None:
    _, ledger = admit(BudgetLedger(), NOON, req("r1", 5_000), CONFIG)
    result, again = settle(ledger, NOON, "nope", 4_000)
    assert result.status is SettleStatus.UNKNOWN and again == ledger


def test_settled_ids_kept_are_bounded() -> None:
    ledger = BudgetLedger()
    for i in range(5):
        _, ledger = admit(ledger, NOON, req(f"r{i}", 10), CONFIG)
        _, ledger = settle(ledger, NOON + i, f"r{i}", 10, keep_settled=2)
    assert list(ledger.settled) == ["r3", "r4"]


def test_overrun_is_recorded_and_reported() -> None:
    _, ledger = admit(BudgetLedger(), NOON, req("r1", 1_000), CONFIG)
    result, ledger = settle(ledger, NOON, "r1", 1_500)
    assert result.overrun_micros == 500
    assert ledger.windows[DAY_KEY].spent == 1_500


def test_release_drops_the_reservation() -> None:
    _, ledger = admit(BudgetLedger(), NOON, req("r1", DOLLAR), CONFIG)
    ledger = release(ledger, "r1")
    assert ledger.reservations == {}
    assert committed(ledger, DAY_KEY) == 0
    assert release(ledger, "r1") == ledger  # releasing twice is harmless
    decision, _ = admit(ledger, NOON, req("r2", DOLLAR), CONFIG)
    assert decision.action is BudgetAction.ADMIT


def test_mark_sent_flags_only_an_open_unmarked_reservation() -> None:
    _, ledger = admit(BudgetLedger(), NOON, req("r1", 400_000), CONFIG)
    assert ledger.reservations["r1"].sent is False
    marked = mark_sent(ledger, "r1")
    assert marked.reservations["r1"].sent is True
    assert ledger.reservations["r1"].sent is False  # the input is not modified
    assert marked.windows == ledger.windows  # nothing spent or reserved by marking
    assert mark_sent(marked, "r1") is marked  # already marked: nothing to write
    assert mark_sent(marked, "r2") is marked  # no reservation: nothing to write


@pytest.mark.parametrize(("sent", "spent"), [(True, 400_000), (False, 0)])
def test_a_held_reservation_is_charged_only_if_its_attempt_was_sent(sent: bool, spent: int) -> None:
    """A worker dies with r1 reserved (sent to the provider or still queued); its successor
    restores the ledger from the changelog, re-reads r1 and closes the old reservation:
    an attempt that was sent may have been paid, one never sent cost nothing."""
    clock = ManualClock(NOON)
    _, ledger = admit(BudgetLedger(), clock.now_ms(), req("r1", 400_000), CONFIG)
    if sent:
        ledger = mark_sent(ledger, "r1")
    restored = BudgetLedger.from_dict(json.loads(json.dumps(ledger.to_dict())))
    clock.advance(30_000)  # the successor takes over
    charged = charge_held(restored, "r1")
    assert charged.reservations == {}
    assert {k: (w.spent, w.reserved) for k, w in charged.windows.items()} == {
        k: (spent, 0) for k in ledger.windows
    }
    assert charge_held(charged, "r1") == charged  # nothing held any more
    decision, charged = admit(charged, clock.now_ms(), req("r1", 400_000), CONFIG)
    assert decision.action is BudgetAction.ADMIT and not decision.duplicate  # reserved anew
    assert committed(charged, DAY_KEY) == spent + 400_000


def test_expire_drops_only_stale_reservations() -> None:
    clock = ManualClock(NOON)
    _, ledger = admit(BudgetLedger(), clock.now_ms(), req("old", 400_000), CONFIG)
    clock.advance(10 * 60_000)
    _, ledger = admit(ledger, clock.now_ms(), req("new", 100_000), CONFIG)
    clock.advance(1)
    expired, ledger = expire_reservations(ledger, clock.now_ms(), max_age_ms=10 * 60_000)
    assert expired == ("old",)
    assert list(ledger.reservations) == ["new"]
    assert committed(ledger, DAY_KEY) == 100_000
    result, _ = settle(ledger, clock.now_ms(), "old", 400_000)  # too late: already reclaimed
    assert result.status is SettleStatus.UNKNOWN


def test_soft_thresholds_fire_once_per_window() -> None:
    ledger = BudgetLedger()
    decision, ledger = admit(ledger, NOON, req("r1", 499_999), CONFIG)
    assert decision.alerts == ()
    decision, ledger = admit(ledger, NOON, req("r2", 1), CONFIG)
    assert [(a.key, a.threshold) for a in decision.alerts] == [(DAY_KEY, 0.5)]
    assert decision.alerts[0].committed_micros == 500_000
    decision, ledger = admit(ledger, NOON, req("r3", 1), CONFIG)
    assert decision.alerts == ()  # already reported in this window
    decision, ledger = admit(ledger, NOON, req("r4", 400_000), CONFIG)  # jumps past 0.8
    assert [a.threshold for a in decision.alerts if a.key == DAY_KEY] == [0.8]
    decision, _ = admit(ledger, MIDNIGHT, req("r5", 900_000), CONFIG)  # the next day
    assert [a.threshold for a in decision.alerts if a.scope is CapScope.TENANT_DAY] == [0.5, 0.8]


def test_unknown_tenant_is_rejected_unless_there_is_a_default_budget() -> None:
    decision, _ = admit(BudgetLedger(), NOON, req("r1", 1, tenant="initech"), CONFIG)
    assert (decision.action, decision.reason) == (BudgetAction.REJECT, Reason.UNKNOWN_TENANT)
    config = LedgerConfig(default_budget=BudgetConfig(daily_cap_micros=10), tz=TZ)
    fits, _ = admit(BudgetLedger(), NOON, req("r1", 10, tenant="initech"), config)
    too_big, _ = admit(BudgetLedger(), NOON, req("r1", 11, tenant="initech"), config)
    assert (fits.action, too_big.action) == (BudgetAction.ADMIT, BudgetAction.REJECT)


@pytest.mark.parametrize("seed", range(6))
def test_concurrent_reservations_never_overshoot_any_cap(seed: int) -> None:
    rng = random.Random(seed)
    clock = ManualClock(NOON)
    ledger = BudgetLedger()
    open_ids: list[tuple[str, str, str, int]] = []  # request id, tenant, feature, estimate
    actual: dict[str, int] = {"acme": 0, "acme/search": 0, "openai": 0}
    caps = {
        DAY_KEY: DOLLAR,
        feature_key("acme", "search", "day/2026-11-27"): 300_000,
        "budget/v1/provider/openai/day/2026-11-27": 3 * DOLLAR,
    }
    rejected, peak_open, peak_day = 0, 0, 0
    for i in range(3_000):
        clock.advance(rng.randrange(0, 20))
        action = rng.random()
        if open_ids and action < 0.3:
            rid, tenant, feature, estimate = open_ids.pop(rng.randrange(len(open_ids)))
            cost = rng.randint(0, estimate)  # actual <= estimate
            _, ledger = settle(ledger, clock.now_ms(), rid, cost)
            actual["openai"] += cost
            if tenant == "acme":
                actual["acme"] += cost
                actual["acme/search"] += cost if feature == "search" else 0
        elif open_ids and action < 0.35:
            rid, *_ = open_ids.pop(rng.randrange(len(open_ids)))
            ledger = release(ledger, rid)
        else:
            tenant = rng.choice(["acme", "globex"])
            feature = rng.choice(["search", "chat"])
            estimate = rng.randrange(1, 60_000)
            request = req(f"r{i}", estimate, tenant=tenant, feature=feature, model="mini")
            decision, ledger = admit(ledger, clock.now_ms(), request, CONFIG)
            if decision.action is BudgetAction.ADMIT:
                open_ids.append((request.request_id, tenant, feature, request.estimate_micros))
            else:
                rejected += 1
        for key, cap in caps.items():  # the invariant holds at every step
            assert committed(ledger, key) <= cap
        peak_open = max(peak_open, len(open_ids))
        peak_day = max(peak_day, committed(ledger, DAY_KEY))
    for rid, tenant, feature, estimate in open_ids:  # everything in flight finishes at full cost
        _, ledger = settle(ledger, clock.now_ms(), rid, estimate)
        actual["openai"] += estimate
        if tenant == "acme":
            actual["acme"] += estimate
            actual["acme/search"] += estimate if feature == "search" else 0
    assert peak_open >= 20 and rejected > 100  # many in flight, and the caps were reached
    assert peak_day > DOLLAR - 60_000  # within one estimate of the cap
    assert actual["acme"] <= DOLLAR
    assert actual["acme/search"] <= 300_000
    assert actual["openai"] <= 3 * DOLLAR
    assert ledger.windows[DAY_KEY].spent == actual["acme"]


def test_ledger_survives_a_json_round_trip() -> None:
    ledger = BudgetLedger()
    _, ledger = admit(ledger, NOON, req("r1", 600_000), CONFIG)
    _, ledger = admit(ledger, NOON, req("r2", 100_000), CONFIG)
    _, ledger = settle(ledger, NOON, "r2", 90_000)
    ledger = mark_sent(ledger, "r1")
    restored = BudgetLedger.from_dict(json.loads(json.dumps(ledger.to_dict())))
    assert restored == ledger
    assert restored.reservations["r1"].sent is True
    probe = req("r3", 310_001)  # 600_000 + 90_000 + 310_001 > 1 $
    assert admit(restored, NOON, probe, CONFIG)[0].action is BudgetAction.REJECT


def test_a_ledger_stored_before_the_sent_mark_loads_as_not_sent() -> None:
    legacy = {
        "windows": {DAY_KEY: [0, 600_000, MIDNIGHT, 0.5]},
        "reservations": {"r1": [600_000, "big", [DAY_KEY], NOON]},
        "settled": {},
    }
    ledger = BudgetLedger.from_dict(legacy)
    assert ledger.reservations["r1"].sent is False
    assert ledger.reservations["r1"].amount == 600_000
    assert charge_held(ledger, "r1").windows[DAY_KEY].spent == 0  # released, not charged


def test_usage_view_shows_spent_cap_and_percent_per_window() -> None:
    _, ledger = admit(BudgetLedger(), NOON, req("r1", 200_000, feature="search"), CONFIG)
    _, ledger = settle(ledger, NOON, "r1", 150_000)
    _, ledger = admit(ledger, NOON, req("r2", 100_000, feature="chat"), CONFIG)
    view = usage_view(ledger, NOON, "acme", CONFIG)
    rows = {(row["scope"], row["feature"]): row for row in view["windows"]}
    day = rows[("tenant_day", "")]
    assert (day["spent_micros"], day["reserved_micros"]) == (150_000, 100_000)
    assert day["cap_micros"] == DOLLAR
    assert day["percent"] == 25.0
    assert day["window"] == "day/2026-11-27" and day["reset_at_ms"] == MIDNIGHT
    assert rows[("tenant_month", "")]["window"] == "month/2026-11"
    assert rows[("feature_day", "search")]["percent"] == 50.0
    assert rows[("feature_day", "chat")]["cap_micros"] is None  # seen in use, no cap
    assert rows[("feature_day", "chat")]["percent"] is None


def test_prune_forgets_ended_windows_but_keeps_held_ones() -> None:
    _, ledger = admit(BudgetLedger(), NOON, req("r1", 10), CONFIG)
    _, ledger = settle(ledger, NOON, "r1", 10)
    _, ledger = admit(ledger, NOON, req("r2", 10), CONFIG)
    assert prune_windows(ledger, MIDNIGHT + 1).windows.keys() == ledger.windows.keys()
    ledger = release(ledger, "r2")
    pruned = prune_windows(ledger, MIDNIGHT + 1)
    assert DAY_KEY not in pruned.windows and MONTH_KEY in pruned.windows
    assert DAY_KEY in prune_windows(ledger, MIDNIGHT + 1, keep_ms=86_400_000).windows


@pytest.mark.parametrize(
    "budget",
    [
        lambda: BudgetConfig(daily_cap_micros=-1),
        lambda: BudgetConfig(soft_thresholds=(1.5,)),
        lambda: BudgetConfig(features={"x": FeatureBudgetConfig(daily_cap_micros=-5)}),
    ],
)
def test_bad_budget_config_is_rejected(budget: object) -> None:
    with pytest.raises(ValueError):
        budget()  # type: ignore[operator]
