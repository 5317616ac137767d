"""Open-loop load: requests sent at fixed intended times, latency measured from those times.

A sender thread walks a ``Schedule`` (segments of constant arrival rate) and hands each
request to a target at its *intended* send time; when it falls behind it sends at once,
never waits for answers, and latency is always ``answer received - intended send time``,
so a stalled system is charged for every request it delayed (no coordinated omission).

Two targets share that sender and the bookkeeping (``Ledger``):

- ``KafkaTarget``: a confluent-kafka producer publishes Avro (``schemas.registry``, the
  Confluent wire format) to ``<prefix>.requests.<priority>`` keyed by tenant; a consumer
  thread reads ``<prefix>.responses`` and matches the key (the request id).
- ``HttpTarget``: the same requests straight to the simulator with aiohttp, on an event
  loop in its own thread: the baseline the gateway's added latency is measured against.

Each ``Phase`` (one schedule run) answers: latency histograms (HDR, µs) over any window
of intended time and any priority, status counts, missing and duplicate answers, and the
answer rate over time. Cost: a few µs of Python per request plus an Avro encode/decode.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from hdrh.histogram import HdrHistogram

from schemas import registry
from streams.config import PRIORITIES
from tests.bench.harness import MODEL, PRIMARY_MODEL, TENANTS

STATUSES = ("", "ok", "cached", "degraded", "rejected", "shed", "failed", "other")
STATUS_CODE = {name: i for i, name in enumerate(STATUSES) if name}
HIST_MAX_US = 600_000_000  # 10 minutes


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, HIST_MAX_US, 3)


def percentiles(hist: HdrHistogram) -> dict[str, float]:
    """count, mean and p50/p90/p99/p99.9/max in milliseconds."""
    n = hist.get_total_count()
    if not n:
        return {"count": 0}
    ms = {
        f"p{label}": hist.get_value_at_percentile(p) / 1000
        for label, p in (("50", 50), ("90", 90), ("99", 99), ("99.9", 99.9))
    }
    return {
        "count": n,
        "mean": hist.get_mean_value() / 1000,
        **ms,
        "max": hist.get_max_value() / 1000,
    }


@dataclass(frozen=True)
class Schedule:
    """Open-loop arrivals: consecutive segments of (seconds, requests per second).

    A segment with rate ``inf`` is a backlog: ``seconds`` is then the number of requests,
    all intended at the segment's start (used to measure throughput at saturation).
    """

    segments: tuple[tuple[float, float], ...]

    @classmethod
    def constant(cls, rate: float, seconds: float) -> Schedule:
        return cls(((seconds, rate),))

    @classmethod
    def backlog(cls, requests: int) -> Schedule:
        return cls(((float(requests), float("inf")),))

    @property
    def seconds(self) -> float:
        return sum(s for s, r in self.segments if r != float("inf"))

    def offsets_ns(self) -> Iterator[int]:
        start = 0.0
        for seconds, rate in self.segments:
            if rate == float("inf"):
                for _ in range(int(seconds)):
                    yield int(start * 1e9)
                continue
            n = int(seconds * rate)
            for i in range(n):
                yield int((start + i / rate) * 1e9)
            start += seconds

    def rate_at(self, t: float) -> float:
        start = 0.0
        for seconds, rate in self.segments:
            if rate != float("inf") and start <= t < start + seconds:
                return rate
            start += seconds if rate != float("inf") else 0
        return 0.0


class PriorityMix:
    """Which priority the n-th request has: a shuffled table of 100 slots by weight."""

    def __init__(self, weights: dict[str, float], seed: int = 7) -> None:
        total = sum(weights.values())
        table: list[str] = []
        for name, weight in weights.items():
            table += [name] * round(100 * weight / total)
        random.Random(seed).shuffle(table)
        self.table = table
        self.weights = weights

    def __call__(self, seq: int) -> str:
        return self.table[seq % len(self.table)]


ONLY_NORMAL = PriorityMix({"normal": 1.0})


@dataclass(frozen=True)
class RequestShape:
    """What the requests look like: the cache-miss path (default) or the cache-hit path."""

    name: str
    temperature: float
    cache_mode: str
    same_prompt: bool
    max_tokens: int | None = None  # None: the model's own length (a capped answer is not cached)

    def content(self, seq: int) -> str:
        if self.same_prompt:
            return "Benchmark: the same short question every time."
        return f"Benchmark request {seq}: say something short."


CACHE_MISS = RequestShape("cache-miss", temperature=1.0, cache_mode="bypass", same_prompt=False)
CACHE_HIT = RequestShape("cache-hit", temperature=0.0, cache_mode="default", same_prompt=True)


class Ledger:
    """Per-request facts, indexed by sequence number; written by the sender and reader threads."""

    def __init__(self) -> None:
        self.tag = f"r{uuid.uuid4().hex[:8]}-"
        self.intended: list[int] = []  # monotonic ns
        self.priority: bytearray = bytearray()
        self.answered_ns: list[int] = []  # 0 = not yet
        self.status: bytearray = bytearray()
        self.copies: bytearray = bytearray()  # answers seen (duplicates after a crash)
        self.delivery: bytearray = bytearray()  # 0 pending, 1 accepted by the broker, 2 failed
        self.worker_ms: list[int] = []  # the worker's own total_ms (created -> answered), -1 none

    def add(self, when_ns: int, priority: str) -> int:
        self.intended.append(when_ns)
        self.priority.append(PRIORITIES.index(priority))
        self.answered_ns.append(0)
        self.status.append(0)
        self.copies.append(0)
        self.delivery.append(0)
        self.worker_ms.append(-1)
        return len(self.intended) - 1

    def request_id(self, seq: int) -> str:
        return f"{self.tag}{seq}"

    def seq_of(self, request_id: bytes | str) -> int | None:
        text = request_id.decode() if isinstance(request_id, bytes) else request_id
        if not text.startswith(self.tag):
            return None
        return int(text[len(self.tag) :])

    def answer(self, seq: int, now_ns: int, status: str, worker_ms: int = -1) -> None:
        if self.copies[seq] < 255:
            self.copies[seq] += 1
        if not self.answered_ns[seq]:
            self.answered_ns[seq] = now_ns
            self.status[seq] = STATUS_CODE.get(status, STATUS_CODE["other"])
            self.worker_ms[seq] = worker_ms


@dataclass
class Phase:
    """One run of a schedule against one target: the requests ``lo <= seq < hi``."""

    label: str
    ledger: Ledger
    schedule: Schedule
    t0_ns: int
    lo: int
    hi: int = -1
    end_ns: int = 0
    done: threading.Event = field(default_factory=threading.Event)

    def wait(self) -> Phase:
        self.done.wait()
        return self

    def seqs(self) -> range:
        hi = self.hi if self.hi >= 0 else len(self.ledger.intended)
        return range(self.lo, hi)

    @property
    def sent(self) -> int:
        return sum(1 for s in self.seqs() if self.ledger.delivery[s] != 2)

    @property
    def send_failures(self) -> int:
        return sum(1 for s in self.seqs() if self.ledger.delivery[s] == 2)

    def unanswered(self) -> int:
        d, a = self.ledger.delivery, self.ledger.answered_ns
        return sum(1 for s in self.seqs() if d[s] != 2 and not a[s])

    def duplicates(self) -> int:
        c = self.ledger.copies
        return sum(c[s] - 1 for s in self.seqs() if c[s] > 1)

    def wait_answered(self, timeout: float, stall_s: float = 20.0, every: float = 0.05) -> bool:
        """Until every request the broker accepted has an answer.

        False after ``timeout``, or as soon as no answer has arrived for ``stall_s``.
        """
        self.wait()
        answered, delivery = self.ledger.answered_ns, self.ledger.delivery
        first, last_left = self.lo, -1
        now = time.monotonic()
        deadline, progress_at = now + timeout, now
        while now < deadline:
            while first < self.hi and (answered[first] or delivery[first] == 2):
                first += 1
            left = sum(1 for s in range(first, self.hi) if not answered[s] and delivery[s] != 2)
            if left == 0 and 0 not in delivery[self.lo : self.hi]:
                return True
            if left != last_left:
                last_left, progress_at = left, now
            elif now - progress_at > stall_s:
                return False
            time.sleep(every)
            now = time.monotonic()
        return False

    def _selected(
        self, start_s: float | None, end_s: float | None, priority: str | None
    ) -> Iterator[int]:
        lo_ns = self.t0_ns + int((start_s or 0) * 1e9)
        hi_ns = self.t0_ns + int(end_s * 1e9) if end_s is not None else None
        want = PRIORITIES.index(priority) if priority else None
        led = self.ledger
        for s in self.seqs():
            t = led.intended[s]
            if t < lo_ns or (hi_ns is not None and t >= hi_ns):
                continue
            if want is not None and led.priority[s] != want:
                continue
            yield s

    def histogram(
        self,
        start_s: float | None = None,
        end_s: float | None = None,
        priority: str | None = None,
        statuses: tuple[str, ...] | None = None,
    ) -> HdrHistogram:
        """Latency (µs, from intended send time) of answered requests intended in the window."""
        codes = {STATUS_CODE[s] for s in statuses} if statuses else None
        hist = new_histogram()
        led = self.ledger
        for s in self._selected(start_s, end_s, priority):
            answered = led.answered_ns[s]
            if answered and (codes is None or led.status[s] in codes):
                hist.record_value(min(HIST_MAX_US, max(1, (answered - led.intended[s]) // 1000)))
        return hist

    def latency(self, **window: Any) -> dict[str, float]:
        return percentiles(self.histogram(**window))

    def worker_histogram(self, start_s: float | None = None) -> HdrHistogram:
        """The worker's own view (its total_ms: request created -> response written), µs."""
        hist = new_histogram()
        worker_ms = self.ledger.worker_ms
        for s in self._selected(start_s, None, None):
            if worker_ms[s] >= 0:
                hist.record_value(max(1, min(HIST_MAX_US, worker_ms[s] * 1000)))
        return hist

    def outstanding(self, step_s: float = 0.25) -> tuple[list[float], list[int]]:
        """Requests sent (intended) but not yet answered, sampled every ``step_s``."""
        led = self.ledger
        sent = sorted((led.intended[s] - self.t0_ns) / 1e9 for s in self.seqs())
        answered = self.answer_times_s()
        if not sent:
            return [], []
        end = max(sent[-1], answered[-1] if answered else 0.0)
        ts, out, i, j = [], [], 0, 0
        t = 0.0
        while t <= end + step_s:
            while i < len(sent) and sent[i] <= t:
                i += 1
            while j < len(answered) and answered[j] <= t:
                j += 1
            ts.append(round(t, 3))
            out.append(i - j)
            t += step_s
        return ts, out

    def status_counts(
        self, start_s: float | None = None, end_s: float | None = None, priority: str | None = None
    ) -> Counter[str]:
        led = self.ledger
        counts: Counter[str] = Counter()
        for s in self._selected(start_s, end_s, priority):
            counts[STATUSES[led.status[s]] or "unanswered"] += 1
        return counts

    def answer_times_s(self) -> list[float]:
        """Answer times (s after the phase start) of every answered request, sorted."""
        a = self.ledger.answered_ns
        return sorted((a[s] - self.t0_ns) / 1e9 for s in self.seqs() if a[s])

    def rate_series(self, bucket_s: float = 1.0) -> tuple[list[float], list[float]]:
        """Answers per second in consecutive buckets: (bucket start s, rate)."""
        times = self.answer_times_s()
        if not times:
            return [], []
        n = int(times[-1] / bucket_s) + 1
        counts = [0] * n
        for t in times:
            counts[max(0, int(t / bucket_s))] += 1
        return [i * bucket_s for i in range(n)], [c / bucket_s for c in counts]


