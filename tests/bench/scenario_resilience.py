"""(h) Provider resilience: a primary-model outage, a 429 storm, offered load at 5x the RPM.

Each scenario starts its own simulator (its faults and counters then concern this scenario
alone) and its own gateway: one worker (two for the second half of ``rpm5x``) with
interactive deadlines (10 s) and a route ``chat`` = ``sim/sim-large`` with the fallback
``sim/sim-small``. The primary answers in 100 ms with at most 5 calls at once (a capacity
of 50 req/s); the fallback answers in 50 ms without a limit.

- ``outage``: open-loop load at 60% of the primary's capacity; the simulator answers the
  primary with 503 for 30 s (10 s quick), then it is healthy again. The breaker's
  transitions come from the worker's ``/status`` JSON (``breaker_transitions``, polled),
  the outage window from the simulator's installed fault, provider calls from its counters.
- ``storm429``: the same load; the primary answers 429 with ``retry-after: 2`` for 20 s
  (10 s quick). A recording pass-through proxy between the worker and the simulator logs
  every call with its arrival time, status and retry-after (the simulator's own request
  log has counts per id, no times), so each retry can be checked against the retry-after
  its previous attempt was given.
- ``rpm5x``: the primary configured at 600 RPM in the gateway (the simulator itself does
  not limit), 50 req/s offered (5x) for 90 s (13 s quick) with one worker; then a second
  worker joins and the same load goes to a second model with the same limit (no call has
  gone to it yet). Deadlines are 5 s here: the excess waits that long, then is shed. The
  simulator's per-second counters give what the provider received.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

import aiohttp
from aiohttp import web

from connectors.simulator.counters import max_in_window
from tests.bench.framework import Context, Result, Timeline, scenario, sleep_until
from tests.bench.harness import (
    MODEL,
    PRIMARY_MODEL,
    Simulator,
    Stack,
    Worker,
    post_json,
    start_simulator,
)
from tests.bench.loadgen import KafkaTarget, Phase, RequestShape, Schedule
from tests.bench.scenario_overload import _responses as read_responses
from tests.integration.conftest import free_port

FALLBACK_MODEL = "sim-small"
PRIMARY = f"sim/{PRIMARY_MODEL}"  # how the worker names the model (breakers, limiters)
PRIMARY_LATENCY_MS = 100
PRIMARY_SLOTS = 5
CAPACITY_RPS = PRIMARY_SLOTS * 1000 / PRIMARY_LATENCY_MS  # 50 req/s
STEADY_RPS = 0.6 * CAPACITY_RPS
DEADLINE_S = 10.0  # every priority
LATE_GRACE_S = 1.0  # an answer this long after the deadline still counts as on time
BREAKER_WINDOW = 20  # calls
BREAKER_OPEN_S = 5.0
BREAKER: dict[str, Any] = {
    "window_type": "count",
    "window_size": BREAKER_WINDOW,
    "minimum_calls": 10,
    "failure_rate_threshold": 0.5,
    "open_s": BREAKER_OPEN_S,
    "half_open_probes": 3,
}
RETRY = {"max_attempts": 3, "base_ms": 200, "cap_ms": 5000, "budget_ratio": 0.2}
RETRY_BUDGET_MIN_PER_S = 1.0
RETRY_BUDGET_WINDOW_S = 10  # RetryBudgetConfig.window_s (not configurable in sluicegate.toml)
RETRY_AFTER_S = 2.0
# A call that reaches the proxy this soon after another call's 429 left it may have been sent
# before the worker read that 429 (the proxy runs in the busy load-generator process).
IN_FLIGHT_SLACK_S = 0.25
RPM = 600
RPM_OFFERED_RPS = 5 * RPM / 60
RPM_DEADLINE_S = 5.0  # the excess is shed when its deadline passes: a shorter wait for it
SECOND_MODEL = "sim-large-b"  # rpm5x, two workers: a model of its own (an empty RPM window)
SECOND_ROUTE = "chat-b"
COMPLETED = ("ok", "degraded", "cached")


def _gateway_config(
    *, deadline_s: float = DEADLINE_S, rpm: int | None = None, base_url: str | None = None
) -> Callable[[dict[str, Any]], None]:
    """A Stack customizer: deadlines, breaker and retries as above. With ``rpm``: that limit
    on the primary and on a second model, route SECOND_ROUTE; with ``base_url``: a proxy."""

    def customize(config: dict[str, Any]) -> None:
        config["deadlines"] = {p: deadline_s for p in ("critical", "high", "normal", "low")}
        config["resilience"] = {
            "breaker": dict(BREAKER),
            "retry": {**RETRY, "budget_min_per_s": RETRY_BUDGET_MIN_PER_S},
        }
        if rpm is not None:
            models = config["providers"]["sim"]["models"]
            models[PRIMARY_MODEL]["rpm"] = rpm
            models[SECOND_MODEL] = dict(models[PRIMARY_MODEL])
            config["routes"][SECOND_ROUTE] = {
                "primary": f"sim/{SECOND_MODEL}",
                "fallbacks": [f"sim/{FALLBACK_MODEL}"],
            }
        if base_url is not None:
            config["providers"]["sim"]["base_url"] = f"{base_url}/v1"

    return customize


# -- processes ---------------------------------------------------------------------------------


class RouteTarget(KafkaTarget):
    """The harness's Kafka load generator, with requests naming ``route`` as their model."""

    route = MODEL

    def make_record(
        self, seq: int, when_ns: int, priority: str, shape: RequestShape
    ) -> dict[str, Any]:
        record = super().make_record(seq, when_ns, priority, shape)
        record["model"] = self.route
        return record


