"""Build a provider connector from its configuration (kind, URL, key's environment variable)."""

from __future__ import annotations

import logging
import os

from connectors.providers.anthropic import AnthropicProvider
from connectors.providers.base import Provider
from connectors.providers.openai_compat import OpenAICompatProvider

PROVIDER_KINDS = ("openai", "anthropic")

log = logging.getLogger("sluicegate.providers")


def build_provider(
    kind: str,
    name: str,
    base_url: str,
    api_key_env: str | None,
    timeout_s: float = 60.0,
    max_connections: int = 256,
) -> Provider:
    """A connector of ``kind`` ("openai" or "anthropic"), its key read from ``$api_key_env``.

    ``api_key_env=None`` means "no key" (e.g. a local simulator). A named but unset variable is
    logged as a warning (naming the variable, never a value) and the connector runs without a
    key, so a provider that needs one answers ``AuthError``. An unknown kind is a ``ValueError``.
    """
    api_key: str | None = None
    if api_key_env:
        api_key = os.environ.get(api_key_env) or None
        if api_key is None:
            log.warning("provider %r: environment variable %s is not set", name, api_key_env)
    if kind == "openai":
        return OpenAICompatProvider(name, base_url, api_key, timeout_s, max_connections)
    if kind == "anthropic":
        return AnthropicProvider(name, base_url, api_key, timeout_s, max_connections)
    raise ValueError(f"provider {name!r}: unknown kind {kind!r}, expected one of {PROVIDER_KINDS}")
