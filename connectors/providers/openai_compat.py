"""Connector for OpenAI-compatible chat completion APIs (OpenAI, vLLM, the Sluicegate simulator...).

``base_url`` includes the API version, as in the OpenAI SDK: ``https://api.openai.com/v1`` or
``http://127.0.0.1:8900/v1``; calls go to ``{base_url}/chat/completions``. Each call sends
``Authorization: Bearer <key>`` (when a key is set) and ``x-sluicegate-request-id``. One deadline
(``call.timeout_s`` or the provider's ``timeout_s``) bounds the whole call, from waiting for a
pooled connection to the last byte; for streams it bounds the wait for the response headers and
each later read.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from connectors.providers.base import ChatCall, ChatResult, StreamChunk
from connectors.providers.http_chat import HttpChatProvider
from connectors.providers.transport import as_int, ratelimit_of


class OpenAICompatProvider(HttpChatProvider):
    """``Provider`` for ``POST /chat/completions``; errors raised as ``ProviderError``."""

    reply_shape = "chat completion"

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None,
        timeout_s: float = 60.0,
        max_connections: int = 256,
    ) -> None:
        headers = {"content-type": "application/json", "accept": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        super().__init__(
            name, base_url, api_key, headers, "chat/completions", timeout_s, max_connections
        )

    def _result(
        self, data: dict[str, Any], call: ChatCall, latency_ms: float, response: httpx.Response
    ) -> ChatResult:
        choice = data["choices"][0]
        message = choice["message"]
        usage = data.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        return ChatResult(
            content=message.get("content") or "",
            model=data.get("model") or call.model,
            finish_reason=choice.get("finish_reason") or "stop",
            prompt_tokens=as_int(usage.get("prompt_tokens")),
            completion_tokens=as_int(usage.get("completion_tokens")),
            cached_prompt_tokens=as_int(details.get("cached_tokens")),
            latency_ms=latency_ms,
            ratelimit=ratelimit_of(response),
            status=response.status_code,
            tool_calls=list(message.get("tool_calls") or []),
        )

    def _body(self, call: ChatCall, *, stream: bool) -> bytes:
        body: dict[str, Any] = {"model": call.model, "messages": call.messages}
        optional = {
            "temperature": call.temperature,
            "top_p": call.top_p,
            "max_tokens": call.max_tokens,
            "stop": call.stop,
            "seed": call.seed,
            "tools": call.tools,
            "response_format": call.response_format,
        }
        body.update((k, v) for k, v in optional.items() if v is not None)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        body.update(call.extra)
        return json.dumps(body, separators=(",", ":")).encode()

    def _apply_event(self, data: str, last: StreamChunk, call: ChatCall) -> tuple[str, bool]:
        """Fold one stream event into ``last``; return (text delta, stream finished)."""
        if data == "[DONE]":
            return "", True
        event = self._event(data, call)
        if isinstance(event.get("error"), dict):  # an error sent mid-stream
            raise self._error(500, data.encode(), {}, call)
        return self._apply_chunk(event, last, call), False

    def _apply_chunk(self, event: dict[str, Any], last: StreamChunk, call: ChatCall) -> str:
        """Fold one chunk's model/usage/finish_reason into ``last``; return its text delta."""
        try:
            last.model = event.get("model") or last.model
            usage = event.get("usage")
            if usage:
                last.prompt_tokens = as_int(usage.get("prompt_tokens"))
                last.completion_tokens = as_int(usage.get("completion_tokens"))
            text = ""
            for choice in event.get("choices") or ():
                last.finish_reason = choice.get("finish_reason") or last.finish_reason
                text += (choice.get("delta") or {}).get("content") or ""
            return text
        except (TypeError, AttributeError):
            raise self._malformed(call, 200) from None

    def _event(self, data: str, call: ChatCall) -> dict[str, Any]:
        try:
            event = json.loads(data)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            raise self._malformed(call, 200)
        return event
