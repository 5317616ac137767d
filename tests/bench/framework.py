"""The benchmark framework: scenario registry, run context, and what a scenario returns.

Adding a scenario is one function in one file. Put a module named ``scenario_<topic>.py``
in tests/bench/ (it is discovered automatically) with::

    from tests.bench.framework import Context, Result, scenario
    from tests.bench.loadgen import Schedule

    @scenario("outage", "(h) Provider outage: breaker and fallbacks", order=70)
    def provider_outage(ctx: Context) -> Result:
        stack = ctx.stack("single")        # started on first use, shared, stopped at the end
        target = ctx.kafka(stack)          # the open-loop Kafka load generator for it
        rate = 0.5 * ctx.saturation_rps()  # one worker's capacity, from scenario "saturation"
        seconds = ctx.pick(quick=5, full=30)
        with ctx.step("outage: 50% load", seconds=seconds):   # the progress display
            phase = target.run(Schedule.constant(rate, seconds))
        phase.wait_answered(30)
        result = Result()
        result.figure("p99 during the outage", phase.latency()["p99"], "ms")
        result.check("p99 during the outage", phase.latency()["p99"], 500, "ms")
        return result

The runner calls scenarios in ``order``; ``full_only=True`` leaves a scenario out of
``make bench-quick``, which has to finish within 3 minutes in all: keep a scenario's quick
mode to about 15 s. Everything a ``Result`` holds (figures, tables, latency percentiles,
timelines, target checks, notes, raw data) ends up in the JSON, the markdown and the
charts without further code. Comparisons go through ``interleave`` (A B A B ..., then the
median, min and max of the per-round values), so noise on a shared machine hits both
sides alike. tests/bench/measure.py has the drains, open-loop rounds and py-spy profiles
the core scenarios use; ``ctx.simulator`` is the shared zero-latency simulator (a scenario
that changes its models must put them back).
"""

from __future__ import annotations

import importlib
import pkgutil
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.bench.harness import Processes, Simulator, Stack, start_simulator
from tests.bench.loadgen import HttpTarget, KafkaTarget

T = TypeVar("T")


# -- what a scenario returns -----------------------------------------------------------------


@dataclass
class Spread:
    """A value measured in several rounds: the median, and the smallest and largest."""

    median: float
    low: float
    high: float
    values: list[float]

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        clean = [v for v in values if v == v]  # drop NaN
        if not clean:
            return cls(float("nan"), float("nan"), float("nan"), values)
        return cls(statistics.median(clean), min(clean), max(clean), values)


@dataclass
class Figure:
    """One headline number for the summary table; throughput figures carry CPU per request."""

    label: str
    value: float
    unit: str
    low: float | None = None  # min over rounds
    high: float | None = None  # max over rounds
    worker_cpu_us: float | None = None  # worker CPU µs per request
    generator_cpu_pct: float | None = None  # load generator CPU, % of one core
    detail: str = ""


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Timeline:
    """Series over time for the throughput chart: ``series[label]`` has a value per ``t``."""

    title: str
    t: list[float]
    series: dict[str, list[float]]
    unit: str = "responses/s"
    markers: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class Check:
    """A target: measured ``value`` against ``limit`` (lower is better unless stated)."""

    name: str
    value: float | None
    limit: float
    unit: str
    lower_is_better: bool = True
    why_not_measured: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None or self.value != self.value:
            return None
        return self.value <= self.limit if self.lower_is_better else self.value >= self.limit

    def verdict(self) -> str:
        if self.met is None:
            return f"not measured: {self.why_not_measured or 'no value'}"
        assert self.value is not None
        gap = abs(self.value - self.limit)
        ratio = self.value / self.limit if self.limit else float("inf")
        if self.met:
            return f"met, by {gap:.3g} {self.unit} ({ratio:.2f}x the target)"
        return f"missed, by {gap:.3g} {self.unit} ({ratio:.2f}x the target)"


