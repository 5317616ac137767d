"""Cost aggregation: spend, requests and tokens per tenant and (tenant, feature).

An agent reads ``<prefix>.usage`` (keyed by tenant, co-partitioned with the requests)
and adds every UsageEvent to Faust windowed tables: tumbling minute, hour and day
windows, each with ``expires`` (without it windowed tables grow forever). Day windows are
calendar days in the budgets' time zone: timestamps are shifted by the zone's UTC offset
before windowing (``relative_to``, and ``.value()`` to read), so a "day" is local
midnight to midnight (on a DST change day the
window is off by the hour that changed). The month roll-up is the budget ledger's month
window (exact, per tenant). State lives in RocksDB and its changelog, so totals survive
restarts and rebalances.

Counted once: a request processed twice around a worker crash has two usage events with
one request id; a windowed ``usage-seen`` table (two hours of request ids) drops the
second. Reads (``view``) happen outside the stream, against the wall clock.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from streams.config import SluicegateConfig
from streams.event_context import current_event

# window kind -> (size in seconds, how long closed windows are kept)
WINDOWS: dict[str, tuple[int, timedelta]] = {
    "minute": (60, timedelta(hours=2)),
    "hour": (3600, timedelta(days=3)),
    "day": (86400, timedelta(days=40)),
}
FIELDS = (
    "cost_micros",
    "saved_micros",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cache_hits",
)
ALL_FEATURES = "*"


def add_usage(total: dict[str, int] | None, usage: dict[str, Any]) -> dict[str, int]:
    """One usage event added to a window's totals (plain data, pure)."""
    out = dict.fromkeys(FIELDS, 0) | dict(total or {})
    out["cost_micros"] += int(usage["cost_micros"])
    out["saved_micros"] += int(usage["cost_saved_micros"])
    out["requests"] += 1
    out["prompt_tokens"] += int(usage["prompt_tokens"])
    out["completion_tokens"] += int(usage["completion_tokens"])
    out["cache_hits"] += 1 if usage["cache_hit"] else 0
    return out


def _read(get: Any) -> Any:
    """A windowed table read; None for a window never written (the store raises KeyError)."""
    try:
        return get()
    except KeyError:
        return None


def scope_keys(tenant: str, feature: str) -> tuple[str, str]:
    return f"{tenant}|{ALL_FEATURES}", f"{tenant}|{feature}"


class UsageTotals:
    def __init__(self, app: Any, config: SluicegateConfig, options: dict[str, Any]) -> None:
        zone = ZoneInfo(config.budgets.timezone)
        partitions = config.kafka.partitions

        def local_seconds(event: Any) -> float:
            """Window time: the usage record's timestamp, shifted into the local zone."""
            seconds = event.message.timestamp if event is not None else time.time()
            offset = datetime.fromtimestamp(seconds, UTC).astimezone(zone).utcoffset()
            return seconds + (offset.total_seconds() if offset else 0.0)

        self._local_seconds = local_seconds

        self.seen = app.Table(
            "usage-seen", default=None, partitions=partitions, options=options
        ).tumbling(3600, expires=timedelta(hours=3))
        self.windows = {
            kind: app.Table(f"usage-{kind}", default=None, partitions=partitions, options=options)
            .tumbling(size, expires=expires, key_index=True)
            .relative_to(local_seconds)
            for kind, (size, expires) in WINDOWS.items()
        }
        self.duplicates = 0

    def add_batch(self, events: list[tuple[Any, dict[str, Any]]]) -> int:
        """Inside the usage agent: count a batch of (event, decoded usage), each request
        once; returns how many were counted. Events of one partition and one local minute
        share every window (a minute never straddles an hour or a day: zone offsets are
        whole minutes), so each such group reads and writes each scope's window once
        instead of once per event: the write volume no longer grows with the traffic."""
        groups: dict[tuple[int, int], list[tuple[Any, dict[str, Any]]]] = defaultdict(list)
        for event, usage in events:
            minute = int(self._local_seconds(event) // 60)
            groups[(event.message.partition, minute)].append((event, usage))
        counted = 0
        for members in groups.values():
            with current_event(members[0][0]):
                fresh = [usage for _, usage in members if self._first_time(usage)]
                by_scope: dict[str, list[dict[str, Any]]] = defaultdict(list)
                for usage in fresh:
                    for key in scope_keys(usage["tenant"], usage["feature"]):
                        by_scope[key].append(usage)
                for table in self.windows.values():
                    for key, usages in by_scope.items():
                        total = _read(table[key].value)
                        for usage in usages:
                            total = add_usage(total, usage)
                        table[key] = total
            counted += len(fresh)
        return counted

    def _first_time(self, usage: dict[str, Any]) -> bool:
        """Not counted before (a request answered twice around a crash has two events)."""
        request_id = usage["request_id"]
        seen = self.seen[request_id]
        if _read(seen.current) or _read(lambda: seen.delta(3600)):
            self.duplicates += 1
            return False
        self.seen[request_id] = 1
        return True

    def view(self, kind: str) -> list[dict[str, Any]]:
        """The current window's totals of every scope this worker holds."""
        table = self.windows[kind]
        rows = []
        for key in list(table.keys()):
            totals = _read(table[key].value)
            if not totals:
                continue
            tenant, _, feature = key.partition("|")
            rows.append({"tenant": tenant, "feature": feature, "window": kind, **totals})
        return rows
