"""A provider's global daily cap split over the partitions: shares, reservations, rollover."""

from __future__ import annotations

import json
import random
from datetime import datetime

import pytest

from streams.config import ConfigError, parse_config
from streams.policies import budget, provider_cap
from streams.policies.budget import BudgetConfig, BudgetLedger, BudgetRequest, LedgerConfig
from streams.policies.clock import ManualClock
from streams.policies.provider_cap import (
    ProviderCapConfig,
    admit,
    charge_held,
    day_key,
    estimates_by_provider,
    mark_sent,
    settle,
    table_key,
    usage_row,
)

TZ = "Asia/Kolkata"  # UTC+05:30: local midnight is 18:30 UTC


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


NOON = ms("2026-11-27T06:30:00Z")  # 12:00 in Kolkata
MIDNIGHT = ms("2026-11-27T18:30:00Z")  # the next local midnight
CONFIG = ProviderCapConfig({"openai": 800, "anthropic": 80}, partitions=8, tz=TZ)


def committed(ledger: BudgetLedger, provider: str, now: int) -> int:
    usage = ledger.windows.get(day_key(provider, now, TZ))
    return 0 if usage is None else usage.spent + usage.reserved


def ask(
    ledgers: dict[str, BudgetLedger], now: int, rid: str, estimate: int, partition: int = 3
) -> provider_cap.ProviderAdmission:
    decision = admit(ledgers, now, partition, rid, {"openai": estimate}, CONFIG)
    ledgers.update(decision.ledgers)
    return decision


@pytest.mark.parametrize(
    ("cap", "partitions", "shares"),
    [
        (800, 8, [100] * 8),
        (803, 8, [101, 101, 101, 100, 100, 100, 100, 100]),
        (5, 8, [1, 1, 1, 1, 1, 0, 0, 0]),
        (0, 4, [0, 0, 0, 0]),
        (50_000_000, 1, [50_000_000]),
    ],
)
def test_shares_add_up_to_the_cap_exactly(cap: int, partitions: int, shares: list[int]) -> None:
    config = ProviderCapConfig({"p": cap}, partitions=partitions)
    got = [config.share_micros("p", i) or 0 for i in range(partitions)]
    assert got == shares
    assert sum(got) == cap


def test_an_uncapped_provider_or_an_unknown_partition() -> None:
    assert CONFIG.share_micros("mistral", 0) is None
    assert CONFIG.share_micros("openai", 8) == 0  # more partitions than configured: nothing
    assert CONFIG.share_micros("openai", -1) == 0


def test_admit_reserves_up_to_the_share_and_no_further() -> None:
    ledgers: dict[str, BudgetLedger] = {}
    assert ask(ledgers, NOON, "r1", 60).refused is None
    assert ask(ledgers, NOON, "r2", 40).refused is None  # 60 + 40 = 100: exactly the share
    assert committed(ledgers["openai"], "openai", NOON) == 100
    refused = ask(ledgers, NOON, "r3", 1).refused
    assert refused is not None
    assert (refused.provider, refused.share_micros, refused.reserved_micros) == ("openai", 100, 100)
    assert refused.reset_at_ms == MIDNIGHT
    assert "openai" in refused.detail and "share 100" in refused.detail
    assert set(ledgers["openai"].reservations) == {"r1", "r2"}  # r3 left nothing behind


def test_settle_replaces_the_reservation_by_the_actual_cost() -> None:
    ledgers: dict[str, BudgetLedger] = {}
    ask(ledgers, NOON, "r1", 60)
    ask(ledgers, NOON, "r2", 40)
    ledgers.update(settle(ledgers, NOON, "r1", "openai", 25))
    usage = ledgers["openai"].windows[day_key("openai", NOON, TZ)]
    assert (usage.spent, usage.reserved) == (25, 40)
    assert ask(ledgers, NOON, "r3", 35).refused is None  # 25 + 40 + 35 = 100
    assert ask(ledgers, NOON, "r4", 1).refused is not None
    ledgers.update(settle(ledgers, NOON, "r2", "openai", 0))  # failed: released
    usage = ledgers["openai"].windows[day_key("openai", NOON, TZ)]
    assert (usage.spent, usage.reserved) == (25, 35)
    assert settle(ledgers, NOON, "r2", "openai", 40) == {}  # settled twice: no change


