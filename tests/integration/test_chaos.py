"""Issue 9 item 5: chaos under load, bounded (a few minutes in all).

A worker SIGKILLed, the broker restarted (a dedicated one: never the session's), a provider
outage, a slow consumer of the responses topic, poison records. Each test states what it
guarantees; the common one is that nothing the gateway accepted goes unanswered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from connectors.client import SluicegateClient, build_request
from schemas import registry
from schemas.registry import HEADER, MAGIC
from streams.config import parse_config
from streams.policies.verdict import Status
from streams.records import Outcome, response_record
from streams.topics import ensure_sluicegate_topics
from tests.integration.conftest import (
    ROOT,
    Collector,
    Simulator,
    Stack,
    base_config,
    free_port,
    until,
)
from tests.integration.test_resilience import (
    PRICES,
    TENANTS_BY_PARTITION,
    Load,
    add_tenant_t6,
    chat,
    offer_load,
    run_outage,
    unique,
)


def _models(config: dict[str, Any], model: str) -> None:
    config["providers"]["sim"]["models"][model] = PRICES
    config["routes"]["chat"] = {"primary": f"sim/{model}"}
    add_tenant_t6(config)


# -- a worker SIGKILLed mid-load --------------------------------------------------------------


async def test_sigkill_one_of_two_workers_mid_load_every_request_is_answered(
    make_stack: Callable[..., Stack], simulator: Simulator
) -> None:
    """Two workers share the partitions; one is SIGKILLed while requests are in flight (slow
    provider calls). The survivor takes its partitions and re-reads what was uncommitted:
    missing = 0. Duplicates (the price of at-least-once) are counted and reported."""
    model = unique("kill")
    simulator.set_model(model, latency_ms=300)  # a model of this test's only
    try:
        stack = make_stack(lambda c: _models(c, model))
        w1 = stack.start_worker("w1")
        w2 = stack.start_worker("w2")
        w1.wait_ready(8)
        at_kill: dict[str, int] = {}
        async with (
            SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client,
            Collector(client) as got,
        ):

            def kill_at(i: int) -> None:
                if i == 100:  # 4 s into the load
                    at_kill["published"], at_kill["answered"] = i, len(got.first)
                    w1.kill()

            load = await offer_load(
                client, lambda i: chat("chat", i, deadline_s=120), 25, 12, on_tick=kill_at
            )
            try:
                await got.wait_for(load.acked, timeout=90)
            except AssertionError:
                _diagnose(stack, got, load)
                raise
        w2.wait_ready(16)  # the survivor owns every partition now
    finally:
        simulator.set_model(model, latency_ms=0)
    statuses = Counter(r.status for r in got.first.values())
    print(
        f"sigkill: {len(load.requests)} requests, answered before the kill "
        f"{at_kill['answered']}/{at_kill['published']}, missing "
        f"{len(got.missing(load.acked))}, duplicates {got.duplicates}, {dict(statuses)}"
    )
    assert at_kill["answered"] < at_kill["published"], "nothing was in flight at the kill"
    assert not load.errors and got.missing(load.acked) == set()
    assert statuses == {"ok": len(load.requests)}
    assert {r.request_id for r in got.responses} <= load.acked


# -- the broker restarted under load -----------------------------------------------------------


@contextlib.contextmanager
def dedicated_broker(tmp: Path) -> Iterator[tuple[str, Callable[[str], None]]]:
    """A broker of this test's own (scripts/kafka.sh with its own ports and data dir); yields
    its bootstrap address and ``kafka(command)``. Always stopped at the end."""
    port, controller = free_port(), free_port()
    env = {
        **os.environ,
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(controller),
        "KAFKA_DATA_DIR": str(tmp / "kafka"),
    }

    def kafka(command: str) -> None:
        done = subprocess.run(
            [str(ROOT / "scripts" / "kafka.sh"), command],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, f"kafka.sh {command}: {done.stdout}\n{done.stderr}"

    try:
        kafka("up")
        yield f"127.0.0.1:{port}", kafka
    finally:
        with contextlib.suppress(Exception):
            kafka("down")


async def test_broker_restart_under_load_loses_nothing_acknowledged(
    simulator: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dedicated broker is stopped and started again (same data) while requests flow.
    Producers and the worker reconnect; every request whose publish was acknowledged gets a
    response (missing = 0); requests published after the restart are answered too."""
    model = unique("restart")
    with dedicated_broker(tmp_path) as (bootstrap, kafka):
        # Workers inherit the environment, and KAFKA_BOOTSTRAP_SERVERS overrides the config's
        # broker (streams/cli.effective_config): point it at this test's broker.
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        prefix = f"t{uuid.uuid4().hex[:10]}"
        config = base_config(prefix, simulator.url, bootstrap, tmp_path / "data")
        _models(config, model)
        ensure_sluicegate_topics(parse_config(config))
        stack = Stack(config, tmp_path, bootstrap)
        try:
            stack.start_worker("w1")
            restart: dict[str, float] = {}

            def restart_broker() -> None:
                restart["down_at"] = time.time()
                kafka("down")
                restart["up_at"] = time.time()
                kafka("up")
                restart["back_at"] = time.time()

            async with (
                SluicegateClient(bootstrap, topic_prefix=prefix) as client,
                Collector(client) as got,
            ):
                restarting: list[asyncio.Task[None]] = []

                def start_restart(i: int) -> None:
                    if i == 40:  # 4 s into the load
                        restarting.append(asyncio.create_task(asyncio.to_thread(restart_broker)))

                def enough() -> bool:  # keep the load on until 5 s after the broker is back
                    return "back_at" in restart and time.time() > restart["back_at"] + 5

                load = await offer_load(
                    client,
                    lambda i: chat("chat", i, deadline_s=300),
                    10,
                    120,
                    on_tick=start_restart,
                    stop=enough,
                    publish_timeout_s=90,
                )
                await asyncio.gather(*restarting)
                try:
                    await got.wait_for(load.acked, timeout=150)
                except AssertionError:
                    _diagnose(stack, got, load)
                    raise
        finally:
            stack.stop()
    after = [r for r in load.requests if r["created_at"] / 1000 > restart["back_at"]]
    print(
        f"broker restart: down {restart['up_at'] - restart['down_at']:.1f}s + up "
        f"{restart['back_at'] - restart['up_at']:.1f}s; {len(load.requests)} published, "
        f"{len(load.acked)} acknowledged, {len(load.errors)} not; missing "
        f"{len(got.missing(load.acked))}; duplicates {got.duplicates}; "
        f"{len(after)} published after the restart"
    )
    assert got.missing(load.acked) == set()
    assert after and all(r["request_id"] in load.acked for r in after), "no reconnect"
    assert all(r.status == "ok" for r in got.first.values())


