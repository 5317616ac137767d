"""Sample a stack while load runs: consumer lag, the worker's queue and its memory.

Consumer lag is the broker's view: for each request partition, the end offset minus the
offset the worker group committed (AdminClient ``list_offsets`` and
``list_consumer_group_offsets``). It lags the truth by up to one commit interval. A
background thread samples every ``interval_s``; each sample costs two admin requests and a
few /proc reads.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

from streams.config import PRIORITIES
from streams.topics import admin_client
from tests.bench.harness import PARTITIONS, Stack, memory_kb


@dataclass
class Sample:
    t: float  # seconds after the monitor started
    lag: dict[str, int]  # priority -> messages behind (committed offsets)
    queued: int  # the workers' scheduler depth, summed (/status)
    rss_kb: int  # the workers' resident memory, summed
    hwm_kb: int  # the largest peak resident set among the workers


@dataclass
class Monitor:
    stack: Stack
    interval_s: float = 0.5
    t0: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._admin = admin_client(self.stack.bootstrap)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, t0: float | None = None) -> Monitor:
        if t0 is not None:
            self.t0 = t0
        self._thread.start()
        return self

    def stop(self) -> Monitor:
        self._stop.set()
        self._thread.join(10)
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            with contextlib.suppress(Exception):  # a missed sample is not worth a failed run
                self.samples.append(self.sample())
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def sample(self) -> Sample:
        now = time.monotonic() - self.t0
        try:
            lag = self.lag()
        except Exception:  # the admin API timed out under load: no lag in this sample
            lag = {}
        queued = rss = hwm = 0
        for worker in self.stack.live_workers():
            mem = memory_kb(worker.pid)
            rss += mem.get("VmRSS", 0)
            hwm = max(hwm, mem.get("VmHWM", 0))
            status = worker.status() or {}
            queued += int(status.get("queued", 0) or 0)
        return Sample(now, lag, queued, rss, hwm)

    def lag(self) -> dict[str, int]:
        tps = [
            TopicPartition(f"{self.stack.prefix}.requests.{p}", i)
            for p in PRIORITIES
            for i in range(PARTITIONS)
        ]
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        futures = self._admin.list_offsets({tp: latest for tp in tps}, request_timeout=5)
        ends = {
            (tp.topic, tp.partition): future.result(timeout=5).offset
            for tp, future in futures.items()
        }
        request = [ConsumerGroupTopicPartitions(self.stack.group_id, tps)]
        committed: dict[tuple[str, int], int] = {}
        for future in self._admin.list_consumer_group_offsets(request).values():
            for tp in future.result(timeout=5).topic_partitions:
                committed[(tp.topic, tp.partition)] = max(0, tp.offset)
        out = {p: 0 for p in PRIORITIES}
        for (topic, partition), end in ends.items():
            behind = max(0, end - committed.get((topic, partition), 0))
            out[topic.rsplit(".", 1)[-1]] += behind
        return out

    # -- summaries -----------------------------------------------------------------------

    def peak_lag(self) -> tuple[int, dict[str, int]]:
        """The largest total lag, and the largest lag seen per priority."""
        total = max((sum(s.lag.values()) for s in self.samples), default=0)
        per = {p: max((s.lag.get(p, 0) for s in self.samples), default=0) for p in PRIORITIES}
        return total, per

    def peak_hwm_kb(self) -> int:
        return max((s.hwm_kb for s in self.samples), default=0)

    def series(self) -> dict[str, Any]:
        return {
            "t": [round(s.t, 2) for s in self.samples],
            "lag": [sum(s.lag.values()) if s.lag else None for s in self.samples],
            "queued": [s.queued for s in self.samples],
            "rss_mb": [round(s.rss_kb / 1024, 1) for s in self.samples],
        }
