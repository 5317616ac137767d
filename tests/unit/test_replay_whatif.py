"""What-if replay: the decision function equals the worker's, prices scale, budgets bite."""

from __future__ import annotations

import contextvars
import copy
import heapq
from typing import Any

import pytest

from schemas import registry
from streams import worker as worker_module
from streams.config import SluicegateConfig, parse_config
from streams.policies.clock import ManualClock
from streams.policies.degradation import ModelRef
from streams.policies.pricing import cost_micros
from streams.policies.verdict import Reason, Status
from streams.records import Outcome, Source, response_record, usage_record
from streams.replay import whatif
from streams.replay.recording import Entry

T0 = 1_750_000_000_000  # a fixed moment, well inside one UTC day


def config_dict(**tenants: Any) -> dict[str, Any]:
    return {
        "kafka": {"topic_prefix": "sg"},
        "providers": {
            "sim": {
                "base_url": "http://127.0.0.1:1/v1",
                "models": {
                    "sim-large": {"input_usd_per_mtok": 2.0, "output_usd_per_mtok": 8.0},
                    "sim-small": {"input_usd_per_mtok": 0.5, "output_usd_per_mtok": 1.0},
                },
            }
        },
        "routes": {"chat": {"primary": "sim/sim-large", "fallbacks": ["sim/sim-small"]}},
        "tenants": {"plain": {"max_priority": "critical"}, **tenants},
    }


def make_config(**tenants: Any) -> SluicegateConfig:
    return parse_config(config_dict(**tenants))


def request(
    i: int,
    tenant: str = "plain",
    *,
    text: str | None = None,
    max_tokens: int | None = 40,
    temperature: float | None = None,
    feature: str = "default",
    created: int = T0,
) -> dict[str, Any]:
    record = {
        "request_id": f"r{i}",
        "tenant": tenant,
        "feature": feature,
        "priority": "normal",
        "created_at": created,
        "model": "chat",
        "messages": [{"role": "user", "content": text or f"question number {i} " * (1 + i % 5)}],
        "max_tokens": max_tokens,
        "temperature": temperature,
    }
    return registry.decode(registry.CHAT_REQUEST, registry.encode(registry.CHAT_REQUEST, record))


