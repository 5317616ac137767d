"""What-if: the recorded requests through the live policies under another configuration.

The recorded requests are driven, in recorded order and at their recorded times, through
the same code the worker runs (streams/worker.py ``Gateway.intake``/``_admit``/``finish``):
validation, route resolution, the exact-match response cache (``streams.cache.ResponseCache``
over in-memory tables, single-flight included), admission (``policies.admission.admit`` /
``settle`` over one ``TenantState`` per tenant, with the worker's token estimator and
max-cost estimate) and pricing (``policies.pricing.cost_micros``). No provider is called.
``WhatIf.arrive`` is THE per-request decision function; unit tests hold it against the
worker's own methods.

Time: a request arrives at its request record's timestamp. An admitted request finishes
(settles its budget reservation, trains the token estimator, stores its answer in the cache)
at its recorded response time; events are processed in time order, a finish before an
arrival of the same millisecond.

What a request would have cost: the recorded usage (prompt, completion and cached tokens)
priced with the configuration's price list, at the model the configuration would have used:
the route's primary, or the budget's downgrade model, when the recording answered from the
primary (or was itself a budget downgrade); the recorded model otherwise (a fallback after
provider failures keeps what failed). A request the recording never sent to a provider
(rejected, or unanswered) that the configuration would admit has no recorded usage: its cost
is the upper-bound estimate the budget reserves, reported apart as ``estimated_micros`` and
never mixed into ``cost_micros``. Outcomes that depend on timing or on providers are carried
over from the recording once a request is admitted: shed by the scheduler (queue dynamics are
not simulated), failed, served by a fallback model or a stale entry. Cache entries from
before the range are unknown: a recorded exact or semantic hit that the simulated cache
cannot serve counts as a hit when the configuration still reads the cache (``carried``).
Limits: one token estimator for all tenants (each worker has its own in production).

Cost: O(requests x (cache key + admission)), one ``TenantState`` copy per decision.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.cache import CacheLookup, ResponseCache
from streams.config import SluicegateConfig
from streams.policies import admission
from streams.policies.admission import AdmissionRequest, Admitted, CostEstimate, TenantState
from streams.policies.cache_policy import Lookup
from streams.policies.degradation import ModelRef, RouteConfig
from streams.policies.pricing import Price, cost_micros
from streams.policies.token_estimate import TokenEstimator, max_cost_estimate, raw_prompt_tokens
from streams.policies.validation import TenantFacts, ValidationConfig, validate_request
from streams.policies.verdict import Reason, Status
from streams.records import Outcome
from streams.replay.recording import UNANSWERED, Entry

# Recorded outcomes of requests that passed admission and reached the scheduler/providers.
PROVIDER_PATH = frozenset({"ok", "degraded", "failed", "shed"})
CATEGORIES = ("admitted", "cached", "rejected", "shed", "unanswered")


def category(status: str) -> str:
    """admitted (ok, degraded, failed: sent to the provider path), cached, rejected, shed."""
    if status in ("ok", "degraded", "failed"):
        return "admitted"
    return status if status in CATEGORIES else "rejected"


def price_of(config: SluicegateConfig, ref: ModelRef) -> Price:
    """A model's price as the worker builds it (ProviderCaller.price)."""
    m = config.model_config_of(ref)
    return Price.from_usd_per_mtok(
        m.input_usd_per_mtok, m.output_usd_per_mtok, m.cached_input_usd_per_mtok
    )


@dataclass(frozen=True)
class AdmissionInputs:
    request: AdmissionRequest
    raw_prompt_tokens: int  # uncalibrated, what the estimator learns from
    est_tokens: int  # calibrated prompt estimate + max_tokens: what rate limits count
    prompt_estimate: int
    max_tokens: int
    max_cost: CostEstimate


def admission_inputs(
    config: SluicegateConfig,
    route: RouteConfig,
    request: Mapping[str, Any],
    estimator: TokenEstimator,
) -> AdmissionInputs:
    """The AdmissionRequest and max-cost estimate exactly as ``Gateway._admit`` builds them."""
    primary = str(route.primary)
    raw = raw_prompt_tokens(request["messages"])
    prompt = estimator.calibrated(route.primary.model, raw)
    max_tokens = request["max_tokens"] or config.budgets.default_max_tokens
    est_tokens = prompt + max_tokens

    def max_cost(model: str) -> int:
        refs = route.models if model == primary else (ModelRef.parse(model),)
        return max(max_cost_estimate(price_of(config, r), prompt, max_tokens) for r in refs)

    ask = AdmissionRequest(
        str(request["request_id"]), request["tenant"], request["feature"], primary, est_tokens
    )
    return AdmissionInputs(ask, raw, est_tokens, prompt, max_tokens, max_cost)


