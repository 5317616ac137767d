"""Who is calling, and may they use this priority: API keys checked against SHA-256 digests.

Keys are never stored. A tenant's entry in sluicegate.toml lists the hex SHA-256 digests of
its keys (``api_key_sha256 = ["<hex>"]``); a request presents ``Authorization: Bearer
<key>``, the key is hashed and the digest compared with ``hmac.compare_digest`` against
EVERY configured digest, without stopping at the first match, so the time taken does not
depend on which tenant (if any) the key belongs to. Cost: one SHA-256 of the key plus
O(configured keys) constant-time comparisons of 64 characters.

Priority is authorisation, not authentication: a tenant's ``max_priority`` caps the
priority it may ask for, so a tenant cannot raise its own priority with a header.

Pure: standard library only, no I/O. The ingress never logs or echoes a presented key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PRIORITIES = ("critical", "high", "normal", "low")  # most urgent first
_HEX_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    """The hex SHA-256 of ``key``: what goes in a tenant's ``api_key_sha256`` list."""
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The key in an ``Authorization: Bearer <key>`` header; None when absent or malformed."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


@dataclass(frozen=True)
class KeyTable:
    """Configured key digests and the tenant each belongs to."""

    entries: tuple[tuple[str, str], ...]  # (hex digest, tenant)

    @classmethod
    def from_tenants(cls, digests_by_tenant: Mapping[str, Sequence[str]]) -> KeyTable:
        """Build from ``{tenant: [hex digest, ...]}``; raises ValueError on a bad digest.

        A digest listed twice (for one or two tenants) is an error: one key, one tenant.
        """
        entries: list[tuple[str, str]] = []
        owner: dict[str, str] = {}
        for tenant, digests in digests_by_tenant.items():
            for i, raw in enumerate(digests):
                digest = raw.strip().lower()
                where = f"tenants.{tenant}.api_key_sha256[{i}]"
                if not _HEX_SHA256.match(digest):
                    raise ValueError(f"{where}: not a hex SHA-256 digest (64 hex characters)")
                if digest in owner:
                    raise ValueError(f"{where}: the same key is already listed for {owner[digest]}")
                owner[digest] = tenant
                entries.append((digest, tenant))
        return cls(tuple(entries))

    def tenant_for(self, key: str | None) -> str | None:
        """The tenant owning ``key``, or None; compares against every digest (constant time)."""
        if not key:
            return None
        presented = hash_key(key).encode()
        found: str | None = None
        for digest, tenant in self.entries:
            if hmac.compare_digest(presented, digest.encode()):
                found = tenant  # keep going: no early exit
        return found

    def __len__(self) -> int:
        return len(self.entries)


def priority_allowed(requested: str, max_priority: str) -> bool:
    """True when ``requested`` is no more urgent than ``max_priority``; ValueError if unknown."""
    return PRIORITIES.index(requested) >= PRIORITIES.index(max_priority)
