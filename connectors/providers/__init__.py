"""Provider connectors: the protocol, the OpenAI-compatible and Anthropic-style connectors,
the error tree and rate-limit header parsing."""

from connectors.providers.anthropic import AnthropicProvider
from connectors.providers.base import ChatCall, ChatResult, Provider, StreamChunk
from connectors.providers.errors import (
    AuthError,
    BadRequestError,
    OverloadedError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
    SpendLimitError,
    UnavailableError,
    classify_status,
)
from connectors.providers.factory import PROVIDER_KINDS, build_provider
from connectors.providers.openai_compat import OpenAICompatProvider
from connectors.providers.ratelimit_headers import RateLimitInfo, parse_ratelimit_headers

__all__ = [
    "PROVIDER_KINDS",
    "AnthropicProvider",
    "AuthError",
    "BadRequestError",
    "ChatCall",
    "ChatResult",
    "OpenAICompatProvider",
    "OverloadedError",
    "Provider",
    "ProviderError",
    "ProviderTimeoutError",
    "RateLimitInfo",
    "RateLimitedError",
    "SpendLimitError",
    "StreamChunk",
    "UnavailableError",
    "build_provider",
    "classify_status",
    "parse_ratelimit_headers",
]
