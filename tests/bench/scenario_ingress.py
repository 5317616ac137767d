"""(k) HTTP ingress overhead: through the ingress vs straight to the simulator, same offered load.

The ingress runs as its own process (``sluicegate --config F ingress --port P``) in front
of the shared one-worker stack, with an API key for each of the 32 bench tenants (requests
take turns, as on the Kafka path). Open-loop arrivals at 20% of one worker's saturation
(scenario ``saturation``), in interleaved rounds A B A B ...:

- A: ``POST /v1/chat/completions`` to the ingress (model ``chat``): ingress -> Kafka ->
  worker -> Kafka (the ingress's reply topic) -> ingress -> HTTP answer;
- B: the same request straight to the simulator (model ``sim-large``);
- C: the same request published to Kafka by the load generator (as in (b)), answered on
  the responses topic: A minus C is the ingress's own share of the added latency.

A and B with aiohttp from the load generator. Every prompt is unique, temperature 1 and
``x-sluicegate-cache: bypass``: no cache hits. Latency runs from each request's intended
send time to its answer; the added latency is the per-round difference of the
percentiles (median [min-max] over the rounds). Ingress CPU per request is its CPU time
(/proc) over a round until it is quiet again, divided by the requests.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections import Counter
from typing import Any

from connectors.ingress.auth import hash_key
from tests.bench.framework import Context, Result, Spread, interleave, scenario
from tests.bench.harness import MODEL, TENANTS, Stack, get_json
from tests.bench.loadgen import HttpTarget, RequestShape, Schedule
from tests.bench.measure import LatencyRound, merged, open_loop_round, round_json, spread_text
from tests.integration.conftest import free_port, to_toml, wait_until

LOAD = 0.2  # of one worker's saturation throughput
MIN_ROUNDS = 5


def api_key(tenant: str) -> str:
    return f"sk-bench-{tenant}"


class IngressTarget(HttpTarget):
    """The open-loop HTTP generator against the ingress: model ``chat``, a bench tenant's key
    (tenants take turns by sequence number), cache bypassed. Answers other than 200 are
    counted by HTTP status in ``refused``."""

    name = "ingress"

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url)
        self.refused: Counter[int] = Counter()

    def send(self, seq: int, when_ns: int, priority: str, shape: RequestShape) -> None:
        call: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": shape.content(seq)}],
            "temperature": shape.temperature,
        }
        if shape.max_tokens is not None:
            call["max_tokens"] = shape.max_tokens
        self.ledger.delivery[seq] = 1
        self.loop.call_soon_threadsafe(self._start, seq, json.dumps(call).encode())

    async def _call(self, seq: int, body: bytes) -> None:
        tenant = TENANTS[(seq * 7) % len(TENANTS)]
        headers = {
            "content-type": "application/json",
            "authorization": f"Bearer {api_key(tenant)}",
            "x-sluicegate-cache": "bypass",
        }
        try:
            async with self.session.post(self.url, data=body, headers=headers) as response:
                json.loads(await response.read())
                status = response.headers.get("x-sluicegate-status", "other")
                if response.status != 200:
                    self.refused[response.status] += 1
                    status = "failed"
        except Exception:
            self.refused[0] += 1
            status = "failed"
        self.ledger.answer(seq, time.monotonic_ns(), status)


def ingress_config(stack_config: dict[str, Any]) -> dict[str, Any]:
    """The stack's configuration plus an API key per tenant (only the ingress reads keys)."""
    config = copy.deepcopy(stack_config)
    for name, tenant in config["tenants"].items():
        tenant["api_key_sha256"] = [hash_key(api_key(name))]
    return config


@scenario(
    "ingress",
    "(k) HTTP ingress overhead vs calling the simulator directly",
    order=22,
    full_only=True,
)
def ingress_overhead(ctx: Context) -> Result:
    result = Result()
    stack = ctx.stack("single")
    rate = LOAD * ctx.saturation_rps()
    port = free_port()
    config_path = ctx.run_dir / f"ingress-{port}.toml"
    config_path.write_text(to_toml(ingress_config(stack.config)))
    args = [sys.executable, "-m", "streams.cli", "--config", str(config_path), "ingress"]
    args += ["--port", str(port), "--instance-id", f"bench-{port}"]
    process = ctx.processes.spawn(f"ingress-{port}", args)
    url = f"http://127.0.0.1:{port}"
    target: IngressTarget | None = None
    try:
        with ctx.step("ingress: starting", seconds=5):
            wait_until(
                lambda: process.poll() is not None or get_json(f"{url}/healthz") is not None,
                60,
                "the ingress to be healthy",
            )
        if process.poll() is not None:
            raise RuntimeError(f"the ingress exited (log: {process.log_path})")
        target = IngressTarget(url)
        _measure(ctx, result, target, process.pid, rate, stack)
    finally:
        if target is not None:
            target.close()
        ctx.processes.stop(process, grace_s=5)
    return result


