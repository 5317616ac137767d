"""Release acknowledgements to the consumer in offset order, per partition.

Requests of one partition finish out of order (priorities, fair share, slow providers),
but a Kafka offset may only be committed once every earlier record of its partition has
its terminal response. Faust commits the contiguous run of acked offsets, yet with
out-of-order acks it can skip a single in-flight record at the head (faust-streaming
#606). So the worker never hands Faust an out-of-order ack: each record is registered
when it is taken from the stream, and its ack is released only when it and everything
before it on that partition are done.

Cost: O(1) amortised per record; memory is one entry per record taken and not yet
released (bounded by the scheduler's capacity plus what is in flight).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class _Entry(Generic[T]):
    offset: int
    token: T
    done: bool = False


class InOrderAcks(Generic[T]):
    def __init__(self) -> None:
        self._pending: dict[Hashable, deque[_Entry[T]]] = {}
        self._index: dict[tuple[Hashable, int], _Entry[T]] = {}

    def register(self, partition: Hashable, offset: int, token: T) -> None:
        """A record was taken from ``partition``.

        Offsets arrive in increasing order, except after the consumer seeks back to the
        committed offset (a rebalance or recovery): then everything still pending on that
        partition will be delivered again, so its old entries are dropped and never acked.
        """
        queue = self._pending.setdefault(partition, deque())
        if queue and queue[-1].offset >= offset:
            self.forget(partition)
            queue = self._pending.setdefault(partition, deque())
        entry = _Entry(offset, token)
        queue.append(entry)
        self._index[(partition, offset)] = entry

    def done(self, partition: Hashable, offset: int, token: T) -> list[T]:
        """Mark one record done; return the tokens now safe to ack, in offset order.

        ``token`` must be the one registered: a copy of the record delivered before a
        seek-back finishing late must not release the copy delivered after it.
        """
        entry = self._index.get((partition, offset))
        if entry is None or entry.token != token:
            return []  # already released, or forgotten by a revoke or a seek-back
        del self._index[(partition, offset)]
        entry.done = True
        queue = self._pending[partition]
        released: list[T] = []
        while queue and queue[0].done:
            released.append(queue.popleft().token)
        return released

    def forget(self, partition: Hashable) -> int:
        """Drop a revoked partition's bookkeeping; returns how many records were pending."""
        queue = self._pending.pop(partition, deque())
        for entry in queue:
            self._index.pop((partition, entry.offset), None)
        return len(queue)

    def pending(self) -> int:
        return len(self._index)
