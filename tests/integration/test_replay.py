"""Issue 7: replay for audits against a real broker, real workers and the simulator.

One recording is made per module: a known traffic mix (ok, cached, degraded, rejected by
rate limit / budget / validation, shed, a dead letter redriven, one request left unanswered)
sent through a real worker, sequentially so that every decision is reproducible. The tests
then check the report's numbers exactly against what was sent, the what-if against prices
and a second live stack, ``replay run`` against the live topics, and ``trace``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from connectors.client import ChatResponse, SluicegateClient
from streams.config import parse_config
from streams.replay.report import percentile
from streams.topics import ensure_sluicegate_topics
from tests.integration.conftest import (
    ROOT,
    Simulator,
    Stack,
    base_config,
    to_toml,
)

CAPPED_REQUESTS = 10
LOWER_BUDGET_USD = 0.0015


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def customize(config: dict[str, Any]) -> None:
    # Whole micro-dollar costs per token, so that doubled prices double every cost exactly.
    config["providers"]["sim"]["models"] = {
        "sim-large": {"input_usd_per_mtok": 2.0, "output_usd_per_mtok": 8.0},
        "sim-small": {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0},
    }
    tenants = config["tenants"]
    tenants["t1"] = {"max_priority": "critical"}
    tenants["limited"] = {"max_priority": "high", "rpm": 2}
    tenants["capped"] = {"max_priority": "high"}
    tenants["thrifty"] = {
        "max_priority": "high",
        "daily_budget_usd": 0.0012,
        "on_exceed": "downgrade",
        "downgrade_to": "sim/sim-small",
    }


def capped_prompt(i: int) -> str:
    return f"capped request number {i}: " + "please summarise the quarterly numbers " * (i % 3)


@dataclass
class Recording:
    stack: Stack
    from_ms: int
    to_ms: int
    responses: dict[str, ChatResponse] = field(default_factory=dict)
    capped: dict[str, int] = field(default_factory=dict)  # request id -> prompt number
    shed_id: str = ""
    redriven_id: str = ""
    unanswered_id: str = ""

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return run_cli(self.stack.config_path, *args, timeout=timeout)

    @property
    def range(self) -> list[str]:
        return ["--from", iso(self.from_ms), "--to", iso(self.to_ms)]


def run_cli(config: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "--config", str(config), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "220"},
    )
    assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
    return done


def new_stack(tmp: Path, bootstrap: str, sim: Simulator, config: dict[str, Any] | None) -> Stack:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    if config is None:
        config = base_config(prefix, sim.url, bootstrap, tmp / "data")
        customize(config)
    else:
        config = copy.deepcopy(config)
        config["kafka"]["topic_prefix"] = prefix
        config["worker"]["app_id"] = f"{prefix}-app"
        config["worker"]["data_dir"] = str(tmp / "data")
    ensure_sluicegate_topics(parse_config(config))
    return Stack(config, tmp, bootstrap)


async def send_mix(stack: Stack, rec: Recording) -> None:
    async with SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client:

        async def ask(tenant: str, text: str, **extra: Any) -> ChatResponse:
            response = await client.complete(
                tenant=tenant,
                model="chat",
                max_tokens=extra.pop("max_tokens", 40),
                messages=[{"role": "user", "content": text}],
                timeout=60,
                **extra,
            )
            rec.responses[response.request_id] = response
            return response

        for i in range(4):
            await ask("t1", f"search query {i} " * (i + 1), feature="search", priority="high")
        for _ in range(2):  # the second is answered from the cache (a complete answer)
            await ask("t1", "capital of France?", feature="chat", temperature=0.0, max_tokens=400)
        for i in range(3):  # rpm 2: the third is rejected
            await ask("limited", f"limited question {i}")
        for i in range(8):  # a small budget: downgraded, then rejected
            await ask("thrifty", f"thrifty question {i} " * 3, feature="bulk", priority="low")
        for i in range(CAPPED_REQUESTS):
            response = await ask("capped", capped_prompt(i), feature="reports")
            rec.capped[response.request_id] = i
        await ask("nobody", "who am I?")  # unknown tenant: rejected/invalid
        rec.shed_id = await client.publish(
            tenant="t1",
            feature="search",
            priority="low",
            model="chat",
            max_tokens=20,
            messages=[{"role": "user", "content": "too late for this one"}],
            deadline_ms=now_ms() - 60_000,
        )
        shed = await client.wait_for(rec.shed_id, 60)
        assert (shed.status, shed.reason) == ("shed", "deadline_expired")
        rec.responses[shed.request_id] = shed

        await asyncio.to_thread(
            run_cli, stack.config_path, "dlq", "redrive", "--reason", "deadline_expired", "--yes"
        )
        listed = await asyncio.to_thread(
            run_cli, stack.config_path, "dlq", "ls", "--json", "--reason", "deadline_expired"
        )
        [letter] = [json.loads(line) for line in listed.stdout.splitlines()]
        rec.redriven_id = letter["redriven"]["request_id"]
        redriven = await client.wait_for(rec.redriven_id, 60)
        assert redriven.status == "ok"
        rec.responses[redriven.request_id] = redriven


@pytest.fixture(scope="module")
def recording(
    bootstrap: str, simulator: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Recording]:
    simulator.reset()
    stack = new_stack(tmp_path_factory.mktemp("replay"), bootstrap, simulator, None)
    rec = Recording(stack, now_ms() - 1000, 0)
    try:
        stack.start_worker()
        asyncio.run(send_mix(stack, rec))
        stack.stop()  # no worker: the next request stays unanswered

        async def unanswered() -> str:
            async with SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client:
                return await client.publish(
                    tenant="t1",
                    feature="search",
                    model="chat",
                    messages=[{"role": "user", "content": "is anyone there?"}],
                )

        rec.unanswered_id = asyncio.run(unanswered())
        rec.to_ms = now_ms() + 1000
        yield rec
    finally:
        stack.stop()


def test_report_numbers_match_the_traffic_sent(recording: Recording, tmp_path: Path) -> None:
    sent = list(recording.responses.values())
    statuses = Counter(r.status for r in sent)
    assert {"ok", "cached", "degraded", "rejected", "shed"} <= set(statuses), statuses
    out = recording.cli("replay", "report", *recording.range, "--out", str(tmp_path))
    assert "reading requests" in out.stderr  # the progress bar
    assert recording.unanswered_id in out.stdout and "Spend by feature" in out.stdout
    report = json.loads((tmp_path / "report.json").read_text())

    assert report["requests"] == len(sent) + 1
    assert report["by_status"] == {**statuses, "unanswered": 1}
    reasons = Counter((r.status, r.reason) for r in sent)
    assert {(s, r): n for s, r, n in report["by_reason"]} == reasons
    assert [u["request_id"] for u in report["unanswered"]] == [recording.unanswered_id]

    def spend(key: str) -> dict[str, int]:
        return {row["key"]: row["cost_micros"] for row in report["spend"][key]}

    by_tenant: Counter[str] = Counter()
    by_feature: Counter[str] = Counter()
    for r in sent:
        by_tenant[r.record["tenant"]] += r.cost_micros
        by_feature[r.record["feature"]] += r.cost_micros
    assert spend("tenant") == dict(by_tenant)
    assert spend("feature") == dict(by_feature)
    assert report["total_cost_micros"] == sum(r.cost_micros for r in sent) > 0
    assert report["total_saved_micros"] == sum(r.cost_saved_micros for r in sent) > 0
    assert report["cache_hits"] == dict(Counter(r.cache_kind for r in sent if r.cache_kind))
    degraded = Counter(r.degradation_reason for r in sent if r.status == "degraded")
    assert dict(report["degradations"]) == degraded
    assert report["top_expensive"][0]["cost_micros"] == max(r.cost_micros for r in sent)
    answered = sorted(r.total_ms for r in sent if r.ok)
    latency = report["latency"]["total_ms"]
    assert (latency["count"], latency["p50"], latency["p95"], latency["max"]) == (
        len(answered),
        percentile(answered, 50),
        percentile(answered, 95),
        answered[-1],
    )
    assert sum(sum(v) for v in report["spend_over_time"].values()) == report["total_cost_micros"]
    html = (tmp_path / "report.html").read_text()
    assert html.count("<svg") == 3
    rows = (tmp_path / "requests.csv").read_text().splitlines()
    assert len(rows) == len(sent) + 2  # header + every request, the unanswered one too


def test_report_filters_by_tenant_and_status(recording: Recording) -> None:
    out = recording.cli(
        "replay",
        "report",
        *recording.range,
        "--tenant",
        "limited",
        "--status",
        "rejected",
        "--json",
    )
    report = json.loads(out.stdout)
    assert report["by_status"] == {"rejected": 1}
    assert report["by_reason"] == [["rejected", "rate_limited", 1]]


def _alternative(recording: Recording, tmp_path: Path, change: Any) -> Path:
    config = copy.deepcopy(recording.stack.config)
    change(config)
    path = tmp_path / "alternative.toml"
    path.write_text(to_toml(config))
    return path


def test_whatif_with_doubled_prices_doubles_the_spend_and_reproduces_live_decisions(
    recording: Recording, tmp_path: Path
) -> None:
    def double(config: dict[str, Any]) -> None:
        for model in config["providers"]["sim"]["models"].values():
            model["input_usd_per_mtok"] *= 2
            model["output_usd_per_mtok"] *= 2

    path = _alternative(recording, tmp_path, double)
    out = recording.cli(
        "replay", "whatif", *recording.range, "--config-alt", str(path), "--fidelity", "--json"
    )
    result = json.loads(out.stdout)
    recorded = sum(r.cost_micros for r in recording.responses.values())
    assert result["total"]["recorded"]["cost_micros"] == recorded > 0
    # Exactly double wherever no budget is in play; thrifty's budget now bites sooner.
    for group in result["groups"]:
        before, after = group["recorded"]["cost_micros"], group["whatif"]["cost_micros"]
        if group["tenant"] != "thrifty":
            assert after == 2 * before, group
    assert result["changes"] and {c["tenant"] for c in result["changes"]} == {"thrifty"}
    thrifty = recording.cli(
        "replay", "whatif", *recording.range, "--config-alt", str(path), "--json",
        "--tenant", "t1", "--tenant", "limited", "--tenant", "capped", "--tenant", "nobody",
    )  # fmt: skip
    total = json.loads(thrifty.stdout)["total"]
    assert total["whatif"]["cost_micros"] == 2 * total["recorded"]["cost_micros"] > 0
    # The decision function replays the live worker: every recorded decision reproduced.
    assert result["fidelity"]["changes"] == []
    assert result["fidelity"]["reproduced"] == len(recording.responses)


def test_whatif_lower_budget_rejects_what_a_live_stack_rejects(
    recording: Recording, bootstrap: str, simulator: Simulator, tmp_path: Path
) -> None:
    def lower(config: dict[str, Any]) -> None:
        config["tenants"]["capped"]["daily_budget_usd"] = LOWER_BUDGET_USD

    path = _alternative(recording, tmp_path, lower)
    out = recording.cli(
        "replay",
        "whatif",
        *recording.range,
        "--tenant",
        "capped",
        "--config-alt",
        str(path),
        "--json",
    )
    result = json.loads(out.stdout)
    predicted = {
        recording.capped[c["request_id"]]
        for c in result["changes"]
        if c["whatif"] == "rejected/budget_exceeded"
    }
    assert predicted and len(predicted) == len(result["changes"])

    # The live path with that config: the same capped traffic through a second stack.
    config = copy.deepcopy(recording.stack.config)
    lower(config)
    live = new_stack(tmp_path, bootstrap, simulator, config)
    try:
        live.start_worker()

        async def send() -> set[int]:
            rejected = set()
            async with SluicegateClient(live.bootstrap, topic_prefix=live.prefix) as client:
                for i in range(CAPPED_REQUESTS):
                    response = await client.complete(
                        tenant="capped",
                        feature="reports",
                        model="chat",
                        max_tokens=40,
                        messages=[{"role": "user", "content": capped_prompt(i)}],
                        timeout=60,
                    )
                    if (response.status, response.reason) == ("rejected", "budget_exceeded"):
                        rejected.add(i)
            return rejected

        assert asyncio.run(send()) == predicted
    finally:
        live.stop()


def live_end_offsets(stack: Stack) -> dict[tuple[str, int], int]:
    """End offsets of the stack's topics: the gateway's and its worker's changelogs (a replay
    worker's app id extends the live one, so its changelogs show up here too)."""
    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": "replay-test-offsets"})
    try:
        names = [
            t
            for t in consumer.list_topics(timeout=10).topics
            if t.startswith((f"{stack.prefix}.", f"{stack.prefix}-app"))
        ]
        assert len(names) >= 10, names
        out = {}
        for name in names:
            partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
            for p in partitions:
                out[(name, p)] = consumer.get_watermark_offsets(TopicPartition(name, p), 10)[1]
        return out
    finally:
        consumer.close()