def _diagnose(stack: Stack, got: Collector, load: Load) -> None:
    """Print what the workers and the topics say, for a failure's report."""
    missing = got.missing(load.acked)
    tenants = Counter(load.by_id[rid]["tenant"] for rid in missing)
    print(f"DIAG missing {len(missing)} of {len(load.acked)}, by tenant {dict(tenants)}")
    consumer = Consumer(
        {"bootstrap.servers": stack.bootstrap, "group.id": stack.config["worker"]["app_id"]}
    )
    for suffix in ("requests.critical", "requests.high", "requests.normal", "responses"):
        topic = f"{stack.prefix}.{suffix}"
        tps = [TopicPartition(topic, p) for p in range(4)]
        ends = [consumer.get_watermark_offsets(tp, 10)[1] for tp in tps]
        committed = [tp.offset for tp in consumer.committed(tps, 10)]
        print(f"DIAG {topic}: end offsets {ends}, group committed {committed}")
    consumer.close()
    for worker in stack.workers:
        print(f"DIAG {worker.name} status: {worker.status()}")
        lines = [line for line in worker.log_tail(400).splitlines() if "HTTP Request" not in line]
        print(f"DIAG {worker.name} log:\n" + "\n".join(lines[-40:]))


# -- a provider outage and its recovery --------------------------------------------------------


