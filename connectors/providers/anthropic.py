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

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import httpx

from connectors.providers.base import ChatCall, ChatResult, StreamChunk
from connectors.providers.errors import ProviderError, UnavailableError
from connectors.providers.transport import (
    TRANSPORT_ERRORS,
    AiohttpPoolTransport,
    Endpoint,
    as_int,
    decode_json,
    error_from_response,
    make_client,
    ratelimit_of,
    read_error_body,
    sse_data,
    translate_exception,
)

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


class AnthropicProvider:
    """``Provider`` for the Messages API; errors raised as ``ProviderError``."""

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None,
        timeout_s: float = 60.0,
        max_connections: int = 256,
        default_max_tokens: int = 1024,
    ) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.default_max_tokens = default_max_tokens
        self._key = api_key
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "anthropic-version": API_VERSION,
        }
        if api_key:
            headers["x-api-key"] = api_key
        transport = AiohttpPoolTransport(max_connections)
        self._client = make_client(base_url, transport, headers)
        path = "messages" if base_url.rstrip("/").endswith("/v1") else "v1/messages"
        self._messages = Endpoint(self._client, transport, path)

    def __repr__(self) -> str:
        return f"AnthropicProvider(name={self.name!r}, base_url={str(self._client.base_url)!r})"

    async def complete(self, call: ChatCall) -> ChatResult:
        timeout_s = call.timeout_s or self.timeout_s
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._messages.send(
                    self._messages.request(self._body(call, stream=False), _ids(call))
                )
        except TRANSPORT_ERRORS as exc:
            raise self._translate(exc, call, timeout_s) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise self._http_error(response, call)
        data = decode_json(response, provider=self.name, model=call.model)
        try:
            return self._result(data, call, latency_ms, response)
        except (KeyError, IndexError, TypeError, AttributeError):
            raise self._malformed(call, response.status_code) from None

    async def stream(self, call: ChatCall) -> AsyncIterator[StreamChunk]:
        timeout_s = call.timeout_s or self.timeout_s
        request = self._messages.request(
            self._body(call, stream=True),
            {**_ids(call), "accept": "text/event-stream"},
            httpx.Timeout(timeout_s),
        )
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._messages.send(request, stream=True)
        except TRANSPORT_ERRORS as exc:
            raise self._translate(exc, call, timeout_s) from exc
        try:
            if response.status_code != 200:
                await read_error_body(response, lambda e: self._translate(e, call, timeout_s))
                raise self._http_error(response, call)
            last = StreamChunk(done=True, model=call.model, ratelimit=ratelimit_of(response))
            events = sse_data(response, lambda e: self._translate(e, call, timeout_s))
            async with aclosing(events):
                async for data in events:
                    delta, finished = self._apply_event(data, last, call)
                    if delta:
                        yield StreamChunk(delta=delta, model=last.model)
                    if finished:
                        break
            last.latency_ms = (time.perf_counter() - started) * 1000
            yield last
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- helpers ---------------------------------------------------------------------------

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
                raise error_from_response(
                    status,
                    data.encode(),
                    {},
                    provider=self.name,
                    model=call.model,
                    secret=self._key,
                )
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

    def _translate(self, exc: BaseException, call: ChatCall, timeout_s: float) -> ProviderError:
        return translate_exception(
            exc, provider=self.name, model=call.model, timeout_s=timeout_s, secret=self._key
        )

    def _http_error(self, response: httpx.Response, call: ChatCall) -> ProviderError:
        return error_from_response(
            response.status_code,
            response.content,
            response.headers,
            provider=self.name,
            model=call.model,
            secret=self._key,
        )

    def _malformed(self, call: ChatCall, status: int) -> ProviderError:
        return UnavailableError(
            "reply does not have the Messages API shape",
            provider=self.name,
            model=call.model,
            status=status,
        )


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


def _ids(call: ChatCall) -> dict[str, str]:
    return {"x-sluicegate-request-id": call.request_id} if call.request_id else {}