@contextmanager
def own_simulator(ctx: Context) -> Iterator[Simulator]:
    """A simulator for one scenario, with the primary's and the fallback's profiles set."""
    sim = start_simulator(ctx.processes)
    try:
        sim.set_model(PRIMARY_MODEL, latency_ms=PRIMARY_LATENCY_MS, max_concurrency=PRIMARY_SLOTS)
        sim.set_model(FALLBACK_MODEL, latency_ms=50)
        yield sim
    finally:
        ctx.processes.stop(sim.process, grace_s=3)


@contextmanager
def gateway(
    ctx: Context,
    name: str,
    sim: Simulator,
    workers: int,
    customize: Callable[[dict[str, Any]], None],
    before_first_requests: Callable[[], None] = lambda: None,
) -> Iterator[tuple[Stack, RouteTarget]]:
    """A stack of ``workers`` workers that answered a first batch of requests, and its target.
    ``before_first_requests`` runs before each batch (a worker restart comes before a retry)."""
    stack = Stack.create(name, ctx.processes, sim.url, ctx.bootstrap, ctx.run_dir, customize)
    target: RouteTarget | None = None
    try:
        for i in range(workers):
            with ctx.step(f"{name}: starting worker {i + 1} of {workers}", seconds=10):
                stack.start_worker(f"w{i + 1}")
                stack.wait_balanced()
        target = RouteTarget(stack.bootstrap, stack.prefix)  # the topics have leaders now
        _first_requests(ctx, stack, target, before_first_requests)
        yield stack, target
    finally:
        if target is not None:
            target.close()
        stack.remove()


def add_worker(ctx: Context, stack: Stack, target: RouteTarget) -> None:
    """One more worker in a running stack; returns once it took its share and answered."""
    name = f"w{len(stack.workers) + 1}"
    with ctx.step(f"{stack.name}: starting worker {name}", seconds=10):
        stack.start_worker(name)
        stack.wait_balanced()
    _first_requests(ctx, stack, target, lambda: None)


def _first_requests(
    ctx: Context, stack: Stack, target: RouteTarget, before_each: Callable[[], None]
) -> None:
    """``Context.ensure_healthy`` with a few requests (10/s) to route MODEL."""
    route, target.route = target.route, MODEL
    try:
        ctx.ensure_healthy(stack, target, rate=10.0, before_each=before_each)
    finally:
        target.route = route


class StatusWatch:
    """Polls the workers' /status JSON in a thread: every breaker transition seen, last status."""

    def __init__(self, workers: list[Worker], every_s: float = 0.2) -> None:
        self.workers = workers
        self.every_s = every_s
        self.transitions: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.last: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> StatusWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._read()  # the latest state, after the run

    def _poll(self) -> None:
        while not self._stop.wait(self.every_s):
            self._read()

    def _read(self) -> None:
        for worker in self.workers:
            status = worker.status()
            if not isinstance(status, dict):
                continue
            self.last[worker.name] = status
            for t in status.get("breaker_transitions") or []:
                key = (worker.name, t["model"], t["at_ms"], t["from"], t["to"])
                self.transitions[key] = {"worker": worker.name, **t}

    def transitions_of(self, model: str) -> list[dict[str, Any]]:
        return sorted(
            (t for t in self.transitions.values() if t["model"] == model),
            key=lambda t: int(t["at_ms"]),
        )

    def provider_calls(self) -> dict[str, Any]:
        """The workers' own call counters (calls, first attempts, retries, errors), summed."""
        total: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        for status in self.last.values():
            calls = status.get("provider_calls") or {}
            total.update({k: int(calls.get(k, 0)) for k in ("calls", "first_attempts", "retries")})
            errors.update(calls.get("errors") or {})
        return {**total, "errors": dict(errors)}