def test_replay_run_leaves_live_topics_alone_and_matches_the_simulator(
    recording: Recording, simulator: Simulator, tmp_path: Path
) -> None:
    before = live_end_offsets(recording.stack)
    namespace = f"{recording.stack.prefix}-rp"
    out = recording.cli(
        "replay", "run", *recording.range, "--tenant", "t1",
        "--namespace", namespace, "--start-worker", "--sim-url", simulator.url,
        "--work-dir", str(tmp_path / "replay"), "--timeout", "150", "--json",
        timeout=300,
    )  # fmt: skip
    result = json.loads(out.stdout)
    t1 = [r for r in recording.responses.values() if r.record["tenant"] == "t1"]
    counts = result["counts"]
    assert counts["compared"] == len(t1)  # search, cached chat, shed and its redrive
    assert counts["differences"] == 0, result["rows"]
    assert counts["no recorded response"] == 1  # the unanswered one, answered now
    statuses = {row["recorded_status"] for row in result["rows"]}
    assert {"ok", "cached", "shed"} <= statuses
    after = live_end_offsets(recording.stack)
    assert {k: after[k] for k in before} == before  # not one record more on a live topic
    assert all(namespace in topic for topic, _ in set(after) - set(before))  # its own only


def test_trace_follows_a_shed_request_through_its_redrive(recording: Recording) -> None:
    out = recording.cli("trace", recording.shed_id, "--json")
    trace = json.loads(out.stdout)
    assert set(trace["ids"]) == {recording.shed_id, recording.redriven_id}
    events = [(e["kind"], e["request_id"]) for e in trace["events"]]
    shed, new = recording.shed_id, recording.redriven_id
    for expected in [
        ("request", shed),
        ("dead letter", shed),
        ("response", shed),
        ("usage", shed),
        ("redrive", shed),
        ("request", new),
        ("response", new),
        ("usage", new),
    ]:
        assert expected in events, (expected, events)
    assert events.index(("response", shed)) < events.index(("request", new))
    decisions = [e["summary"] for e in trace["events"] if e["kind"] == "decision"]
    assert any("ok" in d for d in decisions)  # the provider attempt of the redriven request
    table = recording.cli("trace", recording.shed_id).stdout
    assert "deadline_expired" in table and recording.redriven_id in table


