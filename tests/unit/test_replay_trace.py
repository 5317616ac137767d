"""Tracing one request through every topic: its events, its copies, in time order."""

from __future__ import annotations

import json
from typing import Any

from schemas import registry
from streams.policies.verdict import Reason, Status
from streams.records import Outcome, Source, dead_letter_record, response_record, usage_record
from streams.replay.reader import Raw
from streams.replay.trace import Trace, absorb, mentions

T0 = 1_750_000_000_000


def request(rid: str, original: str | None = None) -> dict[str, Any]:
    return {
        "request_id": rid,
        "tenant": "t1",
        "feature": "f",
        "priority": "low",
        "created_at": T0,
        "model": "chat",
        "messages": [{"role": "user", "content": "hi"}],
        "original_request_id": original,
    }


def records() -> list[Raw]:
    """r1 is shed (dead letter), redriven as r2, which is answered."""
    r1, r2 = request("r1"), request("r2", original="r1")
    raw1 = registry.encode(registry.CHAT_REQUEST, r1)
    shed = Outcome(Status.SHED, Reason.DEADLINE_EXPIRED, "too late", trail=["deadline passed"])
    letter = dead_letter_record(
        Source("sg.requests.low", 0, 0),
        raw1,
        reason=Reason.DEADLINE_EXPIRED,
        detail="too late",
        now_ms=T0 + 10,
        request=r1,
    )
    ok = Outcome(
        Status.OK,
        content="hello",
        model="m",
        provider="p",
        prompt_tokens=5,
        completion_tokens=2,
        cost_micros=7,
        trail=["admission: ok", "p/m: ok"],
    )
    mark = {"request_id": "r2", "original_request_id": "r1", "at": T0 + 1000}
    return [
        Raw("sg.requests.low", 0, 0, T0, b"t1", raw1),
        Raw("sg.responses", 0, 0, T0 + 10, b"r1", _response(r1, shed, T0 + 10)),
        Raw("sg.usage", 0, 0, T0 + 10, b"t1", _usage(r1, shed, T0 + 10)),
        Raw(
            "sg.deadletter.shed",
            0,
            0,
            T0 + 10,
            b"t1",
            registry.encode(registry.DEAD_LETTER, letter),
        ),
        Raw(
            "sg.deadletter.redriven",
            0,
            0,
            T0 + 1000,
            b"sg.requests.low:0:0",
            json.dumps(mark).encode(),
        ),
        Raw("sg.requests.low", 0, 1, T0 + 1000, b"t1", registry.encode(registry.CHAT_REQUEST, r2)),
        Raw("sg.responses", 0, 1, T0 + 1100, b"r2", _response(r2, ok, T0 + 1100)),
        Raw("sg.usage", 0, 1, T0 + 1100, b"t1", _usage(r2, ok, T0 + 1100)),
        Raw(
            "sg.requests.low",
            0,
            2,
            T0,
            b"t1",
            registry.encode(registry.CHAT_REQUEST, request("r3")),
        ),
    ]


def _response(req: dict[str, Any], outcome: Outcome, at: int) -> bytes:
    return registry.encode(
        registry.CHAT_RESPONSE, response_record(req, outcome, queue_ms=0, now_ms=at)
    )


def _usage(req: dict[str, Any], outcome: Outcome, at: int) -> bytes:
    return registry.encode(registry.USAGE_EVENT, usage_record(req, outcome, now_ms=at))


def test_filter_keeps_records_that_mention_an_id_in_key_or_value() -> None:
    keep = mentions({"r1"})
    kept = [r for r in records() if keep(r.key, r.value)]
    # r1's four records, the ledger mark, and r2's request and response (both name r1)
    assert len(kept) == 7


def test_first_pass_finds_the_request_its_dead_letter_and_its_redriven_copy() -> None:
    trace = Trace("r1", {"r1"})
    seen: set[tuple[str, int, int]] = set()
    new = absorb(trace, records(), seen)
    assert new == {"r2"}
    kinds = [e.kind for e in trace.sorted_events()]
    assert kinds == [
        "request",
        "dead letter",
        "response",
        "decision",
        "usage",
        "redrive",
        "request",
    ]


def test_second_pass_adds_the_copy_answers_without_repeating_events() -> None:
    trace = Trace("r1", {"r1"})
    seen: set[tuple[str, int, int]] = set()
    trace.ids |= absorb(trace, records(), seen)
    assert absorb(trace, records(), seen) == set()
    events = trace.sorted_events()
    assert [(e.kind, e.request_id) for e in events][-4:] == [
        ("response", "r2"),
        ("decision", "r2"),
        ("decision", "r2"),
        ("usage", "r2"),
    ]
    assert len([e for e in events if e.kind == "request"]) == 2  # r3 is not part of it
    response = next(e for e in events if e.kind == "response" and e.request_id == "r1")
    assert "shed/deadline_expired" in response.summary
    times = [e.at_ms for e in events]
    assert times == sorted(times)


def test_tracing_a_copy_leads_back_to_the_original() -> None:
    trace = Trace("r2", {"r2"})
    new = absorb(trace, records(), set())
    assert "r1" in new  # the copy names its original