@dataclass(frozen=True)
class ProxiedCall:
    request_id: str
    model: str
    arrived_s: float  # monotonic, when the call reached the proxy
    answered_s: float  # monotonic, when the proxy passed the answer back
    status: int
    retry_after_ms: int | None


HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "date"}


def _retry_after_ms(headers: Any) -> int | None:
    if "retry-after-ms" in headers:
        return int(float(headers["retry-after-ms"]))
    if "retry-after" in headers:
        return int(float(headers["retry-after"]) * 1000)
    return None


class RecordingProxy:
    """A pass-through to the simulator's chat completions that logs every call with its times."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.calls: list[ProxiedCall] = []  # appended by the proxy's loop; read after the run
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the recording proxy did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _forward(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        url = f"{self.upstream}{request.path}"
        async with self._session.post(url, data=body, headers=headers) as upstream:
            data = await upstream.read()
            status = upstream.status
            reply_headers = {
                k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS
            }
            retry_after = _retry_after_ms(upstream.headers)
        model = str(json.loads(body).get("model", ""))
        request_id = request.headers.get("x-sluicegate-request-id", "")
        self.calls.append(
            ProxiedCall(request_id, model, arrived, time.monotonic(), status, retry_after)
        )
        return web.Response(body=data, status=status, headers=reply_headers)

    def close(self) -> None:
        async def stop() -> None:
            await self._runner.cleanup()
            await self._session.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


# -- shared measurements ---------------------------------------------------------------------


def epoch_of(phase: Phase) -> float:
    """The wall-clock time (epoch seconds) of the phase's start (its monotonic ``t0_ns``)."""
    return time.time() - (time.monotonic_ns() - phase.t0_ns) / 1e9


def install_fault(sim: Simulator, fault: dict[str, Any]) -> tuple[float, float]:
    """Install ``fault`` (with a ``duration_s``); its window as the simulator fixed it (epoch s)."""
    installed = post_json(f"{sim.url}/admin/faults", fault)["faults"]
    mine = [f for f in installed if f["model"] == fault["model"] and f["kind"] == fault["kind"]]
    return float(mine[0]["start_at"]), float(mine[0]["end_at"])


def per_second(counts: dict[str, Any], model: str) -> dict[int, int]:
    tally = (counts.get("models") or {}).get(model) or {}
    return {int(s): int(n) for s, n in (tally.get("per_second") or {}).items()}


def received(counts: dict[str, Any], model: str) -> int:
    return int(((counts.get("models") or {}).get(model) or {}).get("received", 0))


def by_status(counts: dict[str, Any], model: str) -> dict[str, int]:
    return dict(((counts.get("models") or {}).get(model) or {}).get("by_status") or {})


def phase_table(
    result: Result, name: str, phase: Phase, windows: list[tuple[str, float, float]]
) -> None:
    """Statuses and end-to-end latency per phase window (by intended send time)."""
    rows = []
    for label, start, end in windows:
        statuses = phase.status_counts(start_s=start, end_s=end)
        latency = phase.latency(start_s=start, end_s=end)
        result.latency[f"{name}: {label}"] = latency
        rows.append(
            [
                label,
                f"{start:.1f}-{end:.1f}",
                sum(statuses.values()),
                *(statuses.get(s, 0) for s in ("ok", "degraded", "shed", "failed", "rejected")),
                statuses.get("unanswered", 0),
                latency.get("p50", float("nan")),
                latency.get("p99", float("nan")),
            ]
        )
    result.table(
        f"{name}: requests per status and end-to-end latency (ms) per phase",
        [
            "phase",
            "intended at s",
            "requests",
            "ok",
            "degraded",
            "shed",
            "failed",
            "rejected",
            "unanswered",
            "p50",
            "p99",
        ],
        rows,
    )