def test_report_warns_when_the_range_starts_before_what_retention_kept(make_stack: Any) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    from schemas import registry

    stack = make_stack()  # no worker needed: requests written straight to the topic
    topic = f"{stack.prefix}.requests.normal"
    base = now_ms() - 3 * 3_600_000
    producer = Producer({"bootstrap.servers": stack.bootstrap})
    for n in range(5):  # three hours ago, ten minutes apart, on one partition
        request = {
            "request_id": f"old-{n}",
            "tenant": "t1",
            "created_at": base + n * 600_000,
            "model": "chat",
            "messages": [{"role": "user", "content": "hello"}],
        }
        value = registry.encode(registry.CHAT_REQUEST, request)
        producer.produce(topic, value, b"t1", partition=0, timestamp=base + n * 600_000)
    assert producer.flush(10) == 0
    # What retention does to old segments, done now: the first two records are gone.
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    for future in admin.delete_records([TopicPartition(topic, 0, 2)]).values():
        future.result(timeout=30)
    done = run_cli(stack.config_path, "replay", "report", "--from", "4h", "--json")
    report = json.loads(done.stdout)
    assert report["requests"] == 3 and report["by_status"] == {"unanswered": 3}
    [warning] = report["warnings"]
    assert topic in warning and "deleted by retention" in warning
    assert "deleted by retention" in done.stderr  # said on the terminal too
    kept = run_cli(stack.config_path, "replay", "report", "--from", iso(base + 1_500_000))
    assert "deleted by retention" not in kept.stdout + kept.stderr  # range within what is kept
