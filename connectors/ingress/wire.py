"""OpenAI chat-completions JSON <-> Sluicegate records.

Pure (standard library only, time passed in): the ingress's aiohttp handlers call these
and only do I/O. Problems come back as ``errors.ApiError`` values (OpenAI's error shape).

Request side: ``parse_hints`` reads the ``x-sluicegate-*`` headers (priority, feature,
cache control, optional timeout); ``chat_request`` maps an OpenAI body to a ChatRequest
record: text content parts are joined with newlines (other part types are refused),
``max_completion_tokens`` wins over ``max_tokens``, ``stop`` becomes a list,
``response_format``/``tools`` become compact JSON strings (sorted keys), ``user`` and
``metadata`` go to the record's metadata, ``n`` other than 1 is refused. Only types are
checked here (Avro needs them); ranges, roles, sizes and models are the worker's
validation, answered as 400.

Response side: ``completion`` renders a successful response as a ``chat.completion``;
``stream_chunks`` renders it as ``chat.completion.chunk`` objects with word-sized content
deltas (``word_deltas``), for ``sse``; ``error_for_response`` renders the others as in the
table in errors.py; ``response_headers`` are the ``x-sluicegate-*`` headers of every
answer. Cost: O(size of the request/response).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from connectors.ingress.auth import PRIORITIES
from connectors.ingress.errors import NO_RETRY, ApiError, http_status, invalid, retry_after_headers

H_PRIORITY = "x-sluicegate-priority"
H_FEATURE = "x-sluicegate-feature"
H_CACHE = "x-sluicegate-cache"
H_CACHE_TTL = "x-sluicegate-cache-ttl-ms"
H_TIMEOUT = "x-sluicegate-timeout-ms"

CACHE_MODES = ("default", "bypass", "refresh", "only_if_cached")
MAX_TIMEOUT_MS = 3_600_000  # the worker caps deadlines at one hour too
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
CACHE_HEADER = {"exact": "hit", "coalesced": "hit", "semantic": "semantic", "stale": "stale"}
_INT32 = 2**31 - 1
_INT64 = 2**63 - 1
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_WORD = re.compile(r"\s*\S+|\s+$")


class _Invalid(Exception):
    """Internal: a field is wrong; turned into an ApiError at the module's edge."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.error = invalid(message, param)


# -- request side ---------------------------------------------------------------------


@dataclass(frozen=True)
class Hints:
    """What the ``x-sluicegate-*`` request headers asked for."""

    priority: str = "normal"
    feature: str = "default"
    cache_mode: str = "default"
    cache_ttl_ms: int | None = None
    timeout_ms: int | None = None


def parse_hints(headers: Mapping[str, str]) -> Hints | ApiError:
    """Read the Sluicegate headers (``headers`` is case-insensitive, or has lower-case keys)."""
    priority = headers.get(H_PRIORITY, "normal").strip().lower()
    if priority not in PRIORITIES:
        return invalid(f"{H_PRIORITY} must be one of {', '.join(PRIORITIES)}", H_PRIORITY)
    feature = headers.get(H_FEATURE, "default").strip()
    if not _NAME.match(feature):
        return invalid(f"{H_FEATURE} must be 1-64 characters of A-Z a-z 0-9 . _ -", H_FEATURE)
    cache_mode = headers.get(H_CACHE, "default").strip().lower()
    if cache_mode not in CACHE_MODES:
        return invalid(f"{H_CACHE} must be one of {', '.join(CACHE_MODES)}", H_CACHE)
    try:
        ttl = _header_ms(headers, H_CACHE_TTL, _INT64)
        timeout = _header_ms(headers, H_TIMEOUT, MAX_TIMEOUT_MS)
    except _Invalid as exc:
        return exc.error
    return Hints(priority, feature, cache_mode, ttl, timeout)


def _header_ms(headers: Mapping[str, str], name: str, limit: int) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise _Invalid(f"{name} must be an integer number of milliseconds", name) from None
    if not 0 < value <= limit:
        raise _Invalid(f"{name} must be between 1 and {limit}", name)
    return value


@dataclass(frozen=True)
class ChatCall:
    """A ChatRequest record ready to encode, and how the client wants the answer."""

    record: dict[str, Any]
    stream: bool
    include_usage: bool


