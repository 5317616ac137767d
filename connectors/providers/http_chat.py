"""The request/response skeleton shared by the HTTP chat connectors.

``HttpChatProvider`` sends one JSON body to one endpoint and handles what every connector does the
same way: the deadline, sending, translating transport failures, the status check, JSON decoding,
malformed replies and the server-sent-events loop. A connector supplies only what differs: the
request body (``_body``), the parsing of a whole reply (``_result``) and of one stream event
(``_apply_event``), and the wording of a malformed-reply error (``reply_shape``).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any

import httpx

from connectors.providers.base import ChatCall, ChatResult, StreamChunk
from connectors.providers.errors import ProviderError, UnavailableError
from connectors.providers.transport import (
    TRANSPORT_ERRORS,
    AiohttpPoolTransport,
    Endpoint,
    decode_json,
    error_from_response,
    make_client,
    ratelimit_of,
    read_error_body,
    sse_data,
    translate_exception,
)


class HttpChatProvider(ABC):
    """A ``Provider`` that posts a JSON body to one endpoint; errors raised as ``ProviderError``.

    Subclasses implement ``_body``, ``_result`` and ``_apply_event`` and set ``reply_shape``.
    """

    reply_shape = "chat completion"  # in "reply does not have the ... shape"

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None,
        headers: Mapping[str, str],
        path: str,
        timeout_s: float,
        max_connections: int,
    ) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self._key = api_key
        transport = AiohttpPoolTransport(max_connections)
        self._client = make_client(base_url, transport, headers)
        self._endpoint = Endpoint(self._client, transport, path)

    def __repr__(self) -> str:
        base_url = str(self._client.base_url)
        return f"{type(self).__name__}(name={self.name!r}, base_url={base_url!r})"

    async def complete(self, call: ChatCall) -> ChatResult:
        timeout_s = call.timeout_s or self.timeout_s
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._endpoint.send(
                    self._endpoint.request(self._body(call, stream=False), _ids(call))
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
        request = self._endpoint.request(
            self._body(call, stream=True),
            {**_ids(call), "accept": "text/event-stream"},
            httpx.Timeout(timeout_s),
        )
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._endpoint.send(request, stream=True)
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

    # -- what a connector supplies ----------------------------------------------------------

    @abstractmethod
    def _body(self, call: ChatCall, *, stream: bool) -> bytes:
        """The JSON request body of ``call``."""

    @abstractmethod
    def _result(
        self, data: dict[str, Any], call: ChatCall, latency_ms: float, response: httpx.Response
    ) -> ChatResult:
        """The result of a 200 reply's JSON object; ``KeyError`` etc. when it is malformed."""

    @abstractmethod
    def _apply_event(self, data: str, last: StreamChunk, call: ChatCall) -> tuple[str, bool]:
        """Fold one stream event's ``data`` into ``last``; return (text delta, stream finished)."""

    # -- errors -----------------------------------------------------------------------------

    def _translate(self, exc: BaseException, call: ChatCall, timeout_s: float) -> ProviderError:
        return translate_exception(
            exc, provider=self.name, model=call.model, timeout_s=timeout_s, secret=self._key
        )

    def _http_error(self, response: httpx.Response, call: ChatCall) -> ProviderError:
        return self._error(response.status_code, response.content, response.headers, call)

    def _error(
        self, status: int, body: bytes, headers: Mapping[str, str], call: ChatCall
    ) -> ProviderError:
        """An error reply (or an error sent inside a stream) as a ``ProviderError``."""
        return error_from_response(
            status, body, headers, provider=self.name, model=call.model, secret=self._key
        )

    def _malformed(self, call: ChatCall, status: int) -> ProviderError:
        return UnavailableError(
            f"reply does not have the {self.reply_shape} shape",
            provider=self.name,
            model=call.model,
            status=status,
        )


def _ids(call: ChatCall) -> dict[str, str]:
    return {"x-sluicegate-request-id": call.request_id} if call.request_id else {}
