"""The request path inside one worker: intake, schedule, call the provider, respond, ack.

The Faust layer (streams/app.py) hands every consumed record to ``Gateway.intake``; the
gateway decodes and validates it, asks the admission policies, offers it to the priority
scheduler and returns, so intake keeps pulling while provider calls run concurrently.
A dispatcher task takes work out of the scheduler (highest priority first, fair across
tenants) up to the in-flight limits. Each request ends in exactly one terminal response,
produced together with its usage event (and dead letter, if any); only after the broker
has acknowledged those writes is the request's offset released for commit, in offset
order (streams/ack_order.py). A worker killed at any point loses nothing: uncommitted
requests are re-read by whichever worker owns the partition next.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from schemas import registry
from schemas.registry import SchemaError
from streams.ack_order import InOrderAcks
from streams.cache import CacheLookup, ResponseCache
from streams.config import PRIORITIES, SluicegateConfig
from streams.metrics import observe_response
from streams.policies import admission, budget, provider_cap
from streams.policies.admission import AdmissionRequest, Admitted, TenantState
from streams.policies.budget import BudgetLedger, LedgerConfig, usage_view
from streams.policies.cache_policy import Lookup
from streams.policies.clock import Clock, SystemClock
from streams.policies.deadline import effective_deadline_ms
from streams.policies.degradation import ModelRef, RouteConfig
from streams.policies.scheduler import (
    Admission,
    Dispatch,
    Expired,
    Priority,
    Queued,
    Scheduler,
    SchedulerConfig,
)
from streams.policies.token_estimate import TokenEstimator, max_cost_estimate, raw_prompt_tokens
from streams.policies.validation import TenantFacts, ValidationConfig, validate_request
from streams.policies.verdict import Reason, Status
from streams.provider_calls import ProviderCaller
from streams.records import Outcome, Source, dead_letter_record, response_record, usage_record
from streams.topics import admin_client

log = logging.getLogger("sluicegate.worker")

# Headers the Python client and ingress set, so even an undecodable record can be answered.
HEADER_REQUEST_ID = "sg-request-id"
HEADER_REPLY_TO = "sg-reply-to"
# At most this many requests wait for an embedding (semantic lookup) at a time.
SEMANTIC_LOOKUPS = 16


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
    route: RouteConfig | None = None
    trail: list[str] = field(default_factory=list)
    dispatched_ms: int = 0
    est_tokens: int = 0  # estimated prompt tokens + max_tokens (limits count these)
    raw_prompt_tokens: int = 0  # uncalibrated estimate, to calibrate the estimator
    admitted: Admitted | None = None  # holds a budget reservation until settled
    downgraded: bool = False  # the budget policy switched it to a cheaper model
    cache: CacheLookup | None = None
    cache_leader: bool = False  # identical requests wait for this one's answer


def scheduler_config(config: SluicegateConfig) -> SchedulerConfig:
    s = config.scheduler
    per_model = {
        f"{provider}/{name}": model.max_in_flight
        for provider, p in config.providers.items()
        for name, model in p.models.items()
        if model.max_in_flight
    }
    return SchedulerConfig(
        capacity=config.worker.queue_capacity,
        low_shed_watermark=s.low_shed_watermark,
        normal_shed_watermark=s.normal_shed_watermark,
        high_shed_watermark=s.high_shed_watermark,
        low_pause_watermark=s.low_pause_watermark,
        normal_pause_watermark=s.normal_pause_watermark,
        max_in_flight_per_route=s.max_in_flight_per_model,
        route_max_in_flight=per_model,
    )


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
        self.scheduler: Scheduler[Job] = Scheduler(scheduler_config(config))
        self.deadlines = config.deadlines.as_policy()
        self.providers = ProviderCaller(config, self.clock)
        self.admission = config.admission_config()
        self.estimator = TokenEstimator()
        self.tenant_state: Any = {}  # the Faust table (RocksDB), attached by streams/app.py
        self.usage: Any = None  # streams.usage.UsageTotals, attached by streams/app.py
        self.cache = ResponseCache(config)
        self.in_flight = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._paused: frozenset[Priority] = frozenset()
        self.reader: Any = None  # streams.intake.RequestReader, attached by streams/app.py
        self._known_topics: set[str] = {
            config.topic(name)
            for name in ("responses", "usage", "deadletter.shed", "deadletter.failed")
        }
        self._admin = admin_client(config.kafka.bootstrap_servers)
        self.counts: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._max_tasks = config.worker.queue_capacity + config.worker.max_in_flight
        self._semantic_lookups = 0  # requests waiting for an embedding
        self._assigned: set[Any] = set()  # request-topic partitions this worker owns
        self._to_commit: dict[Any, int] = {}  # partition -> next offset, ready to commit
        self.started_at = time.time()

    # -- intake ----------------------------------------------------------------------

    def may_take(self, priority: Priority) -> bool:
        """Backpressure: may intake take another record of this priority now? Not while
        it is paused, nor while the scheduler is full with nothing lower to evict."""
        s = self.scheduler
        if priority in self._paused:
            return False
        if len(self._tasks) >= self._max_tasks or self._semantic_lookups >= SEMANTIC_LOOKUPS:
            return False  # answers being written, embeddings running: let them catch up
        return len(s) < self.config.worker.queue_capacity or any(
            s.depth(lower) for lower in Priority if lower > priority
        )

    async def intake(self, event: Any) -> None:
        """Take one consumed record: answer it, or queue it for a provider call.

        Intake reads records one at a time, so nothing here waits on the broker or on an
        embedding: answers are written by tasks of their own (``finish``), and a semantic
        lookup continues in a task (``_semantic_then_admit``)."""
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
            self._finish_later(job, Outcome(Status.REJECTED, Reason.INVALID, detail))
            return
        job.route = self.config.resolve_route(request["model"])
        assert job.route is not None  # validation checked it
        job.deadline_ms = effective_deadline_ms(
            int(request["created_at"]), request["deadline_ms"], priority, self.deadlines
        )
        if self._answer_from_cache(job, now):
            return
        if self.cache.may_match_semantically(job.cache):
            self._semantic_lookups += 1
            self._spawn(job, self._semantic_then_admit(job))
            return
        await self._admit_unless_only_cached(job, now)

    def _finish_later(self, job: Job, outcome: Outcome) -> None:
        self._spawn(job, self.finish(job, outcome))

    def _answer_from_cache(self, job: Job, now: int) -> bool:
        """Exact hit, or wait behind an identical in-flight call: True when the request
        needs nothing more. Otherwise, a cacheable request leads: identical requests
        arriving meanwhile wait for its answer (single-flight)."""
        request, route = job.request, job.route
        assert route is not None
        found = job.cache = self.cache.lookup(request, route, now)
        if found.result == Lookup.HIT and found.entry is not None:
            job.trail.append("cache: exact hit")
            self._finish_later(job, self.cache.hit(found.entry, request["tenant"], "exact"))
            return True
        if found.key is None or not found.plan.read or found.plan.only_if_cached:
            return False

        def on_leader_done(outcome: Outcome | None) -> None:
            if outcome is not None:
                job.trail.append("cache: coalesced with an identical in-flight request")
                answer = replace(
                    outcome,
                    status=Status.CACHED,
                    reason=Reason.NONE,
                    cost_micros=0,
                    cost_saved_micros=outcome.cost_micros or outcome.cost_saved_micros,
                    cache_kind="coalesced",
                    trail=job.trail,
                    attempts=0,
                )
                self._finish_later(job, answer)
            else:  # the leader failed: this request takes its own turn
                self._spawn(job, self._admit_and_queue(job, self.clock.now_ms()))

        if self.cache.join(found.key, on_leader_done):
            self.counts["coalesced"] += 1
            return True
        job.cache_leader = True
        return False

    async def _semantic_then_admit(self, job: Job) -> None:
        """A paraphrase of a cached request is answered from the cache; else admit."""
        assert job.cache is not None
        try:
            semantic = await self.cache.semantic_lookup(job.cache, job.request, job.received_ms)
        finally:
            self._semantic_lookups -= 1
        now = self.clock.now_ms()
        if semantic is not None:
            entry, similarity = semantic
            job.trail.append(f"cache: semantic hit {similarity:.3f}")
            hit = self.cache.hit(entry, job.request["tenant"], "semantic", similarity)
            await self.finish(job, hit)
            return
        await self._admit_unless_only_cached(job, now)

    async def _admit_unless_only_cached(self, job: Job, now: int) -> None:
        assert job.cache is not None
        if job.cache.plan.only_if_cached:
            job.trail.append("cache: miss, only_if_cached")
            outcome = Outcome(Status.REJECTED, Reason.CACHE_MISS, "nothing cached for this request")
            self._finish_later(job, outcome)
            return
        await self._admit_and_queue(job, now)

    async def _admit_and_queue(self, job: Job, now: int) -> None:
        request, priority = job.request, job.request["priority"]
        assert job.route is not None
        refused = self._admit(job, now)
        if refused is not None:
            self._finish_later(job, refused)
            return
        await self._wait_for_room(Priority.from_name(priority))
        if not self.owns(job.source):  # revoked while waiting: the new owner answers it
            self.counts["dropped_on_revoke"] += 1
            return
        admission = self.scheduler.offer(
            now,
            Queued(
                job,
                request["tenant"],
                Priority.from_name(priority),
                now,
                job.deadline_ms,
                str(job.route.primary),
                job.est_tokens,
            ),
        )
        for evicted in admission.evicted:
            self._shed_later(evicted.item, Reason.OVERLOADED, admission)
        if not admission.admitted:
            self._finish_later(job, _shed(job, admission.reason, admission))
            return
        self._update_pauses()
        self._wake.set()

    def _admit(self, job: Job, now: int) -> Outcome | None:
        """Tenant rate limits and budget reservation; an Outcome when refused."""
        request, route = job.request, job.route
        assert route is not None
        primary = str(route.primary)
        job.raw_prompt_tokens = raw_prompt_tokens(request["messages"])
        prompt = self.estimator.calibrated(route.primary.model, job.raw_prompt_tokens)
        max_tokens = request["max_tokens"] or self.config.budgets.default_max_tokens
        job.est_tokens = prompt + max_tokens

        def max_cost(model: str) -> int:
            refs = route.models if model == primary else (ModelRef.parse(model),)
            return max(max_cost_estimate(self.providers.price(r), prompt, max_tokens) for r in refs)

        tenant, request_id = request["tenant"], request["request_id"]
        state = TenantState.from_dict(self.tenant_state.get(tenant))
        # The providers' daily caps: this partition's share, each in a ledger row of its
        # own (written while handling this partition's request, so it lives there).
        caps, partition = self.config.provider_caps, job.source.partition
        rows = {p: provider_cap.table_key(p, partition) for p in caps.daily_caps_micros}
        ledgers = {
            p: BudgetLedger.from_dict(data)
            for p, key in rows.items()
            if (data := self.tenant_state.get(key)) is not None
        }
        # A reservation still open under this id is an earlier attempt's, lost with its
        # worker: if it was marked sent, its provider call may have been paid, so it is
        # counted as spent (kept even if this attempt is refused); if not, it is released.
        # Then this attempt reserves anew (budget.charge_held).
        charged = provider_cap.charge_held(ledgers, request_id)
        for p, ledger in charged.items():
            ledgers[p] = ledger
            self.tenant_state[rows[p]] = ledger.to_dict()
        if request_id in state.ledger.reservations:
            state = replace(state, ledger=budget.charge_held(state.ledger, request_id))
            self.tenant_state[tenant] = state.to_dict()
            charged[tenant] = state.ledger
        if charged:
            job.trail.append(f"budget: an earlier attempt's reservation settled: {sorted(charged)}")
        decision, state = admission.admit(
            state,
            now,
            AdmissionRequest(
                request["request_id"], tenant, request["feature"], primary, job.est_tokens
            ),
            self.admission,
            max_cost,
        )
        if isinstance(decision, admission.Refused):
            job.trail.append(f"admission: {decision.reason.value}: {decision.detail}")
            return Outcome(
                Status.REJECTED,
                decision.reason,
                decision.detail,
                retry_after_ms=decision.retry_after_ms,
                trail=job.trail,
            )
        provider_alerts: tuple[str, ...] = ()
        if caps.daily_caps_micros:
            refs = route.models if decision.model == primary else (ModelRef.parse(decision.model),)
            costs = [
                (r.provider, max_cost_estimate(self.providers.price(r), prompt, max_tokens))
                for r in refs
            ]
            estimates = provider_cap.estimates_by_provider(costs, caps)
            verdict = provider_cap.admit(ledgers, now, partition, request_id, estimates, caps)
            if verdict.refused is not None:
                job.trail.append(f"admission: budget_exceeded: {verdict.refused.detail}")
                return Outcome(
                    Status.REJECTED,
                    Reason.BUDGET_EXCEEDED,
                    verdict.refused.detail,
                    retry_after_ms=verdict.refused.reset_at_ms - now,
                    trail=job.trail,
                )
            for p, ledger in verdict.ledgers.items():
                self.tenant_state[rows[p]] = ledger.to_dict()
            provider_alerts = verdict.alerts
        self.tenant_state[tenant] = state.to_dict()
        job.admitted = decision
        for alert in (*decision.alerts, *provider_alerts):
            log.warning("budget alert for %s: %s", tenant, alert)
            self.counts["budget_alerts"] += 1
        if decision.model != primary:
            job.trail.append(f"budget: downgraded {primary} -> {decision.model}")
            job.downgraded = True
            job.route = RouteConfig(
                route.name,
                ModelRef.parse(decision.model),
                (),
                use_stale_cache=route.use_stale_cache,
                static_message=route.static_message,
            )
        return None

    def _remember(self, job: Job, outcome: Outcome, now: int) -> None:
        """Store a cacheable answer; hand it to identical requests waiting behind it."""
        found = job.cache
        if found is None:
            return
        if self.cache.store(found, job.request, outcome, now):
            self._spawn(job, self.cache.remember_semantic(found, job.request))
        if job.cache_leader and found.key is not None:
            job.cache_leader = False
            answered = outcome.status in (Status.OK, Status.CACHED)
            self.cache.release(found.key, outcome if answered else None)

    def _settle(self, job: Job, outcome: Outcome, now: int) -> None:
        """Replace the request's reservation by what it cost (or release it)."""
        if job.admitted is None:
            return
        request = job.request
        delta = 0
        if outcome.prompt_tokens:
            delta = outcome.prompt_tokens + outcome.completion_tokens - job.est_tokens
            self.estimator.observe(
                outcome.model or "", job.raw_prompt_tokens, outcome.prompt_tokens
            )
        state = TenantState.from_dict(self.tenant_state.get(request["tenant"]))
        state = admission.settle(
            state,
            now,
            request["request_id"],
            outcome.cost_micros,
            feature=request["feature"],
            config=self.admission,
            tenant=request["tenant"],
            rate_recorded_at_ms=job.admitted.rate_recorded_at_ms,
            token_delta=delta,
        )
        self.tenant_state[request["tenant"]] = state.to_dict()
        # The providers' caps: spend on the provider that answered, release the others
        # (the capped providers of its route, as reserved by _admit).
        rows, ledgers = self._route_cap_ledgers(job)
        settled = provider_cap.settle(
            ledgers, now, request["request_id"], outcome.provider, outcome.cost_micros
        )
        for p, ledger in settled.items():
            self.tenant_state[rows[p]] = ledger.to_dict()
        job.admitted = None

    def _route_cap_ledgers(self, job: Job) -> tuple[dict[str, str], dict[str, BudgetLedger]]:
        """The provider-cap rows of the job's route on its partition (provider -> table
        key), and the ledgers stored in them."""
        assert job.route is not None
        capped = self.config.provider_caps.daily_caps_micros
        rows = {
            r.provider: provider_cap.table_key(r.provider, job.source.partition)
            for r in job.route.models
            if r.provider in capped
        }
        ledgers = {
            p: BudgetLedger.from_dict(data)
            for p, key in rows.items()
            if (data := self.tenant_state.get(key)) is not None
        }
        return rows, ledgers

    def _durable_set(self, key: str, value: Any, waits: list[Any]) -> None:
        """A tenant-state write whose changelog delivery can be awaited: the table's own
        ``table[key] = value`` sends its changelog record without handing out the future.
        Same effect (the store and the changelog record of the current partition)."""
        table = self.tenant_state
        table.data[key] = value
        waits.append(table.send_changelog(table.partition_for_key(key), key, value))

    def _mark_sent(self, job: Job) -> list[Any]:
        """Mark the job's reservations (tenant ledger, provider caps) as sent, just before
        its provider call: if the worker dies before settling, the successor that re-reads
        the request charges them instead of releasing them (``budget.charge_held``). Writes
        only rows that hold an unmarked reservation for the request; the caller waits for
        the returned changelog deliveries before calling the provider, so the mark (and
        the reservation written before it, the producer keeps order) survives a crash."""
        waits: list[Any] = []
        if job.admitted is None or not self.owns(job.source):
            return waits
        tenant, request_id = job.request["tenant"], job.request["request_id"]
        if job.admitted.reserved_micros:  # 0: the tenant has no budget, nothing reserved
            state = TenantState.from_dict(self.tenant_state.get(tenant))
            ledger = budget.mark_sent(state.ledger, request_id)
            if ledger is not state.ledger:
                self._durable_set(tenant, replace(state, ledger=ledger).to_dict(), waits)
        rows, ledgers = self._route_cap_ledgers(job)
        for p, marked in provider_cap.mark_sent(ledgers, request_id).items():
            self._durable_set(rows[p], marked.to_dict(), waits)
        return waits

    async def _wait_for_room(self, priority: Priority) -> None:
        """Backpressure for work not taken by intake (a coalesced request whose leader
        failed): intake itself only takes a record when ``may_take`` says so."""
        s = self.scheduler
        while len(s) >= self.config.worker.queue_capacity and not any(
            s.depth(lower) for lower in Priority if lower > priority
        ):
            self._room.clear()
            await self._room.wait()

    def _shed_later(self, job: Job, reason: Reason, admission: Admission[Job]) -> None:
        outcome = _shed(job, reason, admission)
        self._spawn(job, self.finish(job, outcome))

    def _spawn(self, job: Job, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task in the job's context (table writes go to its partition);
        the task is referenced until it ends, so it cannot be garbage-collected midway."""
        task = job.context.run(asyncio.create_task, work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
            self._dead_letter(
                source, raw, Reason.UNDECODABLE, outcome.detail, stub, now, failed=True
            )
        ]
        if request_id:
            writes.append(self._response_write(stub, outcome, 0, now))
        self.counts[f"status.{outcome.status}"] += 1
        observe_response(self, {"priority": source.topic.rsplit(".", 1)[-1]}, outcome, 0, now)
        await self._write_and_ack(writes, source, event)

    # -- dispatch --------------------------------------------------------------------

    async def dispatch_forever(self) -> None:
        """Start provider calls, highest priority first, up to the in-flight limits."""
        limit = self.config.worker.max_in_flight
        while True:
            # Wake on work, or tick: deadlines pass and provider limits refill with time.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=0.1)
            self._wake.clear()
            while self.in_flight < limit:
                now = self.clock.now_ms()
                picked = self.scheduler.next(now, self._can_dispatch)
                if picked is None:
                    break
                job = picked.queued.item
                if isinstance(picked, Expired):
                    self._spawn(job, self.finish(job, _expired(job, now)))
                    continue
                assert isinstance(picked, Dispatch)
                job.dispatched_ms = now
                self.in_flight += 1
                self._spawn(job, self._run(job))
            self._update_pauses()
            self._room.set()
            if self.reader is not None:
                self.reader.room_changed()

    def _can_dispatch(self, route_key: str) -> bool:
        now = self.clock.now_ms()
        ref = ModelRef.parse(route_key)
        # An open breaker does not hold the queue: the call degrades to a fallback.
        return self.providers.is_open(ref, now) or self.providers.can_dispatch(ref, now)

    async def _run(self, job: Job) -> None:
        assert job.route is not None
        route_key = str(job.route.primary)
        started = self.clock.now_ms()
        try:
            waits = self._mark_sent(job)  # before the call: from here on it may be paid
            if waits:
                await asyncio.gather(*waits)
            outcome = await self.providers.call_route(
                job.request,
                job.route,
                job.deadline_ms,
                job.trail,
                job.est_tokens,
                static_message=self._static_message(job),
            )
        except Exception:  # a bug: answer the request rather than leave it hanging
            log.exception("request %s failed inside the worker", job.request.get("request_id"))
            outcome = Outcome(Status.FAILED, Reason.PROVIDER_ERROR, "internal error")
        finally:
            self.in_flight -= 1
            self.scheduler.finished(self.clock.now_ms(), route_key, self.clock.now_ms() - started)
            self._wake.set()
        await self.finish(job, outcome)

    def _stale_lookup(self, job: Job) -> Any:
        found = job.cache
        if found is None or found.entry is None or found.result != Lookup.STALE:
            return None
        entry, tenant = found.entry, job.request["tenant"]

        async def stale() -> Outcome:
            return self.cache.hit(entry, tenant, "stale")

        return stale

    def _static_message(self, job: Job) -> str | None:
        tenant = self.config.tenants.get(job.request["tenant"])
        feature = tenant.features.get(job.request["feature"]) if tenant else None
        return feature.static_message if feature else None

    def _update_pauses(self) -> None:
        paused = self.scheduler.paused_priorities(self.clock.now_ms())
        if paused != self._paused:
            self._paused = paused
            self.apply_pauses()

    def apply_pauses(self) -> None:
        """Pause the request partitions of the paused priorities (streams/intake.py). The
        pauses are the worker's own state: the reader re-applies them after a rebalance."""
        if self.reader is not None:
            self.reader.pause(self._paused)
        self.counts["pause_changes"] += 1

    def owns(self, source: Source) -> bool:
        return any(
            tp.topic == source.topic and tp.partition == source.partition for tp in self._assigned
        )

    def on_partitions_assigned(self, assigned: set[Any]) -> None:
        request_topics = {self.config.request_topic(p) for p in PRIORITIES}
        self._assigned = {tp for tp in assigned if tp.topic in request_topics}
        if self.reader is not None:
            self.reader.assign(self._assigned)
        total = len(PRIORITIES) * self.config.kafka.partitions
        self.providers.set_share(len(self._assigned) / total if total else 1.0)

    def on_partitions_revoked(self, revoked: set[Any]) -> None:
        """The new owner re-reads everything uncommitted of these partitions: drop their
        queued requests (no response from here) and their ack bookkeeping. Requests
        already calling a provider still answer (a possible duplicate), but leave the
        tables, which now belong to the new owner, alone."""
        self._assigned -= set(revoked)
        if self.reader is not None:
            self.reader.revoke(revoked)
        gone = {(tp.topic, tp.partition) for tp in revoked}
        dropped = self.scheduler.drain(
            lambda q: (q.item.source.topic, q.item.source.partition) in gone
        )
        self.counts["dropped_on_revoke"] += len(dropped)
        for tp in revoked:
            self.acks.forget(tp)
            self._to_commit.pop(tp, None)

    async def close(self) -> None:
        await self.providers.aclose()

    # -- respond ---------------------------------------------------------------------

    async def finish(self, job: Job, outcome: Outcome) -> None:
        """Write the terminal response, usage event and dead letter; then release the ack."""
        now = self.clock.now_ms()
        request = job.request
        if self.owns(job.source):  # after a revoke, the tables belong to the new owner
            self._settle(job, outcome, now)
            self._remember(job, outcome, now)
        if job.downgraded and outcome.status == Status.OK:
            outcome.status = Status.DEGRADED
            outcome.degradation_reason = Reason.BUDGET_EXCEEDED.value
        queue_ms = (job.dispatched_ms or now) - job.received_ms
        if not outcome.trail:
            outcome.trail = job.trail
        writes = [self._response_write(request, outcome, queue_ms, now)]
        writes.append(
            (
                self.config.topic("usage"),
                request["tenant"].encode(),
                registry.encode(registry.USAGE_EVENT, usage_record(request, outcome, now_ms=now)),
            )
        )
        if outcome.status in (Status.SHED, Status.FAILED, Status.REJECTED):
            # Work not done: shed / rate limited / over budget -> shed; failed, invalid -> failed.
            failed = outcome.status == Status.FAILED or outcome.reason == Reason.INVALID
            writes.append(
                self._dead_letter(
                    job.source,
                    job.raw,
                    outcome.reason,
                    outcome.detail,
                    request,
                    now,
                    failed=failed,
                    queue_ms=queue_ms,
                    load=outcome.load,
                )
            )
        self.counts[f"status.{outcome.status}"] += 1
        if outcome.reason:
            self.counts[f"reason.{outcome.reason}"] += 1
        observe_response(self, request, outcome, queue_ms, now)
        await self._write_and_ack(writes, job.source, job.event)

    def _response_write(
        self, request: dict[str, Any], outcome: Outcome, queue_ms: int, now: int
    ) -> tuple[str, bytes, bytes]:
        topic = request.get("reply_to") or self.config.topic("responses")
        record = response_record(request, outcome, queue_ms=queue_ms, now_ms=now)
        return (
            topic,
            str(request["request_id"]).encode(),
            registry.encode(registry.CHAT_RESPONSE, record),
        )

    def _dead_letter(
        self,
        source: Source,
        raw: bytes,
        reason: Reason,
        detail: str,
        request: dict[str, Any],
        now: int,
        *,
        failed: bool,
        queue_ms: int = 0,
        load: dict[str, str] | None = None,
    ) -> tuple[str, bytes, bytes]:
        topic = self.config.topic("deadletter.failed" if failed else "deadletter.shed")
        decoded = request if request.get("tenant") else None
        record = dead_letter_record(
            source,
            raw,
            reason=reason,
            detail=detail,
            now_ms=now,
            request=decoded,
            queue_ms=queue_ms,
            load=load,
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
        for ready in self.acks.done(event.message.tp, source.offset, event):
            self._to_commit[ready.message.tp] = ready.message.offset + 1

    async def commit(self) -> None:
        """Commit the offsets of requests whose terminal response is written, in order.

        The request topics are read by the worker's own reader (streams/intake.py) and
        committed here, through Faust's group member: only answered records move the
        committed offset.
        """
        if not self._to_commit:
            return
        offsets = {tp: o for tp, o in self._to_commit.items() if tp in self._assigned}
        self._to_commit.clear()
        if offsets:
            await self.app.consumer._commit_offsets(offsets)

    async def _checked_reply_topic(
        self, write: tuple[str, bytes, bytes]
    ) -> tuple[str, bytes, bytes]:
        """A reply_to that does not exist falls back to the default responses topic.

        The broker never auto-creates topics, and a send to a missing topic would block.
        """
        topic, key, value = write
        if topic in self._known_topics:
            return write
        metadata = await asyncio.to_thread(self._admin.list_topics, topic, 5)
        found = metadata.topics.get(topic)
        if found is not None and found.error is None and found.partitions:
            self._known_topics.add(topic)
            return write
        log.warning("reply topic %s does not exist; answering on the default topic", topic)
        return self.config.topic("responses"), key, value

    # -- visibility ------------------------------------------------------------------

    def budgets(self) -> dict[str, Any]:
        """Spend against every cap, per tenant this worker holds state for."""
        now = self.clock.now_ms()
        out: dict[str, Any] = {}
        for tenant, policy in self.admission.tenants.items():
            data = self.tenant_state.get(tenant)
            if data is None or policy.budget is None:
                continue
            ledger_config = LedgerConfig({tenant: policy.budget}, tz=self.admission.tz)
            out[tenant] = usage_view(TenantState.from_dict(data).ledger, now, tenant, ledger_config)
        # Providers' caps: one entry per (provider, partition) this worker owns and has
        # spent on; the key names both, so merging several workers' views keeps them all.
        caps = self.config.provider_caps
        for partition in sorted({tp.partition for tp in self._assigned}):
            for provider in sorted(caps.daily_caps_micros):
                key = provider_cap.table_key(provider, partition)
                data = self.tenant_state.get(key)
                if data is not None:
                    ledger = BudgetLedger.from_dict(data)
                    row = provider_cap.usage_row(ledger, now, provider, partition, caps)
                    out[key] = {"provider": provider, "partition": partition, "windows": [row]}
        return out

    def status(self) -> dict[str, Any]:
        return {
            "uptime_s": round(time.time() - self.started_at, 1),
            "queued": len(self.scheduler),
            "in_flight": self.in_flight,
            "pending_acks": self.acks.pending(),
            "paused": sorted(p.label for p in self._paused),
            "counts": dict(self.counts),
            "scheduler": self.scheduler.stats(),
            "cache": self.cache.status(),
            **self.providers.status(),
        }


def _shed(job: Job, reason: Reason, admission: Admission[Job]) -> Outcome:
    job.trail.append(f"shed: {admission.message}")
    load = {
        "fill": f"{admission.fill:.3f}",
        "expected_wait_ms": str(admission.expected_wait_ms),
        **{f"depth.{p}": str(n) for p, n in admission.depth.items()},
    }
    if admission.watermark is not None:
        load["watermark"] = str(admission.watermark)
    return Outcome(
        Status.SHED,
        reason,
        admission.message,
        trail=job.trail,
        load=load,
        retry_after_ms=max(1000, admission.expected_wait_ms),
    )


def _expired(job: Job, now: int) -> Outcome:
    job.trail.append("deadline passed")
    return Outcome(
        Status.SHED,
        Reason.DEADLINE_EXPIRED,
        f"deadline passed {now - job.deadline_ms} ms ago",
        trail=job.trail,
    )


def _headers(event: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in event.message.headers or ():
        try:
            out[key] = value.decode() if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError:
            continue
    return out