def test_a_request_id_is_reserved_once() -> None:
    ledgers: dict[str, BudgetLedger] = {}
    ask(ledgers, NOON, "r1", 70)
    again = ask(ledgers, NOON, "r1", 70)  # re-read after a crash
    assert again.refused is None
    assert committed(ledgers["openai"], "openai", NOON) == 70


def test_every_capped_provider_on_the_route_reserves_all_or_nothing() -> None:
    ledgers: dict[str, BudgetLedger] = {}
    estimates = {"openai": 50, "anthropic": 8}  # share: 100 and 10
    first = admit(ledgers, NOON, 3, "r1", estimates, CONFIG)
    ledgers.update(first.ledgers)
    assert set(first.ledgers) == {"openai", "anthropic"}
    second = admit(ledgers, NOON, 3, "r2", estimates, CONFIG)  # anthropic: 8 + 8 > 10
    assert second.refused is not None and second.refused.provider == "anthropic"
    assert second.ledgers == {}
    assert committed(ledgers["openai"], "openai", NOON) == 50  # nothing reserved for r2
    # The answer came from the fallback (anthropic): openai's reservation is released.
    ledgers.update(settle(ledgers, NOON, "r1", "anthropic", 6))
    assert committed(ledgers["openai"], "openai", NOON) == 0
    assert ledgers["anthropic"].windows[day_key("anthropic", NOON, TZ)].spent == 6


def test_mark_sent_changes_only_the_ledgers_holding_an_unmarked_reservation() -> None:
    ledgers: dict[str, BudgetLedger] = {}
    ledgers.update(admit(ledgers, NOON, 3, "r1", {"openai": 50, "anthropic": 8}, CONFIG).ledgers)
    ask(ledgers, NOON, "r2", 10)  # openai only
    marked = mark_sent(ledgers, "r2")
    assert set(marked) == {"openai"}
    assert marked["openai"].reservations["r2"].sent is True
    assert marked["openai"].reservations["r1"].sent is False
    ledgers.update(marked)
    assert mark_sent(ledgers, "r2") == {}  # already marked: nothing to write
    assert mark_sent(ledgers, "r9") == {}  # no reservation: nothing to write
    assert set(mark_sent(ledgers, "r1")) == {"openai", "anthropic"}


def restored(ledgers: dict[str, BudgetLedger]) -> dict[str, BudgetLedger]:
    """The rows as a successor restores them from the changelog (JSON)."""
    return {
        p: BudgetLedger.from_dict(json.loads(json.dumps(x.to_dict()))) for p, x in ledgers.items()
    }


@pytest.mark.parametrize(("sent", "spent"), [(True, 60), (False, 0)])
def test_a_held_reservation_is_charged_if_sent_else_released_then_reserved_anew(
    sent: bool, spent: int
) -> None:
    """A request read again while its earlier attempt's reservation is open (its worker
    died): an attempt sent to the provider may have been paid, so its reservation counts
    as spent; one still queued cost nothing, so its reservation is released."""
    clock = ManualClock(NOON)
    ledgers: dict[str, BudgetLedger] = {}
    ask(ledgers, clock.now_ms(), "r1", 60)
    ask(ledgers, clock.now_ms(), "r2", 10)
    if sent:
        ledgers.update(mark_sent(ledgers, "r1"))
    ledgers = restored(ledgers)
    clock.advance(30_000)  # the successor re-reads r1
    charged = charge_held(ledgers, "r1")
    assert set(charged) == {"openai"}
    ledgers.update(charged)
    usage = ledgers["openai"].windows[day_key("openai", NOON, TZ)]
    assert (usage.spent, usage.reserved) == (spent, 10)
    assert "r1" not in ledgers["openai"].reservations
    assert charge_held(ledgers, "r1") == {}  # nothing held any more
    retry = 90 - spent  # exactly what is left of the share of 100
    assert ask(ledgers, clock.now_ms(), "r1", retry + 1).refused is not None
    assert ask(ledgers, clock.now_ms(), "r1", retry).refused is None  # the retry's own
    ledgers.update(settle(ledgers, clock.now_ms(), "r1", "openai", 25))
    usage = ledgers["openai"].windows[day_key("openai", NOON, TZ)]
    assert (usage.spent, usage.reserved) == (spent + 25, 10)


