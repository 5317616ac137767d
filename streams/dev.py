"""`make run`: the simulator, a worker and demo traffic, with a one-line live status.

Starts what is not already running, sends requests from several tenants at several
priorities, and prints requests/s and responses by status once a second until Ctrl-C,
which stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import subprocess
import sys
import time
from typing import Any

import httpx

from connectors.client import SluicegateClient
from streams.config import PRIORITIES, SluicegateConfig

PROMPTS = [
    "Summarise our refund policy in two sentences.",
    "Write a friendly greeting for a new customer.",
    "What are three ways to reduce cloud costs?",
    "Translate 'good morning' into French, Spanish and German.",
    "Suggest a name for a coffee shop run by robots.",
]


def _get(url: str) -> Any:
    try:
        return httpx.get(url, timeout=1).json()
    except (httpx.HTTPError, ValueError):
        return None


def _start(args: list[str], log_path: str) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", *args], stdout=log, stderr=subprocess.STDOUT
    )


def _wait(what: str, check: Any, process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if process is not None and process.poll() is not None:
            raise SystemExit(f"sluicegate dev: {what} exited; see its log under .run/")
        time.sleep(0.2)
    raise SystemExit(f"sluicegate dev: {what} did not come up within {timeout:.0f}s")


def run_dev(config: SluicegateConfig, args: argparse.Namespace) -> int:
    started: list[subprocess.Popen[bytes]] = []
    sim_url = f"http://127.0.0.1:{args.sim_port}"
    web = f"http://{config.worker.web_host}:{config.worker.web_port}"
    try:
        if not _get(f"{sim_url}/admin/counts"):
            sim = _start(["simulator", "--port", str(args.sim_port)], ".run/simulator.log")
            started.append(sim)
            _wait("the simulator", lambda: _get(f"{sim_url}/admin/counts"), sim, 30)
        print(f"simulator   {sim_url}   (faults: POST {sim_url}/admin/faults)")
        worker = _start(["--config", args.config or "sluicegate.toml", "worker"], ".run/worker.log")
        started.append(worker)
        _wait(
            "the worker",
            lambda: (_get(f"{web}/healthz") or {}).get("request_partitions"),
            worker,
            90,
        )
        print(f"worker      {web}/status   (log: .run/worker.log)")
        ingress = _start(
            [
                "--config",
                args.config or "sluicegate.toml",
                "ingress",
                "--port",
                str(args.ingress_port),
            ],
            ".run/ingress.log",
        )
        started.append(ingress)
        ingress_url = f"http://127.0.0.1:{args.ingress_port}"
        _wait("the ingress", lambda: _get(f"{ingress_url}/healthz"), ingress, 60)
        print(f"dashboard   {web}/dashboard")
        print(
            f"ingress     {ingress_url}/v1/chat/completions   (OpenAI-compatible; demo key "
            "sk-acme-demo; log: .run/ingress.log)"
        )
        print(
            "try:        .venv/bin/sluicegate submit --tenant acme --priority high "
            '--model chat "Hello"'
        )
        print("Ctrl-C stops everything started here.\n")
        asyncio.run(_live(config, web, 0.0 if args.no_traffic else args.rate))
    except KeyboardInterrupt:
        pass
    finally:
        print("\nstopping ...")
        for process in reversed(started):
            process.send_signal(signal.SIGTERM)
        for process in reversed(started):
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
    return 0


async def _live(config: SluicegateConfig, web: str, rate: float) -> None:
    async with SluicegateClient(
        config.kafka.bootstrap_servers, topic_prefix=config.kafka.topic_prefix
    ) as client:
        traffic = asyncio.create_task(_traffic(client, config, rate)) if rate > 0 else None
        try:
            await _status_line(web)
        finally:
            if traffic:
                traffic.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await traffic


async def _traffic(client: SluicegateClient, config: SluicegateConfig, rate: float) -> None:
    rng = random.Random(7)
    tenants = sorted(config.tenants.items())
    while True:
        name, tenant = rng.choice(tenants)
        allowed = PRIORITIES[PRIORITIES.index(tenant.max_priority) :]
        model = "chat" if tenant.allows_model("chat") else tenant.allowed_models[0]
        await client.publish(
            tenant=name,
            feature=rng.choice(["search", "support", "default"]),
            priority=rng.choice(allowed),
            model=model,
            temperature=0.0,
            max_tokens=64,
            # ~200 distinct prompts: the cache serves repeats, the rest go to the provider
            messages=[
                {"role": "user", "content": f"{rng.choice(PROMPTS)} (#{rng.randint(1, 40)})"}
            ],
        )
        await asyncio.sleep(rng.expovariate(rate))


async def _status_line(web: str) -> None:
    previous: tuple[float, int] | None = None
    while True:
        status = await asyncio.to_thread(_get, f"{web}/status")
        now = time.monotonic()
        if status is None:
            line = "worker not answering ..."
        else:
            counts = status.get("counts", {})
            received = int(counts.get("received", 0))
            rate = 0.0
            if previous is not None:
                rate = (received - previous[1]) / max(1e-6, now - previous[0])
            previous = (now, received)
            by_status = " ".join(
                f"{k.removeprefix('status.')}={v}"
                for k, v in sorted(counts.items())
                if k.startswith("status.")
            )
            line = (
                f"{rate:6.1f} req/s  queued={status.get('queued', 0)} "
                f"in-flight={status.get('in_flight', 0)}  {by_status or 'no responses yet'}"
            )
        print(f"\r{line[:150]:<150}", end="", flush=True)
        await asyncio.sleep(1.0)
