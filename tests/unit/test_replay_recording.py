"""Joining recorded requests, responses and usage events by request id."""

from __future__ import annotations

from typing import Any

import pytest

from schemas import registry
from streams.policies.verdict import Reason, Status
from streams.records import Outcome, response_record, usage_record
from streams.replay.reader import Raw
from streams.replay.recording import (
    Selection,
    attach_responses,
    attach_usage,
    decode_requests,
    reply_topics,
    retention_warnings,
    select,
)

T0 = 1_750_000_000_000


def request(rid: str, tenant: str = "t1", **extra: Any) -> dict[str, Any]:
    return {
        "request_id": rid,
        "tenant": tenant,
        "feature": extra.pop("feature", "search"),
        "priority": "normal",
        "created_at": T0,
        "model": "chat",
        "messages": [{"role": "user", "content": "hello there, how are you"}],
        **extra,
    }


def raw_request(
    req: dict[str, Any], at: int, topic: str = "sg.requests.high", offset: int = 0
) -> Raw:
    value = registry.encode(registry.CHAT_REQUEST, req)
    return Raw(topic, 0, offset, at, req["tenant"].encode(), value)


def raw_response(req: dict[str, Any], outcome: Outcome, at: int, offset: int = 0) -> Raw:
    value = registry.encode(
        registry.CHAT_RESPONSE, response_record(req, outcome, queue_ms=2, now_ms=at)
    )
    return Raw("sg.responses", 0, offset, at, req["request_id"].encode(), value)


def raw_usage(req: dict[str, Any], outcome: Outcome, at: int) -> Raw:
    value = registry.encode(registry.USAGE_EVENT, usage_record(req, outcome, now_ms=at))
    return Raw("sg.usage", 0, 0, at, req["tenant"].encode(), value)


def paid(cost: int) -> Outcome:
    return Outcome(
        Status.OK,
        content="hi",
        model="m",
        provider="p",
        prompt_tokens=9,
        completion_tokens=3,
        cost_micros=cost,
    )


def test_requests_in_the_range_are_kept_with_the_topics_priority() -> None:
    records = [
        raw_request(request("early"), T0 - 1),
        raw_request(request("in"), T0, "sg.requests.low"),
        raw_request(request("last"), T0 + 1000),
        raw_request(request("late"), T0 + 1001),
        Raw("sg.requests.high", 0, 9, T0 + 5, b"t1", b"not avro"),
    ]
    entries, bad = decode_requests(records, T0, T0 + 1000)
    assert list(entries) == ["in", "last"]
    assert entries["in"].priority == "low"  # the worker takes the topic's priority
    assert entries["in"].prompt_estimate > 0
    assert bad == 1


def test_messages_can_be_dropped_to_save_memory() -> None:
    entries, _ = decode_requests([raw_request(request("a"), T0)], T0, T0, keep_messages=False)
    assert "messages" not in entries["a"].request
    assert entries["a"].prompt_estimate > 0


def test_first_response_wins_and_duplicates_are_counted_once() -> None:
    req = request("a")
    entries, _ = decode_requests([raw_request(req, T0)], T0, T0)
    responses = [
        raw_response(req, paid(10), T0 + 5),
        raw_response(req, paid(99), T0 + 9, offset=1),  # redelivered after a crash
        raw_response(request("other"), paid(7), T0 + 6, offset=2),
    ]
    assert attach_responses(entries, responses) == 1
    entry = entries["a"]
    assert entry.response is not None and entry.response["cost_micros"] == 10
    assert entry.duplicates == 1


def test_cost_comes_from_the_usage_event_when_there_is_one() -> None:
    req = request("a")
    entries, _ = decode_requests([raw_request(req, T0)], T0, T0)
    attach_responses(entries, [raw_response(req, paid(10), T0 + 5)])
    assert entries["a"].cost_micros == 10
    usage = paid(12)
    usage.cached_prompt_tokens = 4
    attach_usage(
        entries, [raw_usage(req, usage, T0 + 5), raw_usage(request("x", "t2"), paid(5), T0)]
    )
    entry = entries["a"]
    assert (entry.cost_micros, entry.cached_prompt_tokens, entry.model) == (12, 4, "p/m")


def test_request_without_response_is_unanswered() -> None:
    entries, _ = decode_requests([raw_request(request("lost"), T0)], T0, T0)
    entry = entries["lost"]
    assert (entry.status, entry.cost_micros, entry.finished_ms) == ("unanswered", 0, None)


def test_reply_topics_include_every_reply_to() -> None:
    entries, _ = decode_requests(
        [raw_request(request("a", reply_to="sg.mine"), T0), raw_request(request("b"), T0)],
        T0,
        T0,
    )
    assert reply_topics(entries.values(), "sg") == ["sg.mine", "sg.responses"]


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (Selection(), ["a", "b", "c"]),
        (Selection(tenants=frozenset({"t2"})), ["b"]),
        (Selection(features=frozenset({"chat"})), ["c"]),
        (Selection(statuses=frozenset({"rejected"})), ["b"]),
        (Selection(statuses=frozenset({"unanswered"})), ["c"]),
        (Selection(priorities=frozenset({"low"})), []),
    ],
)
def test_selection_filters_and_keeps_recorded_order(
    selection: Selection, expected: list[str]
) -> None:
    a, b, c = request("a"), request("b", "t2"), request("c", feature="chat")
    records = [
        raw_request(c, T0 + 2, offset=2),
        raw_request(a, T0),
        raw_request(b, T0 + 1, offset=1),
    ]
    entries, _ = decode_requests(records, T0, T0 + 10)
    refused = Outcome(Status.REJECTED, Reason.RATE_LIMITED, "slow down")
    attach_responses(entries, [raw_response(a, paid(1), T0 + 3), raw_response(b, refused, T0 + 3)])
    assert [e.request_id for e in select(entries.values(), selection)] == expected


def test_retention_warning_only_when_the_range_starts_before_the_oldest_record() -> None:
    warnings = retention_warnings({"sg.requests.low": T0 + 60_000, "sg.usage": T0 - 5}, T0)
    assert len(warnings) == 1
    assert "sg.requests.low" in warnings[0] and "deleted by retention" in warnings[0]
