"""Dead-letter listing and redrive: selection, the redriven ledger and new requests, no Kafka."""

from __future__ import annotations

import base64
import io
import itertools
import json
import struct
from typing import Any

import fastavro
import pytest

from schemas import registry
from schemas.registry import SCHEMA_DIR
from streams.dlq import (
    DeadLetterError,
    Letter,
    RawRecord,
    Selection,
    decode_letters,
    json_line,
    ledger_value,
    new_request,
    parse_time,
    plan_redrive,
    read_ledger,
    select,
    truncate,
)
from streams.policies.clock import ManualClock

NOW = 1_750_000_000_000  # 2025-06-15T15:06:40Z
SHED = "sg.deadletter.shed"
FAILED = "sg.deadletter.failed"


def _request(request_id: str = "r1", **fields: Any) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "tenant": "acme",
        "feature": "search",
        "priority": "high",
        "reply_to": None,
        "created_at": NOW - 60_000,
        "deadline_ms": NOW - 30_000,
        "model": "chat",
        "messages": [{"role": "user", "content": "hi", "name": None}],
        "metadata": {"k": "v"},
        "max_tokens": 10,
        **fields,
    }


def _letter(
    offset: int,
    *,
    topic: str = SHED,
    reason: str = "deadline_expired",
    tenant: str | None = "acme",
    created_at: int = NOW,
    raw: bytes | None = None,
    request: dict[str, Any] | None = None,
    letter_id: str | None = None,
    priority: str | None = "high",
) -> Letter:
    request = request or _request(f"r{offset}")
    if raw is None:
        raw = registry.encode(registry.CHAT_REQUEST, request)
    record = {
        "schema_version": 1,
        "dead_letter_id": letter_id or f"sg.requests.high:0:{offset}",
        "request_id": request["request_id"],
        "tenant": tenant,
        "priority": priority,
        "source_topic": "sg.requests.high",
        "source_partition": 0,
        "source_offset": offset,
        "reason": reason,
        "detail": "deadline passed 30000 ms ago",
        "queue_ms": 0,
        "load": {},
        "raw": raw,
        "created_at": created_at,
    }
    return Letter(topic, 0, offset, record)


def _ids() -> Any:
    counter = itertools.count(1)
    return lambda: f"new{next(counter)}"


# -- parse_time ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", NOW - 90_000),
        ("30m", NOW - 1_800_000),
        ("2h", NOW - 7_200_000),
        ("1d", NOW - 86_400_000),
        ("1d12h", NOW - 86_400_000 - 43_200_000),
        ("2w", NOW - 2 * 604_800_000),
        ("2025-06-15T15:06:40Z", NOW),
        ("2025-06-15T17:06:40+02:00", NOW),
        ("2025-06-15T15:06:40", NOW),  # naive means UTC
        ("2025-06-15", NOW - (15 * 3600 + 6 * 60 + 40) * 1000),
    ],
)
def test_times_are_iso_8601_or_a_duration_before_now(text: str, expected: int) -> None:
    assert parse_time(text, ManualClock(NOW).now_ms()) == expected


@pytest.mark.parametrize("text", ["yesterday", "2h ago", "h2", "1.5h", ""])
def test_an_unreadable_time_is_an_error_that_names_the_forms(text: str) -> None:
    with pytest.raises(DeadLetterError, match="ISO 8601"):
        parse_time(text, NOW)


@pytest.mark.parametrize(
    "kwargs",
    [{"limit": 0}, {"limit": -3}, {"since_ms": NOW, "until_ms": NOW - 1}],
)
def test_a_selection_that_cannot_match_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(DeadLetterError):
        Selection(**kwargs)


# -- select --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selection", "expected_offsets"),
    [
        (Selection(), [1, 2, 3, 4]),
        (Selection(reasons=frozenset({"invalid"})), [3]),
        (Selection(reasons=frozenset({"invalid", "overloaded"})), [2, 3]),
        (Selection(tenants=frozenset({"beta"})), [2]),
        (Selection(since_ms=NOW - 2_000), [3, 4]),  # bounds are inclusive
        (Selection(until_ms=NOW - 2_000), [1, 2, 3]),
        (Selection(since_ms=NOW - 2_000, until_ms=NOW - 2_000), [3]),
        (Selection(limit=2), [1, 2]),  # the oldest N
        (Selection(tenants=frozenset({"acme"}), limit=1), [1]),
        (Selection(tenants=frozenset({"nobody"})), []),
    ],
)
def test_select_filters_and_keeps_the_oldest(
    selection: Selection, expected_offsets: list[int]
) -> None:
    letters = [
        _letter(4, created_at=NOW - 1_000),
        _letter(3, topic=FAILED, reason="invalid", created_at=NOW - 2_000),
        _letter(2, reason="overloaded", tenant="beta", created_at=NOW - 3_000),
        _letter(1, created_at=NOW - 4_000),
    ]
    assert [x.offset for x in select(letters, selection)] == expected_offsets