def reason_table(
    result: Result, name: str, answers: dict[int, dict[str, Any]]
) -> Counter[tuple[str, str, str, int]]:
    """Responses by status, reason, model used and attempts (read back from the topic), with
    the detail and trail of one response of each kind that is not ``ok``."""
    kinds: Counter[tuple[str, str, str, int]] = Counter()
    example: dict[tuple[str, str, str, int], str] = {}
    for record in answers.values():
        model = record.get("model") or "-"
        kind = (record["status"], record["reason"] or "-", model, record.get("attempts") or 0)
        kinds[kind] += 1
        if record["status"] != "ok" and kind not in example:
            example[kind] = (
                f"{record.get('detail') or ''} | {' > '.join(record.get('trail') or [])}"
            )
    result.table(
        f"{name}: responses by status, reason, model used and attempts",
        ["status", "reason", "model", "attempts", "responses", "example: detail | trail"],
        [[*kind, n, example.get(kind, "")[:300]] for kind, n in kinds.most_common()],
    )
    return kinds


def terminal_checks(
    result: Result, name: str, phase: Phase, deadline_s: float = DEADLINE_S
) -> None:
    """Every request has exactly one answer, and no answer came after the request's deadline."""
    led = phase.ledger
    late = [
        (led.answered_ns[s] - led.intended[s]) / 1e9 - deadline_s
        for s in phase.seqs()
        if led.answered_ns[s] and led.answered_ns[s] - led.intended[s] > deadline_s * 1e9
    ]
    overdue = sum(1 for x in late if x > LATE_GRACE_S)
    result.check(f"{name}: requests without an answer", float(phase.unanswered()), 0.0, "requests")
    result.check(f"{name}: duplicate answers", float(phase.duplicates()), 0.0, "answers")
    result.check(
        f"{name}: answers later than deadline + {LATE_GRACE_S:g} s",
        float(overdue),
        0.0,
        "requests",
    )
    result.figure(
        f"{name}: latest answer after its deadline",
        max(late, default=0.0),
        "s",
        detail=f"{len(late)} answers after the {deadline_s:g} s deadline",
    )


def calls_timeline(
    title: str, t0_epoch: float, counts: dict[str, Any], markers: list[tuple[float, str]]
) -> Timeline:
    """Provider calls per second per model, seconds after the phase start."""
    primary, fallback = per_second(counts, PRIMARY_MODEL), per_second(counts, FALLBACK_MODEL)
    seconds = sorted(set(primary) | set(fallback))
    if not seconds:
        return Timeline(title, [], {}, unit="calls/s", markers=markers)
    span = range(seconds[0], seconds[-1] + 1)
    return Timeline(
        title,
        [round(s - t0_epoch, 3) for s in span],
        {
            f"{PRIMARY_MODEL} calls/s": [float(primary.get(s, 0)) for s in span],
            f"{FALLBACK_MODEL} calls/s": [float(fallback.get(s, 0)) for s in span],
        },
        unit="calls/s",
        markers=markers,
    )


def wait_for_answers(ctx: Context, name: str, phase: Phase, deadline_s: float = DEADLINE_S) -> None:
    with ctx.step(f"{name}: waiting for the last answers", seconds=deadline_s):
        phase.wait_answered(timeout=deadline_s + 20, stall_s=deadline_s + 5)


# -- (a) outage -----------------------------------------------------------------------------


