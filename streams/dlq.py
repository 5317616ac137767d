"""Dead-letter tooling: ``sluicegate dlq ls`` lists dead letters, ``dlq redrive`` re-sends them.

Reading: each dead-letter topic (``<prefix>.deadletter.shed``, ``.failed``) is read from the
first offset at or after ``--since`` (found with ``offsets_for_times``, never by scanning) or
from the start, up to the end offsets captured when the command starts: a listing, not a
tail. Dead letters are then filtered (time, reason, tenant), de-duplicated by
``dead_letter_id`` (a worker crash can dead-letter one source record twice) and sorted by
time; ``--limit`` keeps the oldest N.

Redrive: each selected dead letter's ``raw`` bytes are decoded as a ChatRequest and published
as a new request (new id, ``original_request_id`` = the first id in its lineage, created now,
default deadline). A dead letter is redriven at most once: after its request is acknowledged
(acks=all), a record keyed by ``dead_letter_id`` goes to the compacted
``<prefix>.deadletter.redriven`` ledger, which every run reads in full first. A crash between
the two writes can still redrive that one dead letter a second time; concurrent redrives of
the same letters are not coordinated (run one at a time).

The selection, ledger and request-building functions are pure (time passed in); the Kafka
I/O is the thin layer at the bottom. Cost: O(records read) time and memory.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
import time
import uuid
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from schemas import registry
from schemas.errors import SluicegateError

if TYPE_CHECKING:
    from streams.config import SluicegateConfig

PRIORITIES = ("critical", "high", "normal", "low")
KINDS = ("shed", "failed")
HEADER_REQUEST_ID = "sg-request-id"
HEADER_REPLY_TO = "sg-reply-to"
DETAIL_WIDTH = 60
READ_TIMEOUT_S = 30.0  # without progress
_DURATION = re.compile(r"(?:\d+[smhdw])+")
_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


class DeadLetterError(SluicegateError):
    """A dead-letter command could not run: a bad argument, or the broker did not answer."""


# -- pure: selecting -----------------------------------------------------------------------


@dataclass(frozen=True)
class Letter:
    """One decoded DeadLetter and where it was read."""

    topic: str
    partition: int
    offset: int
    record: Mapping[str, Any]

    @property
    def id(self) -> str:
        return str(self.record["dead_letter_id"])

    @property
    def kind(self) -> str:
        """``shed`` or ``failed``: the dead-letter topic's last name part."""
        return self.topic.rsplit(".", 1)[-1]

    @property
    def created_at(self) -> int:
        return int(self.record["created_at"])


@dataclass(frozen=True)
class Selection:
    """Which dead letters a command acts on; empty sets and ``None`` mean "any"."""

    since_ms: int | None = None
    until_ms: int | None = None
    reasons: frozenset[str] = frozenset()
    tenants: frozenset[str] = frozenset()
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit <= 0:
            raise DeadLetterError(f"--limit must be positive, got {self.limit}")
        since, until = self.since_ms, self.until_ms
        if since is not None and until is not None and since > until:
            raise DeadLetterError("--since is after --until: nothing can match")

    def matches(self, letter: Letter) -> bool:
        at = letter.created_at
        return (
            (self.since_ms is None or at >= self.since_ms)
            and (self.until_ms is None or at <= self.until_ms)
            and (not self.reasons or letter.record.get("reason") in self.reasons)
            and (not self.tenants or letter.record.get("tenant") in self.tenants)
        )


