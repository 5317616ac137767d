"""Integration fixtures: a real broker (from KAFKA_BOOTSTRAP_SERVERS), the simulator over
real HTTP, and workers as real processes, each test with its own topic prefix, consumer
group and RocksDB directory."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.client import ChatResponse, SluicegateClient
from streams.config import parse_config
from streams.topics import ensure_sluicegate_topics

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4


def wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float, what: str, every: float = 0.25
) -> Any:
    """Like ``wait_until`` for an async check, without blocking the event loop (a client
    reads its responses on it)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Like ``wait_until`` in async tests: polls a plain condition without blocking the loop."""

    async def check() -> Any:
        return condition()

    return await eventually(check, timeout, what, every)


def chat_kwargs(prompt: str, tenant: str = "t1", priority: str = "normal") -> dict[str, Any]:
    """Keyword arguments for ``SluicegateClient.complete``/``publish``: a short, cacheable
    (temperature 0) question to route ``chat``."""
    return {
        "tenant": tenant,
        "priority": priority,
        "model": "chat",
        "temperature": 0.0,
        "max_tokens": 60,
        "messages": [{"role": "user", "content": prompt}],
    }


class Collector:
    """Every response on the client's reply topic, duplicates included, from now on."""

    def __init__(self, client: SluicegateClient) -> None:
        self.client = client
        self.responses: list[ChatResponse] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        async def read() -> None:
            async for response in self.client.responses(duplicates=True):
                self.responses.append(response)

        self._task = asyncio.create_task(read())
        await asyncio.sleep(0)  # the listener is registered before anything is published
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    @property
    def first(self) -> dict[str, ChatResponse]:
        """The first response to each request, by request id."""
        out: dict[str, ChatResponse] = {}
        for response in self.responses:
            out.setdefault(response.request_id, response)
        return out

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in Counter(r.request_id for r in self.responses).values())

    def missing(self, ids: Iterable[str]) -> set[str]:
        return set(ids) - {r.request_id for r in self.responses}

    def answered(self, ids: Iterable[str]) -> int:
        """How many of ``ids`` have a response."""
        seen = {r.request_id for r in self.responses}
        return sum(1 for i in ids if i in seen)

    async def wait_for(
        self, ids: Iterable[str], timeout: float, workers: Iterable[Worker] = ()
    ) -> dict[str, ChatResponse]:
        """Until every one of ``ids`` has a response; then ``first``. A timeout names the
        missing ids and the ``workers``' status."""
        wanted = set(ids)
        try:
            await until(lambda: not self.missing(wanted), timeout, f"{len(wanted)} responses")
        except AssertionError as exc:
            statuses = {w.name: w.status() for w in workers}
            missing = sorted(self.missing(wanted))
            raise AssertionError(f"{exc}; missing {missing}; workers: {statuses}") from None
        return self.first


@asynccontextmanager
async def client_and_collector(stack: Stack) -> AsyncIterator[tuple[SluicegateClient, Collector]]:
    """A client of ``stack``'s gateway and a ``Collector`` of the responses it receives."""
    async with (
        SluicegateClient(stack.bootstrap, topic_prefix=stack.prefix) as client,
        Collector(client) as collector,
    ):
        yield client, collector


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def bootstrap() -> str:
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not servers:
        pytest.fail("KAFKA_BOOTSTRAP_SERVERS is not set: run the suite with `make test`")
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": servers}).list_topics(timeout=10)
    except Exception as exc:  # pragma: no cover - the failure is the message
        pytest.fail(f"no Kafka broker at {servers}: {exc}")
    return servers