def tokens_of(req: dict[str, Any]) -> tuple[int, int]:
    """What a deterministic provider would report for a request: more prompt tokens than the
    raw estimate, so the estimator learns (and the replay has to learn the same)."""
    prompt = 2 * (3 + sum(3 + len(m["content"]) // 4 for m in req["messages"]))
    return prompt, min(req["max_tokens"] or 512, 17 + len(req["request_id"]))


def entry(
    req: dict[str, Any], at: int, outcome: Outcome | None, finished: int | None = None
) -> Entry:
    from streams.policies.token_estimate import raw_prompt_tokens

    e = Entry(req, "sg.requests.normal", 0, at, at, raw_prompt_tokens(req["messages"]))
    if outcome is not None:
        done = finished if finished is not None else at + 50
        e.response = response_record(req, outcome, queue_ms=1, now_ms=done)
        e.usage = usage_record(req, outcome, now_ms=done)
    return e


def ok(config: SluicegateConfig, req: dict[str, Any], model: str = "sim/sim-large") -> Outcome:
    ref = ModelRef.parse(model)
    prompt, completion = tokens_of(req)
    return Outcome(
        Status.OK,
        content=f"answer to {req['request_id']}",
        finish_reason="stop",
        model=ref.model,
        provider=ref.provider,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_micros=cost_micros(whatif.price_of(config, ref), prompt, completion),
    )


# -- the live worker's own methods, driven with recorded times ---------------------------------


@pytest.fixture
def live_gateway(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(worker_module, "admin_client", lambda _servers: None)  # no network

    def build(config: SluicegateConfig) -> Any:
        gateway = worker_module.Gateway(config, app=None, clock=ManualClock(T0))
        gateway.tenant_state = {}
        return gateway

    return build


def run_live(
    gateway: Any, config: SluicegateConfig, arrivals: list[tuple[int, dict[str, Any]]]
) -> list[Entry]:
    """Admit and settle each request exactly as the worker does (Gateway._validate, _admit,
    _settle, the downgrade relabel in finish), with a deterministic provider that answers
    after 40 ms; returns the recording it would leave."""
    finishing: list[tuple[int, int, Any, Entry]] = []
    entries = []
    for i, (at, req) in enumerate(arrivals):
        while finishing and finishing[0][0] <= at:
            done, _, job, e = heapq.heappop(finishing)
            _finish_live(gateway, config, job, e, done)
        job = worker_module.Job(
            copy.deepcopy(req),
            Source("sg.requests.normal", 0, i),
            b"",
            None,
            contextvars.copy_context(),
            at,
            at + 60_000,
        )
        errors = gateway._validate(job.request)
        if errors:
            out = Outcome(Status.REJECTED, Reason.INVALID, "; ".join(map(str, errors)))
            entries.append(entry(req, at, out, at))
            continue
        job.route = config.resolve_route(req["model"])
        refused = gateway._admit(job, at)
        if refused is not None:
            entries.append(entry(req, at, refused, at))
            continue
        e = entry(req, at, None)
        entries.append(e)
        heapq.heappush(finishing, (at + 40, i, job, e))
    while finishing:
        done, _, job, e = heapq.heappop(finishing)
        _finish_live(gateway, config, job, e, done)
    return entries


def _finish_live(gateway: Any, config: SluicegateConfig, job: Any, e: Entry, done: int) -> None:
    outcome = ok(config, job.request, str(job.route.primary))
    gateway._settle(job, outcome, done)
    if job.downgraded:
        outcome.status = Status.DEGRADED
        outcome.degradation_reason = Reason.BUDGET_EXCEEDED.value
    e.response = response_record(job.request, outcome, queue_ms=1, now_ms=done)
    e.usage = usage_record(job.request, outcome, now_ms=done)


BUDGETED = {
    "capped": {"max_priority": "high", "daily_budget_usd": 0.002},
    "thrifty": {
        "max_priority": "high",
        "daily_budget_usd": 0.0015,
        "on_exceed": "downgrade",
        "downgrade_to": "sim/sim-small",
    },
    "limited": {"max_priority": "high", "rpm": 4},
    "metered": {"max_priority": "high", "tpm": 500},  # settles correct the token counts
}


def traffic(gap_ms: int) -> list[tuple[int, dict[str, Any]]]:
    tenants = ("capped", "thrifty", "limited", "metered", "plain", "nobody")
    return [
        (T0 + i * gap_ms, request(i, tenants[i % len(tenants)], max_tokens=30 + (i * 7) % 60))
        for i in range(60)
    ]


@pytest.mark.parametrize(
    "gap_ms",
    [100, 5],  # one tenant: sequential answers; overlapping requests holding reservations
)
def test_decisions_equal_the_live_workers(live_gateway: Any, gap_ms: int) -> None:
    config = make_config(**BUDGETED)
    recorded = run_live(live_gateway(config), config, traffic(gap_ms))
    live = [(e.request_id, e.status, e.reason, e.model) for e in recorded]
    replayed = whatif.replay(recorded, config, "sg")
    assert [(e.request_id, d.status, d.reason, d.model) for e, d in replayed] == live
    statuses = {status for _, status, _, _ in live}
    assert {"ok", "degraded", "rejected"} <= statuses  # the traffic exercises every branch
    reasons = {reason for _, _, reason, _ in live}
    assert {"budget_exceeded", "rate_limited", "invalid"} <= reasons
    assert sum(d.cost_micros for _, d in replayed) == sum(e.cost_micros for e in recorded)


def test_lower_budget_rejects_what_the_live_worker_would(live_gateway: Any) -> None:
    arrivals = [(T0 + i * 100, request(i, "capped", max_tokens=50)) for i in range(30)]
    generous = make_config(capped={"max_priority": "high"})
    recording = run_live(live_gateway(generous), generous, arrivals)
    assert {e.status for e in recording} == {"ok"}
    tight = make_config(capped={"max_priority": "high", "daily_budget_usd": 0.003})
    live_tight = run_live(live_gateway(tight), tight, arrivals)
    expected = {e.request_id for e in live_tight if e.reason == "budget_exceeded"}
    assert expected  # the lower budget does bite
    decisions = whatif.replay(recording, tight, "sg")
    assert {e.request_id for e, d in decisions if d.reason == "budget_exceeded"} == expected
    comparison = whatif.compare(decisions)
    assert comparison.total.whatif.categories["rejected"] == len(expected)
    assert {c.request_id for c in comparison.changes} == expected


def test_doubled_prices_double_the_spend_exactly(live_gateway: Any) -> None:
    config = make_config()
    arrivals = [(T0 + i * 100, request(i, max_tokens=20 + i)) for i in range(25)]
    recording = run_live(live_gateway(config), config, arrivals)
    doubled = config_dict()
    for model in doubled["providers"]["sim"]["models"].values():
        model["input_usd_per_mtok"] *= 2
        model["output_usd_per_mtok"] *= 2
    comparison = whatif.compare(whatif.replay(recording, parse_config(doubled), "sg"))
    recorded = comparison.total.recorded.cost_micros
    assert recorded > 0
    assert comparison.total.whatif.cost_micros == 2 * recorded
    assert comparison.changes == []


def test_repeated_deterministic_request_is_a_cache_hit_saving_its_cost() -> None:
    config = make_config()
    first, again = (
        request(1, temperature=0.0, text="same"),
        request(2, temperature=0.0, text="same"),
    )
    e1 = entry(first, T0, ok(config, first), T0 + 40)
    e2 = entry(again, T0 + 100, ok(config, again), T0 + 140)  # recorded: no cache then
    (_, d1), (_, d2) = whatif.replay([e1, e2], config, "sg")
    assert (d1.status, d1.cache) == ("ok", None)
    assert (d2.status, d2.cache, d2.cost_micros) == ("cached", "exact", 0)
    assert d2.saved_micros == d1.cost_micros > 0


def test_identical_request_during_the_first_call_is_coalesced() -> None:
    config = make_config()
    first, again = (
        request(1, temperature=0.0, text="same"),
        request(2, temperature=0.0, text="same"),
    )
    e1 = entry(first, T0, ok(config, first), T0 + 500)
    e2 = entry(again, T0 + 100, ok(config, again), T0 + 600)
    (_, d1), (_, d2) = whatif.replay([e1, e2], config, "sg")
    assert (d2.status, d2.cache, d2.saved_micros) == ("cached", "coalesced", d1.cost_micros)


def test_hit_on_an_entry_older_than_the_range_is_carried_over() -> None:
    config = make_config()
    req = request(1, temperature=0.0)
    hit = ok(config, req)
    hit.status, hit.cache_kind, hit.cost_saved_micros, hit.cost_micros = (
        Status.CACHED,
        "exact",
        hit.cost_micros,
        0,
    )
    [(_, d)] = whatif.replay([entry(req, T0, hit)], config, "sg")
    assert (d.status, d.cache, d.cost_micros) == ("cached", "carried", 0)
    assert d.saved_micros == hit.cost_saved_micros
    no_cache = config_dict()
    no_cache["cache"] = {"enabled": False}
    [(_, d)] = whatif.replay([entry(req, T0, hit)], parse_config(no_cache), "sg")
    assert d.status == "ok" and d.cost_micros == hit.cost_saved_micros  # now a provider call


def test_request_never_sent_to_a_provider_gets_an_estimate_kept_apart() -> None:
    strict = make_config(capped={"max_priority": "high", "daily_budget_usd": 0.0})
    req = request(1, "capped", max_tokens=100)
    refused = Outcome(Status.REJECTED, Reason.BUDGET_EXCEEDED, "over budget")
    recorded = [entry(req, T0, refused, T0), entry(request(2, "capped"), T0 + 5, None)]
    assert [d.status for _, d in whatif.replay(recorded, strict, "sg")] == ["rejected"] * 2
    generous = make_config(capped={"max_priority": "high"})
    decisions = whatif.replay(recorded, generous, "sg")
    assert [d.status for _, d in decisions] == ["ok", "ok"]
    assert all(d.cost_micros == 0 and d.estimated_micros > 0 for _, d in decisions)
    comparison = whatif.compare(decisions)
    assert comparison.total.recorded.categories["unanswered"] == 1
    assert [c.request_id for c in comparison.changes] == ["r1"]  # unanswered is no change


def test_recorded_shed_and_failure_are_carried_over_once_admitted() -> None:
    config = make_config()
    shed, failed = request(1), request(2)
    recorded = [
        entry(shed, T0, Outcome(Status.SHED, Reason.OVERLOADED, "queue full"), T0 + 3),
        entry(failed, T0 + 10, Outcome(Status.FAILED, Reason.UNAVAILABLE, "down"), T0 + 900),
    ]
    decisions = whatif.replay(recorded, config, "sg")
    assert [(d.status, d.reason, d.cost_micros) for _, d in decisions] == [
        ("shed", "overloaded", 0),
        ("failed", "unavailable", 0),
    ]


def test_budget_downgrade_in_the_alternative_prices_the_cheaper_model() -> None:
    config = make_config(thrifty={"max_priority": "high"})
    reqs = [request(i, "thrifty", max_tokens=50) for i in range(10)]
    recording = [
        entry(r, T0 + i * 100, ok(config, r), T0 + i * 100 + 40) for i, r in enumerate(reqs)
    ]
    alternative = make_config(
        thrifty={
            "max_priority": "high",
            "daily_budget_usd": 0.001,
            "on_exceed": "downgrade",
            "downgrade_to": "sim/sim-small",
        }
    )
    decisions = whatif.replay(recording, alternative, "sg")
    downgraded = [(e, d) for e, d in decisions if d.status == "degraded"]
    assert downgraded and all(d.model == "sim/sim-small" for _, d in downgraded)
    small = whatif.price_of(alternative, ModelRef("sim", "sim-small"))
    for e, d in downgraded:
        assert d.cost_micros == cost_micros(small, e.prompt_tokens, e.completion_tokens)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("ok", "admitted"),
        ("degraded", "admitted"),
        ("failed", "admitted"),
        ("cached", "cached"),
        ("rejected", "rejected"),
        ("shed", "shed"),
    ],
)
def test_status_categories(status: str, expected: str) -> None:
    assert whatif.category(status) == expected