def _measure(
    ctx: Context, result: Result, target: IngressTarget, pid: int, rate: float, stack: Stack
) -> None:
    direct, kafka = ctx.direct(), ctx.kafka(stack)
    workers = [w.pid for w in stack.live_workers()]
    seconds = ctx.pick(quick=1.5, full=6.0)
    rounds_n = max(MIN_ROUNDS, ctx.mode.rounds)
    with ctx.step("ingress: warm-up (not measured)", seconds=2):
        for warm in (target, direct, kafka):
            warm.run(Schedule.constant(rate, 0.5)).wait_answered(30)
    target.refused.clear()

    def via_ingress(r: int) -> LatencyRound:
        label = f"ingress {rate:.0f} req/s: via the ingress, round {r + 1}/{rounds_n}"
        return open_loop_round(ctx, target, rate, seconds, [pid], label, stack)

    def straight(r: int) -> LatencyRound:
        label = f"ingress {rate:.0f} req/s: direct, round {r + 1}/{rounds_n}"
        return open_loop_round(ctx, direct, rate, seconds, [], label)

    def via_kafka(r: int) -> LatencyRound:
        label = f"ingress {rate:.0f} req/s: via Kafka (no ingress), round {r + 1}/{rounds_n}"
        return open_loop_round(ctx, kafka, rate, seconds, workers, label, stack)

    rounds = interleave(rounds_n, {"ingress": via_ingress, "direct": straight, "kafka": via_kafka})
    via, base, bare = rounds["ingress"], rounds["direct"], rounds["kafka"]
    own50 = Spread.of([a.p50 - c.p50 for a, c in zip(via, bare, strict=True)])
    own99 = Spread.of([a.p99 - c.p99 for a, c in zip(via, bare, strict=True)])
    add50 = Spread.of([a.p50 - b.p50 for a, b in zip(via, base, strict=True)])
    add99 = Spread.of([a.p99 - b.p99 for a, b in zip(via, base, strict=True)])
    cpu = Spread.of([a.worker_cpu_us for a in via])  # CPU of the pids measured: the ingress
    gen = Spread.of([r.generator_cpu_pct for r in via + base + bare])
    refused = sum(target.refused.values())
    result.latency["via the ingress"] = merged(via)
    result.latency["direct to the simulator"] = merged(base)
    result.latency["via Kafka, no ingress"] = merged(bare)
    result.figure(
        f"offered load, {LOAD:.0%} of saturation", rate, "req/s", generator_cpu_pct=gen.median
    )
    for name, rs in (("via the ingress", via), ("direct", base), ("via Kafka, no ingress", bare)):
        result.figure(f"{name} p50", Spread.of([r.p50 for r in rs]), "ms")
        result.figure(f"{name} p99", Spread.of([r.p99 for r in rs]), "ms")
    result.figure("ingress added latency p50 (vs direct)", add50, "ms")
    result.figure("ingress added latency p99 (vs direct)", add99, "ms")
    result.figure("the ingress's own share p50 (vs via Kafka)", own50, "ms")
    result.figure("the ingress's own share p99 (vs via Kafka)", own99, "ms")
    result.figure("ingress CPU per request", cpu, "µs")
    result.table(
        f"Per round at {rate:.0f} req/s (ms; rounds interleaved A B C; added = A - B, "
        "ingress's own = A - C, per round)",
        [
            "round",
            "A ingress p50",
            "A ingress p99",
            "B direct p50",
            "B direct p99",
            "C Kafka p50",
            "C Kafka p99",
            "added p50",
            "added p99",
            "own p50",
            "own p99",
            "ingress CPU µs/req",
            "unanswered",
        ],
        [
            [
                i + 1,
                a.p50,
                a.p99,
                b.p50,
                b.p99,
                c.p50,
                c.p99,
                a.p50 - b.p50,
                a.p99 - b.p99,
                a.p50 - c.p50,
                a.p99 - c.p99,
                a.worker_cpu_us,
                a.unanswered + b.unanswered + c.unanswered,
            ]
            for i, (a, b, c) in enumerate(zip(via, base, bare, strict=True))
        ],
    )
    result.table(
        "Median [min-max] over the rounds",
        [
            "added p50 (A - B)",
            "added p99 (A - B)",
            "ingress's own p50 (A - C)",
            "ingress's own p99 (A - C)",
            "ingress answers other than 200 (by HTTP status; 0 = no answer)",
        ],
        [
            [
                spread_text(add50, " ms"),
                spread_text(add99, " ms"),
                spread_text(own50, " ms"),
                spread_text(own99, " ms"),
                ", ".join(f"{k}: {v}" for k, v in sorted(target.refused.items())) or "none",
            ]
        ],
    )
    result.check("ingress answers other than 200", refused, 0, "requests")
    result.data = {
        "rate": rate,
        "seconds": seconds,
        "added_p50_ms": add50.__dict__,
        "added_p99_ms": add99.__dict__,
        "own_p50_ms": own50.__dict__,
        "own_p99_ms": own99.__dict__,
        "ingress_cpu_us": cpu.__dict__,
        "refused": {str(k): v for k, v in target.refused.items()},
        "ingress": [round_json(a) for a in via],
        "direct": [round_json(b) for b in base],
        "kafka": [round_json(c) for c in bare],
    }
    result.notes.append(__doc__.split("\n\n", 1)[1].strip())