class Target:
    """Where the sender's requests go; subclasses implement ``send``."""

    name = "target"

    def __init__(self) -> None:
        self.ledger = Ledger()
        self._sending = threading.Lock()

    def send(self, seq: int, when_ns: int, priority: str, shape: RequestShape) -> None:
        raise NotImplementedError

    def poll(self) -> None:
        """Called by the sender now and then (delivery reports)."""

    def close(self) -> None:
        pass

    def run(
        self,
        schedule: Schedule,
        *,
        mix: PriorityMix = ONLY_NORMAL,
        shape: RequestShape = CACHE_MISS,
        label: str = "",
        background: bool = False,
        stop: threading.Event | None = None,
    ) -> Phase:
        """Send ``schedule`` open-loop; returns at once with ``background`` (then ``wait``)."""
        phase = Phase(label, self.ledger, schedule, time.monotonic_ns() + 5_000_000, 0)
        thread = threading.Thread(
            target=self._send_loop, args=(phase, mix, shape, stop), daemon=True
        )
        self._sending.acquire()  # one schedule at a time per target
        phase.lo = len(self.ledger.intended)
        thread.start()
        return phase if background else phase.wait()

    def _send_loop(
        self, phase: Phase, mix: PriorityMix, shape: RequestShape, stop: threading.Event | None
    ) -> None:
        add, send, clock = self.ledger.add, self.send, time.monotonic_ns
        try:
            for n, offset in enumerate(phase.schedule.offsets_ns()):
                when = phase.t0_ns + offset
                delay = when - clock()
                if delay > 0:
                    if stop is not None and stop.is_set():
                        break
                    time.sleep(delay / 1e9)
                priority = mix(n)
                send(add(when, priority), when, priority, shape)
                if n % 64 == 63:
                    self.poll()
        finally:
            phase.hi = len(self.ledger.intended)
            phase.end_ns = clock()
            self.poll()
            self._sending.release()
            phase.done.set()


