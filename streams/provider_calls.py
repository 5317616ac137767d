"""Call a route's models with limits, retries, breakers and the degradation chain.

Glue between the provider connectors and the pure resilience policies. For one request:
ask the degradation chain for the next step; for a model, pass its circuit breaker and
its provider limiter, call it, record the outcome, and retry with jittered backoff while
the retry policy (attempt cap, deadline, worker-wide retry budget) allows; when the model
gives up, move down the chain: fallback models, then a stale cache entry, then the
route's static message. One breaker and one limiter per (provider, model) per worker.

Deadlines: a call is given ``min(provider timeout, time left before the deadline)``, and none is
started with less than ``MIN_CALL_MS`` left (the request is shed as ``deadline_expired``
instead). A timeout tells the breaker the provider is unhealthy only when the call had time to
answer (``timeout_is_provider_failure``): a call cut short by the request's own deadline is
neither a success nor a failure. Otherwise requests that waited long in the queue and then
timed out after a few ms would open the breaker of a healthy model.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from connectors.providers import (
    AuthError,
    BadRequestError,
    ChatCall,
    ChatResult,
    OverloadedError,
    Provider,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
    SpendLimitError,
    build_provider,
)
from streams.config import SluicegateConfig
from streams.policies.breaker import BreakerConfig, BreakerState, CircuitBreaker, Transition
from streams.policies.clock import Clock
from streams.policies.degradation import (
    Attempt,
    CallModel,
    DegradationChain,
    GiveUp,
    ModelRef,
    RouteConfig,
    StaticMessage,
    UseStaleCache,
)
from streams.policies.pricing import Price, cost_micros
from streams.policies.provider_limit import ProviderLimitConfig, ProviderLimiter
from streams.policies.retry import (
    FailureKind,
    RetryBudget,
    RetryBudgetConfig,
    RetryConfig,
    RetryPolicy,
)
from streams.policies.verdict import Reason, Status
from streams.records import Outcome

log = logging.getLogger("sluicegate.providers")

# No provider call is started with less time than this before the request's deadline: it
# could not answer in time (a fast model answers in ~50-100 ms) and its timeout would say
# nothing about the provider. A constant rather than a latency estimate, to keep it obvious.
MIN_CALL_MS = 50
# A timed-out call counts as a breaker failure when it was given its provider's full timeout,
# or at least this fraction of the breaker's slow-call duration: far longer than a healthy
# answer takes, and still reached by fresh requests when deadlines are about as short as the
# slow-call duration (so a provider that hangs still opens the breaker).
EVIDENCE_SHARE_OF_SLOW_CALL = 0.5

# Stale cache lookup, supplied by the cache glue: returns an Outcome for a stale hit or None.
StaleLookup = Callable[[], Awaitable[Outcome | None]]


def timeout_is_provider_failure(given_ms: int, full_timeout_ms: int, slow_call_ms: int) -> bool:
    """Is a call that timed out after ``given_ms`` evidence that the provider is unhealthy?
    Yes when it had the provider's full timeout or at least half the breaker's slow-call
    duration; no when the request's deadline cut it shorter (it might have answered)."""
    return given_ms >= min(full_timeout_ms, slow_call_ms * EVIDENCE_SHARE_OF_SLOW_CALL)


def failure_kind(error: ProviderError) -> FailureKind:
    if isinstance(error, SpendLimitError):
        return FailureKind.SPEND_LIMIT
    if isinstance(error, RateLimitedError):
        return FailureKind.RATE_LIMITED
    if isinstance(error, OverloadedError):
        return FailureKind.OVERLOADED
    if isinstance(error, ProviderTimeoutError):
        return FailureKind.TIMEOUT
    if isinstance(error, AuthError):
        return FailureKind.AUTH
    if isinstance(error, BadRequestError):
        return FailureKind.BAD_REQUEST
    return FailureKind.UNAVAILABLE


