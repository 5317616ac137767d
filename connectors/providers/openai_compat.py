"""Connector for OpenAI-compatible chat completion APIs (OpenAI, vLLM, the Sluicegate simulator...).

``base_url`` includes the API version, as in the OpenAI SDK: ``https://api.openai.com/v1`` or
``http://127.0.0.1:8900/v1``; calls go to ``{base_url}/chat/completions``. Each call sends
``Authorization: Bearer <key>`` (when a key is set) and ``x-sluicegate-request-id``. One deadline
(``call.timeout_s`` or the provider's ``timeout_s``) bounds the whole call, from waiting for a
pooled connection to the last byte; for streams it bounds the wait for the response headers and
each later read.
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


class OpenAICompatProvider:
    """``Provider`` for ``POST /chat/completions``; errors raised as ``ProviderError``."""

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None,
        timeout_s: float = 60.0,
        max_connections: int = 256,
    ) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self._key = api_key
        headers = {"content-type": "application/json", "accept": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        transport = AiohttpPoolTransport(max_connections)
        self._client = make_client(base_url, transport, headers)
        self._completions = Endpoint(self._client, transport, "chat/completions")

    def __repr__(self) -> str:
        return f"OpenAICompatProvider(name={self.name!r}, base_url={str(self._client.base_url)!r})"

    async def complete(self, call: ChatCall) -> ChatResult:
        timeout_s = call.timeout_s or self.timeout_s
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._completions.send(
                    self._completions.request(self._body(call, stream=False), _ids(call))
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
        request = self._completions.request(
            self._body(call, stream=True),
            {**_ids(call), "accept": "text/event-stream"},
            httpx.Timeout(timeout_s),
        )
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._completions.send(request, stream=True)
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
                    if data == "[DONE]":
                        break
                    event = self._event(data, call)
                    if isinstance(event.get("error"), dict):  # an error sent mid-stream
                        raise error_from_response(
                            500,
                            data.encode(),
                            {},
                            provider=self.name,
                            model=call.model,
                            secret=self._key,
                        )
                    delta = self._apply_chunk(event, last, call)
                    if delta:
                        yield StreamChunk(delta=delta, model=last.model)
            last.latency_ms = (time.perf_counter() - started) * 1000
            yield last
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- helpers ---------------------------------------------------------------------------

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
            "reply does not have the chat completion shape",
            provider=self.name,
            model=call.model,
            status=status,
        )


def _ids(call: ChatCall) -> dict[str, str]:
    return {"x-sluicegate-request-id": call.request_id} if call.request_id else {}
