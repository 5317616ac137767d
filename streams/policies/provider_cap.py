"""A provider's global daily cap, split evenly over the request partitions, each share
enforced exactly by reservation.

Why split: a tenant's requests all land on one partition, so its ledger has one owner and
is exact. A provider serves every tenant, on every partition, owned by different workers;
one shared counter would need coordination on every request. Instead partition ``p`` of
``n`` gets the share ``cap // n`` (plus one micro-dollar for the first ``cap % n``
partitions), and its ledger for "provider P, today" is a row of the tenant-state table
written only while handling requests of that partition, so it lives on that partition and
has a single owner, like a tenant's ledger. The shares add up to the cap exactly, so the
sum over partitions can never exceed it. The price: a busy partition can reach its share
while the others still have room (its requests are then rejected although the global cap
is not spent).

The ledger is ``budget.BudgetLedger`` with one window key per day
(``budget/v1/provider/{provider}/day/2026-11-27``) and the same arithmetic as the tenant
caps (``budget.settle``/``release``/``expire_reservations``):

- ``admit`` reserves, for every capped provider the request's route can reach, the
  route's maximum cost at that provider's models, if ``spent + reserved + estimate <=
  share`` holds for each of them (all or nothing); else it names the provider whose share
  is exceeded and the window's reset time. A request id that already holds a reservation
  keeps it: nothing is reserved twice. (The live worker first calls ``charge_held``: a
  reservation still open when a request is read again belongs to an earlier attempt; it
  is counted as spent if that attempt was sent to a provider, and may have been paid,
  else released; see ``budget.charge_held``.)
- ``mark_sent`` marks the request's reservations as sent, just before the provider call.
- ``settle`` spends the actual cost on the provider that answered and releases the
  reservations on the others (a fallback on another provider spent nothing there).

Cost: O(providers on the route) per admit and settle, plus copying each ledger.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from streams.policies import budget
from streams.policies.budget import BudgetLedger, Reservation, WindowUsage
from streams.policies.windows import UTC_ZONE, WindowKind, quote_part, window_end_ms, window_id

TABLE_KEY_PREFIX = "__provider__:"  # tenant-state rows that are provider ledgers
SETTLED_KEPT = 0  # settled ids are only for reporting; the provider row stays small
WINDOWS_KEPT_MS = 2 * 86_400_000  # yesterday stays readable


@dataclass(frozen=True)
class ProviderCapConfig:
    daily_caps_micros: Mapping[str, int] = field(default_factory=dict)  # global, per provider
    partitions: int = 1  # request partitions the cap is split over
    tz: str = UTC_ZONE
    soft_thresholds: tuple[float, ...] = (0.8,)
    reservation_max_age_ms: int = 3_600_000  # as AdmissionConfig's

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError("partitions must be >= 1")
        if any(cap < 0 for cap in self.daily_caps_micros.values()):
            raise ValueError("provider caps must be >= 0")

    def share_micros(self, provider: str, partition: int) -> int | None:
        """The part of ``provider``'s daily cap that ``partition`` may spend (``None``:
        uncapped). A partition outside ``0..partitions-1`` gets 0: more partitions than
        configured must not add up to more than the cap."""
        cap = self.daily_caps_micros.get(provider)
        if cap is None:
            return None
        if not 0 <= partition < self.partitions:
            return 0
        base, extra = divmod(cap, self.partitions)
        return base + (1 if partition < extra else 0)


def table_key(provider: str, partition: int) -> str:
    """The tenant-state row of ``provider``'s ledger on ``partition``. The partition is in
    the key so that every row has one home (it is written only from that partition)."""
    return f"{TABLE_KEY_PREFIX}{quote_part(provider)}/p{partition}"


def day_key(provider: str, now_ms: int, tz: str) -> str:
    return budget.provider_key(provider, window_id(WindowKind.DAY, now_ms, tz))


@dataclass(frozen=True)
class ProviderRefusal:
    provider: str
    share_micros: int
    spent_micros: int
    reserved_micros: int
    reset_at_ms: int

    @property
    def detail(self) -> str:
        return (
            f"provider_day budget of {self.provider}: spent {self.spent_micros} + reserved "
            f"{self.reserved_micros} of this partition's share {self.share_micros} micro-dollars"
        )


@dataclass(frozen=True)
class ProviderAdmission:
    refused: ProviderRefusal | None = None
    ledgers: Mapping[str, BudgetLedger] = field(default_factory=dict)  # provider -> to store
    alerts: tuple[str, ...] = ()


def estimates_by_provider(
    costs: Iterable[tuple[str, int]], config: ProviderCapConfig
) -> dict[str, int]:
    """``(provider, maximum cost)`` of each model on the route -> the largest per capped
    provider: what a request must reserve there."""
    out: dict[str, int] = {}
    for provider, cost in costs:
        if provider in config.daily_caps_micros:
            out[provider] = max(cost, out.get(provider, 0))
    return out


def admit(
    ledgers: Mapping[str, BudgetLedger],
    now_ms: int,
    partition: int,
    request_id: str,
    estimates: Mapping[str, int],
    config: ProviderCapConfig,
) -> ProviderAdmission:
    """Reserve ``estimates[provider]`` in each provider's ledger of this partition, or
    refuse naming the first provider whose share it would exceed. ``ledgers`` holds the
    current ledger of every provider in ``estimates`` (missing: empty)."""
    day_end = window_end_ms(WindowKind.DAY, now_ms, config.tz)
    updated: dict[str, BudgetLedger] = {}
    alerts: list[str] = []
    for provider, estimate in sorted(estimates.items()):
        share = config.share_micros(provider, partition)
        if share is None:
            continue
        if estimate < 0:
            raise ValueError("an estimate must be >= 0")
        ledger = ledgers.get(provider, BudgetLedger())
        _, ledger = budget.expire_reservations(ledger, now_ms, config.reservation_max_age_ms)
        ledger = budget.prune_windows(ledger, now_ms, WINDOWS_KEPT_MS)
        if request_id in ledger.reservations:  # re-read: its reservation still holds
            updated[provider] = ledger
            continue
        key = day_key(provider, now_ms, config.tz)
        usage = ledger.windows.get(key, WindowUsage(end_ms=day_end))
        if usage.spent + usage.reserved + estimate > share:
            refusal = ProviderRefusal(provider, share, usage.spent, usage.reserved, day_end)
            return ProviderAdmission(refused=refusal)
        usage = replace(usage, reserved=usage.reserved + estimate)
        crossed = [
            t
            for t in sorted(config.soft_thresholds)
            if share and t > usage.alerted and usage.spent + usage.reserved >= t * share
        ]
        if crossed:
            usage = replace(usage, alerted=crossed[-1])
            alerts.append(
                f"provider_day {provider} (partition {partition}) passed {crossed[-1]:.0%}"
            )
        reservation = Reservation(estimate, provider, (key,), now_ms)
        updated[provider] = replace(
            ledger,
            windows={**ledger.windows, key: usage},
            reservations={**ledger.reservations, request_id: reservation},
        )
    return ProviderAdmission(ledgers=updated, alerts=tuple(alerts))


def settle(
    ledgers: Mapping[str, BudgetLedger],
    now_ms: int,
    request_id: str,
    answered_by: str | None,
    actual_micros: int,
) -> dict[str, BudgetLedger]:
    """The request finished: its actual cost is spent on the provider that answered
    (``answered_by``); its reservations elsewhere are released. Returns the ledgers that
    changed (a ledger without a reservation for the request is left alone)."""
    changed: dict[str, BudgetLedger] = {}
    for provider, ledger in ledgers.items():
        if request_id not in ledger.reservations:
            continue
        if provider == answered_by and actual_micros > 0:
            _, ledger = budget.settle(
                ledger, now_ms, request_id, actual_micros, keep_settled=SETTLED_KEPT
            )
        else:
            ledger = budget.release(ledger, request_id)
        changed[provider] = ledger
    return changed


def mark_sent(ledgers: Mapping[str, BudgetLedger], request_id: str) -> dict[str, BudgetLedger]:
    """``budget.mark_sent`` in every provider ledger holding a reservation for the request
    not yet marked; returns the ledgers that changed (empty: nothing to write)."""
    return {
        provider: budget.mark_sent(ledger, request_id)
        for provider, ledger in ledgers.items()
        if (held := ledger.reservations.get(request_id)) is not None and not held.sent
    }


def charge_held(ledgers: Mapping[str, BudgetLedger], request_id: str) -> dict[str, BudgetLedger]:
    """``budget.charge_held`` in every provider ledger holding a reservation for the
    request (an earlier attempt: charged if it was sent, else released); returns the
    ledgers that changed."""
    return {
        provider: budget.charge_held(ledger, request_id)
        for provider, ledger in ledgers.items()
        if request_id in ledger.reservations
    }


def usage_row(
    ledger: BudgetLedger, now_ms: int, provider: str, partition: int, config: ProviderCapConfig
) -> dict[str, object]:
    """Today's spend of ``provider`` on ``partition`` against its share, for status views
    (the shape of ``budget.usage_view``'s rows)."""
    key = day_key(provider, now_ms, config.tz)
    end = window_end_ms(WindowKind.DAY, now_ms, config.tz)
    usage = ledger.windows.get(key, WindowUsage(end_ms=end))
    share = config.share_micros(provider, partition)
    committed = usage.spent + usage.reserved
    return {
        "scope": budget.CapScope.PROVIDER_DAY.value,
        "feature": "",
        "provider": provider,
        "partition": partition,
        "window": window_id(WindowKind.DAY, now_ms, config.tz),
        "key": key,
        "spent_micros": usage.spent,
        "reserved_micros": usage.reserved,
        "cap_micros": share,
        "global_cap_micros": config.daily_caps_micros.get(provider),
        "percent": round(100 * committed / share, 2) if share else None,
        "reset_at_ms": end,
    }