def request_record(
    ledger: Ledger, seq: int, when_ns: int, priority: str, shape: RequestShape
) -> dict[str, Any]:
    created = time.time_ns() // 1_000_000 - (time.monotonic_ns() - when_ns) // 1_000_000
    return {
        "request_id": ledger.request_id(seq),
        "tenant": TENANTS[(seq * 7) % len(TENANTS)],
        "feature": "default",
        "priority": priority,
        "reply_to": None,
        "created_at": created,
        "deadline_ms": None,
        "model": MODEL,
        "messages": [{"role": "user", "content": shape.content(seq), "name": None}],
        "temperature": shape.temperature,
        "max_tokens": shape.max_tokens,
        "metadata": {},
        "cache_mode": shape.cache_mode,
    }


class KafkaTarget(Target):
    """Requests to ``<prefix>.requests.<priority>``; answers read from ``<prefix>.responses``."""

    name = "kafka"

    def __init__(self, bootstrap: str, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": 0,
                "acks": "all",
                "enable.idempotence": True,
                "queue.buffering.max.messages": 2_000_000,
            }
        )
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"{prefix}-bench-reader",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
                "fetch.min.bytes": 1,
            }
        )
        topic = f"{prefix}.responses"
        metadata = self.consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        assignment = []
        for p in partitions:  # start at the end: only answers to this run's requests
            _low, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            assignment.append(TopicPartition(topic, p, high))
        self.consumer.assign(assignment)
        self._closing = threading.Event()
        self.reader = threading.Thread(target=self._read_loop, daemon=True)
        self.reader.start()

    def make_record(
        self, seq: int, when_ns: int, priority: str, shape: RequestShape
    ) -> dict[str, Any]:
        """The request record ``send`` produces; subclasses change its tenant, model ..."""
        return request_record(self.ledger, seq, when_ns, priority, shape)

    def send(self, seq: int, when_ns: int, priority: str, shape: RequestShape) -> None:
        record = self.make_record(seq, when_ns, priority, shape)
        value = registry.encode(registry.CHAT_REQUEST, record)
        key = record["tenant"].encode()
        headers = [("sg-request-id", record["request_id"].encode())]
        topic = f"{self.prefix}.requests.{priority}"
        while True:
            try:
                self.producer.produce(
                    topic, value, key, headers=headers, on_delivery=self._delivered(seq)
                )
                return
            except BufferError:
                self.producer.poll(0.01)

    def _delivered(self, seq: int) -> Callable[[KafkaError | None, Any], None]:
        delivery = self.ledger.delivery

        def report(err: KafkaError | None, _msg: Any) -> None:
            delivery[seq] = 2 if err is not None else 1

        return report

    def poll(self) -> None:
        self.producer.poll(0)

    def _read_loop(self) -> None:
        ledger, decode, clock = self.ledger, registry.decode, time.monotonic_ns
        while not self._closing.is_set():
            self.producer.poll(0)
            # poll() returns on the first message; consume(timeout=0) then takes what else
            # is there. (consume with a timeout waits for a full batch: it adds latency.)
            first = self.consumer.poll(0.05)
            if first is None:
                continue
            now = clock()
            messages = [first, *self.consumer.consume(num_messages=500, timeout=0)]
            for msg in messages:
                if msg.error() is not None:
                    continue
                seq = ledger.seq_of(msg.key() or b"")
                if seq is None or seq >= len(ledger.intended):
                    continue
                try:
                    record = decode(registry.CHAT_RESPONSE, msg.value() or b"")
                except registry.SchemaError:
                    ledger.answer(seq, now, "other")
                    continue
                ledger.answer(seq, now, record["status"], int(record.get("total_ms") or 0))

    def close(self) -> None:
        self._closing.set()
        self.reader.join(5)
        self.producer.flush(5)
        self.consumer.close()


