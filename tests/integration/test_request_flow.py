"""Issue 2: requests flow end to end through a real broker, worker process and simulator."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import time
import uuid
from collections import Counter
from pathlib import Path

import fastavro
from confluent_kafka import Consumer, Producer, TopicPartition

from connectors.client import SluicegateClient, build_request
from schemas import registry
from tests.integration.conftest import ROOT, wait_until

PRIORITIES = ("critical", "high", "normal", "low")
TENANTS = ("t1", "t2", "t3", "t4", "t5")


def _request(i: int) -> dict:
    return build_request(
        tenant=TENANTS[i % 5],
        feature=f"f{i % 3}",
        priority=PRIORITIES[i % 4],
        model="chat",
        messages=[{"role": "user", "content": f"question number {i}: what is {i} squared?"}],
        temperature=0.0,
        max_tokens=40,
    )


async def _send_all(client: SluicegateClient, requests: list[dict]) -> None:
    await asyncio.gather(*(client.publish_record(r) for r in requests))


async def _collect(client: SluicegateClient, ids: set[str], timeout: float) -> dict:
    got = {}
    await asyncio.gather(*(_one(client, rid, timeout, got) for rid in ids))
    return got


async def _one(client: SluicegateClient, rid: str, timeout: float, got: dict) -> None:
    got[rid] = await client.wait_for(rid, timeout)


async def test_500_requests_across_priorities_and_tenants_are_all_answered(make_stack, simulator):
    stack = make_stack()
    stack.start_worker()
    requests = [_request(i) for i in range(500)]
    async with SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client:
        await _send_all(client, requests)
        got = await _collect(client, {r["request_id"] for r in requests}, timeout=120)
    assert len(got) == 500
    assert Counter(r.status for r in got.values()) == {"ok": 500}
    for request in requests:
        response = got[request["request_id"]]
        assert response.model == "sim-large" and response.provider == "sim"
        # The simulator echoes the question: the answer belongs to this request.
        assert (
            f"number {request['messages'][0]['content'].split()[2]}" in (response.content or "")
            or response.content
        )
        assert response.prompt_tokens > 0 and response.completion_tokens > 0
        assert response.cost_micros > 0
        assert response.record["priority"] == request["priority"]
        assert response.record["tenant"] == request["tenant"]


async def test_identical_prompts_get_identical_deterministic_answers(make_stack):
    stack = make_stack()
    stack.start_worker()
    async with SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client:
        kwargs = dict(
            tenant="t1",
            model="chat",
            messages=[{"role": "user", "content": "hi"}],
            cache_mode="bypass",
        )
        a = await client.complete(timeout=30, **kwargs)
        b = await client.complete(timeout=30, **kwargs)
        c = await client.complete(
            timeout=30,
            **{**kwargs, "messages": [{"role": "user", "content": "something else entirely"}]},
        )
    assert a.status == b.status == "ok"
    assert a.content == b.content
    assert c.content != a.content


async def test_worker_sigkilled_mid_load_loses_no_request(make_stack, simulator):
    stack = make_stack()
    # Slow provider calls, so that many requests are in flight when the worker dies.
    simulator.set_model("sim-large", latency_ms=300)
    try:
        worker = stack.start_worker("w1")
        requests = [_request(i) for i in range(300)]
        async with SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client:
            responses: list = []

            async def record_all() -> None:
                async for response in client.responses(duplicates=True):
                    responses.append(response)

            reader = asyncio.create_task(record_all())
            await _send_all(client, requests)
            await asyncio.to_thread(
                wait_until, lambda: len(responses) >= 60, 60, "some responses before the kill"
            )
            worker.kill()
            answered_before = len({r.request_id for r in responses})
            assert answered_before < 300, "the kill came too late to test anything"
            restarted = stack.start_worker("w2")
            ids = {r["request_id"] for r in requests}
            try:
                await asyncio.to_thread(
                    wait_until,
                    lambda: ids <= {r.request_id for r in responses},
                    120,
                    "every request to be answered after the restart",
                )
            except AssertionError as exc:
                missing = len(ids - {r.request_id for r in responses})
                raise AssertionError(
                    f"{exc}; {missing} missing; w2: {restarted.status()}"
                ) from None
            reader.cancel()
    finally:
        simulator.reset()
    by_id = Counter(r.request_id for r in responses)
    missing = ids - set(by_id)
    duplicates = sum(n - 1 for n in by_id.values())
    print(
        f"answered before kill: {answered_before}, missing: {len(missing)}, "
        f"duplicates: {duplicates}"
    )
    assert missing == set()
    # A request answered twice (in flight at the kill) is answered from cache the second time.
    assert {r.status for r in responses} <= {"ok", "cached"}


async def test_garbage_and_invalid_records_go_to_dead_letters_and_the_next_request_is_answered(
    make_stack,
):
    stack = make_stack()
    stack.start_worker()
    async with SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client:
        topic = f"{stack.prefix}.requests.normal"
        producer = Producer({"bootstrap.servers": stack.bootstrap, "partitioner": "murmur2_random"})
        garbage_id = uuid.uuid4().hex
        producer.produce(
            topic,
            b"\x00\x01not avro at all",
            key=b"t1",
            headers=[("sg-request-id", garbage_id.encode())],
        )
        producer.produce(topic, b"", key=b"t1")
        invalid = build_request(
            tenant="nobody",
            model="chat",
            priority="normal",
            messages=[{"role": "wizard", "content": "x"}],
        )
        producer.produce(topic, registry.encode(registry.CHAT_REQUEST, invalid), key=b"nobody")
        producer.flush(10)
        good = await client.complete(
            tenant="t1",
            model="chat",
            messages=[{"role": "user", "content": "still alive?"}],
            timeout=60,
        )
        rejected_garbage = await client.wait_for(garbage_id, 30)
        rejected_invalid = await client.wait_for(invalid["request_id"], 30)
    assert good.status == "ok"
    assert rejected_garbage.status == "rejected" and rejected_garbage.reason == "invalid"
    assert "undecodable" in rejected_garbage.detail
    assert rejected_invalid.status == "rejected" and rejected_invalid.reason == "invalid"
    assert "tenant: unknown tenant 'nobody'" in rejected_invalid.detail
    assert "messages[0].role" in rejected_invalid.detail

    letters = _read_all(stack.bootstrap, f"{stack.prefix}.deadletter.failed", expect=3)
    raws = {bytes(d["raw"]) for d in letters}
    assert b"\x00\x01not avro at all" in raws and b"" in raws
    assert {d["reason"] for d in letters} == {"undecodable", "invalid"}
    by_request = {d["request_id"]: d for d in letters}
    assert by_request[invalid["request_id"]]["tenant"] == "nobody"


def _read_all(bootstrap: str, topic: str, expect: int, timeout: float = 30) -> list[dict]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    metadata = consumer.list_topics(topic, timeout=10)
    consumer.assign([TopicPartition(topic, p, 0) for p in metadata.topics[topic].partitions])
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            out.append(registry.decode(registry.DEAD_LETTER, message.value()))
    consumer.close()
    assert len(out) >= expect, f"only {len(out)} dead letters on {topic}"
    return out


def test_a_producer_that_knows_only_the_schema_files_gets_an_answer(make_stack):
    """No Sluicegate code: the .avsc files, the id table and the wire format only."""
    stack = make_stack()
    stack.start_worker()
    schema_dir = ROOT / "schemas"
    table = json.loads((schema_dir / "registry.json").read_text())["schemas"]

    def newest(name: str) -> dict:
        row = max((r for r in table if r["name"] == name), key=lambda r: r["version"])
        return {
            "id": row["id"],
            "schema": fastavro.parse_schema(json.loads(Path(schema_dir / row["file"]).read_text())),
        }

    request_schema = newest("sluicegate.ChatRequest")
    by_id = {
        r["id"]: fastavro.parse_schema(json.loads((schema_dir / r["file"]).read_text()))
        for r in table
    }
    request_id = uuid.uuid4().hex
    body = io.BytesIO()
    body.write(struct.pack(">bI", 0, request_schema["id"]))
    fastavro.schemaless_writer(
        body,
        request_schema["schema"],
        {
            "request_id": request_id,
            "tenant": "t2",
            "priority": "high",
            "model": "chat",
            "created_at": int(time.time() * 1000),
            "messages": [{"role": "user", "content": "hello from another language"}],
        },
    )
    responses = f"{stack.prefix}.responses"
    consumer = Consumer(
        {
            "bootstrap.servers": stack.bootstrap,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([responses])
    producer = Producer({"bootstrap.servers": stack.bootstrap, "partitioner": "murmur2_random"})
    producer.produce(f"{stack.prefix}.requests.high", body.getvalue(), key=b"t2")
    producer.flush(10)
    found = None
    deadline = time.monotonic() + 60
    while found is None and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error() or message.key() != request_id.encode():
            continue
        value = message.value()
        magic, schema_id = struct.unpack(">bI", value[:5])
        assert magic == 0
        found = fastavro.schemaless_reader(io.BytesIO(value[5:]), by_id[schema_id])
    consumer.close()
    assert found is not None, "no response with our request id"
    assert found["status"] == "ok" and found["content"]