@scenario(
    "outage", "(h1) Primary model outage (503s): breaker and fallback", order=70, full_only=True
)
def outage(ctx: Context) -> Result:
    result = Result()
    before, down, after = ctx.pick(quick=(4.0, 10.0, 8.0), full=(15.0, 30.0, 20.0))
    with own_simulator(ctx) as sim, gateway(ctx, "outage", sim, 1, _gateway_config()) as gw:
        stack, target = gw
        post_json(f"{sim.url}/admin/reset")
        with StatusWatch(stack.workers) as watch:
            phase = target.run(
                Schedule.constant(STEADY_RPS, before + down + after), background=True
            )
            t0_epoch = epoch_of(phase)
            with ctx.step(f"outage: {STEADY_RPS:.0f} req/s, healthy", seconds=before):
                sleep_until(phase.t0_ns / 1e9 + before)
            fault = {"kind": "outage", "model": PRIMARY_MODEL, "duration_s": down}
            start_epoch, end_epoch = install_fault(sim, fault)
            with ctx.step(f"outage: {PRIMARY_MODEL} answers 503 for {down:g} s", seconds=down):
                time.sleep(max(0.0, end_epoch - time.time()))
            with ctx.step("outage: healthy again", seconds=after):
                phase.wait()
            wait_for_answers(ctx, "outage", phase)
        counts = sim.counts() or {}
        answers = read_responses(stack, phase)
    start_s, end_s = start_epoch - t0_epoch, end_epoch - t0_epoch
    total_s = before + down + after
    phase_table(
        result,
        "outage",
        phase,
        [("before", 1.0, start_s), ("during", start_s, end_s), ("after", end_s, total_s)],
    )
    reason_table(result, "outage", answers)
    terminal_checks(result, "outage", phase)
    transitions = watch.transitions_of(PRIMARY)
    opened = next(
        (t for t in transitions if t["to"] == "open" and t["at_ms"] >= start_epoch * 1000), None
    )
    closed = next(
        (t for t in transitions if t["to"] == "closed" and t["at_ms"] >= end_epoch * 1000), None
    )
    to_open = (opened["at_ms"] / 1000 - start_epoch) if opened else None
    to_close = (closed["at_ms"] / 1000 - end_epoch) if closed else None
    open_limit = BREAKER_WINDOW / STEADY_RPS + 1.0
    close_limit = BREAKER_OPEN_S + 1.0
    result.figure("outage: time from outage start to breaker open", _nan(to_open), "s")
    result.figure("outage: time from recovery to breaker closed", _nan(to_close), "s")
    result.check(
        "outage: breaker opens within window / rate + 1 s",
        to_open,
        open_limit,
        "s",
        why_not_measured="no open transition after the outage started",
    )
    result.check(
        "outage: breaker closes within open_s + 1 s of recovery",
        to_close,
        close_limit,
        "s",
        why_not_measured="no close transition after the outage ended",
    )
    during = phase.status_counts(start_s=start_s, end_s=end_s)
    served = sum(during.get(s, 0) for s in COMPLETED)
    result.check(
        "outage: requests during the outage answered by a model (ok/degraded)",
        100 * served / max(1, sum(during.values())),
        99.0,
        "%",
        lower_is_better=False,
    )
    calls = received(counts, PRIMARY_MODEL) + received(counts, FALLBACK_MODEL)
    amplification = calls / max(1, phase.sent)
    result.figure(
        "outage: provider calls per request",
        amplification,
        "x",
        detail=(
            f"{calls} calls ({received(counts, PRIMARY_MODEL)} primary, "
            f"{received(counts, FALLBACK_MODEL)} fallback) for {phase.sent} requests"
        ),
    )
    result.figure("outage: offered load", STEADY_RPS, "req/s", detail="60% of the primary")
    result.table(
        "outage: breaker transitions of sim/sim-large (s after the outage started)",
        ["at s", "from", "to", "reason"],
        [
            [round(t["at_ms"] / 1000 - start_epoch, 3), t["from"], t["to"], t["reason"]]
            for t in transitions
        ],
    )
    result.timelines.append(
        calls_timeline(
            "outage: provider calls per second",
            t0_epoch,
            counts,
            [(start_s, "503s start"), (end_s, "healthy")],
        )
    )
    result.data = {
        "simulator": {m: by_status(counts, m) for m in (PRIMARY_MODEL, FALLBACK_MODEL)},
        "worker_provider_calls": watch.provider_calls(),
        "outage_window_s": [start_s, end_s],
        "breaker": BREAKER,
        "retry": RETRY,
    }
    result.notes.append(
        f"Method: {STEADY_RPS:.0f} req/s open-loop (60% of the primary's {CAPACITY_RPS:.0f} "
        f"req/s); {PRIMARY_MODEL} answers 503 for {down:g} s starting {before:g} s in. Breaker: "
        f"count window {BREAKER['window_size']}, minimum {BREAKER['minimum_calls']} calls, "
        f"failure rate {BREAKER['failure_rate_threshold']}, open {BREAKER['open_s']} s, "
        f"{BREAKER['half_open_probes']} probes. Transition times are the worker's (wall clock, "
        "from /status), the outage window the simulator's; phases are by intended send time."
    )
    return result


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


# -- (b) 429 storm --------------------------------------------------------------------------


