"""What a provider connector is: one call in (``ChatCall``), one result out (``ChatResult``).

The worker builds a ``ChatCall`` from a request, hands it to a ``Provider`` and gets back either
a ``ChatResult`` or one of the ``ProviderError`` subclasses (see ``errors.py``). Streaming yields
``StreamChunk`` text deltas, the last one carrying ``finish_reason`` and usage. Connectors are
stateless apart from their HTTP connection pool; limits, retries and breakers live in the worker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from connectors.providers.ratelimit_headers import EMPTY, RateLimitInfo

# One chat message: {"role": "system"|"user"|"assistant"|"tool", "content": str, "name"?: str}.
Message = dict[str, Any]


@dataclass
class ChatCall:
    """One chat completion to make. ``None`` parameters are left out of the request."""

    model: str
    messages: list[Message]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None
    request_id: str = ""
    timeout_s: float | None = None  # None: the provider's default timeout
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the request body as is


@dataclass
class ChatResult:
    """A successful answer in OpenAI's vocabulary (finish_reason "stop", "length"...)."""

    content: str
    model: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0
    latency_ms: float = 0.0
    ratelimit: RateLimitInfo = EMPTY
    status: int = 200
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # OpenAI-shaped tool calls

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class StreamChunk:
    """A piece of a streamed answer; the last chunk has ``done=True``, finish_reason and usage."""

    delta: str = ""
    done: bool = False
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str = ""
    latency_ms: float = 0.0  # on the last chunk: time from sending the request to the end
    ratelimit: RateLimitInfo = EMPTY


class Provider(Protocol):
    """A model provider. Errors are raised as ``ProviderError`` subclasses, never foreign ones."""

    name: str

    async def complete(self, call: ChatCall) -> ChatResult: ...

    def stream(self, call: ChatCall) -> AsyncIterator[StreamChunk]: ...

    async def aclose(self) -> None: ...