def chat_request(
    body: Any,
    *,
    tenant: str,
    hints: Hints,
    request_id: str,
    reply_to: str,
    now_ms: int,
    deadline_ms: int,
    metadata: Mapping[str, str] | None = None,
) -> ChatCall | ApiError:
    """Map an OpenAI ``/v1/chat/completions`` body to a ChatRequest record."""
    if not isinstance(body, dict):
        return invalid("the request body must be a JSON object", None, "invalid_json")
    try:
        call = _chat_request(
            body, tenant, hints, request_id, reply_to, now_ms, deadline_ms, metadata
        )
    except _Invalid as exc:
        return exc.error
    try:  # valid JSON may still hold lone surrogates, which no UTF-8 record can carry
        json.dumps(call.record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return invalid("text must be valid Unicode (no lone \\ud800-\\udfff surrogates)", None)
    return call


def _chat_request(
    body: dict[str, Any],
    tenant: str,
    hints: Hints,
    request_id: str,
    reply_to: str,
    now_ms: int,
    deadline_ms: int,
    extra_metadata: Mapping[str, str] | None,
) -> ChatCall:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _Invalid("'model' is required and must be a string", "model")
    n = body.get("n")
    if n is not None and n != 1:
        raise _Invalid("only n = 1 is supported", "n")
    stream = _typed(body, "stream", bool) or False
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _Invalid("'stream_options' must be an object", "stream_options")
    include_usage = bool(stream and options and options.get("include_usage") is True)
    max_tokens = _integer(body, "max_completion_tokens", _INT32)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", _INT32)
    metadata = dict(extra_metadata or {})
    user_metadata = body.get("metadata")
    if user_metadata is not None:
        if not isinstance(user_metadata, dict) or not all(
            isinstance(v, str) for v in user_metadata.values()
        ):
            raise _Invalid("'metadata' must map strings to strings", "metadata")
        metadata = {**user_metadata, **metadata}
    user = _typed(body, "user", str)
    if user is not None:
        metadata["user"] = user
    record = {
        "schema_version": 2,
        "request_id": request_id,
        "tenant": tenant,
        "feature": hints.feature,
        "priority": hints.priority,
        "reply_to": reply_to,
        "created_at": now_ms,
        "deadline_ms": deadline_ms,
        "model": model,
        "messages": _messages(body.get("messages")),
        "temperature": _number(body, "temperature"),
        "max_tokens": max_tokens,
        "metadata": metadata,
        "top_p": _number(body, "top_p"),
        "stop": _stop(body.get("stop")),
        "seed": _integer(body, "seed", _INT64, minimum=-_INT64 - 1),
        "presence_penalty": _number(body, "presence_penalty"),
        "frequency_penalty": _number(body, "frequency_penalty"),
        "response_format": _json_string(body, "response_format"),
        "tools": _json_string(body, "tools"),
        "stream": stream,
        "cache_mode": hints.cache_mode,
        "cache_ttl_ms": hints.cache_ttl_ms,
        "original_request_id": None,
    }
    return ChatCall(record, stream, include_usage)


def _typed(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise _Invalid(f"'{name}' must be a {kind.__name__}", name)
    return value


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Invalid(f"'{name}' must be a number", name)
    return float(value)


def _integer(body: dict[str, Any], name: str, limit: int, minimum: int = 1) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= limit:
        raise _Invalid(f"'{name}' must be an integer between {minimum} and {limit}", name)
    return value


def _json_string(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    return None if value is None else json.dumps(value, separators=(",", ":"), sort_keys=True)


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return list(value)
    raise _Invalid("'stop' must be a string or a list of strings", "stop")


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise _Invalid("'messages' must be a non-empty list", "messages")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _Invalid(f"{where} must be an object", where)
        role, name = message.get("role"), message.get("name")
        if not isinstance(role, str):
            raise _Invalid(f"{where}.role must be a string", f"{where}.role")
        if name is not None and not isinstance(name, str):
            raise _Invalid(f"{where}.name must be a string", f"{where}.name")
        content = _content(message.get("content"), f"{where}.content")
        out.append({"role": role, "content": content, "name": name})
    return out


def _content(value: Any, where: str) -> str:
    """A string, null (an assistant turn with tool calls only), or a list of text parts."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise _Invalid(f"{where} must be a string or a list of content parts", where)
    texts = []
    for j, part in enumerate(value):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise _Invalid(f"{where}[{j}]: only text content parts are supported", where)
        text = part.get("text")
        if not isinstance(text, str):
            raise _Invalid(f"{where}[{j}].text must be a string", where)
        texts.append(text)
    return "\n".join(texts)


# -- response side --------------------------------------------------------------------


def error_for_response(
    record: Mapping[str, Any], rate_limits: Mapping[str, int] | None = None
) -> ApiError:
    """The error for a non-success response (errors.py's table).

    ``rate_limits`` are the tenant's configured limits, e.g. ``{"requests": 60}``, sent as
    ``x-ratelimit-limit-<kind>`` with a rate-limited answer.
    """
    status, reason = record["status"], record.get("reason") or ""
    code = http_status(status, reason)
    message = record.get("detail") or f"request {status}: {reason or 'no reason given'}"
    headers = response_headers(record)
    retry_after = record.get("retry_after_ms")
    if reason == "rate_limited":
        headers |= retry_after_headers(retry_after)
        for kind, limit in (rate_limits or {}).items():
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
        return ApiError(code, message, "requests", "rate_limit_exceeded", None, headers)
    if reason == "budget_exceeded":
        headers |= NO_RETRY
        if retry_after is not None:
            headers |= retry_after_headers(retry_after)
        return ApiError(code, message, "insufficient_quota", "insufficient_quota", None, headers)
    if code == 504:
        headers |= NO_RETRY
        return ApiError(code, message, "cache_miss", "cache_miss", None, headers)
    if code == 400:
        return ApiError(code, message, "invalid_request_error", reason or None, None, headers)
    headers |= retry_after_headers(retry_after)
    return ApiError(code, message, "server_error", reason or status, None, headers)


def response_headers(record: Mapping[str, Any]) -> dict[str, str]:
    """The ``x-sluicegate-*`` headers every answer carries."""
    headers = {
        "x-sluicegate-status": str(record["status"]),
        "x-sluicegate-cache": CACHE_HEADER.get(record.get("cache_kind") or "", "miss"),
        "x-sluicegate-request-id": str(record["request_id"]),
        "x-sluicegate-cost-micros": str(record.get("cost_micros") or 0),
        "x-request-id": str(record["request_id"]),
    }
    if record.get("reason"):
        headers["x-sluicegate-reason"] = str(record["reason"])
    if record.get("degradation_reason"):
        headers["x-sluicegate-degradation"] = str(record["degradation_reason"])
    return headers


def _finish_reason(record: Mapping[str, Any]) -> str:
    reason = record.get("finish_reason") or "stop"
    return reason if reason in FINISH_REASONS else "stop"


def _usage(record: Mapping[str, Any]) -> dict[str, int]:
    prompt, completion = (
        int(record.get("prompt_tokens") or 0),
        int(record.get("completion_tokens") or 0),
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _envelope(record: Mapping[str, Any], requested_model: str, kind: str) -> dict[str, Any]:
    created = record.get("request_created_at") or record.get("created_at") or 0
    return {
        "id": f"chatcmpl-{record['request_id']}",
        "object": kind,
        "created": int(created) // 1000,
        "model": record.get("model") or requested_model,
        "system_fingerprint": None,
    }


def completion(record: Mapping[str, Any], requested_model: str) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` object for a successful response."""
    message = {"role": "assistant", "content": record.get("content") or "", "refusal": None}
    return {
        **_envelope(record, requested_model, "chat.completion"),
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _finish_reason(record),
            }
        ],
        "usage": _usage(record),
    }


def word_deltas(text: str) -> list[str]:
    """``text`` cut into word-sized pieces (leading whitespace kept) that join back to it."""
    return _WORD.findall(text)


def stream_chunks(
    record: Mapping[str, Any], requested_model: str, include_usage: bool
) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of a completed answer, in order (no [DONE])."""
    base = _envelope(record, requested_model, "chat.completion.chunk")
    if include_usage:
        base["usage"] = None  # as OpenAI does: null on every chunk but the last

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**base, "choices": [choice]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": piece}) for piece in word_deltas(record.get("content") or "")]
    chunks.append(chunk({}, _finish_reason(record)))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": _usage(record)})
    return chunks


def sse(data: Mapping[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>`` (or a literal such as ``[DONE]``)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()
