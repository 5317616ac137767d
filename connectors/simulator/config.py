"""The simulator's configuration: model profiles (latency, capacity, RPM) and injected faults.

A TOML file (or the same data as a dict) looks like::

    seed = 7                       # faults and latencies draw from random.Random(seed) per model
    require_key = "sk-test"        # optional: other keys get 401
    recent_ids = 100000            # request ids remembered for /admin/requests

    [default]                      # profile of every model not listed under [models]
    latency_ms = 0

    [models."gpt-4o-mini"]
    latency = { kind = "normal", ms = 200, stddev_ms = 40, tail_probability = 0.01, tail_ms = 3000 }
    max_concurrency = 20           # requests beyond it wait: ~20 / 0.2 s = 100 req/s of capacity
    rpm = 600                      # enforced: the 601st request within 60 s gets a 429

    [[faults]]
    model = "gpt-4o-mini"          # "*" applies to every model
    kind = "rate_limit"            # see the fault kinds below
    probability = 0.1
    retry_after_s = 2

Fault kinds and their default status: ``rate_limit`` 429 with retry-after and x-ratelimit-*
headers; ``quota`` 429 with code ``insufficient_quota``; ``error`` 500 (any ``status``);
``overloaded`` 529; ``unavailable`` 503; ``hang`` sleeps ``hang_s`` and then answers normally;
``outage`` 503 (any ``status``) meant to be given a window. Any fault can be limited to a window:
``duration_s`` (from the moment it is installed) or ``start_at``/``end_at`` (epoch seconds).
"""

from __future__ import annotations

import math
import random
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

FAULT_STATUS = {
    "rate_limit": 429,
    "quota": 429,
    "error": 500,
    "overloaded": 529,
    "unavailable": 503,
    "hang": 200,
    "outage": 503,
}
LATENCY_KINDS = ("fixed", "normal", "lognormal")


@dataclass(frozen=True)
class LatencyConfig:
    """Service time: ``fixed`` ms; ``normal`` (mean ``ms``, ``stddev_ms``); ``lognormal`` (median
    ``ms``, ``sigma``); plus, for any kind, ``tail_probability`` of requests taking ``tail_ms``."""

    kind: str = "fixed"
    ms: float = 0.0
    stddev_ms: float = 0.0
    sigma: float = 0.0
    tail_probability: float = 0.0
    tail_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in LATENCY_KINDS:
            raise ValueError(f"latency kind {self.kind!r} is not one of {LATENCY_KINDS}")
        if self.ms < 0 or self.stddev_ms < 0 or self.sigma < 0 or self.tail_ms < 0:
            raise ValueError("latencies must not be negative")

    @property
    def is_zero(self) -> bool:
        return self.ms == 0 and self.tail_probability == 0

    def sample_ms(self, rng: random.Random) -> float:
        if self.tail_probability and rng.random() < self.tail_probability:
            return self.tail_ms
        if self.kind == "normal":
            return max(0.0, rng.gauss(self.ms, self.stddev_ms))
        if self.kind == "lognormal" and self.ms > 0:
            return rng.lognormvariate(math.log(self.ms), self.sigma)
        return self.ms

    @classmethod
    def from_value(cls, value: Any) -> LatencyConfig:
        if isinstance(value, int | float):
            return cls(ms=float(value))
        return cls(**dict(value))


@dataclass(frozen=True)
class ModelProfile:
    """How one model behaves when no fault fires. 0 means "no limit" for the two limits."""

    latency: LatencyConfig = LatencyConfig()
    max_concurrency: int = 0
    rpm: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelProfile:
        data = dict(data)
        if "latency_ms" in data:
            data["latency"] = data.pop("latency_ms")
        if "latency" in data:
            data["latency"] = LatencyConfig.from_value(data["latency"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FaultConfig:
    """One injected fault for ``model`` ("*" = all), firing with ``probability`` in its window."""

    kind: str
    model: str = "*"
    probability: float = 1.0
    status: int = 0  # 0: the kind's default status
    retry_after_s: float | None = None  # rate_limit/quota/overloaded/...: sent as retry-after
    hang_s: float = 30.0
    duration_s: float | None = None  # window relative to installation; resolved into start/end
    start_at: float | None = None  # window in epoch seconds
    end_at: float | None = None
    code: str | None = None  # error code in the body; default from the kind
    message: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_STATUS:
            raise ValueError(f"fault kind {self.kind!r} is not one of {sorted(FAULT_STATUS)}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"fault probability {self.probability} is not within [0, 1]")
        if self.status == 0:
            object.__setattr__(self, "status", FAULT_STATUS[self.kind])

    def installed(self, now_ms: int) -> FaultConfig:
        """This fault with a relative ``duration_s`` window turned into absolute times."""
        if self.duration_s is None:
            return self
        start = now_ms / 1000
        return replace(self, duration_s=None, start_at=start, end_at=start + self.duration_s)

    def active(self, now_ms: int) -> bool:
        now = now_ms / 1000
        if self.start_at is not None and now < self.start_at:
            return False
        return self.end_at is None or now < self.end_at

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultConfig:
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class SimulatorConfig:
    default: ModelProfile = ModelProfile()
    models: Mapping[str, ModelProfile] = field(default_factory=dict)
    faults: tuple[FaultConfig, ...] = ()
    seed: int = 0
    require_key: str | None = None
    recent_ids: int = 100_000  # request ids remembered (bounded memory)
    history_s: int = 3_600  # per-second counter buckets kept

    def profile(self, model: str) -> ModelProfile:
        return self.models.get(model, self.default)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimulatorConfig:
        data = dict(data)
        known = {"default", "models", "faults", "seed", "require_key", "recent_ids", "history_s"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown simulator settings: {sorted(unknown)}")
        return cls(
            default=ModelProfile.from_dict(data.pop("default", {})),
            models={k: ModelProfile.from_dict(v) for k, v in data.pop("models", {}).items()},
            faults=tuple(FaultConfig.from_dict(f) for f in data.pop("faults", [])),
            **data,
        )

    @classmethod
    def from_toml(cls, path: str) -> SimulatorConfig:
        with open(path, "rb") as f:
            return cls.from_dict(tomllib.load(f))