@dataclass
class CallStats:
    calls: int = 0
    first_attempts: int = 0
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class ProviderCaller:
    def __init__(self, config: SluicegateConfig, clock: Clock, rng: random.Random | None = None):
        self.config = config
        self.clock = clock
        res = config.resilience
        self.retry_budget = RetryBudget(
            RetryBudgetConfig(
                ratio=res.retry.budget_ratio, min_retries_per_s=res.retry.budget_min_per_s
            )
        )
        self.retry = RetryPolicy(
            RetryConfig(
                max_attempts=res.retry.max_attempts,
                base_ms=res.retry.base_ms,
                cap_ms=res.retry.cap_ms,
                min_attempt_ms=MIN_CALL_MS,
            ),
            rng or random.Random(),
            self.retry_budget,
        )
        self._breaker_config = BreakerConfig(
            window_type=res.breaker.window_type,
            window_size=res.breaker.window_size,
            minimum_calls=res.breaker.minimum_calls,
            failure_rate_threshold=res.breaker.failure_rate_threshold,
            slow_call_duration_ms=int(res.breaker.slow_call_s * 1000),
            slow_call_rate_threshold=res.breaker.slow_call_rate_threshold,
            open_duration_ms=int(res.breaker.open_s * 1000),
            half_open_probes=res.breaker.half_open_probes,
        )
        self.breakers: dict[ModelRef, CircuitBreaker] = {}
        self.limiters: dict[ModelRef, ProviderLimiter] = {}
        self.transitions: list[tuple[str, Transition]] = []
        self.stats = CallStats()
        self._providers: dict[str, Provider] = {}
        self._share = 1.0

    # -- per-model state ----------------------------------------------------------

    def breaker(self, ref: ModelRef) -> CircuitBreaker:
        breaker = self.breakers.get(ref)
        if breaker is None:

            def on_transition(t: Transition, name: str = str(ref)) -> None:
                log.warning("breaker %s: %s -> %s (%s)", name, t.from_state, t.to_state, t.reason)
                self.transitions.append((name, t))
                del self.transitions[:-200]

            breaker = self.breakers[ref] = CircuitBreaker(self._breaker_config, on_transition)
        return breaker

    def limiter(self, ref: ModelRef) -> ProviderLimiter:
        limiter = self.limiters.get(ref)
        if limiter is None:
            model = self.config.model_config_of(ref)
            limiter = ProviderLimiter(
                ProviderLimitConfig(rpm=model.rpm, tpm=model.tpm, share=self._share)
            )
            self.limiters[ref] = limiter
        return limiter

    def set_share(self, share: float) -> None:
        """This worker's fraction of the request partitions: its share of provider limits."""
        self._share = min(1.0, max(0.0, share))
        for limiter in self.limiters.values():
            limiter.set_share(self._share)

    def is_open(self, ref: ModelRef, now_ms: int) -> bool:
        breaker = self.breaker(ref)
        until = breaker.open_until_ms
        return breaker.state == BreakerState.OPEN and until is not None and now_ms < until

    def can_dispatch(self, ref: ModelRef, now_ms: int) -> bool:
        """False while the model's limiter has no request left this window."""
        snapshot = self.limiter(ref).snapshot(now_ms)
        if snapshot.blocked_until_ms is not None and now_ms < snapshot.blocked_until_ms:
            return False
        return snapshot.requests_available is None or snapshot.requests_available > 0

    def price(self, ref: ModelRef) -> Price:
        m = self.config.model_config_of(ref)
        return Price.from_usd_per_mtok(
            m.input_usd_per_mtok, m.output_usd_per_mtok, m.cached_input_usd_per_mtok
        )

    def provider(self, name: str) -> Provider:
        provider = self._providers.get(name)
        if provider is None:
            cfg = self.config.providers[name]
            provider = build_provider(
                cfg.kind, name, cfg.base_url, cfg.api_key_env, cfg.timeout_s, cfg.max_connections
            )
            self._providers[name] = provider
        return provider

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()

    # -- one request ----------------------------------------------------------------

    async def call_route(
        self,
        request: dict[str, Any],
        route: RouteConfig,
        deadline_ms: int,
        trail: list[str],
        est_tokens: int,
        stale: StaleLookup | None = None,
        static_message: str | None = None,
    ) -> Outcome:
        if static_message is not None:
            route = RouteConfig(
                route.name, route.primary, route.fallbacks, route.use_stale_cache, static_message
            )
        chain = DegradationChain(route)
        tried: list[Attempt] = []
        attempts = 0
        stale_outcome: Outcome | None = None
        stale_checked = False
        while True:
            now = self.clock.now_ms()
            if deadline_ms - now < MIN_CALL_MS:
                return _too_late(now, deadline_ms, attempts, trail)
            if not stale_checked and stale is not None and tried:
                stale_outcome, stale_checked = await stale(), True
            step = chain.next_step(
                tried, stale_outcome is not None, lambda ref: self.is_open(ref, self.clock.now_ms())
            )
            if isinstance(step, CallModel):
                ref = ModelRef(step.provider, step.model)
                result, reason, n = await self._call_model(
                    request, ref, deadline_ms, trail, est_tokens
                )
                attempts += n
                if reason is Reason.DEADLINE_EXPIRED:
                    return _too_late(self.clock.now_ms(), deadline_ms, attempts, trail)
                if result is None:
                    tried.append(Attempt(ref, reason))
                    continue
                return self._success(ref, result, step, attempts, trail)
            degradation = step.degradation_reason if not isinstance(step, GiveUp) else step.reason
            last = tried[-1].reason if tried else Reason.BREAKER_OPEN
            detail = "; ".join(trail[-4:])
            if isinstance(step, UseStaleCache) and stale_outcome is not None:
                trail.append("stale cache")
                stale_outcome.status = Status.DEGRADED
                stale_outcome.degradation_reason = degradation.value
                stale_outcome.attempts = attempts
                stale_outcome.trail = trail
                return stale_outcome
            if isinstance(step, StaticMessage):
                trail.append("static message")
                return Outcome(
                    Status.DEGRADED,
                    last,
                    detail,
                    content=step.text,
                    degradation_reason=degradation.value,
                    attempts=attempts,
                    trail=trail,
                )
            return Outcome(Status.FAILED, last, detail, attempts=attempts, trail=trail)

    def _success(
        self, ref: ModelRef, result: ChatResult, step: CallModel, attempts: int, trail: list[str]
    ) -> Outcome:
        cost = cost_micros(
            self.price(ref),
            result.prompt_tokens,
            result.completion_tokens,
            result.cached_prompt_tokens,
        )
        trail.append(f"{ref}: ok")
        return Outcome(
            Status.DEGRADED if step.is_fallback else Status.OK,
            step.degradation_reason if step.is_fallback else Reason.NONE,
            content=result.content,
            finish_reason=result.finish_reason,
            model=ref.model,
            provider=ref.provider,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            cached_prompt_tokens=result.cached_prompt_tokens,
            cost_micros=cost,
            degradation_reason=step.degradation_reason.value if step.is_fallback else None,
            attempts=attempts,
            trail=trail,
        )

    async def _call_model(
        self,
        request: dict[str, Any],
        ref: ModelRef,
        deadline_ms: int,
        trail: list[str],
        est_tokens: int,
    ) -> tuple[ChatResult | None, Reason, int]:
        """Attempts on one model; (result, NONE, attempts) or (None, why it gave up, attempts).
        DEADLINE_EXPIRED: less than MIN_CALL_MS was left to start an attempt."""
        breaker, limiter = self.breaker(ref), self.limiter(ref)
        full_timeout_ms = int(self.config.providers[ref.provider].timeout_s * 1000)
        attempt = 0
        while True:
            now = self.clock.now_ms()
            if deadline_ms - now < MIN_CALL_MS:
                return None, Reason.DEADLINE_EXPIRED, attempt
            if not breaker.allow(now):
                trail.append(f"{ref}: breaker open")
                return None, Reason.BREAKER_OPEN, attempt
            wait = limiter.try_acquire(now, est_tokens)
            if wait > 0:
                breaker.release(now)
                if now + wait + MIN_CALL_MS > deadline_ms:
                    trail.append(f"{ref}: provider limit, no time left to wait")
                    return None, Reason.PROVIDER_RATE_LIMITED, attempt
                await asyncio.sleep(wait / 1000)
                continue
            attempt += 1
            self.stats.calls += 1
            if attempt == 1:
                self.stats.first_attempts += 1
                self.retry_budget.record_first_attempt(now)
            else:
                self.stats.retries += 1
            given_ms = min(full_timeout_ms, deadline_ms - now)
            try:
                result = await self.provider(ref.provider).complete(
                    _chat_call(request, ref, given_ms / 1000)
                )
            except ProviderError as exc:
                end = self.clock.now_ms()
                limiter.finish(end, est_tokens, 0)
                kind = failure_kind(exc)
                self.stats.errors[kind.value] = self.stats.errors.get(kind.value, 0) + 1
                cut_short = (
                    kind is FailureKind.TIMEOUT
                    and exc.status is None  # our own timeout, not the provider's 408
                    and not timeout_is_provider_failure(
                        given_ms, full_timeout_ms, self._breaker_config.slow_call_duration_ms
                    )
                )
                if kind.counts_toward_breaker and not cut_short:
                    breaker.record(end, False, end - now)
                else:
                    breaker.release(end)
                retry_after = getattr(exc, "retry_after_ms", None)
                if kind == FailureKind.RATE_LIMITED:
                    info = getattr(exc, "ratelimit", None)
                    limiter.observe(
                        end, rate_limited=True, retry_after_ms=retry_after, **_remaining(info)
                    )
                decision = self.retry.decide(end, attempt, kind, retry_after, deadline_ms)
                trail.append(
                    f"{ref}: {kind.value}{f' {exc.status}' if exc.status else ''}"
                    f"{' (cut short by the deadline)' if cut_short else ''} -> {decision.reason}"
                )
                if not decision.retry:
                    return None, kind.reason, attempt
                await asyncio.sleep(decision.delay_ms / 1000)
                continue
            except BaseException:  # cancelled (rebalance, shutdown): free what the call held
                end = self.clock.now_ms()
                limiter.finish(end, est_tokens, 0)
                breaker.release(end)
                raise
            end = self.clock.now_ms()
            breaker.record(end, True, end - now)
            limiter.observe(end, rate_limited=False, **_remaining(result.ratelimit))
            limiter.finish(end, est_tokens, result.prompt_tokens + result.completion_tokens)
            return result, Reason.NONE, attempt

    def status(self) -> dict[str, Any]:
        now = self.clock.now_ms()
        return {
            "breakers": {str(ref): b.snapshot(now).state.value for ref, b in self.breakers.items()},
            "breaker_transitions": [
                {
                    "model": name,
                    "at_ms": t.at_ms,
                    "from": t.from_state.value,
                    "to": t.to_state.value,
                    "reason": t.reason,
                }
                for name, t in self.transitions[-20:]
            ],
            "limiters": {
                str(ref): {
                    "effective_rpm": s.effective_rpm,
                    "effective_tpm": s.effective_tpm,
                    "blocked_until_ms": s.blocked_until_ms,
                }
                for ref, lim in self.limiters.items()
                for s in [lim.snapshot(now)]
            },
            "provider_calls": {
                "calls": self.stats.calls,
                "first_attempts": self.stats.first_attempts,
                "retries": self.stats.retries,
                "errors": dict(self.stats.errors),
            },
            "limit_share": self._share,
        }


