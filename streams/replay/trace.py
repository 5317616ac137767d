"""The whole life of one request: request, decisions, attempts, response, usage, dead letters,
redrives, and the requests that re-sent it.

Every topic of the prefix (requests, responses, usage, both dead-letter topics and the
``deadletter.redriven`` ledger) is read over the time window (the whole retention by
default) keeping only records whose key or value contains one of the traced ids as bytes: a
request id is plain text inside an Avro record, so the filter needs no decoding and the
kept records are then decoded and checked field by field. A redriven or replayed copy names
its lineage's first id in ``original_request_id`` and the ledger names both ids, so the first
pass also finds the copies; a second pass fetches their answers (up to ``MAX_PASSES``).

Events are ordered by time; a response's decision trail (admission, cache, attempts per
model, fallbacks) is listed right after it. Cost: one read of the window per pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from schemas import registry
from streams.replay.reader import Raw
from streams.replay.recording import PRIORITIES, iso
from streams.replay.render import usd

MAX_PASSES = 3
KIND_ORDER = {  # within one millisecond: the redrive mark leads to its new request
    "redrive": 0,
    "request": 1,
    "dead letter": 2,
    "response": 3,
    "decision": 4,
    "usage": 5,
}


@dataclass(frozen=True)
class Event:
    at_ms: int
    kind: str  # request | response | decision | usage | dead letter | redrive
    request_id: str
    topic: str
    summary: str
    seq: int = 0  # order among events of one record (trail lines)


@dataclass
class Trace:
    request_id: str
    ids: set[str] = field(default_factory=set)  # the traced id and its copies
    events: list[Event] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)  # decoded, for --json

    def sorted_events(self) -> list[Event]:
        return sorted(self.events, key=lambda e: (e.at_ms, KIND_ORDER[e.kind], e.seq))


def topics_of(prefix: str) -> list[str]:
    topics = [f"{prefix}.requests.{p}" for p in PRIORITIES]
    suffixes = ("responses", "usage", "deadletter.shed", "deadletter.failed", "deadletter.redriven")
    return topics + [f"{prefix}.{s}" for s in suffixes]


def mentions(ids: Iterable[str]) -> Any:
    """A reader filter: the key or the value contains one of ``ids``."""
    needles = [i.encode() for i in ids]

    def keep(key: bytes | None, value: bytes | None) -> bool:
        return any((key and n in key) or (value and n in value) for n in needles)

    return keep


def _decode(name: str, value: bytes | None) -> dict[str, Any] | None:
    try:
        return registry.decode(name, value or b"")
    except registry.SchemaError:
        return None


def absorb(trace: Trace, records: Iterable[Raw], seen: set[tuple[str, int, int]]) -> set[str]:
    """Add the events of ``records`` that belong to the traced ids; returns newly found ids
    (copies of the request). ``seen`` skips records already taken by an earlier pass."""
    found: set[str] = set()
    for r in records:
        where = (r.topic, r.partition, r.offset)
        if where in seen:
            continue
        suffix = r.topic.rsplit(".", 1)[-1]
        events = _events(trace, r, suffix, found)
        if events:
            seen.add(where)
            trace.events.extend(events)
    return found - trace.ids


def _events(trace: Trace, r: Raw, suffix: str, found: set[str]) -> list[Event]:
    ids = trace.ids
    if r.topic.endswith(".deadletter.redriven"):
        try:
            mark = json.loads(r.value or b"")
        except ValueError:
            return []
        if not isinstance(mark, dict):
            return []
        new_id, original = mark.get("request_id"), mark.get("original_request_id")
        if new_id not in ids and original not in ids:
            return []
        found.add(str(new_id))
        letter_id = (r.key or b"").decode(errors="replace")
        trace.records.append({"kind": "redrive", "dead_letter_id": letter_id, **mark})
        at = int(mark.get("at") or r.timestamp)
        text = f"dead letter {letter_id} redriven as request {new_id}"
        return [Event(at, "redrive", str(original or new_id), r.topic, text)]
    if suffix in PRIORITIES and ".requests." in r.topic:
        request = _decode(registry.CHAT_REQUEST, r.value)
        if request is None:
            return []
        rid, original = str(request["request_id"]), request.get("original_request_id")
        if rid not in ids and original not in ids:
            return []
        found.add(rid)
        if original:
            found.add(str(original))
        trace.records.append({"kind": "request", "topic": r.topic, **_jsonable(request)})
        return [Event(r.timestamp, "request", rid, r.topic, _request_summary(request, r.topic))]
    if suffix in ("shed", "failed"):
        letter = _decode(registry.DEAD_LETTER, r.value)
        if letter is None or letter.get("request_id") not in ids:
            return []
        trace.records.append({"kind": "dead letter", "topic": r.topic, **_jsonable(letter)})
        text = (
            f"{suffix}: {letter['reason']}: {letter['detail']} "
            f"(dead letter id {letter['dead_letter_id']})"
        )
        return [
            Event(int(letter["created_at"]), "dead letter", letter["request_id"], r.topic, text)
        ]
    if suffix == "usage":
        usage = _decode(registry.USAGE_EVENT, r.value)
        if usage is None or usage["request_id"] not in ids:
            return []
        trace.records.append({"kind": "usage", "topic": r.topic, **usage})
        text = (
            f"{usage['status']} {usage['provider'] or '-'}/{usage['model'] or '-'} "
            f"tokens {usage['prompt_tokens']}/{usage['completion_tokens']} "
            f"cost {usd(usage['cost_micros'])} saved {usd(usage['cost_saved_micros'])}"
        )
        return [Event(int(usage["at"]), "usage", usage["request_id"], r.topic, text)]
    response = _decode(registry.CHAT_RESPONSE, r.value)
    if response is None or response["request_id"] not in ids:
        return []
    trace.records.append({"kind": "response", "topic": r.topic, **response})
    at, rid = int(response["created_at"]), str(response["request_id"])
    out = [Event(at, "response", rid, r.topic, _response_summary(response))]
    out += [
        Event(at, "decision", rid, r.topic, line, i + 1)
        for i, line in enumerate(response.get("trail") or [])
    ]
    return out


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.hex() if isinstance(v, bytes) else v) for k, v in record.items()}


def _request_summary(request: dict[str, Any], topic: str) -> str:
    parts = [
        f"{request['tenant']}/{request['feature']}",
        topic.rsplit(".", 1)[-1],
        f"model {request['model']}",
        f"{len(request['messages'])} messages",
    ]
    if request.get("max_tokens"):
        parts.append(f"max_tokens {request['max_tokens']}")
    if request.get("cache_mode", "default") != "default":
        parts.append(f"cache {request['cache_mode']}")
    if request.get("deadline_ms"):
        parts.append(f"deadline {iso(int(request['deadline_ms']))}")
    if request.get("original_request_id"):
        parts.append(f"copy of {request['original_request_id']}")
    return ", ".join(parts)


def _response_summary(response: dict[str, Any]) -> str:
    status = response["status"] + (f"/{response['reason']}" if response.get("reason") else "")
    parts = [status]
    if response.get("detail"):
        parts.append(str(response["detail"])[:120])
    if response.get("model"):
        parts.append(f"{response.get('provider') or '-'}/{response['model']}")
    if response.get("cache_kind"):
        parts.append(f"cache {response['cache_kind']}")
    if response.get("degradation_reason"):
        parts.append(f"degraded: {response['degradation_reason']}")
    parts.append(f"tokens {response['prompt_tokens']}/{response['completion_tokens']}")
    parts.append(f"cost {usd(response['cost_micros'])}")
    parts.append(f"attempts {response['attempts']}")
    parts.append(f"queue {response['queue_ms']} ms, total {response['total_ms']} ms")
    return ", ".join(parts)


def trace_request(
    bootstrap: str, prefix: str, request_id: str, since_ms: int = 0, until_ms: int | None = None
) -> Trace:
    """Read the window's records mentioning the request (and its copies) into a Trace."""
    from streams.replay.reader import read_range

    stop = until_ms if until_ms is not None else 2**62
    trace = Trace(request_id, {request_id})
    seen: set[tuple[str, int, int]] = set()
    topics = set(topics_of(prefix))
    for _ in range(MAX_PASSES):
        result = read_range(bootstrap, sorted(topics), since_ms, stop, keep=mentions(trace.ids))
        new_ids = absorb(trace, result.records, seen)
        reply_topics = {
            str(rec["reply_to"])
            for rec in trace.records
            if rec["kind"] == "request" and rec.get("reply_to")
        }
        if not new_ids and reply_topics <= topics:
            break
        trace.ids |= new_ids  # copies found: read again for their answers
        topics |= reply_topics
    return trace
