"""(j) Response cache: hit rates, cache-hit vs provider latency, CPU per hit, single-flight.

A stack of its own whose route ``chat`` has the semantic cache on (the product's default
threshold), one worker, the shared simulator; during the mixed workload its model answers in
200 ms (a quick real model), so the provider path is what a cache hit saves. All requests
are cacheable (temperature 0, ``cache_mode=default``).

1. Seed: every tenant (4) asks the original of each paraphrase pair once.
2. Mixed workload, open loop at a fixed 20 req/s (a tenth of the cache-miss path's
   saturation: the worker embeds every cacheable miss twice and every paraphrase once, a
   few ms of CPU each at best, so this route saturates far earlier): 50% exact repeats of
   an earlier prompt of the same tenant (a seed original or a new prompt sent at least 1 s
   earlier, so answered and stored), 10% paraphrases of a seed original (fixed pairs whose
   cosine similarity is well above the threshold), 40% new prompts (each with a unique
   number: the semantic scope includes the numbers in the text, so they never match by
   meaning). Hit rates come from the responses' ``cache_kind``; latency runs from each
   request's intended send time to its answer; hits and provider calls are compared
   within this one run.
3. CPU per hit: a backlog of exact repeats, then one of paraphrases, each drained as in (a):
   the worker's CPU time until it is quiet again, divided by the requests.
4. Single-flight: the simulator's model answers in 300 ms; 50 identical new requests of
   one tenant are published at once; the simulator's ``/admin/counts`` says how many
   reached the provider (exactly 1 expected).
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from streams.policies.cache_policy import DEFAULT_SEMANTIC_THRESHOLD
from tests.bench.framework import Context, Result, scenario
from tests.bench.harness import PRIMARY_MODEL, TENANTS, Stack, memory_kb, wait_quiet
from tests.bench.loadgen import (
    KafkaTarget,
    Phase,
    RequestShape,
    Schedule,
    cpu_meter,
    new_histogram,
    percentiles,
)
from tests.bench.measure import require_answers, statuses_text
from tests.bench.scenario_overload import _responses as read_responses

RATE = 20.0  # offered requests per second, seed and mixed phases
REPEAT_LAG_S = 1.0  # an exact repeat refers to a prompt sent at least this long before
CACHE_TENANTS = TENANTS[:4]
SINGLE_FLIGHT_REQUESTS = 50
SINGLE_FLIGHT_LATENCY_MS = 300  # the provider call the 49 others wait behind
MIXED_PROVIDER_LATENCY_MS = 200  # a quick real model; hits are compared with this path
HIT_P99_MAX_SHARE = 0.5  # "well below": hit p99 at most half the provider path's p99
HIT_RATE_TARGET_PCT = 99.0
SEMANTIC_HIT_RATE_TARGET_PCT = 95.0

# (original, paraphrase): cosine similarity 0.965-0.998 with all-MiniLM-L6-v2, above the
# default threshold (0.95). No digits: the numbers in a prompt are part of its semantic scope.
PAIRS = (
    ("How do I reset my password?", "How can I reset my password?"),
    ("Write a haiku about autumn leaves.", "Compose a haiku about autumn leaves."),
    ("Can you explain how photosynthesis works?", "Explain how photosynthesis works."),
    ("How do I change my email address?", "How can I change my email address?"),
    ("What is the best way to learn Python?", "What's the best way to learn Python?"),
    ("How do I cancel my subscription?", "How can I cancel my subscription?"),
    ("Write a short poem about the sea.", "Compose a short poem about the sea."),
    ("What time does the store open on Sundays?", "When does the store open on Sundays?"),
    ("How do I update my billing information?", "How can I update my billing information?"),
    ("Explain how a rainbow forms.", "Can you explain how a rainbow forms?"),
    ("Translate good morning into Spanish.", "Translate 'good morning' into Spanish."),
    ("Why is the sky blue?", "Why is the sky blue in color?"),
)

SEED, REPEAT, PARAPHRASE, NEW, SINGLE = "seed", "repeat", "paraphrase", "new", "single-flight"
# One block of the mixed workload, shuffled: 5 repeats, 1 paraphrase, 4 new prompts.
BLOCK = (REPEAT,) * 5 + (PARAPHRASE,) + (NEW,) * 4
CACHEABLE = RequestShape("cacheable", temperature=0.0, cache_mode="default", same_prompt=False)


@dataclass(frozen=True)
class Planned:
    """What one request asks: its tenant, its prompt, and which part of the mix it is."""

    tenant: str
    text: str
    kind: str


class ScriptedTarget(KafkaTarget):
    """The Kafka load generator, with each request's tenant and prompt taken from a script."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        super().__init__(bootstrap, prefix)
        self.script: dict[int, Planned] = {}

    def queue(self, planned: list[Planned]) -> None:
        """Script the next ``len(planned)`` requests (sent by the next ``run``)."""
        first = len(self.ledger.intended)
        for i, item in enumerate(planned):
            self.script[first + i] = item

    def make_record(
        self, seq: int, when_ns: int, priority: str, shape: RequestShape
    ) -> dict[str, Any]:
        planned = self.script[seq]
        record = super().make_record(seq, when_ns, priority, shape)
        record["tenant"] = planned.tenant
        record["messages"] = [{"role": "user", "content": planned.text, "name": None}]
        return record

    def run_script(self, planned: list[Planned], schedule: Schedule) -> Phase:
        """Send ``planned`` on ``schedule`` (which must have exactly as many arrivals)."""
        self.queue(planned)
        return self.run(schedule, shape=CACHEABLE)