def _too_late(now: int, deadline_ms: int, attempts: int, trail: list[str]) -> Outcome:
    """Shed: the deadline has passed, or is too close to start a provider call."""
    if now >= deadline_ms:
        trail.append("deadline passed")
        detail = "deadline passed while calling providers"
    else:
        trail.append("deadline too close")
        detail = f"only {deadline_ms - now} ms left: too little to call a provider"
    return Outcome(Status.SHED, Reason.DEADLINE_EXPIRED, detail, attempts=attempts, trail=trail)


def _remaining(info: Any) -> dict[str, int | None]:
    if info is None:
        return {}
    return {
        "remaining_requests": info.remaining_requests,
        "remaining_tokens": info.remaining_tokens,
        "reset_requests_ms": info.reset_requests_ms,
        "reset_tokens_ms": info.reset_tokens_ms,
    }


def _chat_call(request: dict[str, Any], ref: ModelRef, timeout_s: float) -> ChatCall:
    return ChatCall(
        model=ref.model,
        messages=[{k: v for k, v in m.items() if v is not None} for m in request["messages"]],
        temperature=request.get("temperature"),
        top_p=request.get("top_p"),
        max_tokens=request.get("max_tokens"),
        stop=list(request.get("stop") or []) or None,
        seed=request.get("seed"),
        request_id=request["request_id"],
        timeout_s=max(0.05, timeout_s),
    )