def test_a_source_record_dead_lettered_twice_is_listed_once() -> None:
    first = _letter(7, letter_id="sg.requests.high:0:7", created_at=NOW - 10)
    again = _letter(8, letter_id="sg.requests.high:0:7", created_at=NOW)
    assert select([again, first], Selection()) == [first]


def test_letter_kind_is_the_dead_letter_topic_suffix() -> None:
    assert (_letter(1).kind, _letter(1, topic=FAILED).kind) == ("shed", "failed")


# -- the ledger ----------------------------------------------------------------------------


def test_the_ledger_keeps_the_last_mark_per_dead_letter() -> None:
    marks = read_ledger(
        [
            (b"a", b'{"request_id": "x1"}'),
            (b"b", b'{"request_id": "y1"}'),
            (b"a", b'{"request_id": "x2"}'),
        ]
    )
    assert marks == {"a": {"request_id": "x2"}, "b": {"request_id": "y1"}}


def test_a_tombstone_unmarks_a_dead_letter() -> None:
    assert read_ledger([(b"a", b'{"request_id": "x"}'), (b"a", None)]) == {}


def test_a_mark_that_is_not_json_still_counts_as_redriven() -> None:
    assert read_ledger([(b"a", b"\xff not json"), (b"b", b"[1]"), (None, b"{}")]) == {
        "a": {},
        "b": {},
    }


def test_a_ledger_value_reads_back_with_the_new_and_original_ids() -> None:
    request = {"request_id": "new1", "original_request_id": "r1"}
    marks = read_ledger([(b"sg.requests.high:0:1", ledger_value(request, NOW))])
    assert marks == {
        "sg.requests.high:0:1": {"request_id": "new1", "original_request_id": "r1", "at": NOW}
    }


# -- new requests --------------------------------------------------------------------------


def test_a_new_request_gets_a_new_id_a_fresh_deadline_and_keeps_the_content() -> None:
    old = _request("r1", reply_to="svc.replies", temperature=0.2)
    new = new_request(old, request_id="new1", now_ms=NOW, priority="low")
    assert new["request_id"] == "new1"
    assert new["original_request_id"] == "r1"
    assert new["created_at"] == NOW
    assert new["deadline_ms"] is None
    assert new["priority"] == "low"
    for name in ("tenant", "feature", "model", "messages", "metadata", "reply_to", "temperature"):
        assert new[name] == old[name]
    assert old["request_id"] == "r1" and old["deadline_ms"] == NOW - 30_000  # not mutated


def test_a_redriven_request_keeps_the_first_id_of_its_lineage() -> None:
    old = _request("r2", original_request_id="r0")
    new = new_request(old, request_id="new1", now_ms=NOW, priority="high")
    assert new["original_request_id"] == "r0"


def _v1_bytes(record: dict[str, Any]) -> bytes:
    schema = fastavro.parse_schema(json.loads((SCHEMA_DIR / "chat_request.v1.avsc").read_text()))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema, {"schema_version": 1, **record})
    return struct.pack(">bI", 0, 1) + body.getvalue()


def test_a_version_1_request_is_redriven_in_the_newest_schema() -> None:
    old = _request("r1", temperature=0.5)
    letter = _letter(1, raw=_v1_bytes(old))
    plan = plan_redrive([letter], Selection(), set(), now_ms=NOW, new_id=_ids())
    (item,) = plan.items
    assert registry.schema_id_of(item.value) == registry.latest(registry.CHAT_REQUEST).id
    decoded = registry.decode(registry.CHAT_REQUEST, item.value)
    assert decoded["schema_version"] == 2
    assert decoded["original_request_id"] == "r1" and decoded["temperature"] == 0.5


# -- plan_redrive --------------------------------------------------------------------------


def test_redrive_skips_dead_letters_already_redriven() -> None:
    letters = [_letter(1), _letter(2), _letter(3)]
    plan = plan_redrive(letters, Selection(), {"sg.requests.high:0:2"}, now_ms=NOW, new_id=_ids())
    assert [i.letter.offset for i in plan.items] == [1, 3]
    assert [x.offset for x in plan.already] == [2]
    assert [i.request["request_id"] for i in plan.items] == ["new1", "new2"]
    assert [i.request["original_request_id"] for i in plan.items] == ["r1", "r3"]