def early_retries(calls: list[ProxiedCall], model: str) -> tuple[int, float | None, int]:
    """Retries of one request to ``model`` sent before the retry-after of its previous attempt
    had passed (counted from when that 429 left the proxy): (early, smallest margin s, pairs)."""
    by_request: defaultdict[str, list[ProxiedCall]] = defaultdict(list)
    for call in calls:
        if call.model == model and call.request_id:
            by_request[call.request_id].append(call)
    early, pairs, margins = 0, 0, []
    for attempts in by_request.values():
        attempts.sort(key=lambda c: c.arrived_s)
        for previous, retry in pairwise(attempts):
            if previous.status != 429 or previous.retry_after_ms is None:
                continue
            pairs += 1
            margin = retry.arrived_s - previous.answered_s - previous.retry_after_ms / 1000
            margins.append(margin)
            if margin < -0.005:  # 5 ms of timer resolution
                early += 1
    return early, min(margins, default=None), pairs


def calls_inside_retry_after(calls: list[ProxiedCall], model: str) -> list[float]:
    """Calls to ``model`` that arrived while an earlier 429's retry-after was running: for each,
    how long after that 429 left the proxy it arrived (seconds; the earliest such 429)."""
    to_model = sorted((c for c in calls if c.model == model), key=lambda c: c.arrived_s)
    windows = sorted(
        (c.answered_s, c.answered_s + c.retry_after_ms / 1000)
        for c in to_model
        if c.status == 429 and c.retry_after_ms
    )
    delays: list[float] = []
    for call in to_model:
        covering = [lo for lo, hi in windows if lo < call.arrived_s < hi]
        if covering:
            delays.append(call.arrived_s - min(covering))
    return delays


def retry_counts(calls: list[ProxiedCall]) -> tuple[int, int]:
    """(first attempts, retries): one first attempt per request and model, the rest retries."""
    per: Counter[tuple[str, str]] = Counter((c.request_id, c.model) for c in calls)
    return len(per), sum(n - 1 for n in per.values())