def test_provider_rows_stored_before_the_sent_mark_load_as_not_sent() -> None:
    ledgers: dict[str, BudgetLedger] = {}
    ask(ledgers, NOON, "r1", 60)
    legacy = ledgers["openai"].to_dict()
    legacy["reservations"] = {rid: r[:4] for rid, r in legacy["reservations"].items()}
    ledgers = {"openai": BudgetLedger.from_dict(legacy)}
    assert ledgers["openai"].reservations["r1"].sent is False
    ledgers.update(charge_held(ledgers, "r1"))
    assert committed(ledgers["openai"], "openai", NOON) == 0  # released


def test_charging_a_sent_tenant_reservation_spends_it_in_every_window() -> None:
    config = LedgerConfig({"acme": BudgetConfig(daily_cap_micros=1_000)}, tz=TZ)
    request = BudgetRequest("r1", "acme", "chat", "openai", "m", 400)
    _, ledger = budget.admit(BudgetLedger(), NOON, request, config)
    charged = budget.charge_held(budget.mark_sent(ledger, "r1"), "r1")
    assert charged.reservations == {}
    assert {k: (w.spent, w.reserved) for k, w in charged.windows.items()} == {
        k: (400, 0) for k in ledger.windows
    }
    assert budget.charge_held(charged, "r1") == charged


def test_estimates_take_the_dearest_model_per_capped_provider() -> None:
    costs = [("openai", 30), ("openai", 90), ("anthropic", 5), ("mistral", 1_000)]
    assert estimates_by_provider(costs, CONFIG) == {"openai": 90, "anthropic": 5}


def test_the_share_is_free_again_after_local_midnight() -> None:
    clock = ManualClock(MIDNIGHT - 60_000)  # 23:59 in Kolkata
    ledgers: dict[str, BudgetLedger] = {}
    ask(ledgers, clock.now_ms(), "late", 100)
    assert ask(ledgers, clock.now_ms(), "r2", 1).refused is not None
    clock.advance(60_000)  # 00:00: a new day
    assert ask(ledgers, clock.now_ms(), "r3", 100).refused is None
    # "late" settles after midnight: its cost stays on the day it was admitted.
    ledgers.update(settle(ledgers, clock.now_ms(), "late", "openai", 70))
    ledger = ledgers["openai"]
    assert ledger.windows[day_key("openai", MIDNIGHT - 1, TZ)].spent == 70
    assert committed(ledger, "openai", clock.now_ms()) == 100
    # Two days later the old day is pruned at the next admission.
    clock.advance(2 * 86_400_000 + 1)
    ask(ledgers, clock.now_ms(), "r4", 10)
    assert day_key("openai", MIDNIGHT - 1, TZ) not in ledgers["openai"].windows


def test_stale_reservations_are_reclaimed() -> None:
    clock = ManualClock(NOON)
    ledgers: dict[str, BudgetLedger] = {}
    ask(ledgers, clock.now_ms(), "lost", 100)
    clock.advance(CONFIG.reservation_max_age_ms + 1)
    assert ask(ledgers, clock.now_ms(), "r2", 100).refused is None
    assert set(ledgers["openai"].reservations) == {"r2"}