@dataclass(frozen=True)
class Decision:
    """What the gateway would have answered to one recorded request."""

    status: str
    reason: str = ""
    model: str | None = None  # provider/model used
    cost_micros: int = 0  # recorded tokens at this configuration's prices
    saved_micros: int = 0  # cache hits: what the cached answer cost
    estimated_micros: int = 0  # no recorded tokens: the upper-bound estimate
    cache: str | None = None  # exact | semantic | coalesced | carried
    detail: str = ""


@dataclass
class _Pending:
    """An admitted request, until it finishes."""

    entry: Entry
    decision: Decision
    request: dict[str, Any]
    admitted: Admitted
    inputs: AdmissionInputs
    found: CacheLookup | None
    leader_key: str | None
    prompt_tokens: int
    completion_tokens: int
    finish_ms: int
    # the status before the worker relabels a budget downgrade's "ok" as "degraded": what
    # the cache stores and hands to identical requests (Gateway.finish order)
    answered_status: str


class WhatIf:
    """Replays requests one by one; ``arrive`` decides, ``finish`` settles."""

    def __init__(self, config: SluicegateConfig, recorded_prefix: str) -> None:
        self.config = config
        self.admission = config.admission_config()
        self.estimator = TokenEstimator()
        self.cache = ResponseCache(config)  # in-memory tables: plain dicts
        self.tenant_state: dict[str, dict[str, Any]] = {}  # as the worker's table holds it
        self.validation = ValidationConfig(
            max_messages=config.worker.max_messages,
            max_message_bytes=config.worker.max_message_bytes,
            topic_prefix=recorded_prefix,
        )
        self.leaders: dict[str, _Pending] = {}  # cache key -> admitted leader in flight

    # -- the decision -----------------------------------------------------------------

    def arrive(self, entry: Entry, now_ms: int) -> tuple[Decision, _Pending | None]:
        """The decision for one request at ``now_ms``; a pending finish when admitted."""
        request = dict(entry.request)
        errors = self._validate(request)
        if errors:
            detail = "; ".join(str(e) for e in errors)
            return Decision("rejected", Reason.INVALID.value, detail=detail), None
        route = self.config.resolve_route(request["model"])
        assert route is not None  # validation checked it
        found = self.cache.lookup(request, route, now_ms)
        hit = self._cache_answer(entry, found)
        if hit is not None:
            return hit, None
        leader_key = None
        if found.key is not None and found.plan.read:
            leader_key = found.key  # later identical requests wait for this one
        inputs = admission_inputs(self.config, route, request, self.estimator)
        state = TenantState.from_dict(self.tenant_state.get(entry.tenant))
        verdict, state = admission.admit(
            state, now_ms, inputs.request, self.admission, inputs.max_cost
        )
        if isinstance(verdict, admission.Refused):
            return Decision("rejected", verdict.reason.value, detail=verdict.detail), None
        self.tenant_state[entry.tenant] = state.to_dict()
        decision, tokens, finish_ms, answered = self._admitted(
            entry, route, verdict.model, inputs, now_ms
        )
        pending = _Pending(
            entry, decision, request, verdict, inputs, found, None, *tokens, finish_ms, answered
        )
        if leader_key is not None and leader_key not in self.leaders:
            pending.leader_key = leader_key
            self.leaders[leader_key] = pending
        return decision, pending

    def _cache_answer(self, entry: Entry, found: CacheLookup) -> Decision | None:
        """Gateway._answer_from_cache: exact hit, coalesced behind a leader, carried-over hit
        (recorded, entry older than the range), or an only-if-cached miss."""
        if found.result == Lookup.HIT and found.entry is not None:
            model = f"{found.entry.provider}/{found.entry.model}"
            saved = found.entry.cost_micros
            return Decision("cached", "", model, saved_micros=saved, cache="exact")
        leader = self.leaders.get(found.key) if found.key and found.plan.read else None
        if leader is not None and leader.answered_status == "ok":
            d = leader.decision
            return Decision("cached", "", d.model, saved_micros=d.cost_micros, cache="coalesced")
        if found.plan.read and entry.status == "cached":
            value = self._price_tokens(entry.model, entry.prompt_tokens, entry.completion_tokens)
            return Decision("cached", "", entry.model, saved_micros=value or 0, cache="carried")
        if found.plan.only_if_cached:
            return Decision("rejected", Reason.CACHE_MISS.value, detail="nothing cached")
        return None

    def _admitted(
        self,
        entry: Entry,
        route: RouteConfig,
        model: str,
        inputs: AdmissionInputs,
        now_ms: int,
    ) -> tuple[Decision, tuple[int, int], int, str]:
        """The outcome of an admitted request, its (prompt, completion) tokens, its finish
        time, and its status before a budget downgrade relabels "ok" as "degraded"."""
        primary = str(route.primary)
        downgraded = model != primary
        status = "degraded" if downgraded else "ok"
        recorded = entry.status
        response = entry.response or {}
        budget_downgrade = (
            recorded == "degraded"
            and not entry.cache_kind
            and response.get("degradation_reason") == Reason.BUDGET_EXCEEDED.value
        )
        finish_ms = max(now_ms, entry.finished_ms or now_ms)
        tokens = (entry.prompt_tokens, entry.completion_tokens)
        if recorded == "ok" or budget_downgrade or recorded == "cached":
            # answered from the primary (or from cache): the model this config would call
            if recorded == "cached":
                finish_ms = now_ms
            cost = self._price_tokens(model, *tokens, entry.cached_prompt_tokens)
            decision = Decision(status, "", model, cost_micros=cost or 0, detail=_unpriced(cost))
            return decision, tokens, finish_ms, "ok"
        if recorded in PROVIDER_PATH:
            # a fallback, stale answer, failure or shed: carried over from the recording
            cost = self._price_tokens(entry.model, *tokens, entry.cached_prompt_tokens)
            decision = Decision(recorded, entry.reason, entry.model, cost or 0)
            return decision, tokens, finish_ms, recorded
        # never sent to a provider in the recording: no tokens, only the reserved estimate
        estimate = inputs.max_cost(model)
        detail = f"recorded {recorded}: cost estimated"
        decision = Decision(status, "", model, estimated_micros=estimate, detail=detail)
        return decision, (0, 0), now_ms, "ok"

    def _price_tokens(
        self, model: str | None, prompt: int, completion: int, cached: int = 0
    ) -> int | None:
        if not model or not (prompt or completion):
            return 0
        try:
            price = price_of(self.config, ModelRef.parse(model))
        except (KeyError, ValueError):
            return None  # the configuration has no price for this model
        return cost_micros(price, prompt, completion, cached)

    def _validate(self, request: dict[str, Any]) -> list[Any]:
        """Gateway._validate."""
        tenant = self.config.tenants.get(request["tenant"])
        route = self.config.resolve_route(request["model"]) if request["model"] else None
        facts = TenantFacts(
            known=tenant is not None,
            max_priority=tenant.max_priority if tenant else "low",
            model_known=route is not None,
            model_allowed=tenant.allows_model(request["model"]) if tenant else False,
        )
        return validate_request(request, facts, self.validation)

    # -- the finish -------------------------------------------------------------------

    def finish(self, pending: _Pending, now_ms: int) -> None:
        """Gateway.finish: settle the reservation (``_settle``), then store (``_remember``)."""
        d, request = pending.decision, pending.request
        model = ModelRef.parse(d.model) if d.model else None
        outcome = Outcome(
            Status(pending.answered_status),
            _reason(d.reason),
            content=(pending.entry.response or {}).get("content") or "",
            finish_reason=(pending.entry.response or {}).get("finish_reason") or "stop",
            model=model.model if model else None,
            provider=model.provider if model else None,
            prompt_tokens=pending.prompt_tokens,
            completion_tokens=pending.completion_tokens,
            cost_micros=d.cost_micros + d.estimated_micros,
        )
        delta = 0
        if outcome.prompt_tokens:
            delta = outcome.prompt_tokens + outcome.completion_tokens - pending.inputs.est_tokens
            self.estimator.observe(
                outcome.model or "", pending.inputs.raw_prompt_tokens, outcome.prompt_tokens
            )
        tenant = request["tenant"]
        state = admission.settle(
            TenantState.from_dict(self.tenant_state.get(tenant)),
            now_ms,
            str(request["request_id"]),
            outcome.cost_micros,
            feature=request["feature"],
            config=self.admission,
            tenant=tenant,
            rate_recorded_at_ms=pending.admitted.rate_recorded_at_ms,
            token_delta=delta,
        )
        self.tenant_state[tenant] = state.to_dict()
        if pending.found is not None:
            self.cache.store(pending.found, request, outcome, now_ms)
        if pending.leader_key is not None:
            self.leaders.pop(pending.leader_key, None)


