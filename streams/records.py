"""Build the records the worker produces: ChatResponse, UsageEvent, DeadLetter.

Plain dict builders that match ``schemas/*.avsc`` field for field, so every terminal
outcome (ok, cached, degraded, rejected, shed, failed) is written the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streams.policies.verdict import Reason, Status


@dataclass
class Outcome:
    """What happened to one request; turned into a response and a usage event."""

    status: Status
    reason: Reason = Reason.NONE
    detail: str = ""
    content: str | None = None
    finish_reason: str | None = None
    model: str | None = None
    provider: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cost_micros: int = 0
    cost_saved_micros: int = 0
    cache_kind: str | None = None
    similarity: float | None = None
    degradation_reason: str | None = None
    retry_after_ms: int | None = None
    attempts: int = 0
    trail: list[str] = field(default_factory=list)
    load: dict[str, str] = field(default_factory=dict)  # figures behind a shed decision


def response_record(
    request: dict[str, Any], outcome: Outcome, *, queue_ms: int, now_ms: int
) -> dict[str, Any]:
    created = int(request.get("created_at") or now_ms)
    return {
        "schema_version": 1,
        "request_id": request.get("request_id") or "",
        "tenant": request.get("tenant") or "",
        "feature": request.get("feature") or "",
        "priority": request.get("priority") or "",
        "status": outcome.status.value,
        "reason": outcome.reason.value,
        "detail": outcome.detail,
        "content": outcome.content,
        "finish_reason": outcome.finish_reason,
        "model": outcome.model,
        "provider": outcome.provider,
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "cost_micros": outcome.cost_micros,
        "cost_saved_micros": outcome.cost_saved_micros,
        "cached": outcome.cache_kind is not None,
        "cache_kind": outcome.cache_kind,
        "similarity": outcome.similarity,
        "degradation_reason": outcome.degradation_reason,
        "retry_after_ms": outcome.retry_after_ms,
        "attempts": outcome.attempts,
        "queue_ms": max(0, queue_ms),
        "total_ms": max(0, now_ms - created),
        "request_created_at": created,
        "created_at": now_ms,
        "trail": outcome.trail[-32:],
        "original_request_id": request.get("original_request_id"),
    }


def usage_record(request: dict[str, Any], outcome: Outcome, *, now_ms: int) -> dict[str, Any]:
    created = int(request.get("created_at") or now_ms)
    return {
        "schema_version": 1,
        "request_id": request["request_id"],
        "tenant": request["tenant"],
        "feature": request.get("feature") or "default",
        "priority": request.get("priority") or "",
        "status": outcome.status.value,
        "reason": outcome.reason.value,
        "model": outcome.model,
        "provider": outcome.provider,
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "cached_prompt_tokens": outcome.cached_prompt_tokens,
        "cost_micros": outcome.cost_micros,
        "cost_saved_micros": outcome.cost_saved_micros,
        "cache_hit": outcome.cache_kind is not None,
        "degradation": outcome.degradation_reason,
        "attempts": outcome.attempts,
        "total_ms": max(0, now_ms - created),
        "at": now_ms,
    }


@dataclass(frozen=True)
class Source:
    """Where a consumed record came from."""

    topic: str
    partition: int
    offset: int

    @property
    def id(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


def dead_letter_record(
    source: Source,
    raw: bytes,
    *,
    reason: Reason,
    detail: str,
    now_ms: int,
    request: dict[str, Any] | None = None,
    queue_ms: int = 0,
    load: dict[str, str] | None = None,
) -> dict[str, Any]:
    request = request or {}
    return {
        "schema_version": 1,
        "dead_letter_id": source.id,
        "request_id": request.get("request_id"),
        "tenant": request.get("tenant"),
        "priority": request.get("priority"),
        "source_topic": source.topic,
        "source_partition": source.partition,
        "source_offset": source.offset,
        "reason": reason.value,
        "detail": detail,
        "queue_ms": max(0, queue_ms),
        "load": dict(load or {}),
        "raw": raw,
        "created_at": now_ms,
    }
