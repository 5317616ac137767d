"""The Python client for microservices: publish a request, await its response.

    async with SluicegateClient("127.0.0.1:9092") as client:
        response = await client.complete(
            tenant="acme", feature="search", priority="high", model="chat",
            messages=[{"role": "user", "content": "Hello"}], timeout=30,
        )
        print(response.status, response.content)

``complete`` publishes a ChatRequest to ``<prefix>.requests.<priority>`` (key = tenant)
and waits for the response with the same request id on the reply topic; ``publish`` is
fire-and-forget; ``responses()`` iterates over every response on the reply topic.
Responses are matched by request id and duplicates (possible after a worker crash) are
dropped. Only ``schemas/`` is shared with the worker: the client speaks the wire format.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas import registry
from schemas.errors import SluicegateError

PRIORITIES = ("critical", "high", "normal", "low")
SUCCESS = frozenset({"ok", "cached", "degraded"})


class ResponseTimeoutError(SluicegateError):
    """No response arrived for a request within the timeout."""

    def __init__(self, request_id: str, timeout: float) -> None:
        super().__init__(f"no response for request {request_id} within {timeout:g}s")
        self.request_id = request_id


@dataclass(frozen=True)
class ChatResponse:
    request_id: str
    status: str
    reason: str
    detail: str
    content: str | None
    model: str | None
    provider: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    cost_saved_micros: int
    cached: bool
    cache_kind: str | None
    degradation_reason: str | None
    retry_after_ms: int | None
    attempts: int
    queue_ms: int
    total_ms: int
    trail: tuple[str, ...]
    record: dict[str, Any]  # every field as decoded

    @property
    def ok(self) -> bool:
        return self.status in SUCCESS

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ChatResponse:
        names = {f.name for f in fields(cls)} - {"record", "trail"}
        values: dict[str, Any] = {name: record.get(name) for name in names}
        return cls(**values, trail=tuple(record.get("trail") or ()), record=record)


def build_request(
    *,
    tenant: str,
    model: str,
    messages: Sequence[dict[str, Any]],
    feature: str = "default",
    priority: str = "normal",
    reply_to: str | None = None,
    request_id: str | None = None,
    deadline_ms: int | None = None,
    metadata: dict[str, str] | None = None,
    **params: Any,
) -> dict[str, Any]:
    """A ChatRequest record; ``params`` are temperature, max_tokens, top_p, stop, seed, …"""
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}")
    return {
        "request_id": request_id or uuid.uuid4().hex,
        "tenant": tenant,
        "feature": feature,
        "priority": priority,
        "reply_to": reply_to,
        "created_at": int(time.time() * 1000),
        "deadline_ms": deadline_ms,
        "model": model,
        "messages": [
            {"role": m["role"], "content": m["content"], "name": m.get("name")} for m in messages
        ],
        "metadata": metadata or {},
        **params,
    }


class SluicegateClient:
    def __init__(
        self,
        bootstrap_servers: str = "127.0.0.1:9092",
        *,
        topic_prefix: str = "sg",
        reply_to: str | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.prefix = topic_prefix
        self.reply_topic = reply_to or f"{topic_prefix}.responses"
        self._custom_reply = reply_to is not None
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[ChatResponse]] = {}
        self._seen: OrderedDict[str, ChatResponse] = OrderedDict()  # recent, by request id
        self._listeners: list[tuple[asyncio.Queue[ChatResponse], bool]] = []

    async def __aenter__(self) -> SluicegateClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            acks="all",
            linger_ms=1,
            enable_idempotence=True,
        )
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=50,
        )
        await self._consumer.start()
        partitions = self._consumer.partitions_for_topic(self.reply_topic)
        if partitions is None:
            await self._consumer._client.force_metadata_update()
            partitions = self._consumer.partitions_for_topic(self.reply_topic)
        if not partitions:
            raise SluicegateError(f"reply topic {self.reply_topic} does not exist")
        tps = [TopicPartition(self.reply_topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        for tp in tps:  # resolve positions now, so no response published later is missed
            await self._consumer.position(tp)
        self._reader = asyncio.create_task(self._read_responses())

    async def close(self) -> None:
        if self._reader:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._consumer:
            await self._consumer.stop()
        if self._producer:
            await self._producer.stop()

    async def publish(self, **request: Any) -> str:
        """Publish one request (see ``build_request`` for the fields); returns its id."""
        if self._custom_reply:
            request.setdefault("reply_to", self.reply_topic)
        record = build_request(**request)
        await self.publish_record(record)
        return str(record["request_id"])

    async def publish_record(self, record: dict[str, Any]) -> None:
        assert self._producer is not None, "use 'async with SluicegateClient(...)'"
        headers = [("sg-request-id", record["request_id"].encode())]
        if record.get("reply_to"):
            headers.append(("sg-reply-to", record["reply_to"].encode()))
        await self._producer.send_and_wait(
            f"{self.prefix}.requests.{record['priority']}",
            registry.encode(registry.CHAT_REQUEST, record),
            key=record["tenant"].encode(),
            headers=headers,
        )

    async def complete(self, *, timeout: float = 60.0, **request: Any) -> ChatResponse:
        """Publish and wait for the response; raises ResponseTimeoutError."""
        request_id = request.setdefault("request_id", uuid.uuid4().hex)
        future: asyncio.Future[ChatResponse] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            await self.publish(**request)
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise ResponseTimeoutError(request_id, timeout) from None
        finally:
            self._waiting.pop(request_id, None)

    async def wait_for(self, request_id: str, timeout: float = 60.0) -> ChatResponse:
        """Await the response to a request published earlier with ``publish``."""
        if request_id in self._seen:
            return self._seen[request_id]
        future = self._waiting.setdefault(request_id, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise ResponseTimeoutError(request_id, timeout) from None
        finally:
            self._waiting.pop(request_id, None)

    async def responses(self, *, duplicates: bool = False) -> AsyncIterator[ChatResponse]:
        """Every response arriving on the reply topic from now on.

        Duplicates (a second response to one request id, possible after a worker crash)
        are dropped unless ``duplicates=True``; audits and tests count them.
        """
        queue: asyncio.Queue[ChatResponse] = asyncio.Queue()
        listener = (queue, duplicates)
        self._listeners.append(listener)
        try:
            while True:
                yield await queue.get()
        finally:
            self._listeners.remove(listener)

    async def _read_responses(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    self._deliver(record.value)

    def _deliver(self, value: bytes | None) -> None:
        try:
            response = ChatResponse.from_record(
                registry.decode(registry.CHAT_RESPONSE, value or b"")
            )
        except registry.SchemaError:
            return
        duplicate = response.request_id in self._seen
        for queue, wants_duplicates in self._listeners:
            if wants_duplicates or not duplicate:
                queue.put_nowait(response)
        if duplicate:
            return
        self._seen[response.request_id] = response
        if len(self._seen) > 100_000:
            self._seen.popitem(last=False)
        future = self._waiting.get(response.request_id)
        if future is not None and not future.done():
            future.set_result(response)