def _unpriced(cost: int | None) -> str:
    return "no price for this model in the configuration" if cost is None else ""


def _reason(value: str) -> Reason:
    try:
        return Reason(value)
    except ValueError:
        return Reason.NONE


def replay(
    entries: Iterable[Entry], config: SluicegateConfig, recorded_prefix: str
) -> list[tuple[Entry, Decision]]:
    """Every entry's decision under ``config``; entries must be in recorded (time) order."""
    sim = WhatIf(config, recorded_prefix)
    finishing: list[tuple[int, int, _Pending]] = []
    out = []
    for i, entry in enumerate(entries):
        now = entry.at_ms
        while finishing and finishing[0][0] <= now:
            at, _, pending = heapq.heappop(finishing)
            sim.finish(pending, at)
        decision, admitted = sim.arrive(entry, now)
        out.append((entry, decision))
        if admitted is not None:
            heapq.heappush(finishing, (admitted.finish_ms, i, admitted))
    while finishing:
        at, _, pending = heapq.heappop(finishing)
        sim.finish(pending, at)
    return out


# -- the comparison ------------------------------------------------------------------------


@dataclass
class Tally:
    requests: int = 0
    cost_micros: int = 0
    estimated_micros: int = 0
    saved_micros: int = 0
    categories: Counter[str] = field(default_factory=Counter)

    @property
    def cache_hit_share(self) -> float:
        return self.categories["cached"] / self.requests if self.requests else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "cost_micros": self.cost_micros,
            "estimated_micros": self.estimated_micros,
            "saved_micros": self.saved_micros,
            "cache_hit_share": round(self.cache_hit_share, 6),
            **{c: self.categories[c] for c in CATEGORIES},
        }


