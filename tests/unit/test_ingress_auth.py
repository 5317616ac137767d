"""The ingress's API-key check and priority cap (connectors/ingress/auth.py)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from connectors.ingress.auth import KeyTable, bearer_token, hash_key, priority_allowed

ACME_KEY = "sk-acme-secret"
GLOBEX_KEY = "sk-globex-secret"


def table() -> KeyTable:
    return KeyTable.from_tenants(
        {
            "acme": [hash_key(ACME_KEY), hash_key("sk-acme-second")],
            "globex": [hash_key(GLOBEX_KEY).upper()],  # digests are case-insensitive hex
            "initech": [],
        }
    )


def test_hash_key_is_hex_sha256_of_the_key() -> None:
    assert hash_key("abc") == hashlib.sha256(b"abc").hexdigest()
    assert hash_key("abc").startswith("ba7816bf")


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer sk-1", "sk-1"),
        ("bearer sk-1", "sk-1"),
        ("  Bearer   sk-1  ", "sk-1"),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("sk-1", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token_reads_only_the_bearer_scheme(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    ("key", "tenant"),
    [
        (ACME_KEY, "acme"),
        ("sk-acme-second", "acme"),
        (GLOBEX_KEY, "globex"),
        ("sk-wrong", None),
        ("", None),
        (None, None),
        (hash_key(ACME_KEY), None),  # presenting the digest itself is not the key
    ],
)
def test_tenant_for_finds_the_owner_of_a_key(key: str | None, tenant: str | None) -> None:
    assert table().tenant_for(key) == tenant


def test_tenant_for_compares_against_every_digest_even_after_a_match(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[bytes] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    keys = table()
    assert keys.tenant_for(ACME_KEY) == "acme"  # the first entry matches
    assert len(calls) == len(keys) == 3


@pytest.mark.parametrize(
    ("digests", "message"),
    [
        ({"acme": ["not-hex"]}, r"tenants\.acme\.api_key_sha256\[0\]: not a hex SHA-256"),
        ({"acme": ["ab" * 31]}, "not a hex SHA-256"),
        ({"acme": [hash_key("k"), hash_key("k")]}, "already listed for acme"),
        ({"acme": [hash_key("k")], "globex": [hash_key("k")]}, "already listed for acme"),
    ],
)
def test_bad_configured_digests_are_config_errors(
    digests: dict[str, list[str]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        KeyTable.from_tenants(digests)


@pytest.mark.parametrize(
    ("requested", "maximum", "allowed"),
    [
        ("low", "high", True),
        ("normal", "high", True),
        ("high", "high", True),
        ("critical", "high", False),
        ("high", "normal", False),
        ("critical", "critical", True),
        ("low", "low", True),
        ("normal", "low", False),
    ],
)
def test_a_tenant_cannot_ask_above_its_max_priority(
    requested: str, maximum: str, allowed: bool
) -> None:
    assert priority_allowed(requested, maximum) is allowed
