"""Read the request topics with a consumer of the worker's own, so pauses are exact.

Faust still subscribes to the request topics (its group assignment decides which worker
owns which partitions, and keeps the tables co-partitioned with them), but it does not
deliver their records: its stream buffers are shared by one delivery loop, so a paused
priority whose buffer is full would hold up every other priority, and its
``pause_partitions`` is undone by each rebalance and recovery. Instead this reader mirrors
Faust's assignment of the request partitions onto a plain aiokafka consumer (same group,
manual assignment, no commits of its own: the gateway commits through Faust's group
member once requests are answered) and pauses and resumes partitions there. Paused
partitions are not fetched at all, and records already fetched for them are dropped by
aiokafka and read again on resume, so nothing is lost and the backlog stays in Kafka.

Each record is handed to the gateway as a Faust ``Event`` made current for its task, so
table writes go to the record's partition exactly as they would inside a Faust agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from faust.types.tuples import TP, Message

from streams.event_context import current_event
from streams.policies.scheduler import Priority

log = logging.getLogger("sluicegate.intake")

FETCH_TIMEOUT_MS = 100


def to_event(app: faust.App, record: ConsumerRecord[bytes, bytes]) -> faust.Event:
    """The record as the Faust event a request-topic agent would have received."""
    tp = TP(record.topic, record.partition)
    message = Message(
        record.topic,
        record.partition,
        record.offset,
        record.timestamp / 1000.0,
        record.timestamp_type,
        list(record.headers or ()),
        record.key,
        record.value,
        None,
        record.serialized_key_size,
        record.serialized_value_size,
        tp=tp,
    )
    return faust.Event(app, record.key, record.value, message.headers, message)


class RequestReader:
    """The worker's consumer of the four request topics.

    ``handle`` takes one event and returns once the record is taken (queued or answered);
    ``may_take(priority)`` says whether intake may take a record of that priority now.
    """

    def __init__(
        self,
        app: faust.App,
        bootstrap_servers: str,
        topic_priority: dict[str, Priority],
        handle: Callable[[faust.Event], Awaitable[None]],
        may_take: Callable[[Priority], bool],
        *,
        batch_records: int = 50,
    ) -> None:
        self.app = app
        self.topic_priority = topic_priority
        self.handle = handle
        self.may_take = may_take
        self.batch_records = batch_records
        self.bootstrap_servers = bootstrap_servers
        self._consumer: AIOKafkaConsumer | None = None  # made in start(), inside the loop
        self._assigned: set[TopicPartition] = set()
        self._by_priority: dict[Priority, list[TopicPartition]] = {}  # most urgent first
        self._paused: frozenset[Priority] = frozenset()
        self._room = asyncio.Event()

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=self.app.conf.id,  # committed offsets are read from Faust's group
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.batch_records,
            max_partition_fetch_bytes=256 * 1024,
            fetch_max_wait_ms=FETCH_TIMEOUT_MS,
        )
        await self._consumer.start()
        self.assign(self._assigned)

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    # -- assignment (from Faust's rebalance signals) -----------------------------------

    def assign(self, partitions: Iterable[Any]) -> None:
        """Own exactly these request partitions, reading each from its committed offset."""
        wanted = {
            TopicPartition(tp.topic, tp.partition)
            for tp in partitions
            if tp.topic in self.topic_priority
        }
        self._assigned = wanted
        self._by_priority = {
            p: sorted(tp for tp in wanted if self.topic_priority[tp.topic] == p)
            for p in sorted(set(self.topic_priority.values()))
        }
        if self._consumer is not None:
            self._consumer.assign(sorted(wanted))
            self._apply_pauses()

    def revoke(self, partitions: Iterable[Any]) -> None:
        gone = {TopicPartition(tp.topic, tp.partition) for tp in partitions}
        if self._assigned & gone:
            self.assign(self._assigned - gone)

    # -- backpressure ------------------------------------------------------------------

    def pause(self, priorities: frozenset[Priority]) -> None:
        """Stop fetching these priorities' partitions (and resume the others)."""
        self._paused = priorities
        self._apply_pauses()

    def room_changed(self) -> None:
        self._room.set()

    def _apply_pauses(self) -> None:
        if self._consumer is None:
            return
        stop = [tp for tp in self._assigned if self.topic_priority[tp.topic] in self._paused]
        go = [tp for tp in self._assigned if self.topic_priority[tp.topic] not in self._paused]
        if stop:
            self._consumer.pause(*stop)
        if go:
            self._consumer.resume(*go)

    # -- the loop ----------------------------------------------------------------------

    def ready(self) -> bool:
        """Faust has settled the assignment and restored the tables for it."""
        recovery = self.app.tables.recovery  # type: ignore[attr-defined]
        return (
            self._consumer is not None
            and bool(self._assigned)
            and not self.app.rebalancing
            and not recovery.in_recovery
            and recovery.completed.is_set()
        )

    async def run(self) -> None:
        """Take records, most urgent priority first: each round takes one small batch from
        the most urgent priority that has records fetched, so a critical record waits for
        at most one batch of less urgent ones."""
        while True:
            if not self.ready():
                await asyncio.sleep(0.05)
                continue
            assert self._consumer is not None
            batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
            for priority, partitions in self._by_priority.items():  # most urgent first
                if partitions and priority not in self._paused:
                    batch = await self._consumer.getmany(
                        *partitions, timeout_ms=0, max_records=self.batch_records
                    )
                    if batch:
                        break
            if not batch:  # nothing fetched yet: wait for records of any priority
                batch = await self._consumer.getmany(
                    timeout_ms=FETCH_TIMEOUT_MS, max_records=self.batch_records
                )
            held_back = False
            for tp in sorted(batch, key=lambda tp: self.topic_priority[tp.topic]):
                held_back |= await self._take(tp, batch[tp])
            if held_back:
                # A priority without room: wait until work leaves the scheduler.
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), timeout=0.5)

    async def _take(self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]) -> bool:
        """Hand the partition's records to the gateway in order; True if some were held
        back (the consumer is rewound to the first of them, to be fetched again)."""
        priority = self.topic_priority[tp.topic]
        for record in records:
            if tp not in self._assigned:
                return False  # revoked meanwhile: the new owner reads the rest
            if not self.may_take(priority):  # paused, or no room for it
                assert self._consumer is not None
                self._consumer.seek(tp, record.offset)
                return True
            event = to_event(self.app, record)
            try:
                with current_event(event):
                    await self.handle(event)
            except Exception:  # a bug must not stop intake: the record stays unacked
                log.exception("intake failed for %s:%s@%s", tp.topic, tp.partition, record.offset)
        return False