def _get_json(url: str) -> Any:
    try:
        return httpx.get(url, timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None


@dataclass
class Simulator:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def counts(self) -> dict[str, Any]:
        counts: dict[str, Any] = httpx.get(f"{self.url}/admin/counts", timeout=5).json()
        return counts

    def reset(self) -> None:
        """Counters to zero, no faults, every model back to the default profile."""
        httpx.post(f"{self.url}/admin/reset", timeout=5).raise_for_status()
        httpx.delete(f"{self.url}/admin/faults", timeout=5).raise_for_status()
        models = httpx.get(f"{self.url}/admin/models", timeout=5).json()["models"]
        for model in models:
            if model != "*":
                self.set_model(model, latency_ms=0, max_concurrency=0, rpm=0)

    def set_model(self, model: str, **profile: Any) -> None:
        """Change how a model behaves: latency_ms, max_concurrency, rpm."""
        response = httpx.post(
            f"{self.url}/admin/models", json={"model": model, **profile}, timeout=5
        )
        response.raise_for_status()

    def set_faults(self, faults: dict[str, Any]) -> None:
        httpx.post(f"{self.url}/admin/faults", json=faults, timeout=5).raise_for_status()


def start_simulator(tmp: Path, config_text: str = "") -> Simulator:
    port = free_port()
    args = [sys.executable, "-m", "streams.cli", "simulator", "--port", str(port)]
    if config_text:
        path = tmp / f"sim-{port}.toml"
        path.write_text(config_text)
        args += ["--faults", str(path)]
    log = open(tmp / f"simulator-{port}.log", "wb")  # noqa: SIM115 - lives with the process
    process = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    sim = Simulator(port, process)
    wait_until(
        lambda: process.poll() is not None or _get_json(f"{sim.url}/admin/counts"),
        30,
        "the simulator to answer",
    )
    assert process.poll() is None, (tmp / f"simulator-{port}.log").read_text()
    return sim


@pytest.fixture(scope="session")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    sim = start_simulator(tmp_path_factory.mktemp("sim"))
    yield sim
    sim.process.terminate()
    sim.process.wait(10)


def base_config(prefix: str, sim_url: str, bootstrap: str, data_dir: Path) -> dict[str, Any]:
    """A small but complete configuration for one test's stack."""
    return {
        "kafka": {"bootstrap_servers": bootstrap, "topic_prefix": prefix, "partitions": PARTITIONS},
        "worker": {
            "app_id": f"{prefix}-app",
            "data_dir": str(data_dir),
            "web_port": 0,
            "commit_interval_s": 0.5,
        },
        "providers": {
            "sim": {
                "kind": "openai",
                "base_url": f"{sim_url}/v1",
                "timeout_s": 10,
                "models": {
                    "sim-large": {"input_usd_per_mtok": 2.5, "output_usd_per_mtok": 10.0},
                    "sim-small": {"input_usd_per_mtok": 0.15, "output_usd_per_mtok": 0.6},
                },
            }
        },
        "routes": {"chat": {"primary": "sim/sim-large", "fallbacks": ["sim/sim-small"]}},
        "tenants": {name: {"max_priority": "critical"} for name in ("t1", "t2", "t3", "t4", "t5")},
    }


@dataclass
class Stack:
    """One test's gateway: config, topics, and worker processes."""

    config: dict[str, Any]
    tmp: Path
    bootstrap: str
    workers: list[Worker] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return str(self.config["kafka"]["topic_prefix"])

    @property
    def config_path(self) -> Path:
        path = self.tmp / "sluicegate.toml"
        path.write_text(to_toml(self.config))
        return path

    def start_worker(self, name: str = "w1", wait: bool = True) -> Worker:
        port = free_port()
        data_dir = self.tmp / f"data-{name}"
        log = open(self.tmp / f"worker-{name}.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streams.cli",
                "--config",
                str(self.config_path),
                "worker",
                "--web-port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--loglevel",
                "info",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap},
        )
        worker = Worker(name, port, process, self.tmp / f"worker-{name}.log")
        self.workers.append(worker)
        if wait:
            worker.wait_ready(PARTITIONS * 4 // max(1, len(self.live_workers())))
        return worker

    def live_workers(self) -> list[Worker]:
        return [w for w in self.workers if w.process.poll() is None]

    def stop(self) -> None:
        for worker in self.workers:
            worker.terminate()


@dataclass
class Worker:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def status(self) -> Any:
        return _get_json(f"http://127.0.0.1:{self.port}/status")

    def wait_ready(self, min_assigned: int, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"worker {self.name} exited:\n{self.log_tail()}")
            health = _get_json(f"http://127.0.0.1:{self.port}/healthz")
            return bool(health and health.get("request_partitions", 0) >= min_assigned)

        wait_until(ready, timeout, f"worker {self.name} to own {min_assigned} partitions")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Just enough TOML writing for test configs (tables, strings, numbers, lists)."""
    scalars, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            scalars.append(f"{_toml_key(key)} = {_toml_value(value)}")
    out = []
    if scalars:
        if prefix:
            out.append(f"[{prefix}]")
        out.extend(scalars)
        out.append("")
    for key, value in tables:
        out.append(to_toml(value, f"{prefix}.{_toml_key(key)}" if prefix else _toml_key(key)))
    return "\n".join(out)


def _toml_key(key: str) -> str:
    return key if key.replace("-", "").replace("_", "").isalnum() else f'"{key}"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


@pytest.fixture
def make_stack(
    bootstrap: str, simulator: Simulator, tmp_path: Path
) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(
        customize: Callable[[dict[str, Any]], None] | None = None, sim: Simulator | None = None
    ) -> Stack:
        prefix = f"t{uuid.uuid4().hex[:10]}"
        config = base_config(prefix, (sim or simulator).url, bootstrap, tmp_path / "data")
        if customize:
            customize(config)
        parse_config(config)  # fail early, with the key named, on a bad test config
        stack = Stack(config, tmp_path, bootstrap)
        ensure_sluicegate_topics(parse_config(config))
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()