async def test_provider_outage_and_recovery_under_load(
    make_stack: Callable[..., Stack], simulator: Simulator
) -> None:
    """The outage scenario of test_resilience, shorter: 3 s of 503s under 10 req/s. Every
    request is answered before its deadline (fallback while the breaker is open), and the
    breaker closes again after the outage (run_outage asserts the details)."""
    await run_outage(make_stack, simulator, rate=10, duration_s=10, outage_at_s=2, outage_s=3)


# -- a slow consumer of the responses topic ------------------------------------------------------


class SlowReader(threading.Thread):
    """A plain Kafka consumer of the responses topic that reads one record per ``delay``
    seconds (until told to hurry), from the end offsets at its start."""

    def __init__(self, bootstrap: str, topic: str, delay: float) -> None:
        super().__init__(daemon=True)
        self.delay = delay
        self.ids: list[str] = []
        self.stopped = threading.Event()
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"slow-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
            }
        )
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = [
            TopicPartition(
                topic, p, self.consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1]
            )
            for p in partitions
        ]
        self.consumer.assign(ends)

    def run(self) -> None:
        while not self.stopped.is_set():
            message = self.consumer.poll(0.2)
            if message is None or message.error():
                continue
            self.ids.append(
                registry.decode(registry.CHAT_RESPONSE, message.value() or b"")["request_id"]
            )
            time.sleep(self.delay)
        self.consumer.close()


async def test_a_slow_consumer_of_the_responses_topic_does_not_hold_back_the_gateway(
    make_stack: Callable[..., Stack], simulator: Simulator
) -> None:
    """A consumer reading the responses topic at 4 records/s while 200 requests are answered:
    the client still gets all 200 answers while the slow one has read only a few, and the
    slow one later reads every answer, none lost (Kafka, not the worker, holds them)."""
    model = unique("slow")
    stack = make_stack(lambda c: _models(c, model))
    stack.start_worker()
    reader = SlowReader(stack.bootstrap, f"{stack.prefix}.responses", delay=0.25)
    reader.start()
    try:
        async with (
            SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client,
            Collector(client) as got,
        ):
            load = await offer_load(client, lambda i: chat("chat", i, deadline_s=120), 100, 2)
            await got.wait_for(load.acked, timeout=90)
            read_when_done = len(reader.ids)
        reader.delay = 0  # the slow consumer catches up
        await until(lambda: set(reader.ids) >= load.acked, 60, "the slow reader to catch up")
    finally:
        reader.stopped.set()
        reader.join(10)
    print(f"slow consumer: had read {read_when_done}/200 when the client had every answer")
    assert not load.errors and got.missing(load.acked) == set()
    assert all(r.status == "ok" for r in got.first.values())
    assert read_when_done < len(load.acked) / 2
    assert Counter(reader.ids) == Counter(r.request_id for r in got.responses)


# -- poison records mixed with valid ones -------------------------------------------------------


def _poison() -> list[dict[str, Any]]:
    """Bad records, each with what its response (if it can have one) and dead letter say."""
    valid = registry.encode(
        registry.CHAT_REQUEST,
        build_request(tenant="t1", model="chat", messages=[{"role": "user", "content": "hi"}]),
    )
    response = response_record(
        {"request_id": "x", "tenant": "t1"}, Outcome(Status.OK), queue_ms=0, now_ms=1
    )

    def framed(**fields: Any) -> tuple[str, bytes]:
        record = build_request(
            tenant=fields.pop("tenant", "t1"),
            model="chat",
            messages=[{"role": "user", "content": fields.pop("content", "hello")}],
        )
        return record["request_id"], registry.encode(registry.CHAT_REQUEST, record)

    huge_id, huge = framed(content="x" * 10_000)
    stranger_id, stranger = framed(tenant="mallory")
    return [
        {"kind": "garbage", "raw": b"\x07 garbage \xff\xfe", "detail": "undecodable"},
        {"kind": "empty", "raw": b"", "detail": "too short"},
        {"kind": "unknown schema id", "raw": HEADER.pack(MAGIC, 999) + valid[5:],
         "detail": "unknown schema id 999"},
        {"kind": "another record's schema",
         "raw": registry.encode(registry.CHAT_RESPONSE, response),
         "detail": "expected sluicegate.ChatRequest"},
        {"kind": "truncated avro", "raw": valid[:-7], "detail": "undecodable"},
        {"kind": "no request id", "raw": b"\x00\x00\x00", "detail": None, "headerless": True},
        {"kind": "huge content", "raw": huge, "id": huge_id, "detail": "exceed the limit",
         "reason": "invalid"},
        {"kind": "unknown tenant", "raw": stranger, "id": stranger_id,
         "detail": "unknown tenant 'mallory'", "reason": "invalid"},
    ]  # fmt: skip


