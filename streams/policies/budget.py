"""Spend budgets enforced by reservation: admit only what fits, settle what it cost.

Caps (integer micro-dollars, each optional): a tenant's calendar day and month, a
(tenant, feature)'s day, and a provider's day (a worker passes its share of a global
provider cap). Windows are calendar windows in ``LedgerConfig.tz`` (``windows.py``).

The ledger is plain data: per window key the settled ``spent`` and the ``reserved``
sum of open reservations, plus the open reservations by request id.

- ``admit`` reserves the request's cost estimate if, for EVERY capped window it touches,
  ``spent + reserved + estimate <= cap``. As long as a request's actual cost does not
  exceed its estimate, spent + reserved never exceeds a cap: overshoot is zero, however
  many requests are in flight. Otherwise the tenant's (or feature's) policy decides:
  ``DOWNGRADE`` to a named cheaper model (the caller re-estimates and calls ``admit``
  again with the same request id and the cheaper model; a request already on that model
  is rejected), or ``REJECT`` naming the cap, its spend and its reset time (the latest
  reset among the exceeded caps). Admitting a request id that holds an open
  reservation returns that reservation again (``duplicate=True``; ``DOWNGRADE`` to the
  model it was reserved for if asked with another model): no double reserve.
- ``settle`` replaces a reservation with the actual cost, in the windows of the
  reservation (a request admitted at 23:59 is spent on that day). It is idempotent:
  without an open reservation it changes nothing (reported ``ALREADY_SETTLED`` for an id
  among the last ``keep_settled`` settled, else ``UNKNOWN``).
- ``release`` drops a reservation (the request failed and cost nothing).
- ``mark_sent`` records that the reservation's attempt is going to a provider now.
- ``expire_reservations`` drops reservations older than ``max_age_ms``.

Crash recovery: the ledger is restored from the table's changelog with the crashed
worker's open reservations; their requests were not committed, so they are re-read and
``admit`` (same request id) finds and reuses their reservation. The live worker calls
``charge_held`` first instead, which looks at the reservation's ``sent`` mark (set by
``mark_sent`` just before the provider call): an attempt that was sent may have been paid
by the provider (its answer lost with the worker), so its reservation is counted as spent
(reusing it, the benchmark's SIGKILL run measured 1.7x the cap at the provider); an
attempt never sent (still queued) cost nothing, so its reservation is released. Either
way the re-read request then reserves anew. The remaining window: the mark is written
before the call, but the table's changelog is written asynchronously, so a worker that
dies after the call started and before the mark reached Kafka leaves an unsent
reservation, and that attempt is released although it may have been paid (the spend is
under-counted by at most that attempt). A reservation whose
request never comes back (shed by deadline before admission, or a glue bug) is
reclaimed by ``expire_reservations``; choose ``max_age_ms`` above the longest request
lifetime (deadline plus provider timeouts), so that a live request is never expired. A
settle for an expired reservation is ``UNKNOWN`` and changes nothing. A request
re-read after it was settled (crash before the offset commit) is reserved and settled
again: the provider is really called twice, so its spend is really counted twice.

Soft thresholds (e.g. 0.8 of a cap) are checked at admission on ``spent + reserved``;
each fires once per window (``alerts`` in the decision; the window remembers it).

Cost: O(caps) = at most 4 window keys per admit, settle and release, plus the copy of
the ledger's dicts (functions return a new ledger and never modify their input).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, NamedTuple
from urllib.parse import unquote

from streams.policies.verdict import Reason
from streams.policies.windows import (
    UTC_ZONE,
    WindowKind,
    quote_part,
    state_key,
    window_end_ms,
    window_id,
)

KEY_VERSION = 1
SETTLED_IDS_KEPT = 1024


class OnExceed(StrEnum):
    REJECT = "reject"
    DOWNGRADE = "downgrade"


class CapScope(StrEnum):
    TENANT_DAY = "tenant_day"
    TENANT_MONTH = "tenant_month"
    FEATURE_DAY = "feature_day"
    PROVIDER_DAY = "provider_day"


class BudgetAction(StrEnum):
    ADMIT = "admit"
    DOWNGRADE = "downgrade"
    REJECT = "reject"


class SettleStatus(StrEnum):
    SETTLED = "settled"
    ALREADY_SETTLED = "already_settled"
    UNKNOWN = "unknown"


# -- configuration ------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureBudgetConfig:
    daily_cap_micros: int | None = None
    on_exceed: OnExceed | None = None  # None: the tenant's policy
    downgrade_model: str | None = None  # None: the tenant's


@dataclass(frozen=True)
class BudgetConfig:
    """One tenant's budget. The feature's ``on_exceed`` (else the tenant's) applies to
    whichever cap a request of that feature exceeds."""

    daily_cap_micros: int | None = None
    monthly_cap_micros: int | None = None
    features: Mapping[str, FeatureBudgetConfig] = field(default_factory=dict)
    on_exceed: OnExceed = OnExceed.REJECT
    downgrade_model: str | None = None
    soft_thresholds: tuple[float, ...] = (0.8,)

    def __post_init__(self) -> None:
        caps = [self.daily_cap_micros, self.monthly_cap_micros]
        caps += [f.daily_cap_micros for f in self.features.values()]
        if any(cap is not None and cap < 0 for cap in caps):
            raise ValueError("budget caps must be >= 0")
        if any(not 0 < t <= 1 for t in self.soft_thresholds):
            raise ValueError("soft thresholds must be in (0, 1]")


@dataclass(frozen=True)
class LedgerConfig:
    tenants: Mapping[str, BudgetConfig] = field(default_factory=dict)
    provider_daily_caps_micros: Mapping[str, int] = field(default_factory=dict)
    tz: str = UTC_ZONE
    default_budget: BudgetConfig | None = None  # for tenants not listed; None: reject them


# -- state --------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowUsage:
    spent: int = 0  # settled micro-dollars
    reserved: int = 0  # open reservations
    end_ms: int = 0  # when the window resets
    alerted: float = 0.0  # highest soft threshold already reported


@dataclass(frozen=True)
class Reservation:
    amount: int
    model: str  # the model the estimate was made for
    keys: tuple[str, ...]  # the window keys it counts against
    created_ms: int
    sent: bool = False  # its attempt went to a provider (``mark_sent``): maybe paid


@dataclass(frozen=True)
class BudgetLedger:
    windows: Mapping[str, WindowUsage] = field(default_factory=dict)
    reservations: Mapping[str, Reservation] = field(default_factory=dict)
    # the last settled request ids (-> settled at), oldest first; only for reporting
    settled: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "windows": {
                k: [w.spent, w.reserved, w.end_ms, w.alerted] for k, w in self.windows.items()
            },
            "reservations": {
                rid: [r.amount, r.model, list(r.keys), r.created_ms, r.sent]
                for rid, r in self.reservations.items()
            },
            "settled": dict(self.settled),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BudgetLedger:
        windows = {
            k: WindowUsage(int(s), int(r), int(e), float(a))
            for k, (s, r, e, a) in data.get("windows", {}).items()
        }
        reservations = {  # stored before ``sent`` existed: 4 fields, and not sent
            rid: Reservation(int(a), str(m), tuple(keys), int(c), bool(rest[0]) if rest else False)
            for rid, (a, m, keys, c, *rest) in data.get("reservations", {}).items()
        }
        settled = {rid: int(at) for rid, at in data.get("settled", {}).items()}
        return cls(windows, reservations, settled)


# -- requests and verdicts ----------------------------------------------------------


@dataclass(frozen=True)
class BudgetRequest:
    request_id: str
    tenant: str
    feature: str
    provider: str
    model: str
    estimate_micros: int  # an upper bound of the cost, e.g. ``max_cost_estimate``


@dataclass(frozen=True)
class CapStatus:
    scope: CapScope
    key: str
    cap_micros: int | None
    spent_micros: int
    reserved_micros: int
    reset_at_ms: int


@dataclass(frozen=True)
class BudgetAlert:
    scope: CapScope
    key: str
    threshold: float
    committed_micros: int  # spent + reserved, this request included
    cap_micros: int


@dataclass(frozen=True)
class BudgetDecision:
    action: BudgetAction
    reason: Reason = Reason.NONE  # BUDGET_EXCEEDED on a reject (UNKNOWN_TENANT if unlisted)
    reserved_micros: int = 0  # the reservation held for the request (ADMIT)
    downgrade_model: str | None = None  # DOWNGRADE: the model to re-estimate and re-admit with
    exceeded: CapStatus | None = None  # DOWNGRADE/REJECT: the binding cap
    alerts: tuple[BudgetAlert, ...] = ()
    duplicate: bool = False  # the request id already held a reservation; nothing new reserved

    @property
    def reset_at_ms(self) -> int | None:
        return None if self.exceeded is None else self.exceeded.reset_at_ms


@dataclass(frozen=True)
class SettleResult:
    status: SettleStatus
    reserved_micros: int = 0
    actual_micros: int = 0

    @property
    def overrun_micros(self) -> int:
        """By how much the actual cost exceeded the reservation (0 if it did not)."""
        return max(0, self.actual_micros - self.reserved_micros)


# -- keys ---------------------------------------------------------------------------


def _budget_key(*parts: str) -> str:
    return state_key("budget", KEY_VERSION, *parts)


def tenant_key(tenant: str, window: str) -> str:
    """``budget/v1/tenant/{tenant}/day/2026-11-27`` (or ``.../month/2026-11``)."""
    return _budget_key("tenant", quote_part(tenant), window)


def feature_key(tenant: str, feature: str, window: str) -> str:
    return _budget_key("feature", quote_part(tenant), quote_part(feature), window)


def provider_key(provider: str, window: str) -> str:
    return _budget_key("provider", quote_part(provider), window)


class _Cap(NamedTuple):
    scope: CapScope
    key: str
    cap: int | None
    end_ms: int


def _caps(
    config: LedgerConfig, budget: BudgetConfig, request: BudgetRequest, now_ms: int
) -> list[_Cap]:
    """Every window the request's spend counts in, with its cap (``None``: uncapped)."""
    tz, tenant = config.tz, request.tenant
    day, month = window_id(WindowKind.DAY, now_ms, tz), window_id(WindowKind.MONTH, now_ms, tz)
    day_end = window_end_ms(WindowKind.DAY, now_ms, tz)
    month_end = window_end_ms(WindowKind.MONTH, now_ms, tz)
    provider_cap = config.provider_daily_caps_micros.get(request.provider)
    caps = [
        _Cap(CapScope.TENANT_DAY, tenant_key(tenant, day), budget.daily_cap_micros, day_end),
        _Cap(
            CapScope.TENANT_MONTH, tenant_key(tenant, month), budget.monthly_cap_micros, month_end
        ),
        _Cap(CapScope.PROVIDER_DAY, provider_key(request.provider, day), provider_cap, day_end),
    ]
    if request.feature:
        feature_cap = budget.features.get(request.feature, FeatureBudgetConfig()).daily_cap_micros
        key = feature_key(tenant, request.feature, day)
        caps.append(_Cap(CapScope.FEATURE_DAY, key, feature_cap, day_end))
    return caps


# -- the operations -----------------------------------------------------------------


def admit(
    ledger: BudgetLedger, now_ms: int, request: BudgetRequest, config: LedgerConfig
) -> tuple[BudgetDecision, BudgetLedger]:
    """Reserve ``request.estimate_micros`` if it fits every cap; else downgrade or reject."""
    if request.estimate_micros < 0:
        raise ValueError("estimate_micros must be >= 0")
    held = ledger.reservations.get(request.request_id)
    if held is not None:  # a re-read or repeated request: keep its reservation and model
        action = BudgetAction.ADMIT if held.model == request.model else BudgetAction.DOWNGRADE
        model = None if action is BudgetAction.ADMIT else held.model
        decision = BudgetDecision(
            action, reserved_micros=held.amount, downgrade_model=model, duplicate=True
        )
        return decision, ledger
    budget = config.tenants.get(request.tenant, config.default_budget)
    if budget is None:
        return BudgetDecision(BudgetAction.REJECT, Reason.UNKNOWN_TENANT), ledger

    caps = _caps(config, budget, request, now_ms)
    exceeded: list[CapStatus] = []
    for scope, key, cap, end in caps:
        usage = ledger.windows.get(key, WindowUsage(end_ms=end))
        if cap is not None and usage.spent + usage.reserved + request.estimate_micros > cap:
            exceeded.append(CapStatus(scope, key, cap, usage.spent, usage.reserved, end))
    if exceeded:
        return _over_budget(request, budget, exceeded), ledger

    windows = dict(ledger.windows)
    alerts: list[BudgetAlert] = []
    for scope, key, cap, end in caps:
        usage = windows.get(key, WindowUsage(end_ms=end))
        usage = replace(usage, reserved=usage.reserved + request.estimate_micros)
        if cap:
            committed = usage.spent + usage.reserved
            crossed = [
                t
                for t in sorted(budget.soft_thresholds)
                if t > usage.alerted and committed >= t * cap
            ]
            alerts += [BudgetAlert(scope, key, t, committed, cap) for t in crossed]
            if crossed:
                usage = replace(usage, alerted=crossed[-1])
        windows[key] = usage
    keys = tuple(c.key for c in caps)
    reservation = Reservation(request.estimate_micros, request.model, keys, now_ms)
    reservations = {**ledger.reservations, request.request_id: reservation}
    decision = BudgetDecision(
        BudgetAction.ADMIT, reserved_micros=request.estimate_micros, alerts=tuple(alerts)
    )
    return decision, replace(ledger, windows=windows, reservations=reservations)


def _over_budget(
    request: BudgetRequest, budget: BudgetConfig, exceeded: list[CapStatus]
) -> BudgetDecision:
    binding = max(exceeded, key=lambda c: c.reset_at_ms)  # no use retrying before it resets
    feature = budget.features.get(request.feature, FeatureBudgetConfig())
    policy = feature.on_exceed or budget.on_exceed
    cheaper = feature.downgrade_model or budget.downgrade_model
    if policy is OnExceed.DOWNGRADE and cheaper is not None and cheaper != request.model:
        return BudgetDecision(BudgetAction.DOWNGRADE, downgrade_model=cheaper, exceeded=binding)
    return BudgetDecision(BudgetAction.REJECT, Reason.BUDGET_EXCEEDED, exceeded=binding)


def _unreserve(
    windows: dict[str, WindowUsage], reservation: Reservation, spent: int
) -> dict[str, WindowUsage]:
    for key in reservation.keys:
        usage = windows.get(key, WindowUsage())
        windows[key] = replace(
            usage, spent=usage.spent + spent, reserved=max(0, usage.reserved - reservation.amount)
        )
    return windows


def settle(
    ledger: BudgetLedger,
    now_ms: int,
    request_id: str,
    actual_micros: int,
    keep_settled: int = SETTLED_IDS_KEPT,
) -> tuple[SettleResult, BudgetLedger]:
    """Replace the request's reservation by its actual cost; a no-op without one."""
    if actual_micros < 0:
        raise ValueError("actual_micros must be >= 0")
    reservation = ledger.reservations.get(request_id)
    if reservation is None:
        status = (
            SettleStatus.ALREADY_SETTLED if request_id in ledger.settled else SettleStatus.UNKNOWN
        )
        return SettleResult(status), ledger
    windows = _unreserve(dict(ledger.windows), reservation, actual_micros)
    reservations = {k: v for k, v in ledger.reservations.items() if k != request_id}
    settled = {k: v for k, v in ledger.settled.items() if k != request_id}
    settled[request_id] = now_ms
    for old in list(settled)[: max(0, len(settled) - keep_settled)]:
        del settled[old]
    result = SettleResult(SettleStatus.SETTLED, reservation.amount, actual_micros)
    return result, BudgetLedger(windows, reservations, settled)


def release(ledger: BudgetLedger, request_id: str) -> BudgetLedger:
    """Drop the request's reservation (it failed and cost nothing); a no-op without one."""
    reservation = ledger.reservations.get(request_id)
    if reservation is None:
        return ledger
    windows = _unreserve(dict(ledger.windows), reservation, 0)
    reservations = {k: v for k, v in ledger.reservations.items() if k != request_id}
    return replace(ledger, windows=windows, reservations=reservations)


def mark_sent(ledger: BudgetLedger, request_id: str) -> BudgetLedger:
    """Mark the request's open reservation as sent: its attempt is going to a provider and
    may be paid from now on. Returns ``ledger`` itself when there is nothing to mark (no
    reservation, or already marked)."""
    reservation = ledger.reservations.get(request_id)
    if reservation is None or reservation.sent:
        return ledger
    reservations = {**ledger.reservations, request_id: replace(reservation, sent=True)}
    return replace(ledger, reservations=reservations)


def charge_held(ledger: BudgetLedger, request_id: str) -> BudgetLedger:
    """Close the open reservation of an earlier attempt of the request (a no-op without
    one), for a request admitted again while that attempt, in flight when its worker died
    or lost the partition, still holds it. Sent (``mark_sent``): its provider call may
    have been paid without ever being settled; the reservation bounds that cost, so it is
    counted as spent in full. Not sent: the attempt never left the worker and cost
    nothing, so the reservation is released."""
    reservation = ledger.reservations.get(request_id)
    if reservation is None:
        return ledger
    spent = reservation.amount if reservation.sent else 0
    windows = _unreserve(dict(ledger.windows), reservation, spent)
    reservations = {k: v for k, v in ledger.reservations.items() if k != request_id}
    return replace(ledger, windows=windows, reservations=reservations)


def expire_reservations(
    ledger: BudgetLedger, now_ms: int, max_age_ms: int
) -> tuple[tuple[str, ...], BudgetLedger]:
    """Drop reservations created more than ``max_age_ms`` ago; returns their ids."""
    stale = tuple(
        rid for rid, r in ledger.reservations.items() if now_ms - r.created_ms > max_age_ms
    )
    for rid in stale:
        ledger = release(ledger, rid)
    return stale, ledger


def prune_windows(ledger: BudgetLedger, now_ms: int, keep_ms: int = 0) -> BudgetLedger:
    """Forget windows that ended more than ``keep_ms`` ago and hold no reservation."""
    held = {key for r in ledger.reservations.values() for key in r.keys}
    windows = {k: w for k, w in ledger.windows.items() if k in held or w.end_ms + keep_ms > now_ms}
    return replace(ledger, windows=windows)


def usage_view(
    ledger: BudgetLedger, now_ms: int, tenant: str, config: LedgerConfig
) -> dict[str, Any]:
    """A tenant's current windows (day, month, each feature's day) for status and reports;
    ``percent`` is ``spent + reserved`` as a share of the cap (``None`` without a cap)."""
    budget = config.tenants.get(tenant, config.default_budget) or BudgetConfig()
    tz = config.tz
    day, month = window_id(WindowKind.DAY, now_ms, tz), window_id(WindowKind.MONTH, now_ms, tz)
    day_end = window_end_ms(WindowKind.DAY, now_ms, tz)
    tenant_day, tenant_month = tenant_key(tenant, day), tenant_key(tenant, month)
    rows = [
        _row(ledger, CapScope.TENANT_DAY, "", day, tenant_day, budget.daily_cap_micros, day_end),
        _row(
            ledger,
            CapScope.TENANT_MONTH,
            "",
            month,
            tenant_month,
            budget.monthly_cap_micros,
            window_end_ms(WindowKind.MONTH, now_ms, tz),
        ),
    ]
    prefix, suffix = _budget_key("feature", quote_part(tenant), ""), f"/{day}"
    used = {
        unquote(key.removeprefix(prefix).removesuffix(suffix))
        for key in ledger.windows
        if key.startswith(prefix) and key.endswith(suffix)
    }
    for feature in sorted(set(budget.features) | used):
        cap = budget.features.get(feature, FeatureBudgetConfig()).daily_cap_micros
        key = feature_key(tenant, feature, day)
        rows.append(_row(ledger, CapScope.FEATURE_DAY, feature, day, key, cap, day_end))
    return {"tenant": tenant, "windows": rows}


def _row(
    ledger: BudgetLedger,
    scope: CapScope,
    feature: str,
    window: str,
    key: str,
    cap: int | None,
    end: int,
) -> dict[str, Any]:
    usage = ledger.windows.get(key, WindowUsage(end_ms=end))
    committed = usage.spent + usage.reserved
    return {
        "scope": scope.value,
        "feature": feature,
        "window": window,
        "key": key,
        "spent_micros": usage.spent,
        "reserved_micros": usage.reserved,
        "cap_micros": cap,
        "percent": round(100 * committed / cap, 2) if cap else None,
        "reset_at_ms": end,
    }
