"""Model prices and request costs in integer micro-dollars (1 USD = 1_000_000 µ$).

Prices are per million tokens, in micro-dollars: $2.50 / Mtok is ``2_500_000``. A
request's exact cost is a rational number of micro-dollars::

    (uncached_prompt * input + cached_prompt * cached_input + completion * output) / 1e6

Rounding rule: that sum is computed exactly in integers and rounded UP to a whole
micro-dollar, once per request. A cost is therefore never below the exact cost and
never more than 1 µ$ above it, so an estimate built from upper-bound token counts is
itself an upper bound of what the provider will charge.

Cost: O(1) per request; ``PriceList`` lookups are a dict access.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

MICROS_PER_USD = 1_000_000
TOKENS_PER_MTOK = 1_000_000


class UnknownPriceError(LookupError):
    """The price list has no price for a (provider, model): a configuration bug."""


@dataclass(frozen=True)
class Price:
    """Micro-dollars per million tokens. Cached prompt tokens (prompt-cache reads) cost
    ``cached_input_per_mtok_micros``, or the input price when that is ``None``."""

    input_per_mtok_micros: int
    output_per_mtok_micros: int
    cached_input_per_mtok_micros: int | None = None

    def __post_init__(self) -> None:
        for name in ("input_per_mtok_micros", "output_per_mtok_micros"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.cached_input_per_mtok_micros is not None and self.cached_input_per_mtok_micros < 0:
            raise ValueError("cached_input_per_mtok_micros must be >= 0")

    @property
    def cached_input(self) -> int:
        if self.cached_input_per_mtok_micros is None:
            return self.input_per_mtok_micros
        return self.cached_input_per_mtok_micros

    @classmethod
    def from_usd_per_mtok(
        cls, input_usd: float | str, output_usd: float | str, cached_input_usd: float | str | None
    ) -> Price:
        """Build from dollars per Mtok as written in a config file (``2.5`` -> 2_500_000);
        fractions of a micro-dollar per Mtok round up."""
        return cls(
            _usd_to_micros(input_usd),
            _usd_to_micros(output_usd),
            None if cached_input_usd is None else _usd_to_micros(cached_input_usd),
        )


def _usd_to_micros(usd: float | str) -> int:
    micros = (Decimal(str(usd)) * MICROS_PER_USD).to_integral_value(rounding=ROUND_CEILING)
    return int(micros)


def cost_micros(
    price: Price, prompt_tokens: int, completion_tokens: int, cached_prompt_tokens: int = 0
) -> int:
    """The cost of one request, rounded up to a whole micro-dollar.

    ``prompt_tokens`` includes ``cached_prompt_tokens`` (the OpenAI usage convention);
    a cached count above the prompt count is clamped to it. Negative counts are a bug.
    """
    if prompt_tokens < 0 or completion_tokens < 0 or cached_prompt_tokens < 0:
        raise ValueError("token counts must be >= 0")
    cached = min(cached_prompt_tokens, prompt_tokens)
    numerator = (
        (prompt_tokens - cached) * price.input_per_mtok_micros
        + cached * price.cached_input
        + completion_tokens * price.output_per_mtok_micros
    )
    return -(-numerator // TOKENS_PER_MTOK)  # ceiling division


class PriceList:
    """Prices by (provider, model). ``price()`` raises ``UnknownPriceError`` for a model
    the list does not know; ``find()`` returns ``None`` instead."""

    def __init__(self, prices: Mapping[tuple[str, str], Price]) -> None:
        self._prices = dict(prices)

    def price(self, provider: str, model: str) -> Price:
        found = self._prices.get((provider, model))
        if found is None:
            known = ", ".join(f"{p}/{m}" for p, m in sorted(self._prices)) or "none"
            raise UnknownPriceError(f"no price for {provider}/{model} (known: {known})")
        return found

    def find(self, provider: str, model: str) -> Price | None:
        return self._prices.get((provider, model))

    def cost_micros(
        self,
        provider: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        cached_prompt_tokens: int = 0,
    ) -> int:
        price = self.price(provider, model)
        return cost_micros(price, prompt_tokens, completion_tokens, cached_prompt_tokens)

    def __contains__(self, key: object) -> bool:
        return key in self._prices

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(sorted(self._prices))

    def __len__(self) -> int:
        return len(self._prices)
