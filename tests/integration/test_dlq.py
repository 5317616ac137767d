"""Issue 3: dead letters from a real worker are listed, and redriven once, by the real CLI."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from connectors.client import ChatResponse, SluicegateClient
from schemas import registry
from streams import dlq
from streams.cli import effective_config
from tests.integration.conftest import ROOT, Stack, wait_until

PRIORITIES = ("critical", "high", "normal", "low")
EXPIRED = (("t1", "high"), ("t2", "normal"), ("t1", "low"))


def sluicegate(stack: Stack, *args: str) -> str:
    """Run the CLI against the stack's config file; returns stdout, fails on a non-zero exit."""
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "--config", str(stack.config_path), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def end_offsets(stack: Stack) -> dict[str, int]:
    """Total end offset of each request topic and of the redriven ledger."""
    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": "dlq-test-offsets"})
    try:
        topics = [f"{stack.prefix}.requests.{p}" for p in PRIORITIES]
        topics.append(f"{stack.prefix}.deadletter.redriven")
        totals = {}
        for topic in topics:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            totals[topic] = sum(
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in partitions
            )
        return totals
    finally:
        consumer.close()


def ls_json(stack: Stack, *args: str) -> list[dict[str, Any]]:
    return [
        json.loads(line) for line in sluicegate(stack, "dlq", "ls", "--json", *args).splitlines()
    ]


async def test_dead_letters_are_listed_and_redriven_exactly_once(make_stack: Any) -> None:
    stack = make_stack()
    stack.start_worker()
    config = effective_config(str(stack.config_path))
    async with SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client:
        # Dead letters: three requests already past their deadline (shed), one from an
        # unknown tenant (invalid) and one record that is not Avro at all (undecodable).
        past = int(time.time() * 1000) - 60_000
        expired = {}
        for tenant, priority in EXPIRED:
            rid = await client.publish(
                tenant=tenant,
                priority=priority,
                model="chat",
                messages=[{"role": "user", "content": f"late {priority} work"}],
                deadline_ms=past,
                max_tokens=20,
            )
            expired[rid] = priority
        invalid = await client.publish(
            tenant="nobody", model="chat", messages=[{"role": "user", "content": "hi"}]
        )
        producer = Producer({"bootstrap.servers": stack.bootstrap})
        producer.produce(f"{stack.prefix}.requests.normal", b"not avro", b"t3")
        assert producer.flush(10) == 0
        for rid in expired:
            response = await client.wait_for(rid, 60)
            assert (response.status, response.reason) == ("shed", "deadline_expired")
        assert (await client.wait_for(invalid, 60)).reason == "invalid"

        def dead_letters() -> list[dlq.Letter]:
            letters, _bad, _marks = dlq.load(config, "all", None)
            return letters if len(letters) >= 5 else []

        wait_until(dead_letters, 30, "five dead letters")

        listed = ls_json(stack)
        assert sorted((x["topic"].rsplit(".", 1)[-1], x["reason"]) for x in listed) == [
            ("failed", "invalid"),
            ("failed", "undecodable"),
            ("shed", "deadline_expired"),
            ("shed", "deadline_expired"),
            ("shed", "deadline_expired"),
        ]
        shed = [x for x in listed if x["reason"] == "deadline_expired"]
        assert {x["request_id"] for x in shed} == set(expired)
        assert all(x["redriven"] is None for x in listed)
        undecodable = next(x for x in listed if x["reason"] == "undecodable")
        assert base64.b64decode(undecodable["raw"]) == b"not avro"
        assert [
            x["request_id"] for x in ls_json(stack, "--topic", "failed", "--tenant", "nobody")
        ] == [invalid]
        assert ls_json(stack, "--since", "5m") and not ls_json(stack, "--since", "2099-01-01")
        table = sluicegate(stack, "dlq", "ls", "--reason", "deadline_expired")
        assert table.count("deadline_expired") == 3 and "invalid" not in table

        # A dry run shows the three and publishes nothing.
        before = end_offsets(stack)
        out = sluicegate(stack, "dlq", "redrive", "--reason", "deadline_expired", "--dry-run")
        assert out.count(f"would redrive {stack.prefix}.requests.") == 3
        assert "would redrive: 3;" in out
        assert end_offsets(stack) == before

        # The real redrive: each shed request comes back once, answered, with its lineage.
        answered: dict[str, ChatResponse] = {}

        async def listen() -> None:
            async for response in client.responses():
                if response.record.get("original_request_id"):
                    answered[response.request_id] = response

        listener = asyncio.create_task(listen())
        await asyncio.sleep(0)  # one loop turn: the listener is registered before we publish
        out = sluicegate(stack, "dlq", "redrive", "--reason", "deadline_expired", "--yes")
        assert "redriven: 3; skipped, already redriven: 0; skipped, undecodable: 0" in out
        after = end_offsets(stack)
        for priority in PRIORITIES:
            topic = f"{stack.prefix}.requests.{priority}"
            grew = after[topic] - before[topic]
            assert grew == sum(1 for p in expired.values() if p == priority), topic
        assert after[f"{stack.prefix}.deadletter.redriven"] == 3

        for _ in range(300):
            if len(answered) >= 3:
                break
            await asyncio.sleep(0.1)
        listener.cancel()
        assert len(answered) == 3, answered
        for response in answered.values():
            assert response.status == "ok"
            assert response.request_id not in expired
            original = response.record["original_request_id"]
            assert response.record["priority"] == expired[original]
        assert sorted(r.record["original_request_id"] for r in answered.values()) == sorted(expired)

        # The ledger remembers: a second redrive publishes nothing, ls shows the new ids.
        out = sluicegate(stack, "dlq", "redrive", "--reason", "deadline_expired", "--yes")
        assert "redriven: 0; skipped, already redriven: 3; skipped, undecodable: 0" in out
        assert end_offsets(stack) == after
        marks = {x["request_id"]: x["redriven"] for x in ls_json(stack)}
        assert {rid: marks[rid]["original_request_id"] for rid in expired} == {
            rid: rid for rid in expired
        }
        assert {marks[rid]["request_id"] for rid in expired} == set(answered)
        assert marks[invalid] is None

        # Bytes that never were a request are reported, never published.
        out = sluicegate(stack, "dlq", "redrive", "--reason", "undecodable", "--yes")
        assert "redriven: 0; skipped, already redriven: 0; skipped, undecodable: 1" in out
        assert end_offsets(stack) == after


