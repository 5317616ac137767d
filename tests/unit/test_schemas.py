import io
import json
import struct

import fastavro
import pytest

from schemas import registry
from schemas.registry import SCHEMA_DIR, SchemaError


def _v1_bytes(record: dict) -> bytes:
    """Write a record exactly as a version-1 producer did: schema id 1, v1 body."""
    schema = fastavro.parse_schema(json.loads((SCHEMA_DIR / "chat_request.v1.avsc").read_text()))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema, record)
    return struct.pack(">bI", 0, 1) + body.getvalue()


def test_a_version_1_request_is_read_through_the_current_reader_schema():
    old = {
        "schema_version": 1,
        "request_id": "r1",
        "tenant": "acme",
        "feature": "search",
        "priority": "high",
        "reply_to": None,
        "created_at": 1_700_000_000_000,
        "deadline_ms": None,
        "model": "chat",
        "metadata": {"k": "v"},
        "messages": [{"role": "user", "content": "hi", "name": None}],
        "temperature": 0.5,
        "max_tokens": 10,
    }
    decoded = registry.decode(registry.CHAT_REQUEST, _v1_bytes(old))
    assert decoded["schema_version"] == 1
    assert decoded["request_id"] == "r1" and decoded["temperature"] == 0.5
    # Fields added in version 2 take their defaults.
    assert decoded["cache_mode"] == "default"
    assert decoded["stop"] == [] and decoded["stream"] is False
    assert decoded["original_request_id"] is None


def test_encode_uses_the_newest_schema_id_and_round_trips():
    record = {
        "request_id": "r2",
        "tenant": "t",
        "created_at": 1,
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "stop": ["\n"],
    }
    data = registry.encode(registry.CHAT_REQUEST, record)
    assert data[0] == 0
    assert registry.schema_id_of(data) == registry.latest(registry.CHAT_REQUEST).id == 5
    decoded = registry.decode(registry.CHAT_REQUEST, data)
    assert decoded["stop"] == ["\n"] and decoded["schema_version"] == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (b"\x01\x00\x00\x00\x05abc", "magic byte"),
        (b"\x00\x00\x00\x03\xe7abc", "unknown schema id"),
        (b"\x00\x00\x00\x00\x02", "is a sluicegate.ChatResponse"),
        (b"\x00\x00\x00\x00\x05\xff\xff\xff", "corrupt"),
    ],
)
def test_bad_bytes_raise_a_clear_schema_error(data, message):
    with pytest.raises(SchemaError, match=message):
        registry.decode(registry.CHAT_REQUEST, data)


def test_trailing_bytes_are_rejected():
    data = registry.encode(
        registry.CHAT_REQUEST,
        {"request_id": "r", "tenant": "t", "created_at": 1, "model": "m", "messages": []},
    )
    with pytest.raises(SchemaError, match="trailing"):
        registry.decode(registry.CHAT_REQUEST, data + b"\x00")


def test_encoding_a_record_missing_a_required_field_is_an_error():
    with pytest.raises(SchemaError, match="cannot encode"):
        registry.encode(registry.CHAT_REQUEST, {"tenant": "t"})


def test_ids_in_the_table_are_unique_and_every_file_parses():
    table = json.loads((SCHEMA_DIR / "registry.json").read_text())["schemas"]
    ids = [row["id"] for row in table]
    assert len(ids) == len(set(ids))
    for row in table:
        fastavro.parse_schema(json.loads((SCHEMA_DIR / row["file"]).read_text()))
