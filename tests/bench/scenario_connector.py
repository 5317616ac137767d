"""(f) The connector micro-benchmark: OpenAICompatProvider vs plain httpx, one run, ratio.

Reuses tests/bench/bench_connector.py (its closed-loop ``drive`` and request ``messages``)
against the shared zero-latency simulator, in interleaved rounds: provider, plain httpx,
provider, plain httpx ... at 200 requests in flight. The figures are requests/s and the
client's CPU per request (this process); the ratio is per round, then the median.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.bench.framework import Context, Result, Spread, scenario
from tests.bench.harness import cpu_seconds

IN_FLIGHT = 200


@scenario("connector", "(f) Connector: OpenAICompatProvider vs plain httpx", order=60)
def connector(ctx: Context) -> Result:
    return asyncio.run(_connector(ctx))


async def _connector(ctx: Context) -> Result:
    import httpx

    from connectors.providers import ChatCall, OpenAICompatProvider
    from tests.bench.bench_connector import drive, messages

    base = ctx.simulator.url
    sim_pid = ctx.simulator.pid
    seconds = ctx.pick(quick=0.7, full=4.0)
    provider = OpenAICompatProvider(
        "sim", f"{base}/v1", "sk-bench", timeout_s=30, max_connections=IN_FLIGHT
    )
    plain = httpx.AsyncClient(
        base_url=f"{base}/v1", limits=httpx.Limits(max_connections=IN_FLIGHT), timeout=30
    )

    async def via_provider(n: int) -> None:
        await provider.complete(ChatCall(model="bench", messages=messages(n), request_id=str(n)))

    async def via_plain_httpx(n: int) -> None:
        body = {"model": "bench", "messages": messages(n)}
        response = await plain.post("chat/completions", content=json.dumps(body))
        response.raise_for_status()
        response.json()

    variants = {
        "OpenAICompatProvider (httpx over aiohttp)": via_provider,
        "plain httpx.AsyncClient": via_plain_httpx,
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    try:
        for call in variants.values():  # warm up connection pools
            await drive(call, ctx.pick(quick=0.3, full=1.0), IN_FLIGHT)
        for r in range(ctx.mode.rounds):
            for name, call in variants.items():
                with ctx.step(f"connector: {name}, round {r + 1}", seconds=seconds):
                    sim0 = cpu_seconds(sim_pid)
                    ok, errors, wall, cpu = await drive(call, seconds, IN_FLIGHT)
                    sim = cpu_seconds(sim_pid) - sim0
                runs[name].append(
                    {
                        "rps": ok / wall if wall else float("nan"),
                        "client_cpu_us": cpu / ok * 1e6 if ok else float("nan"),
                        "client_cpu_pct": 100 * cpu / wall if wall else float("nan"),
                        "simulator_cpu_us": sim / ok * 1e6 if ok else float("nan"),
                        "errors": errors,
                    }
                )
    finally:
        await provider.aclose()
        await plain.aclose()

    result = Result()
    (a_name, a), (b_name, b) = runs.items()
    for name, rounds in runs.items():
        result.figure(
            f"{name}, {IN_FLIGHT} in flight",
            Spread.of([x["rps"] for x in rounds]),
            "req/s",
            detail=f"client CPU {Spread.of([x['client_cpu_us'] for x in rounds]).median:.0f} "
            "µs/req (the client here is the measured code, no worker involved)",
        )
    ratio = Spread.of([x["rps"] / y["rps"] for x, y in zip(a, b, strict=True) if y["rps"]])
    cpu_ratio = Spread.of(
        [x["client_cpu_us"] / y["client_cpu_us"] for x, y in zip(a, b, strict=True)]
    )
    result.figure("throughput ratio, provider / plain httpx", ratio, "x")
    result.figure("client CPU per request ratio, provider / plain httpx", cpu_ratio, "x")
    result.table(
        f"Connector rounds ({IN_FLIGHT} in flight, closed loop, {seconds:g} s each, interleaved)",
        [
            "round",
            "client",
            "req/s",
            "client CPU µs/req",
            "client CPU % of a core",
            "simulator CPU µs/req",
            "errors",
        ],
        [
            [
                i + 1,
                name,
                x["rps"],
                x["client_cpu_us"],
                x["client_cpu_pct"],
                x["simulator_cpu_us"],
                x["errors"],
            ]
            for i in range(ctx.mode.rounds)
            for name, x in ((a_name, a[i]), (b_name, b[i]))
        ],
    )
    result.data = {"rounds": runs, "in_flight": IN_FLIGHT}
    result.notes.append(
        "From tests/bench/bench_connector.py (run on its own: `python "
        "tests/bench/bench_connector.py`). Closed loop by design: it measures the client's "
        "cost per call at a fixed concurrency, not latency."
    )
    return result