@dataclass
class Group:
    tenant: str
    feature: str
    recorded: Tally = field(default_factory=Tally)
    whatif: Tally = field(default_factory=Tally)


@dataclass(frozen=True)
class Change:
    request_id: str
    tenant: str
    feature: str
    recorded: str  # "status/reason"
    whatif: str
    recorded_cost_micros: int
    whatif_cost_micros: int
    detail: str


@dataclass
class Comparison:
    groups: list[Group]
    total: Group
    changes: list[Change]  # requests whose status or reason changed

    def to_json(self) -> dict[str, Any]:
        def group(g: Group) -> dict[str, Any]:
            return {
                "tenant": g.tenant,
                "feature": g.feature,
                "recorded": g.recorded.to_json(),
                "whatif": g.whatif.to_json(),
            }

        return {
            "total": group(self.total),
            "groups": [group(g) for g in self.groups],
            "changes": [vars(c) for c in self.changes],
        }


def _label(status: str, reason: str) -> str:
    return f"{status}/{reason}" if reason else status


def compare(decisions: Iterable[tuple[Entry, Decision]]) -> Comparison:
    """Per tenant and feature: recorded against what-if; every changed decision."""
    groups: dict[tuple[str, str], Group] = {}
    total = Group("*", "*")
    changes = []
    for entry, d in decisions:
        key = (entry.tenant, entry.feature)
        g = groups.get(key)
        if g is None:
            g = groups[key] = Group(*key)
        for target in (g, total):
            rec, alt = target.recorded, target.whatif
            rec.requests += 1
            rec.cost_micros += entry.cost_micros
            rec.saved_micros += entry.saved_micros
            rec.categories[category(entry.status) if entry.response else UNANSWERED] += 1
            alt.requests += 1
            alt.cost_micros += d.cost_micros
            alt.estimated_micros += d.estimated_micros
            alt.saved_micros += d.saved_micros
            alt.categories[category(d.status)] += 1
        recorded = _label(entry.status, entry.reason)
        whatif = _label(d.status, d.reason)
        if entry.response is not None and recorded != whatif:
            changes.append(
                Change(
                    entry.request_id,
                    entry.tenant,
                    entry.feature,
                    recorded,
                    whatif,
                    entry.cost_micros,
                    d.cost_micros + d.estimated_micros,
                    d.detail,
                )
            )
    ordered = sorted(groups.values(), key=lambda g: (g.tenant, g.feature))
    return Comparison(ordered, total, changes)
