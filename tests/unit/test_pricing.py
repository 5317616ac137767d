"""Integer micro-dollar costs: exact arithmetic, one round-up per request, price lookups."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from streams.policies.pricing import Price, PriceList, UnknownPriceError, cost_micros

GPT = Price(2_500_000, 10_000_000, 1_250_000)  # $2.50 in, $10 out, $1.25 cached, per Mtok


@pytest.mark.parametrize(
    ("price", "prompt", "completion", "cached", "expected"),
    [
        (GPT, 1_000, 500, 0, 2_500 + 5_000),
        (GPT, 1_000_000, 0, 0, 2_500_000),  # a million tokens cost the list price
        (GPT, 1_000, 0, 400, 600 * 2.5 + 400 * 1.25),  # cached tokens are part of the prompt
        (GPT, 100, 0, 500, 125),  # more cached than prompt: clamped to the prompt
        (Price(2_500_000, 10_000_000), 1_000, 0, 400, 2_500),  # no cached price: input price
        (GPT, 0, 0, 0, 0),
        (Price(150_000, 600_000), 1, 0, 0, 1),  # 0.15 µ$ rounds up to 1
        (Price(150_000, 600_000), 7, 0, 0, 2),  # 1.05 µ$ rounds up to 2
        (Price(400_000, 400_000, 400_000), 2, 1, 1, 2),  # 0.4 + 0.4 + 0.4 = 1.2 -> 2, not 3
        (Price(0, 0), 10_000, 10_000, 0, 0),  # a free model
    ],
)
def test_cost_is_exact_then_rounded_up_once(
    price: Price, prompt: int, completion: int, cached: int, expected: float
) -> None:
    assert cost_micros(price, prompt, completion, cached) == expected


def test_cost_is_never_below_exact_and_less_than_one_micro_above() -> None:
    rng = random.Random(3)
    for _ in range(2_000):
        price = Price(
            rng.randrange(0, 90_000_000), rng.randrange(0, 90_000_000), rng.randrange(0, 9_000_000)
        )
        prompt, completion = rng.randrange(0, 200_000), rng.randrange(0, 20_000)
        cached = rng.randrange(0, prompt + 1)
        exact = Fraction(
            (prompt - cached) * price.input_per_mtok_micros
            + cached * price.cached_input
            + completion * price.output_per_mtok_micros,
            1_000_000,
        )
        cost = cost_micros(price, prompt, completion, cached)
        assert exact <= cost < exact + 1


@pytest.mark.parametrize(("prompt", "completion", "cached"), [(-1, 0, 0), (0, -1, 0), (0, 0, -1)])
def test_negative_token_counts_are_a_bug(prompt: int, completion: int, cached: int) -> None:
    with pytest.raises(ValueError, match="token counts"):
        cost_micros(GPT, prompt, completion, cached)


def test_negative_price_is_rejected() -> None:
    with pytest.raises(ValueError, match="input_per_mtok_micros"):
        Price(-1, 0)


@pytest.mark.parametrize(
    ("usd", "micros"),
    [(2.5, 2_500_000), ("0.075", 75_000), (0.15, 150_000), (0, 0), ("0.0000001", 1)],
)
def test_dollar_prices_convert_exactly_and_round_up(usd: float | str, micros: int) -> None:
    assert Price.from_usd_per_mtok(usd, usd, usd) == Price(micros, micros, micros)


def test_dollar_price_without_cached_price_keeps_none() -> None:
    assert Price.from_usd_per_mtok(1, 2, None).cached_input_per_mtok_micros is None


def test_price_list_finds_prices_by_provider_and_model() -> None:
    prices = PriceList(
        {("openai", "gpt-4o"): GPT, ("anthropic", "haiku"): Price(800_000, 4_000_000)}
    )
    assert prices.price("openai", "gpt-4o") is GPT
    assert prices.cost_micros("anthropic", "haiku", 1_000_000, 0) == 800_000
    assert ("openai", "gpt-4o") in prices
    assert list(prices) == [("anthropic", "haiku"), ("openai", "gpt-4o")]
    assert len(prices) == 2


def test_unknown_model_is_a_clear_error_naming_the_known_ones() -> None:
    prices = PriceList({("openai", "gpt-4o"): GPT})
    with pytest.raises(UnknownPriceError, match=r"openai/gpt-5.*known: openai/gpt-4o"):
        prices.price("openai", "gpt-5")
    assert prices.find("openai", "gpt-5") is None