async def test_since_seeks_by_timestamp_instead_of_reading_from_the_start(make_stack: Any) -> None:
    stack = make_stack()
    config = effective_config(str(stack.config_path))
    topic = config.topic("deadletter.shed")
    producer = Producer({"bootstrap.servers": stack.bootstrap, "partitioner": "murmur2_random"})
    base = int(time.time() * 1000) - 3_600_000
    for n in range(6):  # one hour ago, ten minutes apart, all on one partition
        record = {
            "dead_letter_id": f"src:0:{n}",
            "source_topic": f"{stack.prefix}.requests.normal",
            "source_partition": 0,
            "source_offset": n,
            "reason": "overloaded",
            "tenant": "t1",
            "created_at": base + n * 600_000,
        }
        value = registry.encode(registry.DEAD_LETTER, record)
        producer.produce(topic, value, b"t1", timestamp=base + n * 600_000)
    assert producer.flush(10) == 0
    since = base + 3 * 600_000 - 1
    records = dlq.read_topics(stack.bootstrap, [topic], since)
    # Nothing before the seek point was fetched: offsets_for_times, not a scan and a filter.
    assert sorted(r.offset for r in records) == [3, 4, 5]
    letters = [x["dead_letter_id"] for x in ls_json(stack, "--since", dlq.iso(since))]
    assert letters == ["src:0:3", "src:0:4", "src:0:5"]
    assert len(ls_json(stack, "--until", dlq.iso(since))) == 3