def test_the_limit_counts_only_dead_letters_not_yet_redriven() -> None:
    letters = [_letter(n, created_at=NOW + n) for n in range(1, 6)]
    done = {"sg.requests.high:0:1", "sg.requests.high:0:2"}
    plan = plan_redrive(letters, Selection(limit=2), done, now_ms=NOW, new_id=_ids())
    assert [i.letter.offset for i in plan.items] == [3, 4]
    assert len(plan.already) == 2


def test_redrive_applies_the_filters() -> None:
    letters = [_letter(1), _letter(2, reason="invalid", topic=FAILED)]
    plan = plan_redrive(
        letters, Selection(reasons=frozenset({"invalid"})), set(), now_ms=NOW, new_id=_ids()
    )
    assert [i.letter.offset for i in plan.items] == [2]


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\x00\x00", "too short"),
        (b"not avro at all", "magic byte"),
        (b"", "no raw bytes"),
    ],
)
def test_undecodable_dead_letters_are_reported_not_redriven(raw: bytes, why: str) -> None:
    letter = _letter(1, raw=raw, reason="undecodable", topic=FAILED)
    if not raw:
        letter = Letter(FAILED, 0, 1, {**letter.record, "raw": None})
    plan = plan_redrive([letter, _letter(2)], Selection(), set(), now_ms=NOW, new_id=_ids())
    assert [i.letter.offset for i in plan.items] == [2]
    ((skipped, message),) = plan.undecodable
    assert skipped.offset == 1 and why in message


def test_a_cut_request_or_another_record_type_is_undecodable() -> None:
    cut = _letter(1, raw=_letter(9).record["raw"][:6])  # a ChatRequest header, body cut off
    nested = registry.encode(
        registry.DEAD_LETTER, {**_letter(3).record, "raw": None, "dead_letter_id": "x"}
    )
    other = _letter(2, raw=nested)
    plan = plan_redrive([cut, other], Selection(), set(), now_ms=NOW, new_id=_ids())
    assert plan.items == [] and len(plan.undecodable) == 2
    assert "expected sluicegate.ChatRequest" in plan.undecodable[1][1]


@pytest.mark.parametrize(
    ("override", "letter_priority", "expected"),
    [
        (None, "high", "high"),
        (None, "critical", "critical"),  # the topic the worker read it from wins
        (None, None, "high"),  # then the source topic's suffix
        ("low", "high", "low"),
    ],
)
def test_redrive_keeps_the_original_priority_unless_told(
    override: str | None, letter_priority: str | None, expected: str
) -> None:
    letter = _letter(1, priority=letter_priority, request=_request("r1", priority="normal"))
    plan = plan_redrive([letter], Selection(), set(), now_ms=NOW, new_id=_ids(), priority=override)
    assert plan.items[0].request["priority"] == expected


def test_an_unknown_priority_override_is_refused() -> None:
    with pytest.raises(DeadLetterError, match="priority"):
        plan_redrive([_letter(1)], Selection(), set(), now_ms=NOW, new_id=_ids(), priority="asap")


def test_redrive_keys_by_tenant_and_sets_the_request_headers() -> None:
    plain = _letter(1)
    replying = _letter(2, request=_request("r2", tenant="beta", reply_to="svc.replies"))
    plan = plan_redrive([plain, replying], Selection(), set(), now_ms=NOW, new_id=_ids())
    first, second = plan.items
    assert first.key == b"acme" and first.headers == [("sg-request-id", b"new1")]
    assert second.key == b"beta"
    assert second.headers == [("sg-request-id", b"new2"), ("sg-reply-to", b"svc.replies")]


# -- presenting and decoding ---------------------------------------------------------------


def test_json_lines_carry_raw_bytes_as_base64_and_the_redriven_mark() -> None:
    letter = _letter(1)
    line = json.loads(json.dumps(json_line(letter, {"request_id": "new1"})))
    assert base64.b64decode(line["raw"]) == letter.record["raw"]
    assert line["redriven"] == {"request_id": "new1"}
    assert line["reason"] == "deadline_expired" and line["topic"] == SHED
    assert line["time"] == "2025-06-15T15:06:40.000+00:00"
    assert json_line(letter, None)["redriven"] is None


def test_truncate_shortens_long_details_to_one_line() -> None:
    assert truncate("a\nb  c") == "a b c"
    assert truncate("x" * 100, 10) == "x" * 9 + "…"


def test_corrupt_dead_letter_records_are_counted_not_fatal() -> None:
    good = registry.encode(registry.DEAD_LETTER, dict(_letter(1).record))
    records = [
        RawRecord(SHED, 0, 0, b"acme", good),
        RawRecord(SHED, 0, 1, b"acme", b"garbage"),
        RawRecord(SHED, 1, 0, None, None),
    ]
    letters, bad = decode_letters(records)
    assert [(x.topic, x.offset, x.id) for x in letters] == [(SHED, 0, "sg.requests.high:0:1")]
    assert bad == 2
