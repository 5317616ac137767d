"""Fuzzing schemas/registry.decode: whatever the bytes, the only error is SchemaError.

A worker decodes every consumed record with ``registry.decode``; anything but a SchemaError
escaping it would skip the dead-letter path (DESIGN §7: bad input never stops a worker).
Inputs: random bytes, random bodies behind a valid wire-format header, and valid records
of every type mutated (bytes flipped, inserted, deleted, truncated, extended).
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.client import build_request
from schemas import registry
from schemas.registry import HEADER, MAGIC, SchemaError
from streams.policies.verdict import Reason, Status
from streams.records import Outcome, Source, dead_letter_record, response_record, usage_record

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
NAMES = (
    registry.CHAT_REQUEST,
    registry.CHAT_RESPONSE,
    registry.USAGE_EVENT,
    registry.DEAD_LETTER,
)
# Every id in the table, plus ids it does not hold.
KNOWN_IDS = sorted({registry.latest(n).id for n in NAMES} | set(range(1, 8)))


def _samples() -> dict[str, bytes]:
    request = build_request(
        tenant="acme",
        model="chat",
        messages=[{"role": "user", "content": "how many bytes is this?"}],
        request_id="r-1",
        metadata={"k": "v"},
        temperature=0.0,
        max_tokens=32,
        stop=["\n"],
    )
    outcome = Outcome(
        Status.DEGRADED,
        Reason.UNAVAILABLE,
        "fell back",
        content="an answer",
        model="small",
        provider="sim",
        prompt_tokens=7,
        completion_tokens=3,
        cost_micros=12,
        degradation_reason="unavailable",
        attempts=2,
        trail=["a: unavailable 503", "b: ok"],
    )
    framed = registry.encode(registry.CHAT_REQUEST, request)
    letter = dead_letter_record(
        Source("sg.requests.normal", 3, 42),
        framed,
        reason=Reason.UNDECODABLE,
        detail="x",
        now_ms=1_700_000_000_000,
        request=request,
        load={"fill": "0.5"},
    )
    return {
        registry.CHAT_REQUEST: framed,
        registry.CHAT_RESPONSE: registry.encode(
            registry.CHAT_RESPONSE,
            response_record(request, outcome, queue_ms=5, now_ms=1_700_000_000_100),
        ),
        registry.USAGE_EVENT: registry.encode(
            registry.USAGE_EVENT, usage_record(request, outcome, now_ms=1_700_000_000_100)
        ),
        registry.DEAD_LETTER: registry.encode(registry.DEAD_LETTER, letter),
    }


SAMPLES = _samples()


def _decode_or_schema_error(name: str, data: bytes) -> dict[str, Any] | None:
    """The property: decode returns a dict or raises SchemaError, nothing else."""
    try:
        record = registry.decode(name, data)
    except SchemaError:
        return None
    assert isinstance(record, dict)
    return record


@st.composite
def mutated(draw: st.DrawFn, name: str) -> bytes:
    """A valid record of ``name`` with a few random edits."""
    data = bytearray(SAMPLES[name])
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.sampled_from(("flip", "set", "insert", "delete", "truncate", "extend")))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if edit == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif edit == "delete" and data:
            del data[at : at + draw(st.integers(1, 8))]
        elif edit == "truncate":
            del data[at:]
        elif edit == "extend":
            data += draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@FUZZ
@given(name=st.sampled_from(NAMES), data=st.binary(max_size=512))
def test_random_bytes_raise_only_schema_error(name: str, data: bytes) -> None:
    _decode_or_schema_error(name, data)


@FUZZ
@given(
    name=st.sampled_from(NAMES),
    schema_id=st.sampled_from(KNOWN_IDS),
    body=st.binary(max_size=512),
)
def test_random_bodies_behind_a_valid_header_raise_only_schema_error(
    name: str, schema_id: int, body: bytes
) -> None:
    _decode_or_schema_error(name, HEADER.pack(MAGIC, schema_id) + body)


@FUZZ
@given(data=st.data(), name=st.sampled_from(NAMES))
def test_mutated_valid_records_raise_only_schema_error(data: st.DataObject, name: str) -> None:
    _decode_or_schema_error(name, data.draw(mutated(name)))


@FUZZ
@given(name=st.sampled_from(NAMES), cut=st.integers(0, 10_000))
def test_every_truncation_of_a_valid_record_is_a_schema_error(name: str, cut: int) -> None:
    whole = SAMPLES[name]
    cut %= len(whole)
    assert _decode_or_schema_error(name, whole[:cut]) is None


def test_the_unmutated_samples_decode() -> None:
    """The mutation tests start from records that really are valid."""
    for name, data in SAMPLES.items():
        assert _decode_or_schema_error(name, data) is not None, name
