"""Profile a running worker with py-spy and summarise where its CPU goes.

``py-spy record --format raw`` writes one line per distinct stack ("frame;frame;... count",
each frame ``function (file:line)``, idle threads excluded). The summary attributes every
sample three ways: by the package of the innermost frame (self time), by activity (a stack
counts for every activity one of its frames belongs to: inclusive), and the functions with
the most self time. py-spy is optional: ``available()`` says whether it is installed.
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

# Activities, in the words of the request path; a stack belongs to each whose marker it holds.
ACTIVITIES = (
    ("Kafka fetch + Faust stream delivery", ("aiokafka/consumer", "faust/transport/consumer", "faust/streams", "faust/channels", "faust/topics")),
    ("Kafka produce (responses, usage)", ("aiokafka/producer", "faust/transport/producer", "faust/transport/drivers/aiokafka.py:send")),
    ("provider HTTP call (httpx over aiohttp)", ("httpx/", "httpx_aiohttp/", "aiohttp/", "httpcore/")),
    ("Avro encode/decode", ("fastavro/", "schemas/registry.py")),
    ("gateway logic (streams/, policies)", ("streams/",)),
    ("provider connector code (connectors/)", ("connectors/",)),
    ("Faust offset commit / acks", ("commit (faust/", "commit (aiokafka/")),
    ("asyncio scheduling", ("asyncio/",)),
)


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
    by_activity: list[tuple[str, float]]  # (activity, % of samples) inclusive
    top_functions: list[tuple[str, float]]  # (function (file), % self)
    notes: list[str] = field(default_factory=list)


def summarize(raw: str, top: int = 15) -> ProfileSummary:
    packages: Counter[str] = Counter()
    activities: Counter[str] = Counter()
    functions: Counter[str] = Counter()
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
        for name, markers in ACTIVITIES:
            if any(marker in frame for frame in frames for marker in markers):
                activities[name] += count
    if not total:
        return ProfileSummary(0, [], [], [], ["py-spy recorded no samples"])

    def share(counter: Counter[str], n: int | None = None) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(n)]

    return ProfileSummary(total, share(packages, 12), share(activities), share(functions, top))
