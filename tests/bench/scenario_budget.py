"""(l) Budgets under concurrency and a SIGKILL: zero overshoot, and what the check costs.

Two workers. Tenant A has a daily cap of $1.00 and sends 1,000 requests, at most 200 in
flight (closed loop), each able to cost up to $0.01: ``max_tokens`` 20 at $450 per million
output tokens ($0.009) plus a ~25-token prompt at $25 per million; the simulator answers
with exactly 20 tokens (truncated), so each answer costs nearly its reservation. The
provider ``sim`` also has a global daily cap ($800, $100 per partition), so the provider
ledger is reserved and settled on the same requests. While the first answers are still in
flight, the worker that owns tenant A's partition gets SIGKILL; the survivor restores the
ledger from the changelog and re-reads the uncommitted requests.

Spend is reported four ways: the cost on the first response of each request (what the
client keeps), the cost on every response copy (duplicates after the kill included), the
budget ledger's settled spend (``/budgets``) and the usage aggregation (``/costs``, a
request id counted once). Overshoot is the largest of them minus the cap. The simulator's
count of calls shows what the provider saw (calls from the killed worker included, whose
answers were lost): times the mean cost of an answer, it estimates what the provider
billed. A request read again while its earlier attempt's reservation is still open has
that reservation charged in full if the attempt was sent to the provider (it may have been
paid), else released (``budget.charge_held``).

The latency cost of the budget check: interleaved rounds (capped, uncapped, capped, ...)
of the same closed-loop load (zero-latency model) from two tenants on the same partition:
one with a daily cap ($1000, never reached) on a provider with a cap, one with no budget on
a provider without one. Both pay the same pipeline; the difference is the reservation at
admission and the settle on the response. The pure policy calls (tenant + provider admit
and settle with a JSON round trip of the ledgers, as the table does) are also timed in the
bench process.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from hdrh.histogram import HdrHistogram

from connectors.client import build_request
from schemas import registry
from streams.policies import admission, provider_cap
from streams.policies.admission import AdmissionConfig, AdmissionRequest, TenantPolicy
from streams.policies.budget import BudgetConfig, BudgetLedger
from tests.bench.framework import Context, Result, Spread, interleave, scenario
from tests.bench.harness import PARTITIONS, Simulator, Stack, Worker, get_json
from tests.bench.loadgen import new_histogram, percentiles
from tests.integration.conftest import wait_until

CAP_MICROS = 1_000_000  # tenant A's daily cap: $1.00
PROVIDER_CAP_USD = 800.0  # provider sim: $100 per partition (8 partitions)
PRICED, FAST = "budget-priced", "budget-fast"  # simulator model names of this scenario
PRICE = {"input_usd_per_mtok": 25.0, "output_usd_per_mtok": 450.0}
MAX_TOKENS = 20  # 20 x $450 / 1M = $0.009 of output
REQUESTS, CONCURRENCY = 1_000, 200
KILL_AFTER_S = 1.0  # answers take 0.5 to 2.5 s: the kill lands among open reservations
TENANT_A = "budget-a"


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner picks for ``key``."""
    m, length = 0x5BD1E995, len(key)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = (int.from_bytes(key[i : i + 4], "little") * m) & 0xFFFFFFFF
        k = ((k ^ (k >> 24)) * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = key[whole:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h = ((h ^ tail[0]) * m) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


def _latency_tenants() -> tuple[str, str]:
    """Two tenant names on the same partition (the same worker, the same queue)."""
    names = [f"budget-lat-{i}" for i in range(64)]
    for capped in names:
        for free in names:
            if capped != free and kafka_partition(capped.encode(), PARTITIONS) == kafka_partition(
                free.encode(), PARTITIONS
            ):
                return capped, free
    raise RuntimeError("no two tenant names share a partition")


LAT_CAPPED, LAT_FREE = _latency_tenants()


def _customize(config: dict[str, Any]) -> None:
    sim = config["providers"]["sim"]
    sim["daily_budget_usd"] = PROVIDER_CAP_USD
    sim["models"][PRICED] = dict(PRICE)
    sim["models"][FAST] = dict(PRICE)
    config["providers"]["simfree"] = {
        "kind": "openai",
        "base_url": sim["base_url"],
        "timeout_s": 30,
        "models": {FAST: dict(PRICE)},
    }
    config["routes"]["priced"] = {"primary": f"sim/{PRICED}"}
    config["routes"]["fast-capped"] = {"primary": f"sim/{FAST}"}
    config["routes"]["fast-free"] = {"primary": f"simfree/{FAST}"}
    tenants = config["tenants"]
    tenants[TENANT_A] = {"max_priority": "critical", "daily_budget_usd": CAP_MICROS / 1e6}
    tenants[LAT_CAPPED] = {"max_priority": "critical", "daily_budget_usd": 1000.0}
    tenants[LAT_FREE] = {"max_priority": "critical"}


# -- a closed-loop client that keeps every response copy ------------------------------------


@dataclass
class Answer:
    at_ns: int
    status: str
    reason: str
    cost_micros: int
    retry_after_ms: int | None


@dataclass
class Run:
    """One closed-loop run: send times and every response copy, by request id."""

    ids: list[str]
    sent_ns: dict[str, int] = field(default_factory=dict)
    answers: dict[str, list[Answer]] = field(default_factory=dict)
    started_ns: int = 0

    def first(self) -> dict[str, Answer]:
        return {rid: copies[0] for rid, copies in self.answers.items() if copies}

    def missing(self) -> int:
        return sum(1 for rid in self.ids if not self.answers.get(rid))

    def duplicates(self) -> int:
        return sum(len(c) - 1 for c in self.answers.values() if len(c) > 1)

    def conflicting(self) -> int:
        """Requests whose copies disagree on the status (e.g. ok, then rejected)."""
        return sum(1 for c in self.answers.values() if len({a.status for a in c}) > 1)

    def histogram(self) -> HdrHistogram:
        hist = new_histogram()
        for rid, answer in self.first().items():
            hist.record_value(max(1, (answer.at_ns - self.sent_ns[rid]) // 1000))
        return hist


class Driver:
    """Publishes requests (key = tenant) and reads ``<prefix>.responses`` in a thread."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.prefix = prefix
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": 0,
                "acks": "all",
                "enable.idempotence": True,
                "partitioner": "murmur2_random",
            }
        )
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"{prefix}-budget-reader-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        topic = f"{prefix}.responses"
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = []
        for p in sorted(partitions):
            _low, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ends.append(TopicPartition(topic, p, high))
        self.consumer.assign(ends)
        self.lock = threading.Condition()
        self.run: Run | None = None
        self.in_flight = 0
        self._closing = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while not self._closing.is_set():
            message = self.consumer.poll(0.05)
            if message is None or message.error() is not None:
                continue
            now = time.monotonic_ns()
            try:
                record = registry.decode(registry.CHAT_RESPONSE, message.value() or b"")
            except registry.SchemaError:
                continue
            with self.lock:
                run = self.run
                rid = record["request_id"]
                if run is None or rid not in run.sent_ns:
                    continue
                copies = run.answers.setdefault(rid, [])
                copies.append(
                    Answer(
                        now,
                        record["status"],
                        record["reason"],
                        int(record["cost_micros"] or 0),
                        record.get("retry_after_ms"),
                    )
                )
                if len(copies) == 1:
                    self.in_flight -= 1
                    self.lock.notify_all()

    def closed_loop(
        self,
        tenant: str,
        model: str,
        n: int,
        concurrency: int,
        *,
        timeout: float = 90.0,
    ) -> Run:
        """Send ``n`` requests with at most ``concurrency`` unanswered. Returns when all
        are answered, or after ``timeout``."""
        tag = uuid.uuid4().hex[:8]
        run = Run([f"{tag}-{i}" for i in range(n)])
        with self.lock:
            self.run, self.in_flight = run, 0
        run.started_ns = time.monotonic_ns()
        deadline = time.monotonic() + timeout
        for i, rid in enumerate(run.ids):
            with self.lock:
                while self.in_flight >= concurrency and time.monotonic() < deadline:
                    self.lock.wait(0.05)
                self.in_flight += 1
                run.sent_ns[rid] = time.monotonic_ns()
            request = build_request(
                tenant=tenant,
                model=model,
                request_id=rid,
                messages=[{"role": "user", "content": f"Budget run {tag}: request {i}, briefly."}],
                max_tokens=MAX_TOKENS,
                temperature=1.0,
                cache_mode="bypass",
            )
            self.producer.produce(
                f"{self.prefix}.requests.normal",
                registry.encode(registry.CHAT_REQUEST, request),
                tenant.encode(),
                headers=[("sg-request-id", rid.encode())],
            )
            self.producer.poll(0)
        self.producer.flush(10)
        with self.lock:
            while self.in_flight > 0 and time.monotonic() < deadline:
                self.lock.wait(0.1)
        return run

    def settle_copies(self, seconds: float) -> None:
        """Wait a little for late duplicate copies (re-read requests answered again)."""
        time.sleep(seconds)

    def close(self) -> None:
        self._closing.set()
        self.reader.join(5)
        self.producer.flush(5)
        self.consumer.close()


# -- the scenario -------------------------------------------------------------------------


def _owner(stack: Stack, tenant: str) -> Worker:
    partition = kafka_partition(tenant.encode(), PARTITIONS)
    wanted = f"{stack.prefix}.requests.normal:{partition}"
    for worker in stack.live_workers():
        health = get_json(f"http://127.0.0.1:{worker.port}/healthz") or {}
        if wanted in health.get("owned", []):
            return worker
    raise RuntimeError(f"no live worker owns {wanted}")


def _ledger_day(stack: Stack, tenant: str) -> dict[str, Any] | None:
    """Tenant's day window in the ledger, once nothing is reserved any more."""
    worker = _owner(stack, tenant)
    view = get_json(f"http://127.0.0.1:{worker.port}/budgets") or {}
    for row in view.get(tenant, {}).get("windows", []):
        if row["scope"] == "tenant_day" and row["reserved_micros"] == 0:
            return dict(row)
    return None


def _provider_row(stack: Stack, tenant: str) -> dict[str, Any]:
    worker = _owner(stack, tenant)
    partition = kafka_partition(tenant.encode(), PARTITIONS)
    view = get_json(f"http://127.0.0.1:{worker.port}/budgets") or {}
    entry = view.get(provider_cap.table_key("sim", partition)) or {"windows": [{}]}
    return dict(entry["windows"][0])


def _usage_day(stack: Stack, tenant: str, expected_requests: int) -> dict[str, Any] | None:
    worker = _owner(stack, tenant)
    doc = get_json(f"http://127.0.0.1:{worker.port}/costs?window=day") or {}
    for row in doc.get("rows", []):
        if row["tenant"] == tenant and row["feature"] == "*":
            return dict(row) if row["requests"] >= expected_requests else None
    return None


def _pure_check_us(rounds: int = 2_000) -> tuple[float, float]:
    """Median µs of admit + settle with the policies alone (tenant cap, then tenant and
    provider caps), ledgers holding 100 open reservations, JSON round trips included."""
    config = AdmissionConfig({"a": TenantPolicy(budget=BudgetConfig(daily_cap_micros=10**12))})
    caps = provider_cap.ProviderCapConfig({"sim": 10**12}, partitions=8)
    now = int(time.time() * 1000)

    def one(with_provider: bool, state: dict[str, Any], row: dict[str, Any], i: int) -> float:
        started = time.perf_counter_ns()
        rid = f"x{i}"
        tenant = admission.TenantState.from_dict(json.loads(json.dumps(state["a"])))
        decision, tenant = admission.admit(
            tenant, now, AdmissionRequest(rid, "a", "", "sim/m", 100), config, lambda m: 9_000
        )
        assert isinstance(decision, admission.Admitted)
        if with_provider:
            ledgers = {"sim": BudgetLedger.from_dict(json.loads(json.dumps(row["sim"])))}
            verdict = provider_cap.admit(ledgers, now, 1, rid, {"sim": 9_000}, caps)
            row["sim"] = verdict.ledgers["sim"].to_dict()
        state["a"] = tenant.to_dict()
        tenant = admission.TenantState.from_dict(json.loads(json.dumps(state["a"])))
        tenant = admission.settle(tenant, now, rid, 8_000, feature="", config=config, tenant="a")
        if with_provider:
            ledgers = {"sim": BudgetLedger.from_dict(json.loads(json.dumps(row["sim"])))}
            row["sim"] = provider_cap.settle(ledgers, now, rid, "sim", 8_000)["sim"].to_dict()
        state["a"] = tenant.to_dict()
        return (time.perf_counter_ns() - started) / 1000

    out = []
    for with_provider in (False, True):
        state: dict[str, Any] = {"a": admission.TenantState().to_dict()}
        row: dict[str, Any] = {"sim": BudgetLedger().to_dict()}
        for i in range(100):  # 100 open reservations that stay open
            tenant = admission.TenantState.from_dict(state["a"])
            _, tenant = admission.admit(
                tenant, now, AdmissionRequest(f"open{i}", "a", "", "sim/m", 1), config, lambda m: 1
            )
            state["a"] = tenant.to_dict()
            row["sim"] = (
                provider_cap.admit(
                    {"sim": BudgetLedger.from_dict(row["sim"])},
                    now,
                    1,
                    f"open{i}",
                    {"sim": 1},
                    caps,
                )
                .ledgers["sim"]
                .to_dict()
            )
        out.append(statistics.median(one(with_provider, state, row, i) for i in range(rounds)))
    return out[0], out[1]


@scenario(
    "budget", "(l) Budget cap under 200 concurrent requests and a SIGKILL", order=55, full_only=True
)
def budget(ctx: Context) -> Result:
    result = Result()
    sim = ctx.simulator
    stack = Stack.create("budget", ctx.processes, sim.url, ctx.bootstrap, ctx.run_dir, _customize)
    driver: Driver | None = None
    try:
        sim.set_model(PRICED, latency={"kind": "normal", "ms": 1500, "stddev_ms": 500})
        for i in range(2):
            with ctx.step(f"budget: starting worker {i + 1} of 2", seconds=10):
                stack.start_worker(f"w{i + 1}")
                stack.wait_balanced()
        ctx.ensure_healthy(stack)
        driver = Driver(stack.bootstrap, stack.prefix)
        _latency_cost(ctx, driver, result)
        _capped_run_with_kill(ctx, stack, sim, driver, result)
        result.notes.append(__doc__.split("\n\n", 1)[1].strip())
    finally:
        if driver is not None:
            driver.close()
        sim.set_model(PRICED, latency_ms=0)
        stack.remove()
    return result


def _latency_cost(ctx: Context, driver: Driver, result: Result) -> None:
    n, concurrency = ctx.pick(quick=400, full=2_000), 20
    variants = {"capped": (LAT_CAPPED, "fast-capped"), "uncapped": (LAT_FREE, "fast-free")}

    def runner(name: str) -> Callable[[int], dict[str, float]]:
        tenant, model = variants[name]

        def run(r: int) -> dict[str, float]:
            with ctx.step(f"budget: latency round {r + 1}, {name}", seconds=3):
                done = driver.closed_loop(tenant, model, n, concurrency, timeout=60)
            if done.missing():
                raise RuntimeError(f"{done.missing()} of {n} {name} requests unanswered")
            statuses = {a.status for a in done.first().values()}
            if statuses != {"ok"}:
                raise RuntimeError(f"{name} round answered {statuses}, expected only ok")
            return percentiles(done.histogram())

        return run

    rounds = interleave(ctx.mode.rounds, {name: runner(name) for name in variants})
    p99 = {name: Spread.of([r["p99"] for r in rounds[name]]) for name in variants}
    p50 = {name: Spread.of([r["p50"] for r in rounds[name]]) for name in variants}
    added = Spread.of(
        [c["p99"] - u["p99"] for c, u in zip(rounds["capped"], rounds["uncapped"], strict=True)]
    )
    result.figure(
        "p99 added by the budget check (capped - uncapped)",
        added,
        "ms",
        detail=f"closed loop, {concurrency} in flight, {n} requests per round",
    )
    pure_tenant, pure_both = _pure_check_us()
    result.figure("admit + settle, tenant cap (policy calls)", pure_tenant, "µs")
    result.figure("admit + settle, tenant + provider cap (policy calls)", pure_both, "µs")
    result.table(
        "Latency cost of the budget check (interleaved rounds, median [min-max])",
        ["variant", "p50 ms", "p99 ms", "rounds"],
        [
            [
                name,
                f"{p50[name].median:.2f} [{p50[name].low:.2f}-{p50[name].high:.2f}]",
                f"{p99[name].median:.2f} [{p99[name].low:.2f}-{p99[name].high:.2f}]",
                len(rounds[name]),
            ]
            for name in variants
        ],
    )
    for name in variants:
        result.latency[f"budget check: {name} (last round)"] = rounds[name][-1]


def _capped_run_with_kill(
    ctx: Context, stack: Stack, sim: Simulator, driver: Driver, result: Result
) -> None:
    victim = _owner(stack, TENANT_A)
    calls_before = ((sim.counts() or {}).get("models", {}).get(PRICED) or {}).get("received", 0)
    killed: dict[str, float] = {}
    started = time.monotonic()

    def kill() -> None:
        victim.kill()
        killed["at_s"] = time.monotonic() - started

    # A timer, not the send loop: rejections are fast, so every request may be sent (and
    # most answered) before the first admitted ones are; the kill must land among those.
    timer = threading.Timer(KILL_AFTER_S, kill)
    with ctx.step(
        f"budget: {REQUESTS} requests, {CONCURRENCY} in flight, SIGKILL {victim.name}", 30
    ):
        timer.start()
        run = driver.closed_loop(TENANT_A, "priced", REQUESTS, CONCURRENCY, timeout=120)
        timer.join()
        driver.settle_copies(3.0)  # late duplicates of re-read requests
    first = run.first()
    admitted = [a for a in first.values() if a.status in ("ok", "degraded")]
    rejected = [a for a in first.values() if a.status == "rejected"]
    other = len(first) - len(admitted) - len(rejected)
    spend_first = sum(a.cost_micros for a in first.values())
    spend_all = sum(a.cost_micros for c in run.answers.values() for a in c)
    with ctx.step("budget: reading the survivor's ledger and usage totals", seconds=5):
        ledger = wait_until(lambda: _ledger_day(stack, TENANT_A), 30, "the ledger to settle")
        usage = wait_until(lambda: _usage_day(stack, TENANT_A, len(first)), 30, "usage totals")
        provider_row = _provider_row(stack, TENANT_A)
    calls = ((sim.counts() or {}).get("models", {}).get(PRICED) or {}).get("received", 0)
    calls -= calls_before
    per_call = spend_first / len(admitted) if admitted else 0.0
    spends = {
        "first response per request": spend_first,
        "every response copy": spend_all,
        "budget ledger (/budgets)": int(ledger["spent_micros"]),
        "usage totals (/costs, day)": int(usage["cost_micros"]),
    }
    overshoot = max(0, max(spends.values()) - CAP_MICROS)
    provider_side = calls * per_call
    reasons = sorted({a.reason for a in rejected})
    result.figure("overshoot of the $1.00 cap", overshoot / 1e6, "USD")
    result.figure("final spend (ledger)", ledger["spent_micros"] / 1e6, "USD")
    result.figure("admitted requests", len(admitted), "requests")
    result.figure("rejected requests", len(rejected), "requests", detail=", ".join(reasons))
    result.figure("missing responses", run.missing(), "requests")
    result.figure("duplicate responses", run.duplicates(), "requests")
    result.figure(
        "provider-side spend (estimate)",
        provider_side / 1e6,
        "USD",
        detail=f"{calls} calls reached the simulator x the mean cost of an answer",
    )
    result.check("overshoot of the daily cap", overshoot / 1e6, 0.0, "USD")
    result.check(
        "provider-side overshoot (estimate)", max(0.0, provider_side - CAP_MICROS) / 1e6, 0.0, "USD"
    )
    result.check("requests without a terminal response", float(run.missing()), 0.0, "requests")
    result.table(
        "Spend of tenant A against its $1.00 cap",
        ["measured as", "USD", "of the cap"],
        [[k, v / 1e6, f"{100 * v / CAP_MICROS:.2f}%"] for k, v in spends.items()]
        + [
            [
                f"provider side: {calls} simulator calls x {per_call / 1e6:.6f} (estimate)",
                provider_side / 1e6,
                f"{100 * provider_side / CAP_MICROS:.2f}%",
            ]
        ],
    )
    result.table(
        "Budget run with a SIGKILL",
        [
            "requests",
            "in flight",
            "killed at s",
            "admitted",
            "rejected",
            "other",
            "missing",
            "duplicates",
            "copies disagreeing",
            "provider row spent / share USD",
        ],
        [
            [
                REQUESTS,
                CONCURRENCY,
                killed.get("at_s", float("nan")),
                len(admitted),
                len(rejected),
                other,
                run.missing(),
                run.duplicates(),
                run.conflicting(),
                f"{provider_row.get('spent_micros', 0) / 1e6:.4f} / "
                f"{(provider_row.get('cap_micros') or 0) / 1e6:.2f}",
            ]
        ],
    )
    result.latency["budget run: all responses"] = percentiles(run.histogram())
    result.data["budget_run"] = {
        "spends_micros": spends,
        "simulator_calls": calls,
        "killed_at_s": killed.get("at_s"),
        "victim": victim.name,
        "reasons": reasons,
    }
