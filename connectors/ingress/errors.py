"""Every HTTP error the ingress answers, in OpenAI's error shape, and when it applies.

An ``ApiError`` is a value (never raised) that renders as
``{"error": {"message", "type", "param", "code"}}`` with its HTTP status and headers, so
the official ``openai`` SDK raises the matching class: 400 BadRequestError, 401
AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError, 429 RateLimitError,
>= 500 InternalServerError (413 is a plain APIStatusError).

Answered by the ingress itself, before or instead of Kafka:

    401 invalid_request_error / invalid_api_key       no key, unknown key
    403 permission_error / priority_not_allowed       x-sluicegate-priority above max_priority
    400 invalid_request_error / invalid_json          the body is not JSON
    400 invalid_request_error / invalid_value         a field or x-sluicegate-* header is wrong
    404 invalid_request_error / model_not_found       unknown model, or not allowed for the key
    413 invalid_request_error / request_too_large     body over the limit (1 MiB)
    503 server_error / unavailable                    Kafka did not take the request
    504 timeout / timeout                             no answer by the deadline + margin

Answered from the worker's terminal response (status / reason):

    any / rate_limited                     429 requests / rate_limit_exceeded, retry-after
    any / budget_exceeded                  429 insufficient_quota, x-should-retry: false
    rejected / cache_miss (only_if_cached) 504 cache_miss, x-should-retry: false
    rejected / anything else               400 invalid_request_error, the worker's detail
    shed / *, failed / *                   503 server_error / the reason, retry-after

504 for an only-if-cached miss has no exact OpenAI analogue: the request could not be
answered in the allowed way (from cache), like a gateway that cannot reach its upstream;
it is neither the client's fault (400) nor a throttle (429). ``x-should-retry: false``
stops the SDK's automatic retries where a retry cannot help (over budget, cache miss) or
would duplicate work (a timeout: the request may still be answered). Retry-After is sent
in whole seconds, rounded up, and exactly as ``retry-after-ms``, which the SDK prefers.
Pure, standard library only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

SUCCESS = frozenset({"ok", "cached", "degraded"})
DEFAULT_RETRY_AFTER_MS = 1000
NO_RETRY = {"x-should-retry": "false"}


@dataclass(frozen=True)
class ApiError:
    """An HTTP error in OpenAI's shape; ``headers`` go on the response (retry-after...)."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.type, "param": self.param}
        return {"error": {**error, "code": self.code}}


def retry_after_headers(retry_after_ms: int | None) -> dict[str, str]:
    ms = max(1, retry_after_ms if retry_after_ms is not None else DEFAULT_RETRY_AFTER_MS)
    return {"retry-after": str(math.ceil(ms / 1000)), "retry-after-ms": str(ms)}


def http_status(status: str, reason: str) -> int:
    """The HTTP status for a worker's terminal response (the second table above)."""
    if status in SUCCESS:
        return 200
    if reason in ("rate_limited", "budget_exceeded"):
        return 429
    if reason == "cache_miss":
        return 504
    if status == "rejected":
        return 400
    if status in ("shed", "failed"):
        return 503
    return 502  # a status this ingress does not know: the worker is newer than we are


# -- answered by the ingress itself ------------------------------------------------------


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, code=code, param=param)


def unauthorized() -> ApiError:
    message = "Incorrect or missing API key: send 'Authorization: Bearer <key>'"
    return ApiError(401, message, code="invalid_api_key")


def priority_not_allowed(requested: str, maximum: str, header: str) -> ApiError:
    message = f"priority {requested!r} is above this key's maximum {maximum!r}"
    return ApiError(403, message, "permission_error", "priority_not_allowed", header)


def bad_json(why: str) -> ApiError:
    return invalid(f"the request body is not valid JSON: {why}", None, "invalid_json")


def model_not_found(model: str) -> ApiError:
    message = f"The model '{model}' does not exist or you do not have access to it."
    return ApiError(404, message, code="model_not_found", param="model")


def too_large(limit: str) -> ApiError:
    return ApiError(413, f"the request exceeds {limit}", code="request_too_large")


def unavailable() -> ApiError:
    message = "the gateway could not queue the request; try again"
    return ApiError(503, message, "server_error", "unavailable", None, retry_after_headers(None))


def timeout(seconds: float, request_id: str) -> ApiError:
    headers = {**NO_RETRY, "x-sluicegate-request-id": request_id}
    return ApiError(504, f"no answer within {seconds:g}s", "timeout", "timeout", None, headers)


def internal() -> ApiError:
    return ApiError(500, "internal error in the ingress", "server_error", "internal_error")
