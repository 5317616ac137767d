import pytest

from streams.policies.validation import TenantFacts, ValidationConfig, validate_request

GOOD = {
    "request_id": "r",
    "tenant": "acme",
    "priority": "normal",
    "model": "chat",
    "messages": [{"role": "user", "content": "hi"}],
    "reply_to": None,
    "temperature": 0.0,
    "max_tokens": 100,
    "stop": [],
    "cache_mode": "default",
}
KNOWN = TenantFacts(known=True, max_priority="high")
CONFIG = ValidationConfig(max_messages=3, max_message_bytes=20)


def test_a_good_request_has_no_errors():
    assert validate_request(GOOD, KNOWN, CONFIG) == []


@pytest.mark.parametrize(
    ("change", "facts", "field"),
    [
        ({"request_id": ""}, KNOWN, "request_id"),
        ({}, TenantFacts(known=False), "tenant"),
        ({"priority": "urgent"}, KNOWN, "priority"),
        ({"priority": "critical"}, KNOWN, "priority"),  # above the tenant's maximum
        ({"reply_to": "elsewhere.responses"}, KNOWN, "reply_to"),
        ({}, TenantFacts(known=True, max_priority="high", model_known=False), "model"),
        ({}, TenantFacts(known=True, max_priority="high", model_allowed=False), "model"),
        ({"messages": []}, KNOWN, "messages"),
        ({"messages": [{"role": "user", "content": "x"}] * 4}, KNOWN, "messages"),
        ({"messages": [{"role": "user", "content": "x" * 21}]}, KNOWN, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, KNOWN, "messages[0].role"),
        ({"temperature": 2.5}, KNOWN, "temperature"),
        ({"max_tokens": 0}, KNOWN, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, KNOWN, "stop"),
        ({"cache_mode": "sometimes"}, KNOWN, "cache_mode"),
    ],
)
def test_each_problem_names_its_field(change, facts, field):
    errors = validate_request({**GOOD, **change}, facts, CONFIG)
    assert [e.field for e in errors] == [field]
