"""Admission of one request for its tenant: rate limits first, then the budget reservation.

One tenant's admission state (rate-limit windows for the tenant and its features, and
its budget ledger) is plain data, stored by the worker in a table keyed by tenant, and
driven here by pure functions. The live worker and ``sluicegate replay whatif`` call the
same ``admit``/``settle``/``release``, so a what-if run is the live decision replayed.

Order: tenant and feature rate limits (requests and estimated tokens per minute) ->
budget: reserve the request's maximum cost (prompt estimate at the input price plus
``max_tokens`` at the output price, at the dearest model of its route, so a fallback can
never overshoot) against every cap -> admit, downgrade to the cheaper model the policy
names (re-estimated, re-admitted), or reject with the window's reset time.
Cost: O(caps + 60 rate buckets) per call, plus copying the tenant's state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.policies import budget as budget_policy
from streams.policies import rate_limit
from streams.policies.budget import BudgetAction, BudgetConfig, BudgetLedger, BudgetRequest
from streams.policies.rate_limit import RateLimitConfig, RateLimitState
from streams.policies.verdict import Reason

SETTLED_KEPT = 128
WINDOWS_KEPT_MS = 40 * 86_400_000  # ended budget windows stay readable for reports


@dataclass(frozen=True)
class TenantPolicy:
    rate: RateLimitConfig | None = None
    feature_rates: Mapping[str, RateLimitConfig] = field(default_factory=dict)
    budget: BudgetConfig | None = None


@dataclass(frozen=True)
class AdmissionConfig:
    tenants: Mapping[str, TenantPolicy]
    tz: str = "UTC"
    # A reservation older than this belongs to a request that will never settle (lost by a
    # bug, or its tenant moved): reclaimed at the tenant's next admission.
    reservation_max_age_ms: int = 3_600_000


@dataclass(frozen=True)
class AdmissionRequest:
    request_id: str
    tenant: str
    feature: str
    model: str  # "provider/model" of the route's primary
    tokens: int  # estimated prompt tokens + max_tokens: what rate limits count


@dataclass(frozen=True)
class Admitted:
    model: str  # the model to call: the request's own, or the budget's downgrade
    reserved_micros: int
    rate_recorded_at_ms: int
    alerts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Refused:
    reason: Reason  # RATE_LIMITED or BUDGET_EXCEEDED
    detail: str
    retry_after_ms: int | None  # when trying again can succeed (None: not by waiting)


Decision = Admitted | Refused
CostEstimate = Callable[[str], int]  # model ("provider/model") -> maximum cost, micro-dollars


@dataclass(frozen=True)
class TenantState:
    rate: RateLimitState = field(default_factory=RateLimitState)
    feature_rates: Mapping[str, RateLimitState] = field(default_factory=dict)
    ledger: BudgetLedger = field(default_factory=BudgetLedger)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rate": self.rate.to_dict(),
            "feature_rates": {f: s.to_dict() for f, s in self.feature_rates.items()},
            "ledger": self.ledger.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> TenantState:
        if not data:
            return cls()
        return cls(
            RateLimitState.from_dict(data["rate"]),
            {f: RateLimitState.from_dict(s) for f, s in data.get("feature_rates", {}).items()},
            BudgetLedger.from_dict(data["ledger"]),
        )


def admit(
    state: TenantState,
    now_ms: int,
    request: AdmissionRequest,
    config: AdmissionConfig,
    max_cost: CostEstimate,
) -> tuple[Decision, TenantState]:
    policy = config.tenants.get(request.tenant, TenantPolicy())
    # 1. rate limits (tenant, then the feature's own limit), checked together
    decisions = []
    if policy.rate is not None:
        decisions.append(rate_limit.check(state.rate, now_ms, request.tokens, policy.rate))
    feature_rate = policy.feature_rates.get(request.feature)
    feature_state = state.feature_rates.get(request.feature, RateLimitState())
    if feature_rate is not None:
        decisions.append(rate_limit.check(feature_state, now_ms, request.tokens, feature_rate))
    combined = rate_limit.combine(*decisions)
    if not combined.allowed:
        return Refused(
            Reason.RATE_LIMITED,
            f"over the {combined.limit_name} limit ({combined.limit})",
            combined.retry_after_ms,
        ), state
    # 2. budget reservation, possibly after a downgrade
    _, ledger = budget_policy.expire_reservations(
        state.ledger, now_ms, config.reservation_max_age_ms
    )
    ledger = budget_policy.prune_windows(ledger, now_ms, WINDOWS_KEPT_MS)
    model, reserved = request.model, 0
    alerts: tuple[str, ...] = ()
    if policy.budget is not None:
        ledger_config = budget_policy.LedgerConfig({request.tenant: policy.budget}, tz=config.tz)
        decision, ledger = _reserve(ledger, now_ms, request, model, max_cost, ledger_config)
        if decision.action == BudgetAction.DOWNGRADE and decision.downgrade_model:
            model = decision.downgrade_model
            decision, ledger = _reserve(ledger, now_ms, request, model, max_cost, ledger_config)
        if decision.action != BudgetAction.ADMIT:
            cap = decision.exceeded
            detail = "over budget"
            if cap is not None:
                detail = (
                    f"{cap.scope.value} budget: spent {cap.spent_micros} + reserved "
                    f"{cap.reserved_micros} of {cap.cap_micros} micro-dollars"
                )
            retry = None if decision.reset_at_ms is None else decision.reset_at_ms - now_ms
            return Refused(Reason.BUDGET_EXCEEDED, detail, retry), state
        reserved = decision.reserved_micros
        alerts = tuple(f"{a.scope.value} {a.key} passed {a.threshold:.0%}" for a in decision.alerts)
    # 3. both passed: count the request against the rate windows
    rate_state = state.rate
    if policy.rate is not None:
        rate_state = rate_limit.record(rate_state, now_ms, request.tokens, policy.rate)
    feature_rates = dict(state.feature_rates)
    if feature_rate is not None:
        feature_rates[request.feature] = rate_limit.record(
            feature_state, now_ms, request.tokens, feature_rate
        )
    new_state = TenantState(rate_state, feature_rates, ledger)
    return Admitted(model, reserved, now_ms, alerts), new_state


def _reserve(
    ledger: BudgetLedger,
    now_ms: int,
    request: AdmissionRequest,
    model: str,
    max_cost: CostEstimate,
    config: budget_policy.LedgerConfig,
) -> tuple[budget_policy.BudgetDecision, BudgetLedger]:
    provider, _, name = model.partition("/")
    ask = BudgetRequest(
        request.request_id, request.tenant, request.feature, provider, name, max_cost(model)
    )
    return budget_policy.admit(ledger, now_ms, ask, config)


def settle(
    state: TenantState,
    now_ms: int,
    request_id: str,
    actual_micros: int,
    *,
    feature: str,
    config: AdmissionConfig,
    tenant: str,
    rate_recorded_at_ms: int | None = None,
    token_delta: int = 0,
) -> TenantState:
    """The request finished: its actual cost replaces its reservation (released when 0),
    and the rate windows learn its actual token count."""
    policy = config.tenants.get(tenant, TenantPolicy())
    if actual_micros > 0:
        _, ledger = budget_policy.settle(
            state.ledger, now_ms, request_id, actual_micros, keep_settled=SETTLED_KEPT
        )
    else:
        ledger = budget_policy.release(state.ledger, request_id)
    rate_state, feature_rates = state.rate, dict(state.feature_rates)
    if rate_recorded_at_ms is not None and token_delta:
        if policy.rate is not None:
            rate_state = rate_limit.adjust_tokens(
                rate_state, rate_recorded_at_ms, token_delta, policy.rate
            )
        feature_rate = policy.feature_rates.get(feature)
        if feature_rate is not None and feature in feature_rates:
            feature_rates[feature] = rate_limit.adjust_tokens(
                feature_rates[feature], rate_recorded_at_ms, token_delta, feature_rate
            )
    return TenantState(rate_state, feature_rates, ledger)
