"""sluicegate.toml -> frozen, validated models.

One TOML file configures everything: Kafka and topics, the worker, providers with their
models and prices, routes with fallback chains, tenants with their limits and budgets.
It is validated at start; every error names the bad key (``tenants.acme.rpm: ...``).
Money is written in US dollars in the file and held as integer micro-dollars here.
Provider API keys are never in the file: a provider names the environment variable
that holds its key (``api_key_env``).
"""

from __future__ import annotations

import tomllib
from decimal import ROUND_HALF_UP, Decimal
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from connectors.kafka_connection import KafkaConnection
from schemas.errors import SluicegateError
from streams.policies import degradation, provider_cap
from streams.policies.admission import AdmissionConfig, TenantPolicy
from streams.policies.budget import BudgetConfig, FeatureBudgetConfig, OnExceed
from streams.policies.deadline import DeadlineConfig
from streams.policies.degradation import ModelRef
from streams.policies.rate_limit import RateLimitConfig

PRIORITIES = ("critical", "high", "normal", "low")
Priority = Literal["critical", "high", "normal", "low"]


class ConfigError(SluicegateError):
    """sluicegate.toml is missing, unreadable or invalid; the message names the key."""


def usd_to_micros(usd: float) -> int:
    return int((Decimal(str(usd)) * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class KafkaConfig(_Model):
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = Field(default="sg", pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(default=8, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1)
    retention_days: float = Field(default=14, gt=0)
    deadletter_retention_days: float = Field(default=30, gt=0)
    # One limit for record size: the ingress body limit, validation and every producer.
    max_record_bytes: int = Field(default=1_048_576, ge=65_536)

    def connection(self, client_id: str = "sluicegate") -> KafkaConnection:
        """The plain connection object every client stack is built from."""
        return KafkaConnection(
            bootstrap_servers=self.bootstrap_servers,
            client_id=client_id,
            max_record_bytes=self.max_record_bytes,
        )


class WorkerConfig(_Model):
    app_id: str = "sluicegate"
    data_dir: str = ".run/worker"
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=0, le=65535)
    queue_capacity: int = Field(default=1000, ge=1)
    max_in_flight: int = Field(default=256, ge=1)
    commit_interval_s: float = Field(default=1.0, gt=0)
    max_message_bytes: int = Field(default=1_000_000, ge=1024)
    max_messages: int = Field(default=256, ge=1)


class DeadlinesConfig(_Model):
    """Default deadline per priority, in seconds after the request was created."""

    critical: float = Field(default=30, gt=0)
    high: float = Field(default=60, gt=0)
    normal: float = Field(default=120, gt=0)
    low: float = Field(default=300, gt=0)

    def as_policy(self) -> DeadlineConfig:
        return DeadlineConfig(
            default_ms_by_priority={p: int(getattr(self, p) * 1000) for p in PRIORITIES}
        )


class SchedulerSettings(_Model):
    """Load shedding and backpressure (fractions of worker.queue_capacity)."""

    low_shed_watermark: float = Field(default=0.5, gt=0, le=1)
    normal_shed_watermark: float = Field(default=0.8, gt=0, le=1)
    high_shed_watermark: float | None = Field(default=None, gt=0, le=1)
    low_pause_watermark: float = Field(default=0.4, gt=0, le=1)
    normal_pause_watermark: float = Field(default=0.7, gt=0, le=1)
    max_in_flight_per_model: int = Field(default=64, ge=1)


class BreakerSettings(_Model):
    window_type: Literal["count", "time"] = "count"
    window_size: int = Field(default=20, ge=1, description="calls, or seconds for 'time'")
    minimum_calls: int = Field(default=10, ge=1)
    failure_rate_threshold: float = Field(default=0.5, gt=0, le=1)
    slow_call_s: float = Field(default=10.0, gt=0)
    slow_call_rate_threshold: float = Field(default=0.8, gt=0, le=1)
    open_s: float = Field(default=10.0, gt=0)
    half_open_probes: int = Field(default=3, ge=1)


class RetrySettings(_Model):
    max_attempts: int = Field(default=3, ge=1)
    base_ms: int = Field(default=200, ge=1)
    cap_ms: int = Field(default=5000, ge=1)
    budget_ratio: float = Field(default=0.2, ge=0, description="retries per first attempt")
    budget_min_per_s: float = Field(default=1.0, ge=0)


class ResilienceConfig(_Model):
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)


class BudgetSettings(_Model):
    timezone: str = "UTC"  # calendar days and months of budgets and daily rate limits
    soft_thresholds: list[float] = Field(default_factory=lambda: [0.8])
    default_max_tokens: int = Field(default=512, ge=1, description="when a request names none")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory, a long name
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class ModelConfig(_Model):
    input_usd_per_mtok: float = Field(ge=0, le=1e9)
    output_usd_per_mtok: float = Field(ge=0, le=1e9)
    cached_input_usd_per_mtok: float | None = Field(default=None, ge=0, le=1e9)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    max_in_flight: int | None = Field(default=None, ge=1)


class ProviderConfig(_Model):
    kind: Literal["openai", "anthropic"] = "openai"
    base_url: str
    api_key_env: str | None = None
    timeout_s: float = Field(default=30, gt=0)
    max_connections: int = Field(default=256, ge=1)
    # A global daily cap on what every tenant together spends at this provider (split
    # evenly over the request partitions; docs/DESIGN-NOTES.md "Provider daily cap").
    daily_budget_usd: float | None = Field(default=None, ge=0, le=1e12)
    models: dict[str, ModelConfig]

    @field_validator("models")
    @classmethod
    def _has_models(cls, value: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
        if not value:
            raise ValueError("a provider needs at least one model")
        return value


class CacheSettings(_Model):
    """The exact-match response cache (and the opt-in semantic cache)."""

    enabled: bool = True
    # deterministic: only temperature-0 requests (or ones that opt in with refresh /
    # only_if_cached); always; never.
    cacheable: Literal["deterministic", "always", "never"] = "deterministic"
    ttl_s: float = Field(default=3600, gt=0)
    max_ttl_s: float = Field(default=7 * 86400, gt=0)
    max_entries_per_namespace: int = Field(default=10_000, ge=1)
    shared_namespace: str | None = None  # explicit opt-in to share answers across tenants
    semantic: bool = False
    semantic_threshold: float = Field(default=0.95, gt=0, le=1)


class RouteConfig(_Model):
    """A name requests can use as ``model``: a primary model and its fallback chain."""

    primary: str = Field(description="provider/model")
    fallbacks: list[str] = Field(default_factory=list)
    static_message: str | None = None
    cache: CacheSettings | None = None  # overrides [cache] for this route


class FeatureConfig(_Model):
    daily_budget_usd: float | None = Field(default=None, ge=0, le=1e12)
    on_exceed: Literal["reject", "downgrade"] | None = None  # None: the tenant's policy
    downgrade_to: str | None = None
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    static_message: str | None = None


class TenantConfig(_Model):
    max_priority: Priority = "high"
    allowed_models: list[str] = Field(default_factory=lambda: ["*"])
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    daily_budget_usd: float | None = Field(default=None, ge=0, le=1e12)
    monthly_budget_usd: float | None = Field(default=None, ge=0, le=1e12)
    on_exceed: Literal["reject", "downgrade"] = "reject"
    downgrade_to: str | None = None
    api_key_sha256: list[str] = Field(default_factory=list)
    features: dict[str, FeatureConfig] = Field(default_factory=dict)

    def allows_model(self, name: str) -> bool:
        return "*" in self.allowed_models or name in self.allowed_models


class SluicegateConfig(_Model):
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    deadlines: DeadlinesConfig = Field(default_factory=DeadlinesConfig)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    resilience: ResilienceConfig = Field(default_factory=ResilienceConfig)
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    providers: dict[str, ProviderConfig]
    routes: dict[str, RouteConfig] = Field(default_factory=dict)
    tenants: dict[str, TenantConfig]

    @model_validator(mode="after")
    def _references_exist(self) -> SluicegateConfig:
        for name, route in self.routes.items():
            for i, ref in enumerate([route.primary, *route.fallbacks]):
                where = "primary" if i == 0 else f"fallbacks[{i - 1}]"
                self._check_ref(f"routes.{name}.{where}", ref)
        for tname, tenant in self.tenants.items():
            if tname.startswith(provider_cap.TABLE_KEY_PREFIX):
                raise ValueError(f"tenants.{tname}: names starting with __provider__: are reserved")
            for fname, feature in tenant.features.items():
                if feature.on_exceed == "downgrade" and not feature.downgrade_to:
                    raise ValueError(f"tenants.{tname}.features.{fname}.downgrade_to is required")
                if feature.downgrade_to:
                    self._check_ref(
                        f"tenants.{tname}.features.{fname}.downgrade_to", feature.downgrade_to
                    )
            if tenant.on_exceed == "downgrade" and not tenant.downgrade_to:
                raise ValueError(f"tenants.{tname}.downgrade_to is required with downgrade")
            if tenant.downgrade_to:
                self._check_ref(f"tenants.{tname}.downgrade_to", tenant.downgrade_to)
        return self

    def _check_ref(self, where: str, ref: str) -> None:
        provider, _, model = ref.partition("/")
        if not model:
            raise ValueError(f"{where}: {ref!r} must be written provider/model")
        if provider not in self.providers:
            raise ValueError(f"{where}: unknown provider {provider!r}")
        if model not in self.providers[provider].models:
            raise ValueError(f"{where}: provider {provider!r} has no model {model!r}")

    # -- lookups used by the worker -------------------------------------------------

    def topic(self, suffix: str) -> str:
        return f"{self.kafka.topic_prefix}.{suffix}"

    def request_topic(self, priority: str) -> str:
        return self.topic(f"requests.{priority}")

    def model_config_of(self, ref: ModelRef) -> ModelConfig:
        return self.providers[ref.provider].models[ref.model]

    def resolve_route(self, name: str) -> degradation.RouteConfig | None:
        """A route name, ``provider/model``, or a model name offered by one provider.

        A bare model has no fallbacks and no static message: when it fails, it fails.
        """
        route = self.routes.get(name)
        if route is not None:
            return degradation.RouteConfig(
                name,
                ModelRef.parse(route.primary),
                tuple(ModelRef.parse(r) for r in route.fallbacks),
                static_message=route.static_message,
            )
        provider, _, model = name.partition("/")
        if model and provider in self.providers and model in self.providers[provider].models:
            return degradation.RouteConfig(name, ModelRef(provider, model), static_message=None)
        owners = [p for p, cfg in self.providers.items() if name in cfg.models]
        if len(owners) == 1:
            return degradation.RouteConfig(name, ModelRef(owners[0], name), static_message=None)
        return None

    def admission_config(self) -> AdmissionConfig:
        """Tenants' rate limits and budgets as the admission policy's config."""
        tz = self.budgets.timezone
        tenants = {}
        for name, t in self.tenants.items():
            rate = None
            if t.rpm or t.tpm:
                rate = RateLimitConfig(rpm=t.rpm, tpm=t.tpm, tz=tz)
            feature_rates = {
                f: RateLimitConfig(rpm=fc.rpm, tpm=fc.tpm, tz=tz)
                for f, fc in t.features.items()
                if fc.rpm or fc.tpm
            }
            budget = None
            if (
                t.daily_budget_usd is not None
                or t.monthly_budget_usd is not None
                or any(f.daily_budget_usd is not None for f in t.features.values())
            ):
                budget = BudgetConfig(
                    daily_cap_micros=_micros(t.daily_budget_usd),
                    monthly_cap_micros=_micros(t.monthly_budget_usd),
                    features={
                        f: FeatureBudgetConfig(
                            daily_cap_micros=_micros(fc.daily_budget_usd),
                            on_exceed=OnExceed(fc.on_exceed) if fc.on_exceed else None,
                            downgrade_model=fc.downgrade_to,
                        )
                        for f, fc in t.features.items()
                    },
                    on_exceed=OnExceed(t.on_exceed),
                    downgrade_model=t.downgrade_to,
                    soft_thresholds=tuple(self.budgets.soft_thresholds),
                )
            tenants[name] = TenantPolicy(rate, feature_rates, budget)
        return AdmissionConfig(tenants, tz)

    @cached_property
    def provider_caps(self) -> provider_cap.ProviderCapConfig:
        """Providers' global daily caps and how they split over the request partitions."""
        return provider_cap.ProviderCapConfig(
            daily_caps_micros={
                name: usd_to_micros(p.daily_budget_usd)
                for name, p in self.providers.items()
                if p.daily_budget_usd is not None
            },
            partitions=self.kafka.partitions,
            tz=self.budgets.timezone,
            soft_thresholds=tuple(self.budgets.soft_thresholds),
        )

    def model_names(self) -> list[str]:
        names = set(self.routes)
        for provider, cfg in self.providers.items():
            names.update(f"{provider}/{m}" for m in cfg.models)
            names.update(cfg.models)
        return sorted(names)


def _micros(usd: float | None) -> int | None:
    return None if usd is None else usd_to_micros(usd)


def _format_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)


def parse_config(data: dict[str, Any], source: str = "<dict>") -> SluicegateConfig:
    try:
        return SluicegateConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_format_error(exc)}") from None


def load_config(path: str | Path) -> SluicegateConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, str(path))
