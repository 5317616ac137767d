"""The outcome vocabulary shared by every policy and every terminal response.

A terminal response has exactly one ``Status``; non-``ok`` statuses carry a
``Reason``. Policies return these as values; they never raise to reject.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    OK = "ok"
    CACHED = "cached"
    DEGRADED = "degraded"
    REJECTED = "rejected"
    SHED = "shed"
    FAILED = "failed"

    @property
    def is_success(self) -> bool:
        return self in (Status.OK, Status.CACHED, Status.DEGRADED)


class Reason(StrEnum):
    NONE = ""
    INVALID = "invalid"
    UNKNOWN_TENANT = "unknown_tenant"
    RATE_LIMITED = "rate_limited"
    BUDGET_EXCEEDED = "budget_exceeded"
    DEADLINE_EXPIRED = "deadline_expired"
    OVERLOADED = "overloaded"
    CACHE_MISS = "cache_miss"  # only-if-cached request with nothing cached
    BREAKER_OPEN = "breaker_open"
    PROVIDER_RATE_LIMITED = "provider_rate_limited"
    PROVIDER_ERROR = "provider_error"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"
    UNDECODABLE = "undecodable"


# Statuses whose responses are also copied to a dead-letter topic.
SHED_TOPIC_REASONS = frozenset(
    {Reason.DEADLINE_EXPIRED, Reason.OVERLOADED, Reason.RATE_LIMITED, Reason.BUDGET_EXCEEDED}
)