def seed_plan() -> list[Planned]:
    return [Planned(t, original, SEED) for original, _ in PAIRS for t in CACHE_TENANTS]


def mixed_plan(rng: random.Random, count: int, tag: str, earlier: list[Planned]) -> list[Planned]:
    """``count`` requests in the 50/10/40 mix; repeats refer to stored prompts sent at least
    ``REPEAT_LAG_S`` before (``earlier`` are the seed's, all sent before the mix starts)."""
    stored = list(earlier)  # prompts whose answers are in the cache by the time they repeat
    lag = int(REPEAT_LAG_S * RATE)
    kinds: list[str] = []
    while len(kinds) < count:
        block = list(BLOCK)
        rng.shuffle(block)
        kinds += block
    plan: list[Planned] = []
    for i, kind in enumerate(kinds[:count]):
        if i >= lag and plan[i - lag].kind == NEW:
            stored.append(plan[i - lag])
        if kind == REPEAT:
            chosen = rng.choice(stored)
            plan.append(Planned(chosen.tenant, chosen.text, REPEAT))
        elif kind == PARAPHRASE:
            _original, paraphrase = rng.choice(PAIRS)
            plan.append(Planned(rng.choice(CACHE_TENANTS), paraphrase, PARAPHRASE))
        else:
            text = f"Cache benchmark {tag}, question {i}: say something short."
            plan.append(Planned(CACHE_TENANTS[i % len(CACHE_TENANTS)], text, NEW))
    return plan


def _customize(config: dict[str, Any]) -> None:
    config["routes"]["chat"]["cache"] = {
        "semantic": True,
        "semantic_threshold": DEFAULT_SEMANTIC_THRESHOLD,
    }


