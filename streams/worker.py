"""The request path inside one worker: intake, schedule, call the provider, respond, ack.

The Faust layer (streams/app.py) hands every consumed record to ``Gateway.intake``;
the gateway decodes and validates it, asks the policies, queues it in the scheduler and
returns, so intake keeps pulling while provider calls run concurrently. A dispatcher
task takes work out of the scheduler (highest priority first) up to the in-flight limit.
Each request ends in exactly one terminal response, produced together with its usage
event (and dead letter, if any); only after the broker has acknowledged those writes is
the request's offset released for commit, in offset order (streams/ack_order.py).
A worker killed at any point therefore loses nothing: uncommitted requests are re-read.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from connectors.providers import (
    AuthError,
    BadRequestError,
    ChatCall,
    Provider,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
    SpendLimitError,
    build_provider,
)
from schemas import registry
from schemas.registry import SchemaError
from streams.ack_order import InOrderAcks
from streams.config import PRIORITIES, ModelRef, ResolvedRoute, SluicegateConfig
from streams.policies.clock import Clock, SystemClock
from streams.policies.pricing import Price, cost_micros
from streams.policies.validation import TenantFacts, ValidationConfig, validate_request
from streams.policies.verdict import Reason, Status
from streams.records import Outcome, Source, dead_letter_record, response_record, usage_record

log = logging.getLogger("sluicegate.worker")

# Headers the Python client and ingress set, so even an undecodable record can be answered.
HEADER_REQUEST_ID = "sg-request-id"
HEADER_REPLY_TO = "sg-reply-to"


@dataclass
class Job:
    """One request inside the worker, from intake to its terminal response."""

    request: dict[str, Any]
    source: Source
    raw: bytes
    event: Any  # the Faust event, acked when the response is safely written
    context: contextvars.Context  # the event's context: table writes go to its partition
    received_ms: int
    deadline_ms: int
    route: ResolvedRoute | None = None
    trail: list[str] = field(default_factory=list)
    dispatched_ms: int = 0


class Gateway:
    def __init__(self, config: SluicegateConfig, app: Any, clock: Clock | None = None) -> None:
        self.config = config
        self.app = app
        self.clock = clock or SystemClock()
        self.acks: InOrderAcks[Any] = InOrderAcks()
        self.validation = ValidationConfig(
            max_messages=config.worker.max_messages,
            max_message_bytes=config.worker.max_message_bytes,
            topic_prefix=config.kafka.topic_prefix,
        )
        self.queue: asyncio.PriorityQueue[tuple[int, int, Job]] = asyncio.PriorityQueue(
            maxsize=config.worker.queue_capacity
        )
        self._seq = 0
        self.in_flight = 0
        self._slots = asyncio.Semaphore(config.worker.max_in_flight)
        self._providers: dict[str, Provider] = {}
        self._known_topics: set[str] = set()
        self.counts: Counter[str] = Counter()
        self.started_at = time.time()

    # -- intake ----------------------------------------------------------------------

    async def intake(self, event: Any) -> None:
        """Take one consumed record: answer it now, or queue it for a provider call."""
        message = event.message
        source = Source(message.topic, message.partition, message.offset)
        self.acks.register(message.tp, message.offset, event)
        now = self.clock.now_ms()
        raw = bytes(event.value or b"")
        self.counts["received"] += 1
        try:
            request = registry.decode(registry.CHAT_REQUEST, raw)
        except SchemaError as exc:
            await self._reject_undecodable(event, source, raw, str(exc), now)
            return
        job = Job(request, source, raw, event, contextvars.copy_context(), now, now)
        priority = source.topic.rsplit(".", 1)[-1]
        if request["priority"] != priority:
            job.trail.append(f"priority {request['priority']!r} taken from topic: {priority}")
            request["priority"] = priority
        errors = self._validate(request)
        if errors:
            detail = "; ".join(str(e) for e in errors)
            await self.finish(job, Outcome(Status.REJECTED, Reason.INVALID, detail))
            return
        job.route = self.config.resolve_route(request["model"])
        job.deadline_ms = request["deadline_ms"] or (
            int(request["created_at"]) + self.config.deadlines.ms(priority)
        )
        if now >= job.deadline_ms:
            await self.finish(job, _expired(job, now))
            return
        self._seq += 1
        await self.queue.put((PRIORITIES.index(priority), self._seq, job))

    def _validate(self, request: dict[str, Any]) -> list[Any]:
        tenant = self.config.tenants.get(request["tenant"])
        route = self.config.resolve_route(request["model"]) if request["model"] else None
        facts = TenantFacts(
            known=tenant is not None,
            max_priority=tenant.max_priority if tenant else "low",
            model_known=route is not None,
            model_allowed=tenant.allows_model(request["model"]) if tenant else False,
        )
        return validate_request(request, facts, self.validation)

    async def _reject_undecodable(
        self, event: Any, source: Source, raw: bytes, why: str, now: int
    ) -> None:
        headers = _headers(event)
        request_id = headers.get(HEADER_REQUEST_ID)
        stub = {"request_id": request_id, "reply_to": headers.get(HEADER_REPLY_TO)}
        outcome = Outcome(Status.REJECTED, Reason.INVALID, f"undecodable record: {why}")
        writes = [
            self._dead_letter(source, raw, Reason.UNDECODABLE, outcome.detail, stub, now, failed=True)
        ]
        if request_id:
            writes.append(self._response_write(stub, outcome, 0, now))
        self.counts[f"status.{outcome.status}"] += 1
        await self._write_and_ack(writes, source, event)

    # -- dispatch --------------------------------------------------------------------

    async def dispatch_forever(self) -> None:
        """Start provider calls, highest priority first, up to the in-flight limit."""
        while True:
            await self._slots.acquire()
            _, _, job = await self.queue.get()
            job.dispatched_ms = self.clock.now_ms()
            self.in_flight += 1
            job.context.run(asyncio.create_task, self._run(job))

    async def _run(self, job: Job) -> None:
        try:
            outcome = await self.call_route(job)
            await self.finish(job, outcome)
        except Exception:  # a bug: answer the request rather than leave it hanging
            log.exception("request %s failed inside the worker", job.request.get("request_id"))
            await self.finish(job, Outcome(Status.FAILED, Reason.PROVIDER_ERROR, "internal error"))
        finally:
            self.in_flight -= 1
            self._slots.release()

    async def call_route(self, job: Job) -> Outcome:
        """Try the route's models in order; degrade to its static message, else fail."""
        assert job.route is not None
        request = job.request
        attempts = 0
        last_error: ProviderError | None = None
        for index, ref in enumerate(job.route.chain):
            now = self.clock.now_ms()
            if now >= job.deadline_ms:
                return _expired(job, now)
            attempts += 1
            try:
                result = await self._provider(ref).complete(
                    _chat_call(request, ref, (job.deadline_ms - now) / 1000)
                )
            except ProviderError as exc:
                last_error = exc
                job.trail.append(f"{ref}: {type(exc).__name__} {exc.status or ''}".strip())
                if isinstance(exc, BadRequestError | AuthError | SpendLimitError):
                    break  # another model will not fix the request or the account
                continue
            cost = cost_micros(
                self.price(ref), result.prompt_tokens, result.completion_tokens,
                result.cached_prompt_tokens,
            )
            job.trail.append(f"{ref}: ok")
            degraded = index > 0
            return Outcome(
                Status.DEGRADED if degraded else Status.OK,
                content=result.content,
                finish_reason=result.finish_reason,
                model=ref.model,
                provider=ref.provider,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                cached_prompt_tokens=result.cached_prompt_tokens,
                cost_micros=cost,
                degradation_reason=_reason_of(last_error).value if degraded else None,
                attempts=attempts,
                trail=job.trail,
            )
        reason = _reason_of(last_error)
        detail = str(last_error) if last_error else "no model could be called"
        if job.route.static_message:
            job.trail.append("static message")
            return Outcome(
                Status.DEGRADED, reason, detail, content=job.route.static_message,
                degradation_reason=reason.value, attempts=attempts, trail=job.trail,
            )
        return Outcome(Status.FAILED, reason, detail, attempts=attempts, trail=job.trail)

    def price(self, ref: ModelRef) -> Price:
        m = self.config.model_config_of(ref)
        return Price.from_usd_per_mtok(
            m.input_usd_per_mtok, m.output_usd_per_mtok, m.cached_input_usd_per_mtok
        )

    def _provider(self, ref: ModelRef) -> Provider:
        provider = self._providers.get(ref.provider)
        if provider is None:
            cfg = self.config.providers[ref.provider]
            provider = build_provider(
                cfg.kind, ref.provider, cfg.base_url, cfg.api_key_env, cfg.timeout_s,
                cfg.max_connections,
            )
            self._providers[ref.provider] = provider
        return provider

    async def close(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()

    # -- respond ---------------------------------------------------------------------

    async def finish(self, job: Job, outcome: Outcome) -> None:
        """Write the terminal response, usage event and dead letter; then release the ack."""
        now = self.clock.now_ms()
        request = job.request
        queue_ms = (job.dispatched_ms or now) - job.received_ms
        if not outcome.trail:
            outcome.trail = job.trail
        writes = [self._response_write(request, outcome, queue_ms, now)]
        writes.append(
            (self.config.topic("usage"), request["tenant"].encode(),
             registry.encode(registry.USAGE_EVENT, usage_record(request, outcome, now_ms=now)))
        )
        if outcome.status in (Status.SHED, Status.FAILED) or outcome.reason == Reason.INVALID:
            failed = outcome.status == Status.FAILED or outcome.reason == Reason.INVALID
            writes.append(self._dead_letter(
                job.source, job.raw, outcome.reason, outcome.detail, request, now,
                failed=failed, queue_ms=queue_ms, load=outcome.load,
            ))
        elif outcome.status == Status.REJECTED:
            writes.append(self._dead_letter(
                job.source, job.raw, outcome.reason, outcome.detail, request, now, failed=False
            ))
        self.counts[f"status.{outcome.status}"] += 1
        if outcome.reason:
            self.counts[f"reason.{outcome.reason}"] += 1
        await self._write_and_ack(writes, job.source, job.event)

    def _response_write(
        self, request: dict[str, Any], outcome: Outcome, queue_ms: int, now: int
    ) -> tuple[str, bytes, bytes]:
        topic = request.get("reply_to") or self.config.topic("responses")
        record = response_record(request, outcome, queue_ms=queue_ms, now_ms=now)
        return topic, str(request["request_id"]).encode(), registry.encode(
            registry.CHAT_RESPONSE, record
        )

    def _dead_letter(
        self, source: Source, raw: bytes, reason: Reason, detail: str,
        request: dict[str, Any], now: int, *, failed: bool, queue_ms: int = 0,
        load: dict[str, str] | None = None,
    ) -> tuple[str, bytes, bytes]:
        topic = self.config.topic("deadletter.failed" if failed else "deadletter.shed")
        decoded = request if request.get("tenant") else None
        record = dead_letter_record(
            source, raw, reason=reason, detail=detail, now_ms=now, request=decoded,
            queue_ms=queue_ms, load=load,
        )
        key = (request.get("tenant") or "").encode() or None
        return topic, key or b"", registry.encode(registry.DEAD_LETTER, record)

    async def _write_and_ack(
        self, writes: list[tuple[str, bytes, bytes]], source: Source, event: Any
    ) -> None:
        writes = [await self._checked_reply_topic(w) for w in writes]
        delay = 0.1
        while True:
            try:
                futures = [
                    await self.app.producer.send(topic, key, value, None, None, None)
                    for topic, key, value in writes
                ]
                await asyncio.gather(*futures)
                break
            except Exception as exc:  # the broker is away: keep the request, retry
                log.warning("producing the response failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        for ready in self.acks.done(event.message.tp, source.offset):
            ready.ack()

    async def _checked_reply_topic(
        self, write: tuple[str, bytes, bytes]
    ) -> tuple[str, bytes, bytes]:
        """A reply_to that does not exist falls back to the default responses topic."""
        topic, key, value = write
        if topic in self._known_topics or not topic.startswith(self.config.kafka.topic_prefix):
            return write
        client = self.app.producer.client  # aiokafka producer: metadata without auto-create
        try:
            partitions = await client.partitions_for(topic)
        except Exception:
            partitions = None
        if partitions:
            self._known_topics.add(topic)
            return write
        log.warning("reply topic %s does not exist; answering on the default topic", topic)
        return self.config.topic("responses"), key, value

    # -- visibility ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "uptime_s": round(time.time() - self.started_at, 1),
            "queued": self.queue.qsize(),
            "in_flight": self.in_flight,
            "pending_acks": self.acks.pending(),
            "counts": dict(self.counts),
        }


def _expired(job: Job, now: int) -> Outcome:
    job.trail.append("deadline passed")
    return Outcome(
        Status.SHED, Reason.DEADLINE_EXPIRED,
        f"deadline passed {now - job.deadline_ms} ms ago", trail=job.trail,
    )


def _reason_of(error: ProviderError | None) -> Reason:
    if error is None:
        return Reason.UNAVAILABLE
    if isinstance(error, RateLimitedError):
        return Reason.PROVIDER_RATE_LIMITED
    if isinstance(error, ProviderTimeoutError):
        return Reason.TIMEOUT
    return Reason.PROVIDER_ERROR


def _chat_call(request: dict[str, Any], ref: ModelRef, timeout_s: float) -> ChatCall:
    return ChatCall(
        model=ref.model,
        messages=[
            {k: v for k, v in m.items() if v is not None} for m in request["messages"]
        ],
        temperature=request["temperature"],
        top_p=request["top_p"],
        max_tokens=request["max_tokens"],
        stop=list(request["stop"]) or None,
        seed=request["seed"],
        request_id=request["request_id"],
        timeout_s=max(0.05, timeout_s),
    )


def _headers(event: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in event.message.headers or ():
        try:
            out[key] = value.decode() if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError:
            continue
    return out


def new_request_id() -> str:
    return uuid.uuid4().hex
