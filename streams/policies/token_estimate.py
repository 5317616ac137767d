"""Prompt-token estimates from message text, calibrated per model against reported usage.

Raw estimate (no tokenizer needed): for each message, ``ceil(ascii_chars / 4)`` plus one
token per non-ASCII character, plus ``message_overhead`` tokens for the role and
separators (one more for a ``name``); then ``reply_overhead`` for the reply priming.
Four ASCII characters per token is the usual rule of thumb for English with BPE
tokenizers; CJK text runs at about one token per character, so every non-ASCII
character counts one (this overestimates accented Latin text, the safe side).

Calibration: per model, a factor ``q`` tracks a high quantile (``quantile``, default the
95th percentile) of the ratio ``actual / raw`` with the stochastic quantile update
``q *= 1 + step * (quantile - [ratio <= q])``: after an underestimate ``q`` jumps up by
``step * quantile``; after a covered request it drifts down by ``step * (1 - quantile)``.
It settles where ``P(ratio > q) = 1 - quantile``, learns upward fast and downward
slowly. The calibrated estimate is ``ceil(raw * q * (1 + headroom))``, so with the
defaults it undershoots rarely, and then by little. An EWMA of the ratio is kept for
dashboards. Calibration is per worker and in memory: losing it only restarts learning.

Cost: O(characters) per estimate, O(1) per observation, three numbers per model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from streams.policies.pricing import Price, cost_micros


@dataclass(frozen=True)
class TokenEstimateConfig:
    chars_per_token: int = 4  # ASCII characters per token
    message_overhead: int = 4  # role and separators, per message
    name_overhead: int = 1  # a message with a ``name``
    reply_overhead: int = 3  # priming of the assistant's reply
    quantile: float = 0.95  # the share of requests the factor should cover
    step: float = 0.05  # relative step of the quantile update
    ewma_alpha: float = 0.1  # weight of a new ratio in the mean (reporting only)
    initial_factor: float = 1.0
    min_factor: float = 0.25
    max_factor: float = 4.0
    headroom: float = 0.05  # extra margin on top of the factor

    def __post_init__(self) -> None:
        if not 0 < self.quantile < 1 or not 0 < self.step < 1 or not 0 < self.ewma_alpha <= 1:
            raise ValueError("quantile and step must be in (0, 1), ewma_alpha in (0, 1]")
        if not 0 < self.min_factor <= self.initial_factor <= self.max_factor:
            raise ValueError("need 0 < min_factor <= initial_factor <= max_factor")
        if self.chars_per_token < 1 or self.headroom < 0:
            raise ValueError("chars_per_token must be >= 1 and headroom >= 0")


DEFAULT_CONFIG = TokenEstimateConfig()


@dataclass(frozen=True)
class ModelCalibration:
    factor: float  # the tracked high quantile of actual / raw
    mean_ratio: float  # EWMA of actual / raw
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return {"factor": self.factor, "mean_ratio": self.mean_ratio, "samples": self.samples}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCalibration:
        return cls(float(data["factor"]), float(data["mean_ratio"]), int(data["samples"]))


def _text_of(content: object) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):  # OpenAI content parts: [{"type": "text", "text": ...}]
        texts = [p.get("text") for p in content if isinstance(p, Mapping)]
        return "".join(t for t in texts if isinstance(t, str))
    return str(content)


def text_tokens(text: str, config: TokenEstimateConfig = DEFAULT_CONFIG) -> int:
    """Tokens in a piece of text: ASCII characters / ``chars_per_token`` (rounded up)
    plus one per non-ASCII character."""
    ascii_chars = len(text.encode("ascii", "ignore"))  # counted in C, not char by char
    return -(-ascii_chars // config.chars_per_token) + len(text) - ascii_chars


def raw_prompt_tokens(
    messages: Sequence[Mapping[str, Any]], config: TokenEstimateConfig = DEFAULT_CONFIG
) -> int:
    """The uncalibrated prompt-token estimate of a chat (``role``, ``content``, ``name``)."""
    total = config.reply_overhead
    for message in messages:
        total += config.message_overhead
        total += text_tokens(_text_of(message.get("role")), config)
        total += text_tokens(_text_of(message.get("content")), config)
        name = message.get("name")
        if name:
            total += config.name_overhead + text_tokens(_text_of(name), config)
    return total


class TokenEstimator:
    """Per-model calibrated prompt-token estimates; state is ``to_dict()``-able."""

    def __init__(
        self,
        config: TokenEstimateConfig = DEFAULT_CONFIG,
        calibrations: Mapping[str, ModelCalibration] | None = None,
    ) -> None:
        self.config = config
        self._models: dict[str, ModelCalibration] = dict(calibrations or {})

    def calibration(self, model: str) -> ModelCalibration:
        found = self._models.get(model)
        if found is None:
            return ModelCalibration(self.config.initial_factor, 1.0, 0)
        return found

    def calibrated(self, model: str, raw: int) -> int:
        """A raw estimate scaled by the model's factor and headroom, rounded up."""
        factor = self.calibration(model).factor * (1 + self.config.headroom)
        return math.ceil(raw * factor - 1e-9)  # the epsilon absorbs float noise

    def estimate(self, model: str, messages: Sequence[Mapping[str, Any]]) -> int:
        """The calibrated prompt-token estimate of ``messages`` for ``model``."""
        return self.calibrated(model, raw_prompt_tokens(messages, self.config))

    def observe(self, model: str, estimated: int, actual: int) -> None:
        """Learn from reported usage. ``estimated`` is the RAW estimate
        (``raw_prompt_tokens``), not the calibrated one; ``actual`` the provider's
        ``prompt_tokens``. A zero raw estimate carries no information and is ignored."""
        if estimated <= 0 or actual < 0:
            return
        cfg = self.config
        ratio = actual / estimated
        cal = self.calibration(model)
        covered = 1.0 if ratio <= cal.factor else 0.0
        factor = cal.factor * (1 + cfg.step * (cfg.quantile - covered))
        factor = min(cfg.max_factor, max(cfg.min_factor, factor))
        mean = (
            ratio
            if cal.samples == 0
            else cal.mean_ratio + cfg.ewma_alpha * (ratio - cal.mean_ratio)
        )
        self._models[model] = replace(cal, factor=factor, mean_ratio=mean, samples=cal.samples + 1)

    def to_dict(self) -> dict[str, Any]:
        return {model: cal.to_dict() for model, cal in sorted(self._models.items())}

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], config: TokenEstimateConfig = DEFAULT_CONFIG
    ) -> TokenEstimator:
        return cls(config, {m: ModelCalibration.from_dict(c) for m, c in data.items()})


def max_cost_estimate(price: Price, est_prompt_tokens: int, max_tokens: int) -> int:
    """An upper bound of a request's cost: the estimated prompt at the dearer of the
    input and cached-input prices, plus ``max_tokens`` of output, rounded up."""
    cached = est_prompt_tokens if price.cached_input > price.input_per_mtok_micros else 0
    return cost_micros(price, est_prompt_tokens, max_tokens, cached)
