"""What the simulator says: deterministic replies, token counts, and the two APIs' JSON shapes.

A reply depends only on the request: ``sha256(model, system, messages, sampling params)`` picks a
sentence that echoes the start of the last user message, some filler words and a 12-hex digest,
so identical requests get identical content (for cache and replay checks) and different ones
differ. ``max_tokens`` only truncates (finish_reason "length"). Token counts are estimates with
the usual shape: ~4 characters per token plus 3 per message, so usage grows with the prompt.

``OpenAIWire`` and ``AnthropicWire`` parse a request body and render replies, stream events,
errors and rate-limit headers in their API's format. Cost: one hash and a few string joins per
request.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

_FILLER_TEXT = (
    "the queue drains steadily while budgets hold and breakers stay closed so every tenant "
    "gets a fair share of tokens under load with priorities respected backpressure applied "
    "caches warm replies replayed deadlines honoured fallbacks ready and costs counted twice "
    "checked never lost"
)
_FILLER = tuple(_FILLER_TEXT.split())
_SAMPLING = ("temperature", "top_p", "seed", "stop", "stop_sequences", "tools", "response_format")


class WireError(ValueError):
    """The request body is not valid for the API (answered with 400)."""


@dataclass(frozen=True)
class ParsedRequest:
    model: str
    messages: list[tuple[str, str]]  # (role, text), system messages included
    max_tokens: int | None
    stream: bool
    include_usage: bool
    digest: str


@dataclass(frozen=True)
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    truncated: bool


@dataclass(frozen=True)
class Limits:
    """Rate-limit state to advertise in headers (times relative, in ms)."""

    limit_requests: int
    remaining_requests: int
    reset_requests_ms: int
    limit_tokens: int = 1_000_000
    remaining_tokens: int = 1_000_000
    reset_tokens_ms: int = 0


def text_of(content: Any) -> str:
    """Text of a message ``content``: a string, or a list of parts/blocks with ``text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def count_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def make_reply(parsed: ParsedRequest) -> Reply:
    last_user = next((t for r, t in reversed(parsed.messages) if r == "user"), "")
    echo = " ".join(last_user.split()[:8])
    seed = bytes.fromhex(parsed.digest)
    filler = " ".join(_FILLER[b % len(_FILLER)] for b in seed[1 : 5 + seed[0] % 24])
    text = f'Simulated {parsed.model} reply to "{echo}": {filler}. [{parsed.digest[:12]}]'
    completion = count_tokens(text)
    truncated = False
    if parsed.max_tokens is not None and completion > parsed.max_tokens:
        truncated, completion = True, parsed.max_tokens
        text = text[: completion * 4]
    prompt = 3 + sum(3 + count_tokens(t) for _, t in parsed.messages)
    return Reply(text, prompt, completion, truncated)


def _digest(model: str, messages: list[tuple[str, str]], body: dict[str, Any]) -> str:
    params = {k: body[k] for k in _SAMPLING if body.get(k) is not None}
    canonical = json.dumps([model, messages, params], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _parse_common(body: Any) -> tuple[str, list[Any], int | None]:
    if not isinstance(body, dict):
        raise WireError("the body must be a JSON object")
    model, messages, max_tokens = body.get("model"), body.get("messages"), body.get("max_tokens")
    if not isinstance(model, str) or not model:
        raise WireError("'model' is required")
    if not isinstance(messages, list) or not messages:
        raise WireError("'messages' must be a non-empty list")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise WireError("each message needs a 'role'")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise WireError("'max_tokens' must be a positive integer")
    return model, messages, max_tokens


def _split(text: str, words_per_piece: int = 4) -> list[str]:
    words = text.split(" ")
    return [
        " ".join(words[i : i + words_per_piece]) + (" " if i + words_per_piece < len(words) else "")
        for i in range(0, len(words), words_per_piece)
    ]


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def format_duration(ms: int) -> str:
    """OpenAI's reset format: ``"20ms"``, ``"1s"``, ``"6m0s"``, ``"1h2m3.5s"``."""
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    out = f"{hours}h" if hours else ""
    out += f"{minutes}m" if hours or minutes else ""
    return f"{out}{seconds}s"


class OpenAIWire:
    """``POST /v1/chat/completions``."""

    name = "openai"

    @staticmethod
    def parse(body: Any) -> ParsedRequest:
        model, raw, max_tokens = _parse_common(body)
        messages = [(m["role"], text_of(m.get("content"))) for m in raw]
        max_tokens = body.get("max_completion_tokens", max_tokens)
        options = body.get("stream_options") or {}
        return ParsedRequest(
            model=model,
            messages=messages,
            max_tokens=max_tokens,
            stream=bool(body.get("stream")),
            include_usage=bool(options.get("include_usage")),
            digest=_digest(model, messages, body),
        )

    @staticmethod
    def _usage(reply: Reply) -> dict[str, Any]:
        return {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }

    @classmethod
    def success(cls, parsed: ParsedRequest, reply: Reply, rid: str, now_s: int) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{rid}",
            "object": "chat.completion",
            "created": now_s,
            "model": parsed.model,
            "system_fingerprint": "fp_simulator",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "length" if reply.truncated else "stop",
                }
            ],
            "usage": cls._usage(reply),
        }

    @classmethod
    def stream(cls, parsed: ParsedRequest, reply: Reply, rid: str, now_s: int) -> list[bytes]:
        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            data: dict[str, Any] = {
                "id": f"chatcmpl-{rid}",
                "object": "chat.completion.chunk",
                "created": now_s,
                "model": parsed.model,
                "system_fingerprint": "fp_simulator",
                "choices": [choice],
            }
            if parsed.include_usage:
                data["usage"] = None
            return _sse(data)

        events = [chunk({"role": "assistant", "content": ""}, None)]
        events += [chunk({"content": piece}, None) for piece in _split(reply.text)]
        events.append(chunk({}, "length" if reply.truncated else "stop"))
        if parsed.include_usage:
            usage = {
                "id": f"chatcmpl-{rid}",
                "object": "chat.completion.chunk",
                "created": now_s,
                "model": parsed.model,
                "choices": [],
                "usage": cls._usage(reply),
            }
            events.append(_sse(usage))
        events.append(b"data: [DONE]\n\n")
        return events

    @staticmethod
    def error(status: int, kind: str, message: str, code: str | None) -> dict[str, Any]:
        if kind == "rate_limit":
            error_type, code = "requests", code or "rate_limit_exceeded"
        elif kind == "quota":
            error_type, code = "insufficient_quota", code or "insufficient_quota"
        elif status == 401:
            error_type, code = "invalid_request_error", code or "invalid_api_key"
        elif status < 500:
            error_type = "invalid_request_error"
        else:
            error_type = "server_error"
        return {"error": {"message": message, "type": error_type, "param": None, "code": code}}

    @staticmethod
    def limit_headers(limits: Limits, now_ms: int) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(limits.limit_requests),
            "x-ratelimit-remaining-requests": str(limits.remaining_requests),
            "x-ratelimit-reset-requests": format_duration(limits.reset_requests_ms),
            "x-ratelimit-limit-tokens": str(limits.limit_tokens),
            "x-ratelimit-remaining-tokens": str(limits.remaining_tokens),
            "x-ratelimit-reset-tokens": format_duration(limits.reset_tokens_ms),
        }