@dataclass
class Result:
    """Everything a scenario reports; every field is optional."""

    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    latency: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> percentiles
    timelines: list[Timeline] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    skipped: str = ""

    def figure(self, label: str, value: float | Spread, unit: str, **extra: Any) -> Figure:
        if isinstance(value, Spread):
            extra.setdefault("low", value.low)
            extra.setdefault("high", value.high)
            value = value.median
        fig = Figure(label, value, unit, **extra)
        self.figures.append(fig)
        return fig

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.tables.append(Table(title, columns, [[_cell(c) for c in row] for row in rows]))

    def check(self, name: str, value: float | None, limit: float, unit: str, **kw: Any) -> None:
        self.checks.append(Check(name, value, limit, unit, **kw))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "n/a"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


# -- the registry ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    func: Callable[[Context], Result]
    order: int
    full_only: bool
    module: str


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    key: str, title: str, *, order: int = 100, full_only: bool = False
) -> Callable[[Callable[[Context], Result]], Callable[[Context], Result]]:
    """Register a scenario under ``key`` (unique); the runner calls it with a Context."""

    def register(func: Callable[[Context], Result]) -> Callable[[Context], Result]:
        if key in SCENARIOS and SCENARIOS[key].func is not func:
            raise ValueError(f"scenario {key!r} is registered twice")
        SCENARIOS[key] = Scenario(key, title, func, order, full_only, func.__module__)
        return func

    return register


def discover() -> list[Scenario]:
    """Import every tests/bench/scenario_*.py; return the scenarios in run order."""
    here = Path(__file__).parent
    for info in pkgutil.iter_modules([str(here)]):
        if info.name.startswith("scenario_"):
            importlib.import_module(f"tests.bench.{info.name}")
    return sorted(SCENARIOS.values(), key=lambda s: (s.order, s.key))


def interleave(rounds: int, variants: dict[str, Callable[[int], T]]) -> dict[str, list[T]]:
    """Run the variants in turn, ``rounds`` times (A B A B ...); results per variant."""
    out: dict[str, list[T]] = {name: [] for name in variants}
    for r in range(rounds):
        for name, run in variants.items():
            out[name].append(run(r))
    return out


# -- the run context -------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    name: str  # "quick" or "full"
    rounds: int  # interleaved rounds per comparison


QUICK = Mode("quick", rounds=3)
FULL = Mode("full", rounds=5)


class Progress:
    """What the runner shows while a step runs (a no-op here; the runner plugs in rich)."""

    def step_started(self, text: str, seconds: float) -> None:
        pass

    def step_finished(self) -> None:
        pass


# Stacks scenarios can ask for by name: how many workers each starts.
STACK_WORKERS = {"single": 1, "pair": 2}


