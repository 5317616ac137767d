"""Avro schemas, their id table, and the Confluent wire format.

Every record on a Sluicegate topic is ``0x00 | 4-byte big-endian schema id | Avro body``
(the Confluent wire format), so standard Kafka tooling can read it. Without a schema
registry, ids come from ``registry.json`` beside this file: an id is never reused, and a
new schema version gets a new id. Decoding resolves the writer's schema (named by the id)
against the newest version of the same record (Avro schema evolution), so old records
stay readable.

Cost: schemas are parsed once at import; encode/decode are one fastavro call each.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.validation import validate

from schemas.errors import SluicegateError

SCHEMA_DIR = Path(__file__).parent
MAGIC = 0
HEADER = struct.Struct(">bI")

CHAT_REQUEST = "sluicegate.ChatRequest"
CHAT_RESPONSE = "sluicegate.ChatResponse"
USAGE_EVENT = "sluicegate.UsageEvent"
DEAD_LETTER = "sluicegate.DeadLetter"


class SchemaError(SluicegateError):
    """A record could not be encoded or decoded; the message says why."""


@dataclass(frozen=True)
class RegisteredSchema:
    id: int
    name: str
    version: int
    parsed: Any


def _load() -> tuple[dict[int, RegisteredSchema], dict[str, RegisteredSchema]]:
    table = json.loads((SCHEMA_DIR / "registry.json").read_text())
    by_id: dict[int, RegisteredSchema] = {}
    latest: dict[str, RegisteredSchema] = {}
    for row in table["schemas"]:
        raw = json.loads((SCHEMA_DIR / row["file"]).read_text())
        if f"{raw['namespace']}.{raw['name']}" != row["name"]:
            raise SchemaError(f"{row['file']} does not define {row['name']}")
        entry = RegisteredSchema(row["id"], row["name"], row["version"], parse_schema(raw))
        if entry.id in by_id:
            raise SchemaError(f"schema id {entry.id} is used twice in registry.json")
        by_id[entry.id] = entry
        if entry.name not in latest or latest[entry.name].version < entry.version:
            latest[entry.name] = entry
    return by_id, latest


_BY_ID, _LATEST = _load()


def latest(name: str) -> RegisteredSchema:
    try:
        return _LATEST[name]
    except KeyError:
        raise SchemaError(f"unknown record name {name!r}") from None


def encode(name: str, record: dict[str, Any]) -> bytes:
    """Frame ``record`` with the newest schema for ``name``; raises SchemaError if invalid."""
    schema = latest(name)
    buf = io.BytesIO()
    buf.write(HEADER.pack(MAGIC, schema.id))
    try:
        schemaless_writer(buf, schema.parsed, record, strict_allow_default=True)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SchemaError(f"cannot encode {name}: {exc}") from exc
    return buf.getvalue()


def schema_id_of(data: bytes) -> int:
    if len(data) < HEADER.size:
        raise SchemaError(f"record of {len(data)} bytes is too short for the wire-format header")
    magic, schema_id = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SchemaError(f"unknown magic byte {magic} (expected {MAGIC}: Confluent wire format)")
    return int(schema_id)


def decode(name: str, data: bytes) -> dict[str, Any]:
    """Read a framed record written with any registered version of ``name``."""
    schema_id = schema_id_of(data)
    writer = _BY_ID.get(schema_id)
    if writer is None:
        raise SchemaError(f"unknown schema id {schema_id}")
    if writer.name != name:
        raise SchemaError(f"schema id {schema_id} is a {writer.name}, expected {name}")
    reader = latest(name)
    body = io.BytesIO(data[HEADER.size :])
    try:
        record = schemaless_reader(body, writer.parsed, reader.parsed)
    except (EOFError, ValueError, TypeError, IndexError, UnicodeDecodeError, OverflowError) as exc:
        raise SchemaError(f"corrupt {name} body (schema id {schema_id}): {exc}") from exc
    if body.tell() != len(data) - HEADER.size:
        raise SchemaError(f"{len(data) - HEADER.size - body.tell()} trailing bytes after {name}")
    if not isinstance(record, dict):
        raise SchemaError(f"{name} body is not a record")
    return record


def is_valid(name: str, record: dict[str, Any]) -> bool:
    return bool(validate(record, latest(name).parsed, raise_errors=False))
