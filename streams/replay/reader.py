"""Read a time range of Kafka topics fast: seek by timestamp, consume in batches, stop at the end.

For every partition of every topic the read starts at the first offset whose timestamp is at
or after ``start_ms`` (``offsets_for_times``: a seek, never a scan from the beginning) and
stops before the first offset at or after ``stop_ms``, capped at the high watermark captured
when the read starts, so traffic that keeps arriving does not keep the read going. Records
come in batches (``Consumer.consume(num_messages=BATCH)``); a partition that reaches its stop
offset is paused. Offsets can have gaps (transaction markers, compaction): when a batch comes
back empty, a partition whose position has passed its stop offset counts as done.

Timestamps are the records' own (CreateTime, set by the producer: the gateway's topics are
created with the broker default). A producer clock that runs backwards can put a record of
the range after the stop offset; callers therefore read a little slack on both sides and
filter on the timestamp themselves.

Retention: a partition whose log start offset is above 0 has lost its oldest segments; the
timestamp of its first remaining record is read so that callers can say when the asked range
starts before what the topic still holds (``ReadResult.earliest_ms``).

Cost: one metadata call per topic, two watermark look-ups per partition, two ``offsets_for_times``
calls, then O(records in the range) with one Python object per kept record.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from schemas.errors import SluicegateError

BATCH = 1000
POLL_S = 0.5
STALL_TIMEOUT_S = 30.0  # no progress for this long is an error
Keep = Callable[[bytes | None, bytes | None], bool]  # (key, value) -> keep the record?
OnProgress = Callable[[int, int], None]  # (records done, records in total)


class ReplayReadError(SluicegateError):
    """The broker did not answer, or a topic could not be read."""


class Raw(NamedTuple):
    """One record as read."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Span:
    """What is read of one partition: offsets ``[start, stop)``; ``low``/``high`` watermarks."""

    topic: str
    partition: int
    low: int
    high: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return max(0, self.stop - self.start)


@dataclass
class ReadResult:
    records: list[Raw] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    # topic -> timestamp of its oldest retained record, for topics that lost old segments
    earliest_ms: dict[str, int] = field(default_factory=dict)


def new_consumer(bootstrap: str) -> Any:
    from confluent_kafka import Consumer

    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"sluicegate-replay-{uuid.uuid4().hex}",  # never joined or committed
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
        }
    )


def watermarks(consumer: Any, topic: str, partition: int) -> tuple[int, int]:
    """(low, high) of a partition, retried while the broker settles a fresh topic's leader."""
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    settling = {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
    }
    deadline = time.monotonic() + STALL_TIMEOUT_S
    while True:
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10, cached=False
            )
            return int(low), int(high)
        except KafkaException as exc:
            error = exc.args[0]
            transient = error.retriable() or error.code() in settling
            if not transient or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def plan_spans(consumer: Any, topics: Iterable[str], start_ms: int, stop_ms: int) -> list[Span]:
    """Offsets to read per partition; topics that do not exist are left out."""

    marks: dict[tuple[str, int], tuple[int, int]] = {}
    for topic in topics:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            continue
        for p in sorted(meta.partitions):
            marks[(topic, p)] = watermarks(consumer, topic, p)
    if not marks:
        return []
    starts = _offsets_at(consumer, marks, start_ms)
    stops = _offsets_at(consumer, marks, stop_ms)
    return [
        Span(t, p, low, high, min(starts[(t, p)], high), min(stops[(t, p)], high))
        for (t, p), (low, high) in marks.items()
    ]


def _offsets_at(
    consumer: Any, marks: dict[tuple[str, int], tuple[int, int]], at_ms: int
) -> dict[tuple[str, int], int]:
    """First offset with a timestamp >= ``at_ms`` per partition (the high mark if none)."""
    from confluent_kafka import TopicPartition

    asked = [TopicPartition(t, p, max(0, at_ms)) for t, p in marks]
    found = consumer.offsets_for_times(asked, timeout=10)
    out = {}
    for tp in found:
        where = (tp.topic, tp.partition)
        out[where] = tp.offset if tp.offset >= 0 else marks[where][1]
    return out


