"""Prompt-token estimates: the raw heuristic, per-model calibration, and max cost."""

from __future__ import annotations

import json
import math
import random

import pytest

from streams.policies.pricing import Price, cost_micros
from streams.policies.token_estimate import (
    TokenEstimateConfig,
    TokenEstimator,
    max_cost_estimate,
    raw_prompt_tokens,
    text_tokens,
)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("", 0), ("abcd", 1), ("abcde", 2), ("hello world!", 3), ("日本語", 3), ("né", 2)],
)
def test_text_tokens_count_ascii_by_four_and_other_characters_by_one(
    text: str, tokens: int
) -> None:
    assert text_tokens(text) == tokens


@pytest.mark.parametrize(
    ("messages", "tokens"),
    [
        ([], 3),  # only the reply priming
        ([{"role": "user", "content": "hello world!"}], 3 + 4 + 1 + 3),
        ([{"role": "user", "content": "hello world!", "name": "bob"}], 3 + 4 + 1 + 3 + 1 + 1),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "hello world!"}, {"type": "image"}],
                }
            ],
            3 + 4 + 1 + 3,
        ),
        ([{"role": "system", "content": None}, {"role": "user", "content": "abcd"}], 3 + 6 + 6),
    ],
)
def test_raw_estimate_adds_per_message_overhead(
    messages: list[dict[str, object]], tokens: int
) -> None:
    assert raw_prompt_tokens(messages) == tokens


def test_uncalibrated_estimate_is_raw_plus_headroom() -> None:
    estimator = TokenEstimator()
    messages = [{"role": "user", "content": "x" * 388}]  # 3 + 4 + 1 + 97 = 105 raw
    assert raw_prompt_tokens(messages) == 105
    assert estimator.estimate("gpt-4o", messages) == math.ceil(105 * 1.05)


def test_calibration_learns_a_model_that_uses_more_tokens_and_stops_underestimating() -> None:
    estimator = TokenEstimator()
    for _ in range(100):
        estimator.observe("m", 1_000, 1_300)  # the model really uses 30% more
    assert estimator.calibrated("m", 1_000) >= 1_300
    assert estimator.calibrated("other", 1_000) == 1_050  # calibration is per model


def test_calibration_covers_most_requests_when_ratios_are_noisy() -> None:
    rng = random.Random(11)
    estimator = TokenEstimator()
    for _ in range(3_000):
        raw = rng.randrange(50, 5_000)
        estimator.observe("m", raw, round(raw * rng.uniform(0.7, 1.3)))
    under, total_ratio = 0, 0.0
    for _ in range(2_000):
        raw = rng.randrange(50, 5_000)
        actual = round(raw * rng.uniform(0.7, 1.3))
        estimate = estimator.calibrated("m", raw)
        under += estimate < actual
        total_ratio += estimate / actual
        estimator.observe("m", raw, actual)
    assert under / 2_000 < 0.05  # rarely below the actual count
    assert total_ratio / 2_000 < 1.5  # and not absurdly above it


def test_calibration_comes_down_slowly_when_the_heuristic_overestimates() -> None:
    estimator = TokenEstimator()
    for _ in range(50):
        estimator.observe("m", 1_000, 500)
    after_50 = estimator.calibration("m").factor
    for _ in range(2_000):
        estimator.observe("m", 1_000, 500)
    assert after_50 > 0.85  # a few cheap requests barely move it
    assert 0.5 <= estimator.calibration("m").factor < 0.55
    assert estimator.calibration("m").mean_ratio == pytest.approx(0.5)


def test_calibration_stays_within_configured_bounds() -> None:
    estimator = TokenEstimator(TokenEstimateConfig(max_factor=2.0))
    for _ in range(500):
        estimator.observe("m", 10, 1_000)
    assert estimator.calibration("m").factor == 2.0


def test_observation_with_zero_estimate_is_ignored() -> None:
    estimator = TokenEstimator()
    estimator.observe("m", 0, 100)
    assert estimator.calibration("m").samples == 0


def test_calibration_survives_a_json_round_trip() -> None:
    estimator = TokenEstimator()
    for _ in range(20):
        estimator.observe("m", 100, 140)
    restored = TokenEstimator.from_dict(json.loads(json.dumps(estimator.to_dict())))
    assert restored.calibration("m") == estimator.calibration("m")
    assert restored.calibrated("m", 1_000) == estimator.calibrated("m", 1_000)


def test_bad_estimator_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="quantile"):
        TokenEstimateConfig(quantile=1.5)


def test_max_cost_estimate_prices_max_tokens_of_output() -> None:
    price = Price(2_500_000, 10_000_000, 1_250_000)
    assert max_cost_estimate(price, 1_000, 500) == 2_500 + 5_000
    assert max_cost_estimate(price, 1_000, 500) >= cost_micros(price, 1_000, 400, 300)


def test_max_cost_estimate_uses_the_dearer_prompt_price() -> None:
    price = Price(1_000_000, 0, 2_000_000)  # a cached price above the input price
    assert max_cost_estimate(price, 1_000, 0) == 2_000
