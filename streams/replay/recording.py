"""Recorded traffic: requests joined with their responses and usage events by request id.

A request belongs to the range ``[from_ms, to_ms]`` by the timestamp of its request record
(when it was published to the gateway). Its response and usage event are looked up by
request id among the records read from the responses (and ``reply_to``) and usage topics,
which are read up to ``to_ms`` plus a grace period so that requests near the end of the range
still find their answers. The first response and the first usage event of a request win;
later ones (duplicates after a worker crash) are counted, never added twice. A request with
no response is kept as ``unanswered``: an audit lists it, it does not hide it.

Pure: takes raw records (``reader.Raw``), returns plain data. Cost: one Avro decode per
request, per usage event and per response of a request in the range (responses are keyed by
request id, so the others are skipped undecoded); O(requests) memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas import registry
from streams.policies.token_estimate import raw_prompt_tokens
from streams.replay.reader import Raw

PRIORITIES = ("critical", "high", "normal", "low")
STATUSES = ("ok", "cached", "degraded", "rejected", "shed", "failed")
UNANSWERED = "unanswered"


@dataclass
class Entry:
    """One recorded request and what became of it."""

    request: dict[str, Any]
    topic: str
    partition: int
    offset: int
    at_ms: int  # the request record's timestamp
    prompt_estimate: int  # raw prompt tokens estimated from the message text
    response: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    duplicates: int = 0  # responses beyond the first

    @property
    def request_id(self) -> str:
        return str(self.request["request_id"])

    @property
    def tenant(self) -> str:
        return str(self.request["tenant"])

    @property
    def feature(self) -> str:
        return str(self.request.get("feature") or "default")

    @property
    def priority(self) -> str:
        return str(self.request["priority"])

    @property
    def status(self) -> str:
        return str(self.response["status"]) if self.response else UNANSWERED

    @property
    def reason(self) -> str:
        return str(self.response.get("reason") or "") if self.response else ""

    def _accounted(self, name: str, usage_name: str | None = None) -> int:
        """A figure from the usage event (the accounting record), else from the response."""
        if self.usage is not None:
            return int(self.usage.get(usage_name or name) or 0)
        if self.response is not None:
            return int(self.response.get(name) or 0)
        return 0

    @property
    def cost_micros(self) -> int:
        return self._accounted("cost_micros")

    @property
    def saved_micros(self) -> int:
        return self._accounted("cost_saved_micros")

    @property
    def prompt_tokens(self) -> int:
        return self._accounted("prompt_tokens")

    @property
    def completion_tokens(self) -> int:
        return self._accounted("completion_tokens")

    @property
    def cached_prompt_tokens(self) -> int:
        return int(self.usage.get("cached_prompt_tokens") or 0) if self.usage else 0

    @property
    def model(self) -> str | None:
        """``provider/model`` that answered, if any."""
        source = self.usage or self.response
        if not source or not source.get("model"):
            return None
        return f"{source.get('provider') or '?'}/{source['model']}"

    @property
    def provider(self) -> str | None:
        source = self.usage or self.response
        return str(source["provider"]) if source and source.get("provider") else None

    @property
    def cache_kind(self) -> str | None:
        return self.response.get("cache_kind") if self.response else None

    @property
    def finished_ms(self) -> int | None:
        return int(self.response["created_at"]) if self.response else None


@dataclass(frozen=True)
class Selection:
    """Which recorded requests a command looks at; an empty set means any."""

    tenants: frozenset[str] = frozenset()
    features: frozenset[str] = frozenset()
    priorities: frozenset[str] = frozenset()
    statuses: frozenset[str] = frozenset()  # response statuses, or "unanswered"

    def matches_request(self, entry: Entry) -> bool:
        """The request-level filters (everything but the status)."""
        return (
            (not self.tenants or entry.tenant in self.tenants)
            and (not self.features or entry.feature in self.features)
            and (not self.priorities or entry.priority in self.priorities)
        )

    def matches(self, entry: Entry) -> bool:
        return self.matches_request(entry) and (not self.statuses or entry.status in self.statuses)


@dataclass
class Recording:
    prefix: str
    from_ms: int
    to_ms: int
    entries: list[Entry] = field(default_factory=list)  # in recorded order
    undecodable: int = 0  # request records that are not a ChatRequest
    duplicate_responses: int = 0
    warnings: list[str] = field(default_factory=list)


def request_topics(prefix: str) -> list[str]:
    return [f"{prefix}.requests.{p}" for p in PRIORITIES]


def decode_requests(
    records: Iterable[Raw], from_ms: int, to_ms: int, *, keep_messages: bool = True
) -> tuple[dict[str, Entry], int]:
    """Requests with a timestamp in ``[from_ms, to_ms]`` by id (first record of an id wins),
    and the count of undecodable records in the range. The priority is the topic's, as the
    worker takes it."""
    entries: dict[str, Entry] = {}
    bad = 0
    for r in records:
        if not from_ms <= r.timestamp <= to_ms:
            continue
        try:
            request = registry.decode(registry.CHAT_REQUEST, r.value or b"")
        except registry.SchemaError:
            bad += 1
            continue
        request["priority"] = r.topic.rsplit(".", 1)[-1]
        estimate = raw_prompt_tokens(request["messages"])
        if not keep_messages:
            del request["messages"]
        entries.setdefault(
            str(request["request_id"]),
            Entry(request, r.topic, r.partition, r.offset, r.timestamp, estimate),
        )
    return entries, bad


def attach_responses(entries: Mapping[str, Entry], records: Iterable[Raw]) -> int:
    """Join responses (keyed by request id) to their requests; returns the duplicates."""
    duplicates = 0
    for r in records:
        key = r.key.decode(errors="replace") if r.key else None
        if key is not None and key not in entries:
            continue  # someone else's response: not decoded at all
        try:
            response = registry.decode(registry.CHAT_RESPONSE, r.value or b"")
        except registry.SchemaError:
            continue
        entry = entries.get(str(response["request_id"]))
        if entry is None:
            continue
        if entry.response is None:
            entry.response = response
        else:
            entry.duplicates += 1
            duplicates += 1
    return duplicates


def attach_usage(entries: Mapping[str, Entry], records: Iterable[Raw]) -> None:
    """Join usage events to their requests. They are keyed by tenant: events of tenants with
    no request in ``entries`` are skipped undecoded, the others decoded."""
    tenants = {e.tenant.encode() for e in entries.values()}
    for r in records:
        if r.key is not None and r.key not in tenants:
            continue
        try:
            usage = registry.decode(registry.USAGE_EVENT, r.value or b"")
        except registry.SchemaError:
            continue
        entry = entries.get(str(usage["request_id"]))
        if entry is not None and entry.usage is None:
            entry.usage = usage


def reply_topics(entries: Iterable[Entry], prefix: str) -> list[str]:
    """The default responses topic and every ``reply_to`` topic the requests named."""
    topics = {f"{prefix}.responses"}
    topics.update(str(e.request["reply_to"]) for e in entries if e.request.get("reply_to"))
    return sorted(topics)


def select(entries: Iterable[Entry], selection: Selection) -> list[Entry]:
    """The matching entries in recorded order (timestamp, then where they were read)."""
    chosen = [e for e in entries if selection.matches(e)]
    chosen.sort(key=lambda e: (e.at_ms, e.topic, e.partition, e.offset))
    return chosen


# -- Kafka I/O -------------------------------------------------------------------------------

SLACK_MS = 60_000  # read this much beyond the range: producer clocks are not monotonic
DEFAULT_GRACE_MS = 600_000  # answers to requests near the end of the range come later


def iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def retention_warnings(earliest_ms: Mapping[str, int], from_ms: int) -> list[str]:
    """A warning per topic whose oldest retained record is younger than the range start."""
    return [
        f"{topic} holds records only from {iso(at)} (older ones were deleted by retention); "
        f"the range starts at {iso(from_ms)}, so traffic before {iso(at)} is missing"
        for topic, at in sorted(earliest_ms.items())
        if at > from_ms
    ]


def load_recording(
    bootstrap: str,
    prefix: str,
    from_ms: int,
    to_ms: int,
    selection: Selection = Selection(),
    *,
    grace_ms: int = DEFAULT_GRACE_MS,
    keep_messages: bool = True,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> Recording:
    """Read and join the range. ``on_progress(phase, done, total)`` follows the reading."""
    from streams.replay.reader import OnProgress, read_range

    def progress(phase: str) -> OnProgress | None:
        if on_progress is None:
            return None
        report = on_progress
        return lambda done, total: report(phase, done, total)

    read = read_range(
        bootstrap,
        request_topics(prefix),
        from_ms - SLACK_MS,
        to_ms + 1 + SLACK_MS,
        on_progress=progress("requests"),
    )
    entries, bad = decode_requests(read.records, from_ms, to_ms, keep_messages=keep_messages)
    entries = {rid: e for rid, e in entries.items() if selection.matches_request(e)}
    earliest = dict(read.earliest_ms)
    del read
    usage_topic = f"{prefix}.usage"
    answers = read_range(
        bootstrap,
        [*reply_topics(entries.values(), prefix), usage_topic],
        from_ms - SLACK_MS,
        to_ms + 1 + grace_ms,
        on_progress=progress("responses and usage"),
    )
    duplicates = attach_responses(entries, (r for r in answers.records if r.topic != usage_topic))
    attach_usage(entries, (r for r in answers.records if r.topic == usage_topic))
    earliest.update(answers.earliest_ms)
    return Recording(
        prefix,
        from_ms,
        to_ms,
        select(entries.values(), selection),
        undecodable=bad,
        duplicate_responses=duplicates,
        warnings=retention_warnings(earliest, from_ms),
    )
