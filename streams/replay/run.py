"""Re-run recorded traffic in an isolated namespace, then diff the answers with the recording.

Isolation: the replay namespace is a topic prefix (``sg-replay`` by default: the live prefix
plus ``-replay``); its topics are created from ``topic_specs`` of a config whose prefix is the
namespace (``streams.cli.effective_config(path, namespace)``, which also gives its worker its
own app id, hence its own consumer group and tenant-state/cache tables, and its own data
directory). Nothing is written to a live topic: a run refuses a namespace whose topics
overlap the live ones, every request's ``reply_to`` is cleared (answers go to the
namespace's responses topic), and live tenants' budgets and rate limits live in tables the
replay worker never opens.

Each selected request is re-published in recorded order as a new request: a new id,
``original_request_id`` = the first id of its lineage, ``metadata["sg-replay-of"]`` = the
recorded id, created now, with its recorded deadline kept relative to its creation.
``--pace`` keeps the recorded gaps between requests (divided by ``--speed``). The worker is
``sluicegate --config F worker --namespace NS``, started here with ``--start-worker``; by
default it talks to the provider simulator (``--provider sim``: every provider's base URL
replaced in a derived config file), so a replay costs nothing. With ``--start-worker`` the
requests are published once that worker owns every request partition. Budget and rate-limit
decisions depend on timing: unpaced, requests that were recorded one after another arrive
together, their reservations overlap, and a request near a cap may be decided differently.

The new requests and the diff are pure and live in rerun.py; this module is the I/O:
processes (simulator, worker), publishing, collecting the answers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas import registry
from streams.config import PRIORITIES, SluicegateConfig
from streams.replay.recording import Entry
from streams.replay.rerun import (
    ReplayDiff,
    ReplayItem,
    ReplayRunError,
    check_isolated,
    diff,
    plan_items,
    to_toml,
    worker_config,
)

HEADER_REQUEST_ID = "sg-request-id"
ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 90.0


# -- processes and Kafka I/O ------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _python_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "streams.cli", *args]


def start_simulator(port: int, log: Path) -> subprocess.Popen[bytes]:
    import httpx

    with log.open("ab") as out:
        process = subprocess.Popen(
            _python_cli("simulator", "--port", str(port)), cwd=ROOT, stdout=out, stderr=out
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ReplayRunError(f"the simulator exited; see {log}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/admin/counts", timeout=1).raise_for_status()
            return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.terminate()
    raise ReplayRunError("the simulator did not answer within 30 s")


def start_worker(
    config_path: Path, namespace: str, log: Path, web_port: int
) -> subprocess.Popen[bytes]:
    command = _python_cli("--config", str(config_path), "worker", "--namespace", namespace)
    command += ["--web-port", str(web_port)]
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=out,
            stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def wait_ready(process: subprocess.Popen[bytes], port: int, partitions: int, log: Path) -> None:
    """Until the worker owns every request partition (its /healthz says so), so that replayed
    latencies do not include its start; a worker that shares the namespace's group with
    others never gets there, so after READY_TIMEOUT_S the run goes on anyway."""
    import httpx

    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ReplayRunError(f"the replay worker exited; see {log}")
        try:
            health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
            if int(health.get("request_partitions", 0)) >= partitions:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.3)


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """High watermark of each partition of ``topic`` now."""
    from streams.replay.reader import new_consumer, watermarks

    consumer = new_consumer(bootstrap)
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            raise ReplayRunError(f"topic {topic} does not exist")
        return {p: watermarks(consumer, topic, p)[1] for p in meta.partitions}
    finally:
        consumer.close()


def publish(
    bootstrap: str,
    replay: SluicegateConfig,
    items: list[ReplayItem],
    *,
    pace: bool,
    speed: float,
    on_sent: Callable[[], None] = lambda: None,
) -> None:
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "partitioner": "murmur2_random",  # where the Python client would put the key
        }
    )
    failures: list[str] = []

    def delivered(error: Any, _msg: Any) -> None:
        if error is not None:
            failures.append(str(error))
        else:
            on_sent()

    for item in items:
        if pace and speed > 0:  # each request is due at its (paced) creation time
            due = int(item.request["created_at"])
            while (wait := due - time.time_ns() // 1_000_000) > 0:
                producer.poll(min(wait / 1000, 0.05))
        topic = replay.request_topic(str(item.request["priority"]))
        while True:
            try:
                producer.produce(
                    topic,
                    item.value,
                    str(item.request["tenant"]).encode(),
                    headers=[(HEADER_REQUEST_ID, item.request_id.encode())],
                    on_delivery=delivered,
                )
                break
            except BufferError:
                producer.poll(0.5)
        producer.poll(0)
    if producer.flush(60) > 0 or failures:
        raise ReplayRunError(f"publishing failed: {failures[:3] or 'not acknowledged in 60 s'}")


def collect(
    bootstrap: str,
    topic: str,
    start: Mapping[int, int],
    wanted: Iterable[str],
    *,
    timeout_s: float,
    alive: Callable[[], bool] = lambda: True,
    on_answer: Callable[[], None] = lambda: None,
) -> dict[str, dict[str, Any]]:
    """The first response to each wanted id on ``topic``, read from the ``start`` offsets,
    until all have come or ``timeout_s`` passed (the missing ones are simply absent)."""
    from confluent_kafka import TopicPartition

    from streams.replay.reader import BATCH, new_consumer

    left = set(wanted)
    keys = {i.encode(): i for i in left}
    answers: dict[str, dict[str, Any]] = {}
    consumer = new_consumer(bootstrap)
    try:
        consumer.assign([TopicPartition(topic, p, o) for p, o in start.items()])
        deadline = time.monotonic() + timeout_s
        while left and time.monotonic() < deadline:
            if not alive():
                raise ReplayRunError("the replay worker exited before answering everything")
            for msg in consumer.consume(BATCH, timeout=0.5):
                if msg.error() is not None or keys.get(msg.key() or b"") not in left:
                    continue
                record = registry.decode(registry.CHAT_RESPONSE, msg.value() or b"")
                request_id = str(record["request_id"])
                if request_id in left:
                    left.discard(request_id)
                    answers[request_id] = record
                    on_answer()
        return answers
    finally:
        consumer.close()


# -- the whole run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    namespace: str
    work_dir: Path
    start_worker: bool = False
    start_simulator: bool = False
    provider_url: str | None = "http://127.0.0.1:8900"  # None: the configured providers
    pace: bool = False
    speed: float = 1.0
    timeout_s: float = 180.0


@dataclass
class RunResult:
    run_id: str
    namespace: str
    items: list[ReplayItem]
    diff: ReplayDiff
    worker_config: Path
    worker_command: list[str]


class Progress:
    """Hooks for a progress display (no-ops here)."""

    def phase(self, name: str, total: int) -> None:
        pass

    def advance(self) -> None:
        pass


def execute(
    config_path: str | None,
    live: SluicegateConfig,
    entries: list[Entry],
    options: RunOptions,
    progress: Progress | None = None,
) -> RunResult:
    """Re-publish ``entries`` into the namespace, have them answered, diff the answers."""
    from streams.cli import effective_config
    from streams.topics import ensure_topics, topic_specs

    progress = progress or Progress()
    replay = effective_config(config_path, namespace=options.namespace)
    check_isolated(live, replay)
    bootstrap = replay.kafka.bootstrap_servers
    ensure_topics(bootstrap, topic_specs(replay), replay.kafka.replication_factor)
    options.work_dir.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:12]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        provider_url = options.provider_url
        if options.start_simulator:
            port = free_port()
            processes.append(start_simulator(port, options.work_dir / "simulator.log"))
            provider_url = f"http://127.0.0.1:{port}"
        config_file = options.work_dir / "worker.toml"
        data = worker_config(live, provider_url=provider_url, data_dir=options.work_dir / "data")
        config_file.write_text(to_toml(data) + "\n")
        command = _python_cli("--config", str(config_file), "worker", "--namespace")
        command.append(options.namespace)
        responses = replay.topic("responses")
        start = end_offsets(bootstrap, responses)
        worker = None
        if options.start_worker:
            port, log = free_port(), options.work_dir / "worker.log"
            worker = start_worker(config_file, options.namespace, log, port)
            processes.append(worker)
            progress.phase("starting the replay worker", 1)
            wait_ready(worker, port, len(PRIORITIES) * replay.kafka.partitions, log)
            progress.advance()
        items = plan_items(
            entries,
            now_ms=time.time_ns() // 1_000_000,
            run_id=run_id,
            new_id=lambda: f"{options.namespace}-{uuid.uuid4().hex}",
            speed=options.speed if options.pace and options.speed > 0 else None,
        )
        progress.phase("publishing", len(items))
        publish(
            bootstrap,
            replay,
            items,
            pace=options.pace,
            speed=options.speed,
            on_sent=progress.advance,
        )
        progress.phase("waiting for answers", len(items))
        answers = collect(
            bootstrap,
            responses,
            start,
            [i.request_id for i in items],
            timeout_s=options.timeout_s,
            alive=lambda: worker is None or worker.poll() is None,
            on_answer=progress.advance,
        )
        return RunResult(
            run_id, options.namespace, items, diff(items, answers), config_file, command
        )
    finally:
        for process in reversed(processes):
            stop(process)
