"""The benchmark's processes: simulator and workers as subprocesses, their CPU and memory.

Everything started here is registered with a ``Processes`` group whose ``stop_all`` ends it
(SIGTERM, then SIGKILL after a grace period); the runner calls it from a ``finally``, so a
failure or Ctrl-C leaves nothing behind. Children also get ``PR_SET_PDEATHSIG`` so they die
with the harness even if it is SIGKILLed itself.

Process figures come from /proc (Linux): ``cpu_seconds(pid)`` is utime + stime of every
thread; ``memory_kb(pid)`` is VmRSS and VmHWM (the peak resident set).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.config import PRIORITIES, parse_config
from streams.topics import admin_client, ensure_sluicegate_topics
from tests.integration.conftest import free_port, to_toml, wait_until

ROOT = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PARTITIONS = 8
TENANTS = tuple(f"bench-{i:02d}" for i in range(32))  # spread over the partitions
MODEL = "chat"  # the route requests name
# Log lines of a worker that will not work: a table's changelog topic missing from the
# consumer's metadata at start makes the first table write from a stream raise
# PartitionsMismatch; the agent crashes, its buffer fills and the worker stops consuming.
TROUBLE_SIGNS = ("not found in cluster metadata", "Crashed reason=")
PRIMARY_MODEL = "sim-large"  # what the route calls first (and the direct path calls)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all threads (from /proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_quiet(
    pids: list[int], quiet_pct: float = 10.0, window_s: float = 0.3, max_s: float = 10.0
) -> float:
    """Until the processes use less than ``quiet_pct`` of a core each: their follow-up work
    for requests already answered (usage aggregation, commits) is done. Returns the
    monotonic time the quiet began (the start of the first quiet window).
    """
    started = time.monotonic()
    while time.monotonic() - started < max_s:
        window_start = time.monotonic()
        before = [cpu_seconds(p) for p in pids]
        time.sleep(window_s)
        used = max(cpu_seconds(p) - b for p, b in zip(pids, before, strict=True))
        if 100 * used / window_s < quiet_pct:
            return window_start
    return time.monotonic()


def own_cpu_seconds() -> float:
    """This process's CPU seconds, every thread (librdkafka's included)."""
    t = os.times()
    return t.user + t.system


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in kB, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def get_json(url: str, timeout: float = 2.0) -> Any:
    """GET a JSON document with the standard library (None when it does not answer)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def post_json(url: str, body: dict[str, Any] | None = None, method: str = "POST") -> Any:
    data = json.dumps(body or {}).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read() or b"null")


def _clean_env() -> dict[str, str]:
    """The environment without overrides that would point a worker elsewhere."""
    return {k: v for k, v in os.environ.items() if k not in ("SLUICEGATE_TOPIC_PREFIX",)}


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Processes:
    """Every subprocess the benchmark started; ``stop_all`` ends them."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []

    def log_path(self, name: str) -> Path:
        """A log file of its own for each start (a restarted worker gets ``name.2.log``)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path, n = self.log_dir / f"{name}.log", 1
        while path.exists():
            n += 1
            path = self.log_dir / f"{name}.{n}.log"
        return path

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Any:
        """Start ``args`` with output to ``log_path(name)`` (read it back as ``.log_path``)."""
        path = self.log_path(name)
        log = open(path, "ab")  # noqa: SIM115 - lives with the child
        process = subprocess.Popen(
            args,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**_clean_env(), "PYTHONUNBUFFERED": "1", **(env or {})},
            preexec_fn=_die_with_parent,  # only the main thread spawns
        )
        log.close()
        process.log_path = path  # type: ignore[attr-defined]
        self.started.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def stop_all(self) -> None:
        alive = [p for p in self.started if p.poll() is None]
        for process in alive:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        deadline = time.monotonic() + 5  # results are in: no need for a graceful exit
        for process in alive:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


@dataclass
class Simulator:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def counts(self) -> Any:
        return get_json(f"{self.url}/admin/counts")

    def set_model(self, model: str, **profile: Any) -> None:
        post_json(f"{self.url}/admin/models", {"model": model, **profile})


def start_simulator(processes: Processes) -> Simulator:
    port = free_port()
    args = [sys.executable, "-m", "streams.cli", "simulator", "--port", str(port)]
    sim = Simulator(port, processes.spawn(f"simulator-{port}", args))
    wait_until(
        lambda: sim.process.poll() is not None or get_json(f"{sim.url}/healthz") is not None,
        30,
        "the simulator to answer",
    )
    if sim.process.poll() is not None:
        raise RuntimeError(f"the simulator exited (log: {processes.log_dir})")
    return sim