def first_timestamps(consumer: Any, spans: Iterable[Span]) -> dict[str, int]:
    """Oldest retained timestamp per topic, over partitions that lost old segments."""
    from confluent_kafka import TopicPartition

    wanted = {(s.topic, s.partition): s.low for s in spans if s.low > 0 and s.high > s.low}
    out: dict[str, int] = {}
    if not wanted:
        return out
    consumer.assign([TopicPartition(t, p, low) for (t, p), low in wanted.items()])
    deadline = time.monotonic() + STALL_TIMEOUT_S
    try:
        while wanted and time.monotonic() < deadline:
            for msg in consumer.consume(len(wanted) * 10, timeout=POLL_S):
                where = (msg.topic(), msg.partition())
                if msg.error() is not None or where not in wanted:
                    continue
                del wanted[where]
                stamp = msg.timestamp()[1]
                topic = where[0]
                out[topic] = min(out.get(topic, stamp), stamp)
    finally:
        consumer.unassign()
    return out


def read_range(
    bootstrap: str,
    topics: Iterable[str],
    start_ms: int,
    stop_ms: int,
    *,
    keep: Keep | None = None,
    on_progress: OnProgress | None = None,
) -> ReadResult:
    """Every record of ``topics`` with a timestamp in about ``[start_ms, stop_ms)`` (see the
    module docstring), in offset order per partition; ``keep`` filters before anything is
    stored."""
    consumer = new_consumer(bootstrap)
    try:
        spans = plan_spans(consumer, topics, start_ms, stop_ms)
        result = ReadResult(spans=spans, earliest_ms=first_timestamps(consumer, spans))
        _consume(consumer, spans, result.records, keep, on_progress)
        return result
    except ReplayReadError:
        raise
    except Exception as exc:  # KafkaException and friends: one clear error for the CLI
        raise ReplayReadError(f"reading {', '.join(topics)}: {exc}") from exc
    finally:
        consumer.close()


def _consume(
    consumer: Any,
    spans: list[Span],
    records: list[Raw],
    keep: Keep | None,
    on_progress: OnProgress | None,
) -> None:
    from confluent_kafka import TopicPartition

    pending = {(s.topic, s.partition): s for s in spans if s.size > 0}
    total = sum(s.size for s in pending.values())
    done = 0
    if on_progress:
        on_progress(0, total)
    if not pending:
        return
    consumer.assign([TopicPartition(s.topic, s.partition, s.start) for s in pending.values()])
    next_offset = {where: s.start for where, s in pending.items()}

    def finish(where: tuple[str, int]) -> int:
        span = pending.pop(where)
        consumer.pause([TopicPartition(*where)])
        return span.stop - next_offset[where]  # the records skipped by gaps count as done

    last_progress = time.monotonic()
    while pending:
        batch = consumer.consume(BATCH, timeout=POLL_S)
        if not batch:
            for where in list(pending):
                position = consumer.position([TopicPartition(*where)])[0].offset
                if position >= pending[where].stop:
                    done += finish(where)
            if time.monotonic() - last_progress > STALL_TIMEOUT_S:
                left = ", ".join(f"{t}[{p}]" for t, p in pending)
                raise ReplayReadError(f"no progress for {STALL_TIMEOUT_S:.0f} s reading {left}")
            continue
        last_progress = time.monotonic()
        for msg in batch:
            error = msg.error()
            if error is not None:
                if error.fatal():
                    raise ReplayReadError(f"reading {msg.topic()}: {error}")
                continue
            where = (msg.topic(), msg.partition())
            span = pending.get(where)
            if span is None:
                continue
            offset = msg.offset()
            if offset >= span.stop:
                done += finish(where)
                continue
            done += offset + 1 - next_offset[where]
            next_offset[where] = offset + 1
            key, value = msg.key(), msg.value()
            if keep is None or keep(key, value):
                records.append(Raw(where[0], where[1], offset, msg.timestamp()[1], key, value))
            if offset + 1 >= span.stop:
                done += finish(where)
        if on_progress:
            on_progress(done, total)
    if on_progress:
        on_progress(total, total)
