"""Request validation: a decoded ChatRequest is either valid or rejected with field messages.

Checks are cheap and structural (sizes, enums, ranges, known tenant/model, priority
allowed for the tenant); the caller supplies what it knows about tenants and routes as
plain values, so this module needs neither the config nor Kafka. Cost: O(message bytes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PRIORITY_ORDER = ("critical", "high", "normal", "low")
ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
CACHE_MODES = frozenset({"default", "bypass", "refresh", "only_if_cached"})


@dataclass(frozen=True)
class ValidationConfig:
    max_messages: int = 256
    max_message_bytes: int = 1_000_000  # sum of message contents, UTF-8
    max_tokens_limit: int = 1_000_000
    topic_prefix: str = "sg"


@dataclass(frozen=True)
class TenantFacts:
    """What validation needs to know about the request's tenant."""

    known: bool
    max_priority: str = "low"
    model_allowed: bool = True
    model_known: bool = True


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def priority_rank(priority: str) -> int:
    """0 for critical … 3 for low; raises ValueError for an unknown name."""
    return PRIORITY_ORDER.index(priority)


def validate_request(
    request: Mapping[str, Any], tenant: TenantFacts, config: ValidationConfig
) -> list[FieldError]:
    """Every problem found, in field order; an empty list means valid."""
    errors: list[FieldError] = []

    def bad(field: str, message: str) -> None:
        errors.append(FieldError(field, message))

    if not request.get("request_id"):
        bad("request_id", "must be a non-empty string")
    if not request.get("tenant"):
        bad("tenant", "must be a non-empty string")
    elif not tenant.known:
        bad("tenant", f"unknown tenant {request['tenant']!r}")
    priority = request.get("priority", "")
    if priority not in PRIORITY_ORDER:
        bad("priority", f"must be one of {', '.join(PRIORITY_ORDER)}")
    elif tenant.known and priority_rank(priority) < priority_rank(tenant.max_priority):
        bad("priority", f"{priority!r} is above this tenant's maximum {tenant.max_priority!r}")
    reply_to = request.get("reply_to")
    if reply_to is not None and not reply_to.startswith(config.topic_prefix + "."):
        bad("reply_to", f"must be a topic under {config.topic_prefix!r}.")
    if not request.get("model"):
        bad("model", "must name a model or route")
    elif not tenant.model_known:
        bad("model", f"unknown model or route {request['model']!r}")
    elif not tenant.model_allowed:
        bad("model", f"{request['model']!r} is not allowed for this tenant")
    _check_messages(request.get("messages") or [], config, bad)
    _check_params(request, config, bad)
    if request.get("cache_mode", "default") not in CACHE_MODES:
        bad("cache_mode", f"must be one of {', '.join(sorted(CACHE_MODES))}")
    ttl = request.get("cache_ttl_ms")
    if ttl is not None and ttl <= 0:
        bad("cache_ttl_ms", "must be positive")
    return errors


Complain = Callable[[str, str], None]


def _check_messages(
    messages: Sequence[Mapping[str, Any]], config: ValidationConfig, bad: Complain
) -> None:
    if not messages:
        bad("messages", "must contain at least one message")
        return
    if len(messages) > config.max_messages:
        bad("messages", f"{len(messages)} messages exceed the limit of {config.max_messages}")
    size = 0
    for i, message in enumerate(messages):
        if message.get("role") not in ROLES:
            bad(f"messages[{i}].role", f"must be one of {', '.join(sorted(ROLES))}")
        size += len(str(message.get("content", "")).encode())
    if size > config.max_message_bytes:
        bad("messages", f"{size} bytes of content exceed the limit of {config.max_message_bytes}")


def _check_params(request: Mapping[str, Any], config: ValidationConfig, bad: Complain) -> None:
    ranges = {
        "temperature": (0.0, 2.0),
        "top_p": (0.0, 1.0),
        "presence_penalty": (-2.0, 2.0),
        "frequency_penalty": (-2.0, 2.0),
    }
    for name, (low, high) in ranges.items():
        value = request.get(name)
        if value is not None and not low <= value <= high:
            bad(name, f"must be between {low} and {high}")
    max_tokens = request.get("max_tokens")
    if max_tokens is not None and not 1 <= max_tokens <= config.max_tokens_limit:
        bad("max_tokens", f"must be between 1 and {config.max_tokens_limit}")
    if len(request.get("stop") or []) > 4:
        bad("stop", "at most 4 stop sequences")
