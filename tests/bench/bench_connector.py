"""Connector throughput against the local simulator: requests/s and client CPU per request.

    python tests/bench/bench_connector.py --seconds 5 --inflight 200

Starts the simulator (0 latency) in a subprocess, then drives, from this one process, at
``--inflight`` concurrent requests:

1. ``OpenAICompatProvider`` (httpx requests sent by the connector's aiohttp-backed transport,
   what the worker uses);
2. the same calls through a plain ``httpx.AsyncClient`` with its default transport, for
   comparison (``--baseline-seconds 0`` skips it).

Prints requests/s, client CPU microseconds per request (this process's CPU time over the measured
run divided by the requests completed; it includes the driving loop's own small share), and the
ratio between the two, and checks that the simulator counted exactly the requests the client
completed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from connectors.providers import ChatCall, OpenAICompatProvider  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_simulator(port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "connectors.simulator", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit("the simulator did not start")


async def drive(
    call_once: Callable[[int], Awaitable[None]], seconds: float, inflight: int
) -> tuple[int, int, float, float]:
    """Run ``inflight`` loops of ``call_once`` for ``seconds``: (ok, errors, wall s, cpu s)."""
    ok = errors = 0
    stop_at = time.monotonic() + seconds

    async def loop(worker: int) -> None:
        nonlocal ok, errors
        i = 0
        while time.monotonic() < stop_at:
            try:
                await call_once(worker * 1_000_000 + i)
                ok += 1
            except Exception:
                errors += 1
            i += 1

    wall0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(loop(w) for w in range(inflight)))
    return ok, errors, time.perf_counter() - wall0, time.process_time() - cpu0


def messages(n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Benchmark request number {n}: say something short."}]


async def admin(base: str, method: str, path: str) -> dict[str, object]:
    async with httpx.AsyncClient() as client:
        response = await client.request(method, f"{base}{path}")
        return dict(response.json())


def report(label: str, ok: int, errors: int, wall: float, cpu: float) -> float:
    rate = ok / wall if wall else 0.0
    cpu_us = cpu / ok * 1e6 if ok else float("nan")
    print(f"{label:<34} {rate:9.0f} req/s   {cpu_us:7.0f} µs CPU/req   ok={ok} errors={errors}")
    return rate


async def main(args: argparse.Namespace) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_simulator(port)
    try:
        provider = OpenAICompatProvider(
            "sim", f"{base}/v1", "sk-bench", timeout_s=30, max_connections=args.inflight
        )

        async def via_provider(n: int) -> None:
            await provider.complete(
                ChatCall(model="bench", messages=messages(n), request_id=str(n))
            )

        await drive(via_provider, 0.5, args.inflight)  # warm up connections
        await admin(base, "POST", "/admin/reset")
        server_cpu0 = process_cpu_s(proc.pid)
        ok, errors, wall, cpu = await drive(via_provider, args.seconds, args.inflight)
        server_cpu = process_cpu_s(proc.pid) - server_cpu0
        await provider.aclose()
        counts = await admin(base, "GET", "/admin/counts")
        print(f"simulator at {base}, {args.inflight} in flight, {os.cpu_count()} CPUs")
        rate = report("OpenAICompatProvider (aiohttp)", ok, errors, wall, cpu)
        seen = counts["received"]
        print(f"  simulator received {seen} (client completed {ok + errors}),")
        print(f"  simulator CPU {server_cpu / max(ok, 1) * 1e6:.0f} µs/req")

        if args.baseline_seconds > 0:
            limits = httpx.Limits(max_connections=args.inflight)
            plain = httpx.AsyncClient(base_url=f"{base}/v1", limits=limits, timeout=30)

            async def via_plain_httpx(n: int) -> None:
                body = {"model": "bench", "messages": messages(n)}
                response = await plain.post("chat/completions", content=json.dumps(body))
                response.raise_for_status()
                response.json()

            await drive(via_plain_httpx, 0.5, args.inflight)
            result = await drive(via_plain_httpx, args.baseline_seconds, args.inflight)
            await plain.aclose()
            baseline = report("plain httpx.AsyncClient (default)", *result)
            if baseline:
                print(f"  ratio: provider is {rate / baseline:.1f}x plain httpx")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--inflight", type=int, default=200)
    parser.add_argument("--baseline-seconds", type=float, default=5.0)
    asyncio.run(main(parser.parse_args()))
