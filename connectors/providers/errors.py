"""The provider error tree: every failure of a provider call, translated at the connector boundary.

::

    SluicegateError               (connectors.errors)
     └── ProviderError            a failed provider call; keeps status, code, provider, model
          ├── RateLimitedError    429 (requests/tokens per minute); retryable after retry_after_ms
          ├── SpendLimitError     429/402 caused by quota or billing ("insufficient_quota");
          │                       never retried
          ├── OverloadedError     529, 503: the provider sheds load; retryable; trips breakers
          ├── UnavailableError    500/502/504, other 5xx, connection refused or reset,
          │                       unreadable reply; retryable; trips breakers
          ├── ProviderTimeoutError  no complete answer within the call's timeout (or 408);
          │                       retryable; trips breakers
          ├── BadRequestError     400/404/409/413/422 and other 4xx: our request is wrong;
          │                       not retried, not the provider's fault
          └── AuthError           401/403: bad or missing key; not retried

Two class attributes drive the caller's policy: ``retryable`` (is another attempt, here or on a
fallback, worth making?) and ``counts_as_failure`` (should the circuit breaker count it against
the provider's health?). Rate limiting is *not* a health failure: the provider is working and
asking us to slow down.

Messages never include the API key: connectors pass the key as ``secret`` and it is redacted from
the provider's text, which is also truncated.
"""

from __future__ import annotations

from connectors.errors import SluicegateError
from connectors.providers.ratelimit_headers import EMPTY, RateLimitInfo

_MAX_MESSAGE = 500


def redact(text: str, secret: str | None) -> str:
    """``text`` without ``secret`` and cut to a readable length."""
    if secret:
        text = text.replace(secret, "[redacted]")
    if len(text) > _MAX_MESSAGE:
        text = text[:_MAX_MESSAGE] + "..."
    return text


class ProviderError(SluicegateError):
    """A provider call failed; ``status`` is the HTTP status (None when no response arrived)."""

    retryable: bool = False
    counts_as_failure: bool = False

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        model: str = "",
        status: int | None = None,
        code: str | None = None,
        ratelimit: RateLimitInfo = EMPTY,
        secret: str | None = None,
    ) -> None:
        self.message = redact(message, secret)
        self.provider = provider
        self.model = model
        self.status = status
        self.code = code
        self.ratelimit = ratelimit
        super().__init__(self.message)

    @property
    def retry_after_ms(self) -> int | None:
        return self.ratelimit.retry_after_ms

    def __str__(self) -> str:
        where = "/".join(part for part in (self.provider, self.model) if part)
        status = f" {self.status}" if self.status is not None else ""
        code = f" [{self.code}]" if self.code else ""
        return f"{type(self).__name__}{status}{code} from {where or 'provider'}: {self.message}"


class RateLimitedError(ProviderError):
    retryable = True
    counts_as_failure = False


class SpendLimitError(ProviderError):
    retryable = False
    counts_as_failure = False


class OverloadedError(ProviderError):
    retryable = True
    counts_as_failure = True


class UnavailableError(ProviderError):
    retryable = True
    counts_as_failure = True


class ProviderTimeoutError(ProviderError):
    retryable = True
    counts_as_failure = True


class BadRequestError(ProviderError):
    retryable = False
    counts_as_failure = False


class AuthError(ProviderError):
    retryable = False
    counts_as_failure = False


# Error codes/types (OpenAI ``error.code``/``error.type``, Anthropic ``error.type``) that mean
# "you are out of money or quota", whatever the status.
SPEND_CODES = frozenset({"insufficient_quota", "billing_error", "billing_hard_limit_reached"})


def classify_status(status: int, code: str | None = None) -> type[ProviderError]:
    """The error class for an HTTP error ``status`` and the provider's error code or type."""
    if code in SPEND_CODES or status == 402:
        return SpendLimitError
    if status == 429:
        return RateLimitedError
    if status in (503, 529):
        return OverloadedError
    if status in (401, 403):
        return AuthError
    if status == 408:
        return ProviderTimeoutError
    if 400 <= status < 500:
        return BadRequestError
    return UnavailableError
