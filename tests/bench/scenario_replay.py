"""(r) Replay: the audit report (and the what-if) over 100,000 recorded requests.

Recording 100k requests through a worker would take longer than the measurement itself, so
the traffic is written straight into a fresh namespace's topics with a confluent-kafka
producer: per request a ChatRequest on ``<ns>.requests.<priority>`` (key tenant), and for
98.5 % of them a ChatResponse on ``<ns>.responses`` (key request id) and a UsageEvent on
``<ns>.usage`` (key tenant), encoded with the real schemas, record timestamps set to times
spread over the last hour (so the report seeks with ``offsets_for_times``), a seeded mix
of statuses, tenants, features, models and prompt sizes. The report's counts are checked
against the synthetic truth before any time is reported.

Timed: reading and joining the range (``load_recording``: seek, batched consume, decode),
building the report, rendering it (terminal tables into a null console, plus the
Markdown/JSON/CSV/HTML files), and the what-if over the same range. The progress callback's
calls are counted to show the reader reports progress while it reads.

Registered with the benchmark runner (``make bench``); also runs alone:

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 .venv/bin/python tests/bench/scenario_replay.py \
        [--requests 100000]
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run alone: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from schemas import registry
from streams.config import SluicegateConfig, parse_config
from streams.policies.pricing import Price, cost_micros

TARGET_S = 120.0  # "within a couple of minutes"
SPAN_MS = 3_600_000
TENANTS = tuple(f"tenant-{i:02d}" for i in range(20))
FEATURES = ("search", "chat", "summarise", "classify", "extract", "translate", "draft", "qa")
PRIORITIES = ("critical", "high", "normal", "low")
STATUS_MIX = (
    ("ok", "", 0.80),
    ("cached", "", 0.08),
    ("degraded", "", 0.03),
    ("rejected", "budget_exceeded", 0.03),
    ("rejected", "rate_limited", 0.02),
    ("shed", "overloaded", 0.02),
    ("failed", "unavailable", 0.005),
    ("unanswered", "", 0.015),
)
PRICES = {
    "sim-large": Price.from_usd_per_mtok(2.5, 10.0, None),
    "sim-small": Price.from_usd_per_mtok(0.15, 0.6, None),
}


def bench_config(bootstrap: str, prefix: str) -> SluicegateConfig:
    models = {
        "sim-large": {"input_usd_per_mtok": 2.5, "output_usd_per_mtok": 10.0},
        "sim-small": {"input_usd_per_mtok": 0.15, "output_usd_per_mtok": 0.6},
    }
    return parse_config(
        {
            "kafka": {"bootstrap_servers": bootstrap, "topic_prefix": prefix, "partitions": 8},
            "providers": {"sim": {"base_url": "http://127.0.0.1:1/v1", "models": models}},
            "routes": {"chat": {"primary": "sim/sim-large", "fallbacks": ["sim/sim-small"]}},
            "tenants": {t: {"max_priority": "critical"} for t in TENANTS},
        }
    )


@dataclass
class Truth:
    """What was written, to check the report against."""

    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    cost_micros: int = 0
    first_ms: int = 0
    last_ms: int = 0


def _records(i: int, at: int, rng: random.Random, truth: Truth) -> list[tuple[str, bytes, bytes]]:
    """The request, and unless unanswered its response and usage event."""
    tenant, feature = rng.choice(TENANTS), rng.choice(FEATURES)
    priority = rng.choice(PRIORITIES)
    request_id = f"bench-{i:07d}-{uuid.uuid4().hex[:8]}"
    words = rng.randint(5, 400)
    request = {
        "request_id": request_id,
        "tenant": tenant,
        "feature": feature,
        "priority": priority,
        "created_at": at,
        "model": "chat",
        "messages": [{"role": "user", "content": "lorem ipsum " * words}],
        "max_tokens": 256,
    }
    out = [
        (f"requests.{priority}", tenant.encode(), registry.encode(registry.CHAT_REQUEST, request))
    ]
    roll, status, reason = rng.random(), "ok", ""
    for status, reason, share in STATUS_MIX:  # noqa: B007 - the loop picks the status
        if roll < share:
            break
        roll -= share
    truth.statuses[status] += 1
    if status == "unanswered":
        return out
    model = "sim-small" if status == "degraded" else "sim-large"
    answered = status in ("ok", "cached", "degraded")
    prompt = words * 3 + 7 if answered else 0
    completion = rng.randint(10, 256) if answered else 0
    cost = cost_micros(PRICES[model], prompt, completion) if answered else 0
    saved = cost if status == "cached" else 0
    cost = 0 if status == "cached" else cost
    truth.cost_micros += cost
    total = rng.randint(5, 4000)
    done = at + total
    response: dict[str, Any] = {
        "request_id": request_id,
        "tenant": tenant,
        "feature": feature,
        "priority": priority,
        "status": status,
        "reason": reason,
        "content": "simulated answer" if answered else None,
        "finish_reason": "stop" if answered else None,
        "model": model if answered else None,
        "provider": "sim" if answered else None,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cost_micros": cost,
        "cost_saved_micros": saved,
        "cached": status == "cached",
        "cache_kind": "exact" if status == "cached" else None,
        "degradation_reason": "unavailable" if status == "degraded" else None,
        "queue_ms": total // 3,
        "total_ms": total,
        "request_created_at": at,
        "created_at": done,
        "trail": [],
    }
    usage = {
        "request_id": request_id,
        "tenant": tenant,
        "feature": feature,
        "priority": priority,
        "status": status,
        "reason": reason,
        "model": response["model"],
        "provider": response["provider"],
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cost_micros": cost,
        "cost_saved_micros": saved,
        "cache_hit": status == "cached",
        "total_ms": total,
        "at": done,
    }
    out.append(
        ("responses", request_id.encode(), registry.encode(registry.CHAT_RESPONSE, response))
    )
    out.append(("usage", tenant.encode(), registry.encode(registry.USAGE_EVENT, usage)))
    return out


def record(config: SluicegateConfig, n: int, now_ms: int, seed: int = 7) -> tuple[Truth, float]:
    """Write ``n`` synthetic requests (and their answers); returns the truth and seconds."""
    from confluent_kafka import Producer

    from streams.topics import ensure_sluicegate_topics

    ensure_sluicegate_topics(config)
    producer = Producer(
        {
            "bootstrap.servers": config.kafka.bootstrap_servers,
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 500_000,
            "partitioner": "murmur2_random",
        }
    )
    rng = random.Random(seed)
    truth = Truth(requests=n)
    start = now_ms - SPAN_MS
    truth.first_ms, truth.last_ms = start, start + (n - 1) * SPAN_MS // max(1, n)
    began = time.perf_counter()
    for i in range(n):
        at = start + i * SPAN_MS // n
        for suffix, key, value in _records(i, at, rng, truth):
            stamp = at if suffix.startswith("requests") else at + 1
            while True:
                try:
                    producer.produce(config.topic(suffix), value, key, timestamp=stamp)
                    break
                except BufferError:
                    producer.poll(0.2)
        if i % 1000 == 0:
            producer.poll(0)
    if producer.flush(120) > 0:
        raise RuntimeError("synthetic records not acknowledged within 120 s")
    return truth, time.perf_counter() - began


@dataclass
class Timings:
    write_s: float
    read_s: float
    build_s: float
    render_s: float
    whatif_s: float
    progress_calls: int
    requests: int

    @property
    def report_s(self) -> float:
        return self.read_s + self.build_s + self.render_s


def measure(bootstrap: str, n: int, out_dir: Path) -> tuple[Timings, Truth]:
    from rich.console import Console

    from streams.replay import whatif
    from streams.replay.recording import load_recording
    from streams.replay.render import print_report, write_outputs
    from streams.replay.report import build_report

    prefix = f"bench-replay-{uuid.uuid4().hex[:8]}"
    config = bench_config(bootstrap, prefix)
    now = time.time_ns() // 1_000_000
    try:
        truth, write_s = record(config, n, now)
        calls = 0

        def progress(_phase: str, _done: int, _total: int) -> None:
            nonlocal calls
            calls += 1

        began = time.perf_counter()
        recording = load_recording(
            bootstrap,
            prefix,
            truth.first_ms,
            truth.last_ms,
            keep_messages=False,
            on_progress=progress,
        )
        read_s = time.perf_counter() - began
        began = time.perf_counter()
        report = build_report(recording)
        build_s = time.perf_counter() - began
        began = time.perf_counter()
        with open(os.devnull, "w") as null:
            print_report(report, Console(file=null, width=160))
        write_outputs(report, recording.entries, out_dir)
        render_s = time.perf_counter() - began
        expected = {s: c for s, c in truth.statuses.items() if c}
        if report.requests != n or report.by_status != expected:
            raise AssertionError(f"report {report.by_status} != written {expected}")
        if report.total_cost_micros != truth.cost_micros:
            raise AssertionError(f"spend {report.total_cost_micros} != {truth.cost_micros}")
        del recording, report
        full = load_recording(bootstrap, prefix, truth.first_ms, truth.last_ms)
        began = time.perf_counter()
        whatif.compare(whatif.replay(full.entries, config, prefix))
        whatif_s = time.perf_counter() - began
        return Timings(write_s, read_s, build_s, render_s, whatif_s, calls, n), truth
    finally:
        _delete_topics(bootstrap, prefix)


def _delete_topics(bootstrap: str, prefix: str) -> None:
    from streams.topics import admin_client

    admin = admin_client(bootstrap)
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix + ".")]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            try:
                future.result()
            except Exception:  # best effort: a leftover topic is only clutter
                continue


def figures(t: Timings) -> list[tuple[str, float, str]]:
    return [
        ("synthetic records written (request+response+usage)", 3 * t.requests / t.write_s, "rec/s"),
        (f"report over {t.requests:,} requests: read and join", t.read_s, "s"),
        ("report: build", t.build_s, "s"),
        ("report: render (terminal, md, json, csv, html)", t.render_s, "s"),
        (f"report over {t.requests:,} requests: total", t.report_s, "s"),
        ("report: requests read per second", t.requests / t.read_s, "req/s"),
        (f"what-if over {t.requests:,} requests (decisions only)", t.whatif_s, "s"),
        ("progress updates while reading", float(t.progress_calls), "calls"),
    ]


try:  # registered with the benchmark runner when its framework is importable
    from tests.bench.framework import Context, Result, scenario

    @scenario("replay", "(r) Replay: audit report over 100,000 recorded requests", order=90)
    def replay_report(ctx: Context) -> Result:
        n = ctx.pick(quick=20_000, full=100_000)
        result = Result()
        with ctx.step(f"recording {n:,} synthetic requests, then the report", seconds=90):
            timings, _ = measure(ctx.bootstrap, n, ctx.run_dir / "replay-report")
        for label, value, unit in figures(timings):
            result.figure(label, value, unit)
        result.check(f"report over {n:,} requests", timings.report_s, TARGET_S, "s")
        result.notes.append(
            "Synthetic traffic written straight to a namespace's topics with a confluent-kafka "
            "producer (real schemas, timestamps spread over one hour); the report's counts and "
            "spend are checked against what was written before any time is reported."
        )
        return result

except ImportError:  # pragma: no cover - the runner's framework is optional when run alone
    pass


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    args = parser.parse_args(argv)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    with tempfile.TemporaryDirectory() as tmp:
        timings, _ = measure(bootstrap, args.requests, Path(tmp))
    for label, value, unit in figures(timings):
        print(f"{label:58} {value:12,.2f} {unit}")
    verdict = "met" if timings.report_s <= TARGET_S else "MISSED"
    print(f"target: report within {TARGET_S:.0f} s: {verdict}")
    return 0 if timings.report_s <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
