"""Graceful degradation per route: primary model, fallback models, stale cache, static message.

Algorithm: walk the route's models in order and call the first one neither tried yet nor
unavailable (breaker open); when none is left, use a stale cache entry if the route allows it
and one exists, then the route's static message, then give up. The step carries
``degradation_reason``: why the primary model was not used (its failure, or breaker_open), so
the response can say why it degraded. Cost O(models in the route); no state of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from streams.policies.verdict import Reason

DEFAULT_STATIC_MESSAGE = "The service is temporarily unavailable. Please try again later."


@dataclass(frozen=True)
class ModelRef:
    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}"

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """``provider/model``; raises ValueError otherwise."""
        provider, _, model = text.partition("/")
        if not provider or not model:
            raise ValueError(f"{text!r} must be written provider/model")
        return cls(provider, model)


@dataclass(frozen=True)
class RouteConfig:
    name: str
    primary: ModelRef
    fallbacks: tuple[ModelRef, ...] = ()
    use_stale_cache: bool = True
    static_message: str | None = DEFAULT_STATIC_MESSAGE  # None: no static answer, fail instead

    @property
    def models(self) -> tuple[ModelRef, ...]:
        return (self.primary, *self.fallbacks)


@dataclass(frozen=True)
class Attempt:
    """A model that was called (after its retries) and failed, and why."""

    model: ModelRef
    reason: Reason  # PROVIDER_RATE_LIMITED, TIMEOUT, UNAVAILABLE, PROVIDER_ERROR, ...


@dataclass(frozen=True)
class CallModel:
    provider: str
    model: str
    is_fallback: bool
    degradation_reason: Reason  # Reason.NONE for the primary


@dataclass(frozen=True)
class UseStaleCache:
    degradation_reason: Reason


@dataclass(frozen=True)
class StaticMessage:
    text: str
    degradation_reason: Reason


@dataclass(frozen=True)
class GiveUp:
    reason: Reason  # the last failure, or BREAKER_OPEN when nothing could be called


Step = CallModel | UseStaleCache | StaticMessage | GiveUp
Unavailable = Callable[[ModelRef], bool] | Collection[ModelRef]


class DegradationChain:
    def __init__(self, route: RouteConfig) -> None:
        self.route = route

    def next_step(
        self,
        tried: Sequence[Attempt],
        stale_cache_available: bool,
        unavailable: Unavailable = (),
    ) -> Step:
        """What to do next, given the failed attempts so far (oldest first) and which models are
        unavailable now: a predicate or a collection of ``ModelRef`` (e.g. breaker open)."""
        is_unavailable = unavailable if callable(unavailable) else unavailable.__contains__
        failed = {a.model: a.reason for a in tried}
        primary = self.route.primary
        if primary in failed:
            why = failed[primary]
        elif is_unavailable(primary):
            why = Reason.BREAKER_OPEN
        else:
            return CallModel(primary.provider, primary.model, False, Reason.NONE)
        for ref in self.route.fallbacks:
            if ref not in failed and not is_unavailable(ref):
                return CallModel(ref.provider, ref.model, True, why)
        if self.route.use_stale_cache and stale_cache_available:
            return UseStaleCache(why)
        if self.route.static_message is not None:
            return StaticMessage(self.route.static_message, why)
        return GiveUp(tried[-1].reason if tried else Reason.BREAKER_OPEN)