class Context:
    """What a scenario gets: the mode, shared processes, stacks, load targets, findings."""

    def __init__(
        self, mode: Mode, bootstrap: str, run_dir: Path, progress: Progress | None = None
    ) -> None:
        self.mode = mode
        self.bootstrap = bootstrap
        self.run_dir = run_dir
        self.processes = Processes(run_dir / "logs")
        self.progress = progress or Progress()
        self.findings: dict[str, Any] = {}  # what one scenario measured for later ones
        self.incidents: list[str] = []  # what went wrong and was worked around (reported)
        self._simulator: Simulator | None = None
        self._stacks: dict[str, Stack] = {}
        self._targets: dict[str, KafkaTarget | HttpTarget] = {}
        self._lock = threading.Lock()

    @property
    def quick(self) -> bool:
        return self.mode.name == "quick"

    def pick(self, *, quick: T, full: T) -> T:
        return quick if self.quick else full

    @property
    def simulator(self) -> Simulator:
        """The shared provider simulator (zero latency unless a scenario changes a model)."""
        if self._simulator is None:
            self._simulator = start_simulator(self.processes)
        return self._simulator

    def stack(self, name: str) -> Stack:
        """A running gateway by name ("single": one worker, "pair": two), started on demand."""
        if name not in self._stacks:
            stack = Stack.create(
                name, self.processes, self.simulator.url, self.bootstrap, self.run_dir
            )
            self._stacks[name] = stack
            # One after the other: a worker joining a running group, as in production (and
            # no two workers racing to create the same changelog topics).
            for i in range(STACK_WORKERS[name]):
                with self.step(f"starting stack {name!r}: worker {i + 1}", seconds=10):
                    stack.start_worker(f"w{i + 1}")
                    stack.wait_balanced()
                self.ensure_healthy(stack)
        return self._stacks[name]

    def ensure_healthy(
        self,
        stack: Stack,
        target: KafkaTarget | None = None,
        rate: float = 100.0,
        before_each: Callable[[], None] = lambda: None,
        attempts: int = 3,
    ) -> None:
        """Send first requests (one second at ``rate``) through ``target``, by default the
        stack's ``kafka`` target; restart the workers whose log shows they are broken, or all
        of them when the requests were not answered. ``before_each`` runs before each try.

        Works around a worker start-up race (reported as an incident each time it happens):
        Faust creates the tables' changelog topics while starting, the consumer's metadata
        may miss them, and the first table write from a stream then crashes its agent.
        """
        from tests.bench.loadgen import Schedule

        for attempt in range(1, attempts + 1):
            before_each()
            with self.step(f"stack {stack.name!r}: first requests", seconds=2):
                phase = (target or self.kafka(stack)).run(Schedule.constant(rate, 1.0))
                answered = phase.wait_answered(timeout=15, stall_s=6)
                time.sleep(0.5)  # let the usage agent take its share
            broken = [w for w in stack.workers if w.trouble()]
            if answered and not broken:
                return
            for worker in broken or list(stack.workers):
                self.incidents.append(
                    f"stack {stack.name!r}, worker {worker.name}: restarted after its first "
                    f"requests (attempt {attempt}): "
                    f"{worker.trouble() or 'requests were not answered'}"
                )
                with self.step(f"restarting worker {worker.name} of {stack.name!r}", 10):
                    stack.restart_worker(worker)
        raise RuntimeError(f"stack {stack.name!r} still broken after {attempts} restarts")

    def retire_stack(self, name: str) -> None:
        """Stop a stack's workers (e.g. after killing one); asking for it again starts anew."""
        stack = self._stacks.pop(name, None)
        if stack is not None:
            target = self._targets.pop(f"kafka:{stack.prefix}", None)
            if target is not None:
                target.close()
            stack.remove()

    def retire_all_stacks(self) -> None:
        """After a failed scenario: the next one starts from fresh workers."""
        for name in list(self._stacks):
            self.retire_stack(name)

    def kafka(self, stack: Stack) -> KafkaTarget:
        """The open-loop Kafka load generator for a stack (one per stack, kept)."""
        key = f"kafka:{stack.prefix}"
        if key not in self._targets:
            self._targets[key] = KafkaTarget(stack.bootstrap, stack.prefix)
        target = self._targets[key]
        assert isinstance(target, KafkaTarget)
        return target

    def direct(self) -> HttpTarget:
        """The open-loop HTTP load generator straight to the simulator."""
        if "direct" not in self._targets:
            self._targets["direct"] = HttpTarget(self.simulator.url)
        target = self._targets["direct"]
        assert isinstance(target, HttpTarget)
        return target

    def saturation_rps(self) -> float:
        """One worker's throughput at saturation, from the saturation scenario (or a probe)."""
        if "saturation_rps" not in self.findings:
            from tests.bench.measure import probe_saturation

            self.findings["saturation_rps"] = probe_saturation(self)
        rate = float(self.findings["saturation_rps"])
        if not rate > 0:
            del self.findings["saturation_rps"]
            raise RuntimeError("one worker's saturation throughput could not be measured")
        return rate

    @contextmanager
    def step(self, text: str, seconds: float) -> Iterator[None]:
        """Show ``text`` with a bar of ``seconds`` while the block runs."""
        self.progress.step_started(text, seconds)
        try:
            yield
        finally:
            self.progress.step_finished()

    def close(self) -> None:
        """Stop everything this run started (called from the runner's ``finally``)."""
        for target in self._targets.values():
            try:
                target.close()
            except Exception:  # closing is best effort: the processes go next
                continue
        self._targets.clear()
        self.processes.stop_all()
        for stack in self._stacks.values():
            shutil.rmtree(stack.directory, ignore_errors=True)  # RocksDB files; logs stay
            try:
                stack.delete_topics()
            except Exception:  # a broker that is gone has no topics
                continue
        self._stacks.clear()


def sleep_until(deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