def parse_time(text: str, now_ms: int) -> int:
    """Epoch ms of an ISO 8601 time (naive = UTC), or ``now`` minus a duration (``1d12h``)."""
    spec = text.strip()
    if _DURATION.fullmatch(spec):
        return now_ms - sum(int(n) * _UNIT_MS[u] for n, u in _DURATION_PART.findall(spec))
    try:
        moment = datetime.fromisoformat(spec)
    except ValueError:
        raise DeadLetterError(
            f"cannot read {text!r} as a time: use ISO 8601 (2025-05-01T12:00Z) "
            "or a duration ago (90s, 30m, 2h, 1d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def select(letters: Iterable[Letter], selection: Selection) -> list[Letter]:
    """The matching letters, one per ``dead_letter_id``, oldest first, at most ``limit``."""
    chosen = _matching(letters, replace(selection, limit=None))
    return chosen[: selection.limit] if selection.limit is not None else chosen


def _matching(letters: Iterable[Letter], selection: Selection) -> list[Letter]:
    seen: set[str] = set()
    unique = []
    for letter in sorted(letters, key=lambda x: (x.created_at, x.topic, x.partition, x.offset)):
        if letter.id not in seen and selection.matches(letter):
            seen.add(letter.id)
            unique.append(letter)
    return unique


# -- pure: the redriven ledger ---------------------------------------------------------------


def read_ledger(records: Iterable[tuple[bytes | None, bytes | None]]) -> dict[str, dict[str, Any]]:
    """``dead_letter_id -> mark`` from ledger (key, value) records in offset order.

    The last record per key wins; a tombstone (no value) un-marks a letter. A mark that is
    not JSON still counts as redriven: never redriving twice matters more than its details.
    """
    marks: dict[str, dict[str, Any]] = {}
    for key, value in records:
        if key is None:
            continue
        letter_id = key.decode(errors="replace")
        if value is None:
            marks.pop(letter_id, None)
            continue
        try:
            mark = json.loads(value)
        except ValueError:
            mark = None
        marks[letter_id] = mark if isinstance(mark, dict) else {}
    return marks


def ledger_value(request: Mapping[str, Any], now_ms: int) -> bytes:
    mark = {
        "request_id": request["request_id"],
        "original_request_id": request["original_request_id"],
        "at": now_ms,
    }
    return json.dumps(mark, separators=(",", ":")).encode()


# -- pure: building the new requests --------------------------------------------------------


@dataclass(frozen=True)
class Redrive:
    """One dead letter and the new request that replaces it."""

    letter: Letter
    request: dict[str, Any]
    value: bytes  # the framed ChatRequest

    @property
    def key(self) -> bytes:
        return str(self.request["tenant"]).encode()

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        headers = [(HEADER_REQUEST_ID, str(self.request["request_id"]).encode())]
        if self.request.get("reply_to"):
            headers.append((HEADER_REPLY_TO, str(self.request["reply_to"]).encode()))
        return headers


@dataclass(frozen=True)
class RedrivePlan:
    items: list[Redrive] = field(default_factory=list)
    already: list[Letter] = field(default_factory=list)  # redriven by an earlier run
    undecodable: list[tuple[Letter, str]] = field(default_factory=list)  # and why


def new_request(
    original: Mapping[str, Any], *, request_id: str, now_ms: int, priority: str
) -> dict[str, Any]:
    """A fresh copy of ``original``: new id, created now, default deadline, same lineage."""
    request = dict(original)
    # Written with the newest schema: its default version number replaces the old one.
    request.pop("schema_version", None)
    request.update(
        request_id=request_id,
        original_request_id=original.get("original_request_id") or original["request_id"],
        created_at=now_ms,
        deadline_ms=None,
        priority=priority,
    )
    return request


def original_priority(letter: Letter, request: Mapping[str, Any]) -> str:
    """The priority the request was queued at: the dead letter's (the topic's), else its own."""
    for candidate in (
        letter.record.get("priority"),
        str(letter.record.get("source_topic") or "").rsplit(".", 1)[-1],
        request.get("priority"),
    ):
        if candidate in PRIORITIES:
            return str(candidate)
    return "normal"


def plan_redrive(
    letters: Iterable[Letter],
    selection: Selection,
    redriven: Container[str],
    *,
    now_ms: int,
    new_id: Callable[[], str],
    priority: str | None = None,
) -> RedrivePlan:
    """Split the selected letters into new requests, already-redriven and undecodable ones.

    ``limit`` counts letters not redriven before, so ``--limit 10`` redrives up to 10.
    """
    if priority is not None and priority not in PRIORITIES:
        raise DeadLetterError(f"--priority must be one of {', '.join(PRIORITIES)}")
    plan = RedrivePlan()
    todo: list[Letter] = []
    for letter in _matching(letters, replace(selection, limit=None)):
        (plan.already if letter.id in redriven else todo).append(letter)
    for letter in todo[: selection.limit]:
        raw = letter.record.get("raw")
        if not raw:
            plan.undecodable.append((letter, "no raw bytes kept"))
            continue
        try:
            original = registry.decode(registry.CHAT_REQUEST, raw)
            request = new_request(
                original,
                request_id=new_id(),
                now_ms=now_ms,
                priority=priority or original_priority(letter, original),
            )
            value = registry.encode(registry.CHAT_REQUEST, request)
        except registry.SchemaError as exc:
            plan.undecodable.append((letter, str(exc)))
            continue
        plan.items.append(Redrive(letter, request, value))
    return plan


# -- pure: presenting ---------------------------------------------------------------------


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def json_line(letter: Letter, mark: Mapping[str, Any] | None) -> dict[str, Any]:
    """A dead letter as one JSON object (raw bytes base64) for ``dlq ls --json``."""
    record = dict(letter.record)
    raw = record.get("raw")
    record["raw"] = base64.b64encode(raw).decode() if raw is not None else None
    return {
        "topic": letter.topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "time": iso(letter.created_at),
        **record,
        "redriven": dict(mark) if mark is not None else None,
    }


def truncate(text: str, width: int = DETAIL_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# -- Kafka I/O -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def read_topics(
    bootstrap: str, topics: Iterable[str], since_ms: int | None = None
) -> list[RawRecord]:
    """Every record of ``topics`` from ``since_ms`` (or the start) up to today's end offsets.

    A topic that does not exist reads as empty. Transient broker errors are retried by the
    client; ``READ_TIMEOUT_S`` without progress is an error.
    """
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    topics = list(topics)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"sluicegate-dlq-{uuid.uuid4().hex}",  # never joined, never committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        ends: dict[tuple[str, int], int] = {}
        starts = []
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None:
                continue
            for p in sorted(meta.partitions):
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                start = low
                if since_ms is not None:
                    found = consumer.offsets_for_times([TopicPartition(topic, p, since_ms)], 10)
                    start = found[0].offset if found[0].offset >= 0 else high
                if start < high:
                    ends[(topic, p)] = high
                    starts.append(TopicPartition(topic, p, start))
        records: list[RawRecord] = []
        if starts:
            consumer.assign(starts)
        last_error = None
        deadline = time.monotonic() + READ_TIMEOUT_S
        while ends:
            if time.monotonic() > deadline:
                raise DeadLetterError(f"no progress reading {', '.join(topics)}: {last_error}")
            for msg in consumer.consume(500, timeout=0.5):
                where = (str(msg.topic()), int(msg.partition() or 0))
                error = msg.error()
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    if error.fatal():
                        raise DeadLetterError(f"reading {where[0]}: {error}")
                    last_error = error
                    continue
                end = ends.get(where)
                if end is None:
                    continue
                deadline = time.monotonic() + READ_TIMEOUT_S
                offset = int(msg.offset() or 0)
                if error is None and offset < end:
                    records.append(RawRecord(*where, offset, msg.key(), msg.value()))
                if error is not None or offset >= end - 1:
                    del ends[where]
        return records
    finally:
        consumer.close()


def decode_letters(records: Iterable[RawRecord]) -> tuple[list[Letter], int]:
    """The decodable DeadLetter records, and how many were not."""
    letters, bad = [], 0
    for r in records:
        try:
            record = registry.decode(registry.DEAD_LETTER, r.value or b"")
        except registry.SchemaError:
            bad += 1
            continue
        letters.append(Letter(r.topic, r.partition, r.offset, record))
    return letters, bad


def dead_letter_topics(config: SluicegateConfig, which: str) -> list[str]:
    kinds = KINDS if which == "all" else (which,)
    return [config.topic(f"deadletter.{kind}") for kind in kinds]


def ledger_topic(config: SluicegateConfig) -> str:
    return config.topic("deadletter.redriven")


def load(
    config: SluicegateConfig, which: str, since_ms: int | None
) -> tuple[list[Letter], int, dict[str, dict[str, Any]]]:
    """Dead letters (from ``since_ms``), the count of corrupt ones, and the redriven marks."""
    bootstrap = config.kafka.bootstrap_servers
    topics = dead_letter_topics(config, which)
    letters, bad = decode_letters(read_topics(bootstrap, topics, since_ms))
    ledger = read_ledger((r.key, r.value) for r in read_topics(bootstrap, [ledger_topic(config)]))
    return letters, bad, ledger


@dataclass
class RedriveResult:
    redriven: list[Redrive] = field(default_factory=list)
    failed: list[tuple[Redrive, str]] = field(default_factory=list)  # publish or ledger failed


def publish(
    config: SluicegateConfig,
    items: list[Redrive],
    *,
    now_ms: int,
    on_done: Callable[[Redrive], None] = lambda _: None,
) -> RedriveResult:
    """Publish each new request; once acknowledged, mark its dead letter in the ledger."""
    from confluent_kafka import KafkaError, Message, Producer

    producer = Producer(
        {
            "bootstrap.servers": config.kafka.bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "partitioner": "murmur2_random",  # where aiokafka / Java producers put a key
        }
    )
    result = RedriveResult()
    published: list[Redrive] = []
    ledger = ledger_topic(config)

    def sent(item: Redrive) -> Callable[[KafkaError | None, Message], None]:
        def done(error: KafkaError | None, _msg: Message) -> None:
            if error is not None:
                result.failed.append((item, f"publish failed: {error}"))
            else:
                published.append(item)

        return done

    def marked(item: Redrive) -> Callable[[KafkaError | None, Message], None]:
        def done(error: KafkaError | None, _msg: Message) -> None:
            if error is not None:
                result.failed.append((item, f"published, but not recorded as redriven: {error}"))
            else:
                result.redriven.append(item)
                on_done(item)

        return done

    def produce(topic: str, key: bytes, value: bytes, **kwargs: Any) -> None:
        while True:
            try:
                producer.produce(topic, value, key, **kwargs)
                break
            except BufferError:
                producer.poll(0.5)
        producer.poll(0)

    def mark_published() -> None:
        while published:
            item = published.pop(0)
            value = ledger_value(item.request, now_ms)
            produce(ledger, item.letter.id.encode(), value, on_delivery=marked(item))

    for item in items:
        topic = config.request_topic(str(item.request["priority"]))
        produce(topic, item.key, item.value, headers=item.headers, on_delivery=sent(item))
        mark_published()
    while True:
        if (left := producer.flush(30)) > 0:
            raise DeadLetterError(f"{left} records still unacknowledged after 30 s")
        if not published:
            return result
        mark_published()


# -- commands ------------------------------------------------------------------------------


def _selection(args: argparse.Namespace, now_ms: int) -> Selection:
    return Selection(
        since_ms=parse_time(args.since, now_ms) if args.since else None,
        until_ms=parse_time(args.until, now_ms) if args.until else None,
        reasons=frozenset(args.reason or ()),
        tenants=frozenset(args.tenant or ()),
        limit=args.limit,
    )


def cmd_ls(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from streams.cli import effective_config

    config = effective_config(args.config)
    selection = _selection(args, int(time.time() * 1000))
    letters, bad, ledger = load(config, args.topic, selection.since_ms)
    chosen = select(letters, selection)
    if bad:
        print(f"sluicegate: skipped {bad} undecodable dead-letter records", file=sys.stderr)
    if args.json:
        for letter in chosen:
            print(json.dumps(json_line(letter, ledger.get(letter.id))))
        return 0
    table = Table(title=f"{len(chosen)} dead letters", title_justify="left")
    for column in ("time", "topic", "tenant", "priority", "reason", "request id", "detail"):
        table.add_column(column)
    table.add_column("redriven as")
    for letter in chosen:
        r = letter.record
        mark = ledger.get(letter.id)
        table.add_row(
            iso(letter.created_at),
            letter.kind,
            r.get("tenant") or "-",
            r.get("priority") or "-",
            r.get("reason") or "-",
            r.get("request_id") or "-",
            truncate(str(r.get("detail") or "")),
            "-" if mark is None else str(mark.get("request_id") or "yes"),
        )
    Console().print(table)
    return 0


def cmd_redrive(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import Progress

    from streams.cli import effective_config
    from streams.topics import ensure_topics, topic_specs

    console = Console(soft_wrap=True, highlight=False)
    config = effective_config(args.config)
    ledger = ledger_topic(config)
    ensure_topics(
        config.kafka.bootstrap_servers,
        [s for s in topic_specs(config) if s.name == ledger],
        config.kafka.replication_factor,
    )
    now_ms = int(time.time() * 1000)
    selection = _selection(args, now_ms)
    letters, _bad, marks = load(config, args.topic, selection.since_ms)
    plan = plan_redrive(
        letters,
        selection,
        marks,
        now_ms=now_ms,
        new_id=lambda: uuid.uuid4().hex,
        priority=args.priority,
    )
    for letter, why in plan.undecodable:
        console.print(f"[yellow]skip[/] {escape(letter.id)}: {escape(truncate(why, 100))}")
    if args.dry_run:
        for item in plan.items:
            r = item.letter.record
            console.print(
                f"would redrive {item.letter.id} ({r.get('reason')}, tenant "
                f"{item.request['tenant']}) as {item.request['priority']}, "
                f"original request {item.request['original_request_id']}",
                markup=False,
            )
        _summary(console, "would redrive", len(plan.items), plan)
        return 0
    if plan.items and not args.yes:
        if not sys.stdin.isatty():
            raise DeadLetterError(f"would redrive {len(plan.items)} dead letters: pass --yes")
        from rich.prompt import Confirm

        if not Confirm.ask(f"Redrive {len(plan.items)} dead letters?", console=console):
            return 1
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("redriving", total=len(plan.items))
        result = publish(
            config, plan.items, now_ms=now_ms, on_done=lambda _: progress.advance(task)
        )
    for item, why in result.failed:
        console.print(f"[red]failed[/] {escape(item.letter.id)}: {escape(why)}")
    _summary(console, "redriven", len(result.redriven), plan)
    return 1 if result.failed else 0


def _summary(console: Any, verb: str, count: int, plan: RedrivePlan) -> None:
    console.print(
        f"{verb}: {count}; skipped, already redriven: {len(plan.already)}; "
        f"skipped, undecodable: {len(plan.undecodable)}"
    )


def add_commands(sub: Any) -> None:
    dlq = sub.add_parser("dlq", help="list and redrive dead letters")
    commands = dlq.add_subparsers(dest="dlq_command", required=True)
    ls = commands.add_parser("ls", help="list dead letters (up to the current end)")
    redrive = commands.add_parser("redrive", help="re-publish dead letters as new requests")
    for p in (ls, redrive):
        p.add_argument("--topic", choices=("shed", "failed", "all"), default="all")
        p.add_argument("--since", help="ISO 8601 time, or a duration ago: 90s, 30m, 2h, 1d")
        p.add_argument("--until", help="same forms as --since")
        p.add_argument("--reason", action="append", help="e.g. deadline_expired (repeatable)")
        p.add_argument("--tenant", action="append", help="repeatable")
        p.add_argument("--limit", type=int, help="at most N, oldest first")
    ls.add_argument("--json", action="store_true", help="JSON lines, raw bytes base64")
    ls.set_defaults(func=cmd_ls)
    redrive.add_argument("--priority", choices=PRIORITIES, help="default: the original's")
    redrive.add_argument("--dry-run", action="store_true", help="show, publish nothing")
    redrive.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    redrive.set_defaults(func=cmd_redrive)
