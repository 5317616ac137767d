"""The degradation chain: order of steps, skipping unavailable models, the reason it carries."""

from __future__ import annotations

import pytest

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
from streams.policies.verdict import Reason

PRIMARY = ModelRef("openai", "gpt-big")
FALLBACK_1 = ModelRef("anthropic", "claude-mid")
FALLBACK_2 = ModelRef("openai", "gpt-small")
ROUTE = RouteConfig(
    name="chat", primary=PRIMARY, fallbacks=(FALLBACK_1, FALLBACK_2), static_message="Sorry."
)


def failed(*pairs: tuple[ModelRef, Reason]) -> list[Attempt]:
    return [Attempt(model, reason) for model, reason in pairs]


def test_primary_is_called_first_without_a_degradation_reason() -> None:
    step = DegradationChain(ROUTE).next_step([], stale_cache_available=True)
    assert step == CallModel("openai", "gpt-big", is_fallback=False, degradation_reason=Reason.NONE)


@pytest.mark.parametrize(
    "reason", [Reason.PROVIDER_RATE_LIMITED, Reason.TIMEOUT, Reason.PROVIDER_ERROR]
)
def test_failed_primary_falls_back_carrying_its_failure(reason: Reason) -> None:
    step = DegradationChain(ROUTE).next_step(failed((PRIMARY, reason)), False)
    assert step == CallModel("anthropic", "claude-mid", is_fallback=True, degradation_reason=reason)


def test_fallbacks_are_tried_in_order() -> None:
    tried = failed((PRIMARY, Reason.TIMEOUT), (FALLBACK_1, Reason.UNAVAILABLE))
    step = DegradationChain(ROUTE).next_step(tried, False)
    assert step == CallModel("openai", "gpt-small", True, Reason.TIMEOUT)


def test_open_breaker_on_primary_is_skipped_and_named_as_the_reason() -> None:
    step = DegradationChain(ROUTE).next_step([], False, unavailable={PRIMARY})
    assert step == CallModel("anthropic", "claude-mid", True, Reason.BREAKER_OPEN)


def test_unavailable_fallbacks_are_skipped_via_a_predicate() -> None:
    step = DegradationChain(ROUTE).next_step(
        failed((PRIMARY, Reason.TIMEOUT)), False, unavailable=lambda m: m == FALLBACK_1
    )
    assert step == CallModel("openai", "gpt-small", True, Reason.TIMEOUT)


ALL_FAILED = failed(
    (PRIMARY, Reason.TIMEOUT), (FALLBACK_1, Reason.UNAVAILABLE), (FALLBACK_2, Reason.PROVIDER_ERROR)
)


def test_stale_cache_comes_after_every_model() -> None:
    assert DegradationChain(ROUTE).next_step(ALL_FAILED, True) == UseStaleCache(Reason.TIMEOUT)


@pytest.mark.parametrize(("stale_available", "use_stale"), [(False, True), (True, False)])
def test_static_message_when_no_usable_stale_entry(stale_available: bool, use_stale: bool) -> None:
    route = RouteConfig("chat", PRIMARY, (FALLBACK_1, FALLBACK_2), use_stale, "Sorry.")
    step = DegradationChain(route).next_step(ALL_FAILED, stale_available)
    assert step == StaticMessage("Sorry.", Reason.TIMEOUT)


def test_gives_up_with_the_last_failure_when_no_static_message() -> None:
    route = RouteConfig("chat", PRIMARY, (FALLBACK_1, FALLBACK_2), static_message=None)
    assert DegradationChain(route).next_step(ALL_FAILED, False) == GiveUp(Reason.PROVIDER_ERROR)


def test_gives_up_as_breaker_open_when_nothing_could_be_called() -> None:
    route = RouteConfig("chat", PRIMARY, static_message=None)
    step = DegradationChain(route).next_step([], False, unavailable={PRIMARY})
    assert step == GiveUp(Reason.BREAKER_OPEN)


def test_every_breaker_open_degrades_to_stale_cache() -> None:
    step = DegradationChain(ROUTE).next_step(
        [], True, unavailable={PRIMARY, FALLBACK_1, FALLBACK_2}
    )
    assert step == UseStaleCache(Reason.BREAKER_OPEN)


def test_route_without_fallbacks_goes_straight_to_static_message() -> None:
    route = RouteConfig("chat", PRIMARY)
    step = DegradationChain(route).next_step(failed((PRIMARY, Reason.TIMEOUT)), False)
    assert isinstance(step, StaticMessage)
    assert "temporarily unavailable" in step.text
