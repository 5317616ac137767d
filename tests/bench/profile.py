"""Profile a running worker with py-spy and summarise where its CPU goes.

``py-spy record --format raw`` writes one line per distinct stack ("frame;frame;... count",
each frame ``function (file:line)``, idle threads excluded). The summary attributes every
sample three ways: by component (the innermost frame from a known package; standard
library frames are charged to their caller; what runs only under the event loop's own
frames is the loop's), by the package of the innermost frame (self time), and the
functions with the most self time. Linear in the size of the profile. py-spy is optional:
``available()`` says whether it is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# Components: a sample belongs to the innermost frame from a package named here; frames of
# the standard library (asyncio, json, logging ...) are charged to the code that called them.
# Only a stack with no such frame at all is "event loop and standard library".
COMPONENTS = (
    ("aiokafka/producer", "Kafka produce (aiokafka producer)"),
    ("aiokafka/consumer", "Kafka fetch (aiokafka consumer)"),
    ("aiokafka/", "Kafka client (aiokafka protocol, connections)"),
    ("kafka/", "Kafka client (aiokafka protocol, connections)"),
    ("faust/", "Faust (streams, agents, producer, tables)"),
    ("mode/", "Faust runtime (mode: services, timers)"),
    ("fastavro/", "Avro encode/decode (fastavro, schemas/)"),
    ("schemas/", "Avro encode/decode (fastavro, schemas/)"),
    ("httpx/", "provider HTTP client (httpx requests over aiohttp)"),
    ("httpcore/", "provider HTTP client (httpx requests over aiohttp)"),
    ("aiohttp/", "provider HTTP client (httpx requests over aiohttp)"),
    ("yarl/", "provider HTTP client (httpx requests over aiohttp)"),
    ("multidict/", "provider HTTP client (httpx requests over aiohttp)"),
    ("connectors/", "provider connector (connectors/)"),
    ("streams/policies/", "policies (streams/policies/)"),
    ("streams/", "gateway (streams/: intake, scheduler glue, responses)"),
    ("rocksdict/", "RocksDB tables"),
    ("prometheus_client/", "metrics (prometheus_client)"),
    ("pydantic/", "pydantic"),
)
EVENT_LOOP = "event loop, socket I/O, standard library"
# Cross-cutting costs: the share of samples with a frame containing the marker (inclusive).
CROSS_CUTTING = (
    ("logging calls (records built even when no handler prints them)", "logging/__init__.py"),
    ("aiokafka fetch loop (Fetcher)", "(aiokafka/consumer/fetcher.py"),
    ("thread hand-offs (call_soon_threadsafe)", "call_soon_threadsafe"),
    ("RocksDB table reads/writes", "faust/stores/rocksdb.py"),
    ("JSON encode/decode", "(json/"),
)
# Walking up from the innermost frame, these end the search: above them is only the loop.
LOOP_FRAMES = ("asyncio/base_events.py", "asyncio/events.py", "selectors.py")


def available() -> str | None:
    """The py-spy executable, if installed (``.venv/bin/pip install py-spy``)."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path, rate: int = 200) -> Path:
    exe = available()
    if exe is None:
        raise RuntimeError("py-spy is not installed")
    args = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    args += ["--rate", str(rate), "--format", "raw", "--output", str(out), "--nonblocking"]
    subprocess.run(args, check=True, capture_output=True, timeout=seconds + 60)
    return out


def package_of(file: str) -> str:
    """The top-level package of a frame's file: 'faust', 'aiokafka', 'streams', 'asyncio'..."""
    path = file.replace("\\", "/")
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    head = path.split("/", 1)[0]
    return head.removesuffix(".py") or "?"


@dataclass
class ProfileSummary:
    samples: int
    by_package: list[tuple[str, float]]  # (package, % of samples) by innermost frame
    by_component: list[tuple[str, float]]  # (component, % of samples), exclusive
    top_functions: list[tuple[str, float]]  # (function (file), % self)
    cross_cutting: list[tuple[str, float]] = field(default_factory=list)  # inclusive %
    notes: list[str] = field(default_factory=list)


def summarize(raw: str, top: int = 15) -> ProfileSummary:
    packages: Counter[str] = Counter()
    components: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    crossing: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        leaf = FRAME.match(frames[-1])
        leaf_file = leaf.group("file") if leaf else "?"
        leaf_func = leaf.group("func") if leaf else frames[-1]
        packages[package_of(leaf_file)] += count
        functions[f"{leaf_func} ({leaf_file})"] += count
        components[component_of(frames)] += count
        for name, marker in CROSS_CUTTING:
            if marker in stack:
                crossing[name] += count
    if not total:
        return ProfileSummary(0, [], [], [], notes=["py-spy recorded no samples"])

    def share(counter: Counter[str], n: int | None = None) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(n)]

    return ProfileSummary(
        total,
        share(packages, 12),
        share(components),
        share(functions, top),
        share(crossing),
    )


def component_of(frames: list[str]) -> str:
    """The component of the innermost frame that belongs to a known package."""
    for frame in reversed(frames):
        match = FRAME.match(frame)
        file = match.group("file") if match else frame
        if file.startswith(LOOP_FRAMES):
            return EVENT_LOOP
        for marker, name in COMPONENTS:
            if file.startswith(marker) or f"/{marker}" in file:
                return name
    return EVENT_LOOP