@scenario(
    "storm429",
    "(h2) 429 storm with retry-after: honoured, retries within budget",
    order=71,
    full_only=True,
)
def storm429(ctx: Context) -> Result:
    result = Result()
    before, storm, after = ctx.pick(quick=(4.0, 10.0, 6.0), full=(10.0, 20.0, 15.0))
    with own_simulator(ctx) as sim:
        proxy = RecordingProxy(sim.url)
        try:
            customize = _gateway_config(base_url=proxy.url)
            with gateway(ctx, "storm429", sim, 1, customize) as (stack, target):
                post_json(f"{sim.url}/admin/reset")
                proxy.calls.clear()
                with StatusWatch(stack.workers) as watch:
                    total = before + storm + after
                    phase = target.run(Schedule.constant(STEADY_RPS, total), background=True)
                    t0_epoch = epoch_of(phase)
                    with ctx.step(f"storm429: {STEADY_RPS:.0f} req/s, healthy", seconds=before):
                        sleep_until(phase.t0_ns / 1e9 + before)
                    fault = {
                        "kind": "rate_limit",
                        "model": PRIMARY_MODEL,
                        "retry_after_s": RETRY_AFTER_S,
                        "duration_s": storm,
                    }
                    start_epoch, end_epoch = install_fault(sim, fault)
                    with ctx.step(f"storm429: 429, retry-after {RETRY_AFTER_S:g} s", storm):
                        time.sleep(max(0.0, end_epoch - time.time()))
                    with ctx.step("storm429: healthy again", seconds=after):
                        phase.wait()
                    wait_for_answers(ctx, "storm429", phase)
                counts = sim.counts() or {}
                answers = read_responses(stack, phase)
            calls = list(proxy.calls)
        finally:
            proxy.close()
    start_s, end_s = start_epoch - t0_epoch, end_epoch - t0_epoch
    phase_table(
        result,
        "storm429",
        phase,
        [("before", 1.0, start_s), ("during", start_s, end_s), ("after", end_s, total)],
    )
    reason_table(result, "storm429", answers)
    terminal_checks(result, "storm429", phase)
    early, margin, pairs = early_retries(calls, PRIMARY_MODEL)
    result.check("storm429: retries sent before their retry-after", float(early), 0.0, "retries")
    result.figure(
        "storm429: smallest wait beyond the retry-after",
        _nan(margin),
        "s",
        detail=f"{pairs} retries that followed a 429 with retry-after",
    )
    inside = calls_inside_retry_after(calls, PRIMARY_MODEL)
    late_inside = [d for d in inside if d > IN_FLIGHT_SLACK_S]
    result.check(
        f"storm429: calls sent {IN_FLIGHT_SLACK_S * 1000:.0f} ms or more into another call's "
        "retry-after",
        float(len(late_inside)),
        0.0,
        "calls",
    )
    result.figure(
        "storm429: calls arriving during another call's retry-after",
        len(inside),
        "calls",
        detail=f"at most {max(inside, default=0.0) * 1000:.0f} ms after that 429 was answered",
    )
    log_path = ctx.run_dir / "storm429-proxy-calls.jsonl"
    with log_path.open("w") as log:
        for call in calls:
            log.write(json.dumps({**asdict(call), "t0_s": phase.t0_ns / 1e9}) + "\n")
    firsts, retries = retry_counts(calls)
    span_s = (max(c.arrived_s for c in calls) - min(c.arrived_s for c in calls)) if calls else 0.0
    allowed = RETRY["budget_ratio"] * firsts + RETRY_BUDGET_MIN_PER_S * (
        span_s + RETRY_BUDGET_WINDOW_S
    )
    result.check("storm429: retries vs the retry budget's allowance", float(retries), allowed, "")
    sim_calls = received(counts, PRIMARY_MODEL) + received(counts, FALLBACK_MODEL)
    result.figure(
        "storm429: provider calls per request",
        sim_calls / max(1, phase.sent),
        "x",
        detail=(
            f"{sim_calls} calls for {phase.sent} requests; {firsts} first attempts (per request "
            f"and model), {retries} retries; budget {RETRY['budget_ratio']} x first attempts "
            f"+ {RETRY_BUDGET_MIN_PER_S:g}/s"
        ),
    )
    result.figure(
        "storm429: 429s served", by_status(counts, PRIMARY_MODEL).get("429", 0), "responses"
    )
    result.timelines.append(
        calls_timeline(
            "storm429: provider calls per second",
            t0_epoch,
            counts,
            [(start_s, "429 storm"), (end_s, "healthy")],
        )
    )
    result.data = {
        "simulator": {m: by_status(counts, m) for m in (PRIMARY_MODEL, FALLBACK_MODEL)},
        "worker_provider_calls": watch.provider_calls(),
        "proxy_calls": len(calls),
        "storm_window_s": [start_s, end_s],
        "retry": RETRY,
    }
    result.notes.append(
        f"Method: {STEADY_RPS:.0f} req/s open-loop; {PRIMARY_MODEL} answers every call with 429 "
        f"and retry-after {RETRY_AFTER_S:g} s for {storm:g} s. Every call passes a recording "
        "proxy: a retry is early when it reached the proxy less than retry-after after the "
        "previous attempt's 429 left it. The retry budget's allowance over the run is "
        f"{RETRY['budget_ratio']} x first attempts + {RETRY_BUDGET_MIN_PER_S:g}/s x (run + "
        f"{RETRY_BUDGET_WINDOW_S} s window)."
    )
    return result


# -- (c) 5x the configured RPM ---------------------------------------------------------------


def _rpm_run(
    ctx: Context, sim: Simulator, stack: Stack, target: RouteTarget, model: str, seconds: float
) -> dict[str, Any]:
    """Offer 5x the RPM to ``target.route`` (whose primary is ``model``) for ``seconds``."""
    workers = len(stack.live_workers())
    name = f"rpm5x, {workers} worker{'s' if workers > 1 else ''}"
    phase = target.run(Schedule.constant(RPM_OFFERED_RPS, seconds), background=True)
    t0_epoch = epoch_of(phase)
    with ctx.step(f"{name}: {RPM_OFFERED_RPS:.0f} req/s for {seconds:g} s", seconds):
        phase.wait()
    wait_for_answers(ctx, name, phase, RPM_DEADLINE_S)
    counts = sim.counts() or {}
    return {
        "name": name,
        "model": model,
        "phase": phase,
        "t0_epoch": t0_epoch,
        "per_second": per_second(counts, model),
        "answers": read_responses(stack, phase),
        "shares": [(w.status() or {}).get("limit_share") for w in stack.live_workers()],
    }