def _latency(phase: Phase, seqs: list[int]) -> dict[str, float]:
    """Percentiles (ms) of the answered requests among ``seqs``, from intended send time."""
    hist = new_histogram()
    led = phase.ledger
    for s in seqs:
        if led.answered_ns[s]:
            hist.record_value(max(1, (led.answered_ns[s] - led.intended[s]) // 1000))
    return percentiles(hist)


def _outcome(record: dict[str, Any] | None) -> str:
    """``cached/exact``, ``cached/semantic``, ``ok`` ... of one response (None: unanswered)."""
    if record is None:
        return "unanswered"
    if record["status"] == "cached":
        return f"cached/{record.get('cache_kind') or '?'}"
    return str(record["status"])


@scenario(
    "cache",
    "(j) Response cache: hit rates, hit vs provider latency, single-flight",
    order=17,
    full_only=True,
)
def response_cache(ctx: Context) -> Result:
    result = Result()
    result.notes.append(__doc__.split("\n\n", 1)[1].strip())
    sim = ctx.simulator
    stack = Stack.create("cache", ctx.processes, sim.url, ctx.bootstrap, ctx.run_dir, _customize)
    target: ScriptedTarget | None = None
    try:
        with ctx.step("cache: starting a worker with the semantic cache on", seconds=10):
            stack.start_worker("w1")
            stack.wait_balanced()
        ctx.ensure_healthy(stack)  # its requests bypass the cache: nothing is stored
        target = ScriptedTarget(stack.bootstrap, stack.prefix)
        rng = random.Random(17)
        seed = seed_plan()
        with ctx.step(f"cache: seeding {len(seed)} originals", seconds=len(seed) / RATE + 1):
            phase = target.run_script(seed, Schedule.constant(RATE, len(seed) / RATE))
            phase.wait_answered(30)
        require_answers(stack, phase, "cache: seeding")
        _mixed(ctx, stack, target, rng, seed, result)
        _cpu_per_hit(ctx, stack, target, rng, seed, result)
        _single_flight(ctx, stack, target, result)
        peak_kb = max(memory_kb(w.pid).get("VmHWM", 0) for w in stack.live_workers())
        result.figure("worker peak RSS (semantic model and index included)", peak_kb / 1024, "MB")
    finally:
        if target is not None:
            target.close()
        sim.set_model(PRIMARY_MODEL, latency_ms=0, max_concurrency=0)
        stack.remove()
    return result


def _mixed(
    ctx: Context,
    stack: Stack,
    target: ScriptedTarget,
    rng: random.Random,
    seed: list[Planned],
    result: Result,
) -> None:
    seconds = ctx.pick(quick=8.0, full=40.0)
    count = int(RATE * seconds)
    plan = mixed_plan(rng, count, uuid.uuid4().hex[:6], seed)
    workers = [w.pid for w in stack.live_workers()]
    ctx.simulator.set_model(PRIMARY_MODEL, latency_ms=MIXED_PROVIDER_LATENCY_MS)
    try:
        with ctx.step(f"cache: mixed workload, {RATE:.0f} req/s for {seconds:g} s", seconds + 1):
            meter = cpu_meter(workers)
            phase = target.run_script(plan, Schedule.constant(RATE, seconds))
            phase.wait_answered(180)  # a worker saturated by embeddings works off a backlog
            wait_quiet(workers)
            use = meter()
    finally:
        ctx.simulator.set_model(PRIMARY_MODEL, latency_ms=0, max_concurrency=0)
    require_answers(stack, phase, "cache: mixed workload")
    answers = read_responses(stack, phase)
    by_kind: dict[str, list[int]] = {}
    outcomes: dict[str, Counter[str]] = {}
    by_outcome: dict[str, list[int]] = {}
    similarity: list[float] = []
    for seq in phase.seqs():
        kind = target.script[seq].kind
        record = answers.get(seq)
        outcome = _outcome(record)
        by_kind.setdefault(kind, []).append(seq)
        outcomes.setdefault(kind, Counter())[outcome] += 1
        by_outcome.setdefault(outcome, []).append(seq)
        if record is not None and record.get("similarity") is not None:
            similarity.append(float(record["similarity"]))
    sent = {kind: len(seqs) for kind, seqs in by_kind.items()}
    exact_rate = 100 * outcomes[REPEAT]["cached/exact"] / max(1, sent[REPEAT])
    semantic_rate = 100 * outcomes[PARAPHRASE]["cached/semantic"] / max(1, sent[PARAPHRASE])
    # A paraphrase asked a second time is an exact hit: answered from the cache all the same.
    paraphrase_cached = sum(n for o, n in outcomes[PARAPHRASE].items() if o.startswith("cached/"))
    paraphrase_rate = 100 * paraphrase_cached / max(1, sent[PARAPHRASE])
    hits = [s for o, seqs in by_outcome.items() if o.startswith("cached/") for s in seqs]
    overall = 100 * len(hits) / max(1, phase.sent)
    hit_latency = _latency(phase, hits)
    provider = _latency(phase, by_outcome.get("ok", []))
    result.latency["mixed: cache hits (exact and semantic)"] = hit_latency
    result.latency["mixed: exact hits"] = _latency(phase, by_outcome.get("cached/exact", []))
    result.latency["mixed: semantic hits"] = _latency(phase, by_outcome.get("cached/semantic", []))
    result.latency["mixed: provider path (status ok)"] = provider
    result.figure(
        "offered load, mixed workload (50% repeats, 10% paraphrases, 40% new)",
        RATE,
        "req/s",
        worker_cpu_us=use.total(workers) / max(1, phase.sent) * 1e6,
        generator_cpu_pct=100 * use.generator_s / use.wall_s,
    )
    result.figure("exact hit rate (repeats answered from the exact cache)", exact_rate, "%")
    result.figure("semantic hit rate (paraphrases answered by meaning)", semantic_rate, "%")
    result.figure("hit rate, all requests of the mix", overall, "%")
    for name, stats in (("cache-hit", hit_latency), ("provider-path", provider)):
        for p in ("p50", "p99"):
            result.figure(f"{name} {p} end-to-end", stats.get(p, float("nan")), "ms")
    if similarity:
        similarity.sort()
        result.figure(
            "similarity of the semantic hits (min / median)",
            similarity[0],
            "cosine",
            detail=f"median {similarity[len(similarity) // 2]:.3f}; "
            f"threshold {DEFAULT_SEMANTIC_THRESHOLD}",
        )
    result.table(
        "Mixed workload: what each part of the mix got (ms from intended send time)",
        ["part", "sent", "answers", "p50", "p99"],
        [
            [
                kind,
                sent[kind],
                statuses_text(dict(outcomes[kind])),
                _latency(phase, by_kind[kind]).get("p50", float("nan")),
                _latency(phase, by_kind[kind]).get("p99", float("nan")),
            ]
            for kind in (REPEAT, PARAPHRASE, NEW)
            if kind in sent
        ],
    )
    hit_p99, provider_p99 = hit_latency.get("p99"), provider.get("p99")
    limit = HIT_P99_MAX_SHARE * provider_p99 if provider_p99 else float("nan")
    result.check(
        "cache-hit p99 vs half the provider-path p99 (same run)",
        hit_p99,
        limit,
        "ms",
        why_not_measured="no hits or no provider calls in the mix",
    )
    result.check(
        "repeats answered from the exact cache",
        exact_rate,
        HIT_RATE_TARGET_PCT,
        "%",
        lower_is_better=False,
    )
    result.check(
        "paraphrases answered from the cache (by meaning, or exactly when asked before)",
        paraphrase_rate,
        SEMANTIC_HIT_RATE_TARGET_PCT,
        "%",
        lower_is_better=False,
    )
    result.data["mixed"] = {
        "rate": RATE,
        "seconds": seconds,
        "sent": sent,
        "outcomes": {k: dict(v) for k, v in outcomes.items()},
        "similarity": similarity,
    }


def _drain_cpu_us(
    ctx: Context, stack: Stack, target: ScriptedTarget, plan: list[Planned], what: str
) -> tuple[float, Counter[str]]:
    """Produce ``plan`` at once and drain it (as ``measure.drain``): worker CPU µs per request
    until the worker is quiet again, and the statuses of the answers."""
    workers = [w.pid for w in stack.live_workers()]
    with ctx.step(f"cache: draining {len(plan)} {what}", seconds=5):
        meter = cpu_meter(workers)
        phase = target.run_script(plan, Schedule.backlog(len(plan)))
        phase.wait_answered(timeout=180, stall_s=10)
        wait_quiet(workers)
        use = meter()
    require_answers(stack, phase, f"cache: draining {what}")
    return use.total(workers) / len(plan) * 1e6, phase.status_counts()


def _cpu_per_hit(
    ctx: Context,
    stack: Stack,
    target: ScriptedTarget,
    rng: random.Random,
    seed: list[Planned],
    result: Result,
) -> None:
    n_exact = ctx.pick(quick=300, full=1500)
    n_semantic = ctx.pick(quick=60, full=400)
    exact = [Planned(p.tenant, p.text, REPEAT) for p in (rng.choice(seed) for _ in range(n_exact))]
    semantic = [
        Planned(rng.choice(CACHE_TENANTS), rng.choice(PAIRS)[1], PARAPHRASE)
        for _ in range(n_semantic)
    ]
    rows = []
    for what, plan in (("exact hits", exact), ("semantic hits", semantic)):
        cpu_us, statuses = _drain_cpu_us(ctx, stack, target, plan, what)
        rows.append([what, len(plan), cpu_us, statuses_text(dict(statuses))])
        result.figure(f"worker CPU per {what[:-1]}", cpu_us, "µs")
    result.table(
        "CPU per hit: a backlog of hits drained by one worker (worker CPU until quiet)",
        ["hits", "requests", "worker CPU µs/req", "statuses"],
        rows,
    )
    result.notes.append(
        "CPU per exact hit here is measured on a route with the semantic cache on; (a') "
        "measures the exact-hit path at saturation on a route without it."
    )


def _single_flight(ctx: Context, stack: Stack, target: ScriptedTarget, result: Result) -> None:
    sim = ctx.simulator
    text = f"Single-flight {uuid.uuid4().hex[:6]}: what is the tallest mountain on Earth?"
    plan = [Planned(CACHE_TENANTS[0], text, SINGLE)] * SINGLE_FLIGHT_REQUESTS
    sim.set_model(PRIMARY_MODEL, latency_ms=SINGLE_FLIGHT_LATENCY_MS)
    try:
        before = sim.counts()
        with ctx.step(f"cache: {SINGLE_FLIGHT_REQUESTS} identical requests at once", seconds=2):
            phase = target.run_script(plan, Schedule.backlog(len(plan)))
            phase.wait_answered(30)
        after = sim.counts()
    finally:
        sim.set_model(PRIMARY_MODEL, latency_ms=0, max_concurrency=0)
    require_answers(stack, phase, "cache: single-flight", at_least=1.0)
    calls = None
    if before is not None and after is not None:
        calls = int(after["received"]) - int(before["received"])
    answers = read_responses(stack, phase)
    outcomes = Counter(_outcome(answers.get(s)) for s in phase.seqs())
    result.figure(
        f"single-flight: provider calls for {SINGLE_FLIGHT_REQUESTS} identical requests",
        float("nan") if calls is None else calls,
        "calls",
        detail=statuses_text(dict(outcomes)),
    )
    if calls is not None:
        result.figure(
            "provider calls saved by single-flight", SINGLE_FLIGHT_REQUESTS - calls, "calls"
        )
    result.table(
        f"Single-flight: {SINGLE_FLIGHT_REQUESTS} identical requests of one tenant published "
        f"together, provider latency {SINGLE_FLIGHT_LATENCY_MS} ms",
        ["provider calls (simulator /admin/counts)", "answers", "p50 ms", "p99 ms"],
        [
            [
                "n/a" if calls is None else calls,
                statuses_text(dict(outcomes)),
                phase.latency().get("p50", float("nan")),
                phase.latency().get("p99", float("nan")),
            ]
        ],
    )
    result.check(
        f"single-flight: provider calls for {SINGLE_FLIGHT_REQUESTS} identical requests",
        None if calls is None or calls < 1 else calls,
        1,
        "calls",
        why_not_measured="the simulator's counts were not available (or showed no call)",
    )
    result.data["single_flight"] = {"calls": calls, "outcomes": dict(outcomes)}