class HttpTarget(Target):
    """The same requests straight to the simulator (``/v1/chat/completions``) with aiohttp."""

    name = "direct"

    def __init__(self, base_url: str, max_connections: int = 256) -> None:
        super().__init__()
        self.url = f"{base_url}/v1/chat/completions"
        self.max_connections = max_connections
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run_loop, daemon=True)
        self.thread.start()
        self._ready.wait(10)

    def _run_loop(self) -> None:
        import aiohttp

        asyncio.set_event_loop(self.loop)

        async def open_session() -> None:
            connector = aiohttp.TCPConnector(limit=self.max_connections)
            self.session = aiohttp.ClientSession(connector=connector)

        self.loop.run_until_complete(open_session())
        self._ready.set()
        self.loop.run_forever()

    def send(self, seq: int, when_ns: int, priority: str, shape: RequestShape) -> None:
        call: dict[str, Any] = {
            "model": PRIMARY_MODEL,
            "messages": [{"role": "user", "content": shape.content(seq)}],
            "temperature": shape.temperature,
        }
        if shape.max_tokens is not None:
            call["max_tokens"] = shape.max_tokens
        body = json.dumps(call).encode()
        self.ledger.delivery[seq] = 1
        self.loop.call_soon_threadsafe(self._start, seq, body)

    def _start(self, seq: int, body: bytes) -> None:
        self.loop.create_task(self._call(seq, body))

    async def _call(self, seq: int, body: bytes) -> None:
        headers = {
            "content-type": "application/json",
            "x-sluicegate-request-id": self.ledger.request_id(seq),
        }
        try:
            async with self.session.post(self.url, data=body, headers=headers) as response:
                data = await response.read()
                json.loads(data)
                status = "ok" if response.status == 200 else "failed"
        except Exception:
            status = "failed"
        self.ledger.answer(seq, time.monotonic_ns(), status)

    def close(self) -> None:
        async def shut() -> None:
            await self.session.close()

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class CpuSnapshot:
    wall: float
    own: float
    pids: dict[int, float]


def cpu_snapshot(pids: list[int]) -> CpuSnapshot:
    from tests.bench.harness import cpu_seconds, own_cpu_seconds

    return CpuSnapshot(time.monotonic(), own_cpu_seconds(), {p: cpu_seconds(p) for p in pids})


@dataclass
class CpuUse:
    """CPU seconds used between two snapshots: the generator's own and each watched pid's."""

    wall_s: float
    generator_s: float
    pids: dict[int, float]

    def total(self, pids: list[int]) -> float:
        return sum(self.pids.get(p, 0.0) for p in pids)


def cpu_between(before: CpuSnapshot, after: CpuSnapshot) -> CpuUse:
    return CpuUse(
        after.wall - before.wall,
        after.own - before.own,
        {p: after.pids[p] - before.pids[p] for p in before.pids if p in after.pids},
    )


def cpu_meter(pids: list[int]) -> Callable[[], CpuUse]:
    """Start measuring now; calling the result returns the CPU used since."""
    before = cpu_snapshot(pids)
    return lambda: cpu_between(before, cpu_snapshot(pids))