@dataclass
class Worker:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def status(self) -> Any:
        return get_json(f"http://127.0.0.1:{self.port}/status")

    def owned_partitions(self) -> int:
        health = get_json(f"http://127.0.0.1:{self.port}/healthz")
        return int(health.get("request_partitions", 0)) if health else 0

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def trouble(self) -> str:
        """The first log line showing the worker is broken (empty when none)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        for line in text.splitlines():
            if any(sign in line for sign in TROUBLE_SIGNS):
                return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line).strip()[:300]
        return ""

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def bench_config(prefix: str, sim_url: str, bootstrap: str, data_dir: Path) -> dict[str, Any]:
    """A worker configuration with no limits or budgets in the way: the pipeline's own cost."""
    return {
        "kafka": {"bootstrap_servers": bootstrap, "topic_prefix": prefix, "partitions": PARTITIONS},
        "worker": {"app_id": f"{prefix}-app", "data_dir": str(data_dir), "web_port": 0},
        "providers": {
            "sim": {
                "kind": "openai",
                "base_url": f"{sim_url}/v1",
                "timeout_s": 30,
                "models": {
                    PRIMARY_MODEL: {"input_usd_per_mtok": 2.5, "output_usd_per_mtok": 10.0},
                    "sim-small": {"input_usd_per_mtok": 0.15, "output_usd_per_mtok": 0.6},
                },
            }
        },
        "routes": {MODEL: {"primary": f"sim/{PRIMARY_MODEL}", "fallbacks": ["sim/sim-small"]}},
        "tenants": {name: {"max_priority": "critical"} for name in TENANTS},
    }


@dataclass
class Stack:
    """One gateway under test: its own topic prefix, consumer group and worker processes."""

    name: str
    config: dict[str, Any]
    directory: Path
    processes: Processes
    workers: list[Worker] = field(default_factory=list)

    @classmethod
    def create(
        cls,
        name: str,
        processes: Processes,
        sim_url: str,
        bootstrap: str,
        run_dir: Path,
        customize: Callable[[dict[str, Any]], None] | None = None,
    ) -> Stack:
        prefix = f"bench{uuid.uuid4().hex[:6]}{name}"
        directory = run_dir / prefix
        directory.mkdir(parents=True, exist_ok=True)
        config = bench_config(prefix, sim_url, bootstrap, directory / "data")
        if customize:
            customize(config)
        ensure_sluicegate_topics(parse_config(config))
        (directory / "sluicegate.toml").write_text(to_toml(config))
        return cls(name, config, directory, processes)

    @property
    def prefix(self) -> str:
        return str(self.config["kafka"]["topic_prefix"])

    @property
    def group_id(self) -> str:
        return str(self.config["worker"]["app_id"])

    @property
    def bootstrap(self) -> str:
        return str(self.config["kafka"]["bootstrap_servers"])

    def request_topics(self) -> list[str]:
        return [f"{self.prefix}.requests.{p}" for p in PRIORITIES]

    def start_worker(self, name: str) -> Worker:
        port = free_port()
        args = [
            sys.executable,
            "-m",
            "streams.cli",
            "--config",
            str(self.directory / "sluicegate.toml"),
            "worker",
            "--web-port",
            str(port),
            "--data-dir",
            str(self.directory / f"data-{name}"),
        ]
        log_name = f"{self.prefix}-{name}"
        process = self.processes.spawn(log_name, args)
        worker = Worker(name, port, process, process.log_path)
        self.workers.append(worker)
        return worker

    def live_workers(self) -> list[Worker]:
        return [w for w in self.workers if w.alive()]

    def wait_balanced(self, timeout: float = 90) -> None:
        """Until the live workers together own every request partition, each some."""
        total = PARTITIONS * len(PRIORITIES)

        def balanced() -> bool:
            live = self.live_workers()
            if len(live) < len(self.workers):
                dead = [w.name for w in self.workers if not w.alive()]
                raise RuntimeError(f"worker(s) {dead} of stack {self.name} exited during start")
            owned = [w.owned_partitions() for w in live]
            return sum(owned) == total and all(owned)

        wait_until(balanced, timeout, f"the workers of stack {self.name} to own all partitions")

    def stop(self, grace_s: float = 3.0) -> None:
        for worker in self.workers:
            self.processes.stop(worker.process, grace_s)

    def restart_worker(self, worker: Worker) -> Worker:
        """Replace one worker by a fresh process under the same name and data directory."""
        self.processes.stop(worker.process, grace_s=3)
        self.workers.remove(worker)
        fresh = self.start_worker(worker.name)
        self.wait_balanced()
        return fresh

    def remove(self) -> None:
        """Stop the workers, delete the topics and the RocksDB files (the logs stay)."""
        self.stop()
        self.delete_topics()
        shutil.rmtree(self.directory, ignore_errors=True)

    def delete_topics(self) -> None:
        admin = admin_client(self.bootstrap)
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{self.prefix}")]
        if names:
            for future in admin.delete_topics(names, operation_timeout=30).values():
                with contextlib.suppress(Exception):
                    future.result()


def kafka_version() -> str:
    pom = (ROOT / "kafka" / "pom.xml").read_text()
    start = pom.find("<kafka.version>") + len("<kafka.version>")
    return pom[start : pom.find("</kafka.version>")]


def machine_facts(bootstrap: str, broker_started: bool) -> dict[str, Any]:
    """What the numbers were measured on."""
    import confluent_kafka
    import faust

    cpu_model = platform.processor() or "unknown"
    meminfo: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            meminfo[key] = value.strip()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    broker = f"Apache Kafka {kafka_version()} (KRaft, single node, started by scripts/kafka.sh)"
    if not broker_started:
        broker = f"external broker at {bootstrap} (repo pins Kafka {kafka_version()})"
    return {
        "nproc": os.cpu_count(),
        "memory": meminfo.get("MemTotal", "unknown"),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "kafka": broker,
        "librdkafka": confluent_kafka.libversion()[0],
        "faust": faust.__version__,
        "git_commit": commit + ("+dirty" if dirty else ""),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
