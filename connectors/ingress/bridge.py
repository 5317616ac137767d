"""The ingress's Kafka side: publish a ChatRequest, await its response on a private reply topic.

Each ingress instance owns ``<prefix>.replies.ingress-<id>``: created at start (the
config's partition count, short retention; never deleted), read by manual assignment of
every partition from the end, with no consumer group. A request is published with an
idempotent producer (acks=all) to ``<prefix>.requests.<priority>`` keyed by tenant, with
headers ``sg-request-id`` and ``sg-reply-to`` (so the worker can answer even a record it
cannot decode). Responses complete waiting futures by request id; one nobody waits for
(a duplicate after a worker crash, or one that arrived after its request timed out) is
dropped and reported through ``on_unmatched``. Cost: one dict lookup per response.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from schemas import registry
from schemas.errors import SluicegateError
from streams.config import SluicegateConfig
from streams.topics import TopicSpec, ensure_topics

log = logging.getLogger("sluicegate.ingress")

HEADER_REQUEST_ID = "sg-request-id"  # read by the worker (streams/worker.py)
HEADER_REPLY_TO = "sg-reply-to"


class KafkaBridge:
    def __init__(
        self,
        config: SluicegateConfig,
        reply_topic: str,
        *,
        retention_ms: int = 3_600_000,
        on_unmatched: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.reply_topic = reply_topic
        self.retention_ms = retention_ms
        self.on_unmatched = on_unmatched
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    @property
    def ready(self) -> bool:
        return self._reader is not None and not self._reader.done()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def start(self) -> None:
        k = self.config.kafka
        spec = TopicSpec(
            self.reply_topic,
            k.partitions,
            {"retention.ms": str(self.retention_ms), "cleanup.policy": "delete"},
        )
        await asyncio.to_thread(ensure_topics, k.bootstrap_servers, [spec], k.replication_factor)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=k.bootstrap_servers, acks="all", enable_idempotence=True, linger_ms=1
        )
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=k.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=50,
        )
        await self._consumer.start()
        partitions: set[int] | None = None
        for _ in range(50):  # a topic created a moment ago may not be in the metadata yet
            await self._consumer._client.force_metadata_update()
            partitions = self._consumer.partitions_for_topic(self.reply_topic)
            if partitions:
                break
            await asyncio.sleep(0.2)
        if not partitions:
            raise SluicegateError(f"reply topic {self.reply_topic} does not exist")
        tps = [TopicPartition(self.reply_topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        for tp in tps:  # resolve positions now: no reply published from here on is missed
            await self._consumer.position(tp)
        self._reader = asyncio.create_task(self._read_replies())

    async def close(self) -> None:
        if self._reader:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._consumer:
            await self._consumer.stop()
        if self._producer:
            await self._producer.stop()

    async def call(self, record: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
        """Publish ``record`` and await its response (a decoded ChatResponse); None on timeout.

        Raises KafkaError when the request could not be published. A caller that goes
        away does not withdraw the request: once published, the workers answer it.
        """
        assert self._producer is not None, "start() first"
        request_id = str(record["request_id"])
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            await self._producer.send_and_wait(
                self.config.request_topic(record["priority"]),
                registry.encode(registry.CHAT_REQUEST, record),
                key=record["tenant"].encode(),
                headers=[
                    (HEADER_REQUEST_ID, request_id.encode()),
                    (HEADER_REPLY_TO, self.reply_topic.encode()),
                ],
            )
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return None
        finally:
            self._waiting.pop(request_id, None)

    async def _read_replies(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=500)
            except KafkaError as exc:
                log.warning("reading replies failed (%s); retrying", exc)
                await asyncio.sleep(1)
                continue
            for records in batches.values():
                for message in records:
                    self._deliver(message.value or b"")

    def _deliver(self, value: bytes) -> None:
        try:
            response = registry.decode(registry.CHAT_RESPONSE, value)
        except registry.SchemaError as exc:
            log.warning("undecodable reply on %s: %s", self.reply_topic, exc)
            return
        future = self._waiting.get(response["request_id"])
        if future is None or future.done():
            self.on_unmatched()
            return
        future.set_result(response)