def _read_dead_letters(bootstrap: str, topic: str, expect: int, timeout: float = 60) -> list[Any]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, "enable.auto.commit": False}
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            out.append(registry.decode(registry.DEAD_LETTER, message.value() or b""))
    consumer.close()
    return out


async def test_poison_records_get_terminal_answers_and_dead_letters_and_valid_ones_flow(
    make_stack: Callable[..., Stack], simulator: Simulator
) -> None:
    """Garbage bytes, an empty record, an unknown schema id, another record type's schema,
    truncated Avro, content over worker.max_message_bytes and an unknown tenant, mixed into
    60 valid requests on every priority: each poison record whose request id is known (the
    sg-request-id header, or the record) gets a rejected/invalid response saying why, each
    gets a dead letter on deadletter.failed holding its exact bytes, and every valid request
    is answered ok."""
    model = unique("poison")

    def customize(config: dict[str, Any]) -> None:
        _models(config, model)
        config["worker"]["max_message_bytes"] = 4096

    stack = make_stack(customize)
    stack.start_worker()
    poison = _poison()
    producer = Producer({"bootstrap.servers": stack.bootstrap, "partitioner": "murmur2_random"})
    valid_ids: set[str] = set()
    async with (
        SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client,
        Collector(client) as got,
    ):
        priorities = ("critical", "high", "normal", "low")
        for i in range(60):
            record = chat("chat", i, deadline_s=120)
            record["priority"] = priorities[i % 4]
            valid_ids.add(record["request_id"])
            producer.produce(
                f"{stack.prefix}.requests.{record['priority']}",
                registry.encode(registry.CHAT_REQUEST, record),
                key=record["tenant"].encode(),
                headers=[("sg-request-id", record["request_id"].encode())],
            )
            if i % 7 == 3 and poison[i // 7 % len(poison)].get("sent") is None:
                bad = poison[i // 7 % len(poison)]
                bad.setdefault("id", uuid.uuid4().hex)
                headers = [] if bad.get("headerless") else [("sg-request-id", bad["id"].encode())]
                producer.produce(
                    f"{stack.prefix}.requests.{priorities[i % 4]}",
                    bad["raw"],
                    key=TENANTS_BY_PARTITION[i % 4].encode(),
                    headers=headers,
                )
                bad["sent"] = True
        assert all(bad.get("sent") for bad in poison), "the loop must send every poison record"
        assert producer.flush(30) == 0
        answerable = {bad["id"] for bad in poison if not bad.get("headerless")}
        await got.wait_for(valid_ids | answerable, timeout=90)
    letters = _read_dead_letters(stack.bootstrap, f"{stack.prefix}.deadletter.failed", len(poison))

    responses = got.first
    assert all(responses[rid].status == "ok" for rid in valid_ids)
    by_raw = {bytes(letter["raw"]): letter for letter in letters}
    for bad in poison:
        letter = by_raw.get(bad["raw"])
        assert letter is not None, f"no dead letter for the {bad['kind']} record"
        assert letter["reason"] == bad.get("reason", "undecodable"), (bad["kind"], letter)
        assert letter["source_topic"].startswith(f"{stack.prefix}.requests.")
        if bad.get("headerless"):
            continue
        answer = responses[bad["id"]]
        assert (answer.status, answer.reason) == ("rejected", "invalid"), (bad["kind"], answer)
        assert bad["detail"] in answer.detail, (bad["kind"], answer.detail)
        assert bad["detail"] in letter["detail"], (bad["kind"], letter["detail"])
    assert len(letters) == len(poison), "a valid request was dead-lettered"
    assert {r.request_id for r in got.responses} == valid_ids | answerable