@scenario(
    "rpm5x",
    "(h3) Offered load at 5x the configured RPM, one and two workers",
    order=72,
    full_only=True,
)
def rpm5x(ctx: Context) -> Result:
    result = Result()
    seconds = ctx.pick(quick=13.0, full=90.0)
    customize = _gateway_config(deadline_s=RPM_DEADLINE_S, rpm=RPM)
    with own_simulator(ctx) as sim:
        sim.set_model(SECOND_MODEL, latency_ms=PRIMARY_LATENCY_MS, max_concurrency=PRIMARY_SLOTS)

        def reset() -> None:  # count the first requests too, but none of a worker restarted since
            post_json(f"{sim.url}/admin/reset")

        with gateway(ctx, "rpm5x", sim, 1, customize, reset) as (stack, target):
            one = _rpm_run(ctx, sim, stack, target, PRIMARY_MODEL, seconds)
            add_worker(ctx, stack, target)
            target.route = SECOND_ROUTE  # a model no call has gone to yet
            two = _rpm_run(ctx, sim, stack, target, SECOND_MODEL, seconds)
    runs = [one, two]
    rows = []
    series: dict[str, list[float]] = {}
    span = int(seconds + RPM_DEADLINE_S) + 3
    for run in runs:
        name, phase, counts_per_s = run["name"], run["phase"], run["per_second"]
        peak_minute = max_in_window(counts_per_s, 60)
        kinds = reason_table(result, name, run["answers"])
        not_ok: Counter[str] = Counter()
        for (status, reason, _model, _attempts), n in kinds.items():
            if status != "ok":
                not_ok[f"{status} {reason}"] += n
        result.check(
            f"{name}: most calls to {run['model']} in any 60 s vs its {RPM} RPM",
            float(peak_minute),
            float(RPM),
            "calls",
        )
        terminal_checks(result, name, phase, RPM_DEADLINE_S)
        result.figure(
            f"{name}: provider calls in the busiest 60 s",
            peak_minute,
            "calls",
            detail=f"configured {RPM} RPM; offered {RPM_OFFERED_RPS:.0f} req/s",
        )
        rows.append(
            [
                name,
                run["model"],
                phase.sent,
                sum(counts_per_s.values()),
                peak_minute,
                max(counts_per_s.values(), default=0),
                ", ".join(str(n) for n in _per_minute(counts_per_s, run["t0_epoch"])),
                ", ".join(f"{r}: {n}" for r, n in sorted(not_ok.items())) or "-",
                ", ".join(f"{s:.2f}" for s in run["shares"] if s is not None),
            ]
        )
        first = int(run["t0_epoch"])
        series[f"{name}: calls/s"] = [float(counts_per_s.get(first + i, 0)) for i in range(span)]
    result.table(
        f"rpm5x: {RPM_OFFERED_RPS:.0f} req/s offered against a configured {RPM} RPM",
        [
            "run",
            "model",
            "requests",
            "provider calls",
            "busiest 60 s",
            "busiest second",
            "calls per minute from the load start",
            "not ok: status and reason",
            "limit share per worker",
        ],
        rows,
    )
    result.timelines.append(
        Timeline(
            "rpm5x: calls per second the simulator received (s after the load started)",
            [float(i) for i in range(span)],
            series,
            unit="calls/s",
        )
    )
    result.data = {
        f"{run['name']}: per second": {str(k): v for k, v in sorted(run["per_second"].items())}
        for run in runs
    }
    result.notes.append(
        f"Method: {RPM_OFFERED_RPS:.0f} req/s open-loop for {seconds:g} s against a model with "
        f"rpm = {RPM} in the gateway's configuration (the simulator does not limit it), "
        f"deadlines {RPM_DEADLINE_S:g} s. First one worker on route {MODEL} ({PRIMARY}); then a "
        f"second worker joins and the load goes to route {SECOND_ROUTE} (sim/{SECOND_MODEL}, "
        "same limits, no call yet, so the first run's calls are not in its window). The busiest "
        "60 s is the largest sum over 60 consecutive per-second buckets of the simulator's "
        "counters (the stack's first requests are counted too). No TPM is configured: the "
        "simulator counts requests, not tokens, per second."
    )
    return result


def _per_minute(per_s: dict[int, int], t0_epoch: float) -> list[int]:
    """Calls in consecutive 60 s windows from the load start (whole seconds)."""
    start = int(t0_epoch)
    out: list[int] = []
    for second, n in sorted(per_s.items()):
        index = max(0, (second - start) // 60)
        while len(out) <= index:
            out.append(0)
        out[index] += n
    return out