_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _rfc3339(ms: int) -> str:
    """Whole seconds, rounded up so that a client waiting until then is never early."""
    return datetime.fromtimestamp(math.ceil(ms / 1000), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AnthropicWire:
    """``POST /v1/messages``."""

    name = "anthropic"

    @staticmethod
    def parse(body: Any) -> ParsedRequest:
        model, raw, max_tokens = _parse_common(body)
        if max_tokens is None:
            raise WireError("'max_tokens' is required")
        system = text_of(body.get("system"))
        messages = [("system", system)] if system else []
        messages += [(m["role"], text_of(m.get("content"))) for m in raw]
        return ParsedRequest(
            model=model,
            messages=messages,
            max_tokens=max_tokens,
            stream=bool(body.get("stream")),
            include_usage=True,
            digest=_digest(model, messages, body),
        )

    @staticmethod
    def _usage(reply: Reply, output_tokens: int) -> dict[str, int]:
        return {
            "input_tokens": reply.prompt_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }

    @classmethod
    def success(cls, parsed: ParsedRequest, reply: Reply, rid: str, now_s: int) -> dict[str, Any]:
        return {
            "id": f"msg_{rid}",
            "type": "message",
            "role": "assistant",
            "model": parsed.model,
            "content": [{"type": "text", "text": reply.text}],
            "stop_reason": "max_tokens" if reply.truncated else "end_turn",
            "stop_sequence": None,
            "usage": cls._usage(reply, reply.completion_tokens),
        }

    @classmethod
    def stream(cls, parsed: ParsedRequest, reply: Reply, rid: str, now_s: int) -> list[bytes]:
        start = cls.success(parsed, reply, rid, now_s)
        start.update(content=[], stop_reason=None, usage=cls._usage(reply, 1))
        events = [
            _sse({"type": "message_start", "message": start}, "message_start"),
            _sse(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
                "content_block_start",
            ),
            _sse({"type": "ping"}, "ping"),
        ]
        for piece in _split(reply.text):
            delta = {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            }
            events.append(_sse(delta, "content_block_delta"))
        stop = "max_tokens" if reply.truncated else "end_turn"
        events += [
            _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            _sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": reply.completion_tokens},
                },
                "message_delta",
            ),
            _sse({"type": "message_stop"}, "message_stop"),
        ]
        return events

    @staticmethod
    def error(status: int, kind: str, message: str, code: str | None) -> dict[str, Any]:
        error_type = code or ("billing_error" if kind == "quota" else None)
        error_type = error_type or _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": error_type, "message": message}}

    @staticmethod
    def limit_headers(limits: Limits, now_ms: int) -> dict[str, str]:
        p = "anthropic-ratelimit-"
        return {
            f"{p}requests-limit": str(limits.limit_requests),
            f"{p}requests-remaining": str(limits.remaining_requests),
            f"{p}requests-reset": _rfc3339(now_ms + limits.reset_requests_ms),
            f"{p}tokens-limit": str(limits.limit_tokens),
            f"{p}tokens-remaining": str(limits.remaining_tokens),
            f"{p}tokens-reset": _rfc3339(now_ms + limits.reset_tokens_ms),
        }


Wire = type[OpenAIWire] | type[AnthropicWire]