def test_a_soft_threshold_alerts_once_per_window() -> None:
    ledgers: dict[str, BudgetLedger] = {}
    assert ask(ledgers, NOON, "r1", 79).alerts == ()
    assert ask(ledgers, NOON, "r2", 1).alerts == ("provider_day openai (partition 3) passed 80%",)
    assert ask(ledgers, NOON, "r3", 10).alerts == ()


def test_concurrent_requests_never_overshoot_the_cap_across_partitions() -> None:
    """Random admit/settle/release on every partition, actual cost <= estimate: the spend
    summed over all partitions never exceeds the global cap."""
    rng = random.Random(5)
    config = ProviderCapConfig({"openai": 10_007}, partitions=8, tz=TZ)
    ledgers: dict[int, dict[str, BudgetLedger]] = {p: {} for p in range(8)}
    open_ids: dict[int, list[tuple[str, int]]] = {p: [] for p in range(8)}
    admitted = 0
    for i in range(4_000):
        p = rng.randrange(8)
        if open_ids[p] and rng.random() < 0.45:
            rid, estimate = open_ids[p].pop(rng.randrange(len(open_ids[p])))
            actual = rng.choice([0, rng.randint(0, estimate)])
            ledgers[p].update(settle(ledgers[p], NOON, rid, "openai", actual))
        else:
            estimate = rng.randint(1, 400)
            decision = admit(ledgers[p], NOON, p, f"r{i}", {"openai": estimate}, config)
            if decision.refused is None:
                admitted += 1
                ledgers[p].update(decision.ledgers)
                open_ids[p].append((f"r{i}", estimate))
        total = sum(
            committed(ledgers[q].get("openai", BudgetLedger()), "openai", NOON) for q in ledgers
        )
        assert total <= 10_007
    assert admitted > 100


def test_usage_row_reports_the_partition_share() -> None:
    ledgers: dict[str, BudgetLedger] = {}
    ask(ledgers, NOON, "r1", 30)
    ledgers.update(settle(ledgers, NOON, "r1", "openai", 20))
    ask(ledgers, NOON, "r2", 30)
    row = usage_row(ledgers["openai"], NOON, "openai", 3, CONFIG)
    assert row["scope"] == "provider_day" and row["window"] == "day/2026-11-27"
    assert (row["spent_micros"], row["reserved_micros"], row["cap_micros"]) == (20, 30, 100)
    assert row["global_cap_micros"] == 800 and row["percent"] == 50.0
    assert row["reset_at_ms"] == MIDNIGHT


def test_table_keys_name_provider_and_partition() -> None:
    assert table_key("openai", 3) == "__provider__:openai/p3"
    assert table_key("a/b", 0) == "__provider__:a%2Fb/p0"


def _config(
    provider: dict[str, object], tenants: dict[str, object] | None = None
) -> dict[str, object]:
    model = {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}
    return {
        "kafka": {"partitions": 4},
        "budgets": {"timezone": TZ},
        "providers": {"openai": {"base_url": "http://x/v1", "models": {"m": model}, **provider}},
        "tenants": tenants or {"acme": {}},
    }


def test_the_config_sets_the_cap_in_micro_dollars_and_the_split() -> None:
    config = parse_config(_config({"daily_budget_usd": 50.0}))
    caps = config.provider_caps
    assert caps.daily_caps_micros == {"openai": 50_000_000}
    assert (caps.partitions, caps.tz) == (4, TZ)
    assert caps.share_micros("openai", 0) == 12_500_000
    assert parse_config(_config({})).provider_caps.daily_caps_micros == {}


@pytest.mark.parametrize(
    ("provider", "tenants", "message"),
    [
        ({"daily_budget_usd": -1}, None, "providers.openai.daily_budget_usd"),
        ({}, {"__provider__:openai/p0": {}}, "are reserved"),
    ],
)
def test_bad_provider_caps_are_config_errors(
    provider: dict[str, object], tenants: dict[str, object] | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(_config(provider, tenants))
