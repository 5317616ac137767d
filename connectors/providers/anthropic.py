"""Connector for Anthropic-style Messages APIs (``POST /v1/messages``).

``base_url`` is the host, as in the Anthropic SDK (``https://api.anthropic.com``); a base URL that
already ends in ``/v1`` is accepted too. The key goes in ``x-api-key`` with
``anthropic-version``. The OpenAI-shaped ``ChatCall`` is translated: system messages become the
top-level ``system`` field, ``stop`` becomes ``stop_sequences``, OpenAI function tools become
Anthropic tools, ``max_tokens`` is required (``default_max_tokens`` when the call has none), and
``seed``/``response_format`` are dropped (the API has no such parameters). Replies are
normalised back: text blocks joined, ``stop_reason`` mapped to OpenAI's ``finish_reason``,
``input_tokens`` plus cache reads/writes reported as prompt tokens.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from connectors.providers.base import ChatCall, ChatResult, StreamChunk
from connectors.providers.http_chat import HttpChatProvider
from connectors.providers.transport import as_int, ratelimit_of

API_VERSION = "2023-06-01"

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# HTTP status implied by an error type sent inside a stream (after a 200 status line).
ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class AnthropicProvider(HttpChatProvider):
    """``Provider`` for the Messages API; errors raised as ``ProviderError``."""

    reply_shape = "Messages API"

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None,
        timeout_s: float = 60.0,
        max_connections: int = 256,
        default_max_tokens: int = 1024,
    ) -> None:
        self.default_max_tokens = default_max_tokens
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "anthropic-version": API_VERSION,
        }
        if api_key:
            headers["x-api-key"] = api_key
        path = "messages" if base_url.rstrip("/").endswith("/v1") else "v1/messages"
        super().__init__(name, base_url, api_key, headers, path, timeout_s, max_connections)

    def _body(self, call: ChatCall, *, stream: bool) -> bytes:
        system = [m["content"] for m in call.messages if m.get("role") == "system"]
        messages = [
            {"role": m["role"], "content": m["content"]}
            for m in call.messages
            if m.get("role") != "system"
        ]
        body: dict[str, Any] = {
            "model": call.model,
            "max_tokens": call.max_tokens or self.default_max_tokens,
            "messages": messages,
        }
        if system:
            body["system"] = "\n\n".join(str(s) for s in system)
        optional = {
            "temperature": call.temperature,
            "top_p": call.top_p,
            "stop_sequences": call.stop,
        }
        body.update((k, v) for k, v in optional.items() if v is not None)
        if call.tools:
            body["tools"] = [_anthropic_tool(t) for t in call.tools]
        if stream:
            body["stream"] = True
        body.update(call.extra)
        return json.dumps(body, separators=(",", ":")).encode()

    def _result(
        self, data: dict[str, Any], call: ChatCall, latency_ms: float, response: httpx.Response
    ) -> ChatResult:
        blocks = data["content"]
        usage = data.get("usage") or {}
        cache_read = as_int(usage.get("cache_read_input_tokens"))
        prompt = (
            as_int(usage.get("input_tokens"))
            + as_int(usage.get("cache_creation_input_tokens"))
            + cache_read
        )
        tool_calls = [
            {
                "id": b.get("id", ""),
                "type": "function",
                "function": {"name": b.get("name", ""), "arguments": json.dumps(b.get("input"))},
            }
            for b in blocks
            if b.get("type") == "tool_use"
        ]
        return ChatResult(
            content="".join(b.get("text", "") for b in blocks if b.get("type") == "text"),
            model=data.get("model") or call.model,
            finish_reason=FINISH_REASONS.get(data.get("stop_reason") or "", "stop"),
            prompt_tokens=prompt,
            completion_tokens=as_int(usage.get("output_tokens")),
            cached_prompt_tokens=cache_read,
            latency_ms=latency_ms,
            ratelimit=ratelimit_of(response),
            status=response.status_code,
            tool_calls=tool_calls,
        )

    def _apply_event(self, data: str, last: StreamChunk, call: ChatCall) -> tuple[str, bool]:
        """Fold one stream event into ``last``; return (text delta, stream finished)."""
        try:
            event = json.loads(data)
            kind = event.get("type")
            if kind == "error":
                error = event.get("error") or {}
                status = ERROR_TYPE_STATUS.get(error.get("type", ""), 500)
                raise self._error(status, data.encode(), {}, call)
            if kind == "message_start":
                message = event["message"]
                last.model = message.get("model") or last.model
                usage = message.get("usage") or {}
                last.prompt_tokens = (
                    as_int(usage.get("input_tokens"))
                    + as_int(usage.get("cache_creation_input_tokens"))
                    + as_int(usage.get("cache_read_input_tokens"))
                )
                last.completion_tokens = as_int(usage.get("output_tokens"))
            elif kind == "content_block_delta":
                return (event.get("delta") or {}).get("text") or "", False
            elif kind == "message_delta":
                stop = (event.get("delta") or {}).get("stop_reason")
                last.finish_reason = FINISH_REASONS.get(stop or "", "stop")
                if "usage" in event:
                    last.completion_tokens = as_int(event["usage"].get("output_tokens"))
            return "", kind == "message_stop"
        except (ValueError, KeyError, TypeError, AttributeError):
            raise self._malformed(call, 200) from None


def _anthropic_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI ``{"type": "function", "function": {...}}`` tool in Anthropic's shape."""
    function = tool.get("function")
    if tool.get("type") != "function" or not isinstance(function, dict):
        return tool  # already Anthropic-shaped (or a server tool): pass through
    return {
        "name": function.get("name", ""),
        "description": function.get("description", ""),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
