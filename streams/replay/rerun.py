"""The pure half of ``replay run``: the new requests, isolation, the worker's config, the diff.

New requests: each recorded request is copied with a new id, ``original_request_id`` = the
first id of its lineage, ``metadata["sg-replay-of"]`` = the recorded id and
``metadata["sg-replay-run"]`` = the run, created now (or, when paced, when it is due), its
recorded deadline kept relative to its creation, and ``reply_to`` cleared so that answers go
to the namespace's responses topic, never a live one.

Isolation: a namespace whose topics or worker app id overlap the live ones is refused.

Diff, per request: same outcome class (answered / rejected / shed / failed), same content,
same cost, and the latency change. Cost is compared as ``cost + cost_saved``, what the answer
cost to produce, so that a recorded cache hit and its replayed provider call (the replay
namespace starts with an empty cache) compare equal; cache-state changes are counted apart.
A replayed request with no answer is a difference; a recorded one with none is not (there is
nothing to compare with). Cost: O(requests).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas import registry
from schemas.errors import SluicegateError
from streams.config import SluicegateConfig
from streams.replay.recording import Entry
from streams.replay.report import latency

REPLAY_OF = "sg-replay-of"
REPLAY_RUN = "sg-replay-run"
SUCCESS = frozenset({"ok", "cached", "degraded"})


class ReplayRunError(SluicegateError):
    """A replay run cannot start (unsafe namespace, no worker) or did not finish."""


# -- pure: the new requests -----------------------------------------------------------------


@dataclass(frozen=True)
class ReplayItem:
    entry: Entry
    request: dict[str, Any]
    value: bytes  # the framed ChatRequest
    offset_ms: int  # recorded time since the first selected request

    @property
    def request_id(self) -> str:
        return str(self.request["request_id"])


def new_request(
    recorded: Mapping[str, Any], *, request_id: str, run_id: str, now_ms: int
) -> dict[str, Any]:
    """A copy of a recorded request to re-publish: new id, same lineage, created now."""
    request = dict(recorded)
    request.pop("schema_version", None)  # written with the newest schema
    deadline = request.get("deadline_ms")
    if deadline is not None:
        deadline = now_ms + (int(deadline) - int(request["created_at"]))
    request.update(
        request_id=request_id,
        original_request_id=recorded.get("original_request_id") or recorded["request_id"],
        created_at=now_ms,
        deadline_ms=deadline,
        reply_to=None,  # answers go to the namespace's responses topic, never a live one
        metadata={
            **(recorded.get("metadata") or {}),
            REPLAY_OF: str(recorded["request_id"]),
            REPLAY_RUN: run_id,
        },
    )
    return request


def plan_items(
    entries: Iterable[Entry],
    *,
    now_ms: int,
    run_id: str,
    new_id: Callable[[], str],
    speed: float | None = None,
) -> list[ReplayItem]:
    """The requests to publish. With ``speed`` (pacing), each is created when it is due:
    ``now_ms`` plus its recorded offset from the first request divided by ``speed``."""
    items: list[ReplayItem] = []
    first: int | None = None
    for entry in entries:
        first = entry.at_ms if first is None else first
        offset = entry.at_ms - first
        created = now_ms + (round(offset / speed) if speed else 0)
        request = new_request(entry.request, request_id=new_id(), run_id=run_id, now_ms=created)
        value = registry.encode(registry.CHAT_REQUEST, request)
        items.append(ReplayItem(entry, request, value, offset))
    return items


def check_isolated(live: SluicegateConfig, replay: SluicegateConfig) -> None:
    """Refuse a namespace whose topics or worker identity overlap the live ones."""
    from streams.topics import topic_specs

    shared = {s.name for s in topic_specs(live)} & {s.name for s in topic_specs(replay)}
    if live.kafka.topic_prefix == replay.kafka.topic_prefix or shared:
        raise ReplayRunError(
            f"namespace {replay.kafka.topic_prefix!r} would write to live topics "
            f"({', '.join(sorted(shared)) or live.kafka.topic_prefix + '.*'}): choose another"
        )
    if live.worker.app_id == replay.worker.app_id:
        raise ReplayRunError("the replay worker would share the live worker's app id and tables")


# -- pure: the diff --------------------------------------------------------------------------


def outcome_class(status: str | None) -> str:
    if status is None:
        return "no response"
    return "answered" if status in SUCCESS else status


def full_cost(response: Mapping[str, Any]) -> int:
    """What the answer cost to produce: paid now, or paid earlier and served from cache."""
    return int(response.get("cost_micros") or 0) + int(response.get("cost_saved_micros") or 0)


@dataclass(frozen=True)
class DiffRow:
    recorded_id: str
    replay_id: str
    tenant: str
    feature: str
    recorded_status: str
    replay_status: str
    same_outcome: bool
    same_content: bool
    same_cost: bool
    recorded_cost_micros: int
    replay_cost_micros: int
    recorded_ms: int | None
    replay_ms: int | None

    @property
    def differs(self) -> bool:
        return not (self.same_outcome and self.same_content and self.same_cost)


@dataclass
class ReplayDiff:
    rows: list[DiffRow] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # replay ids with no response in time
    not_recorded: int = 0  # recorded requests that had no response to compare with
    cache_changes: Counter[str] = field(default_factory=Counter)

    @property
    def differences(self) -> int:
        return sum(1 for r in self.rows if r.differs) + len(self.missing)

    def counts(self) -> dict[str, int]:
        return {
            "compared": len(self.rows),
            "differences": self.differences,
            "outcome": sum(1 for r in self.rows if not r.same_outcome),
            "content": sum(1 for r in self.rows if not r.same_content),
            "cost": sum(1 for r in self.rows if not r.same_cost),
            "no replay response": len(self.missing),
            "no recorded response": self.not_recorded,
        }

    def latency(self) -> dict[str, Any]:
        recorded = [r.recorded_ms for r in self.rows if r.recorded_ms is not None]
        replay = [r.replay_ms for r in self.rows if r.replay_ms is not None]
        return {"recorded": vars(latency(recorded)), "replay": vars(latency(replay))}

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": self.counts(),
            "latency_ms": self.latency(),
            "cache_changes": dict(self.cache_changes),
            "missing": self.missing,
            "rows": [vars(r) for r in self.rows],
        }


def diff(items: Iterable[ReplayItem], answers: Mapping[str, Mapping[str, Any]]) -> ReplayDiff:
    """Each replayed answer against the recorded one (by replay id -> recorded entry)."""
    out = ReplayDiff()
    for item in items:
        recorded = item.entry.response
        replayed = answers.get(item.request_id)
        if replayed is None:
            out.missing.append(item.request_id)
            continue
        if recorded is None:
            out.not_recorded += 1
            continue
        rec_status, new_status = str(recorded["status"]), str(replayed["status"])
        same_outcome = outcome_class(rec_status) == outcome_class(new_status)
        if (rec_status == "cached") != (new_status == "cached"):
            out.cache_changes[f"{rec_status} -> {new_status}"] += 1
        out.rows.append(
            DiffRow(
                item.entry.request_id,
                item.request_id,
                item.entry.tenant,
                item.entry.feature,
                rec_status,
                new_status,
                same_outcome,
                (recorded.get("content") or None) == (replayed.get("content") or None),
                full_cost(recorded) == full_cost(replayed),
                full_cost(recorded),
                full_cost(replayed),
                int(recorded.get("total_ms") or 0),
                int(replayed.get("total_ms") or 0),
            )
        )
    return out


# -- pure: the replay worker's config file ---------------------------------------------------


def worker_config(
    config: SluicegateConfig, *, provider_url: str | None, data_dir: Path
) -> dict[str, Any]:
    """The configuration for the replay worker: providers pointed at ``provider_url`` (the
    simulator; None keeps the configured providers) and a data directory of its own."""
    data = config.model_dump(mode="json", exclude_none=True)
    data["worker"]["data_dir"] = str(data_dir)
    if provider_url is not None:
        for provider in data["providers"].values():
            provider["base_url"] = provider_url.rstrip("/") + "/v1"
            provider.pop("api_key_env", None)
    return data


def to_toml(data: Mapping[str, Any], table: str = "") -> str:
    """TOML for a config dict: scalars, lists of scalars and nested tables (no nulls)."""
    lines = [f"[{table}]"] if table else []
    lines += [f"{_key(k)} = {_value(v)}" for k, v in data.items() if not isinstance(v, Mapping)]
    for k, v in data.items():
        if isinstance(v, Mapping):
            lines += ["", to_toml(v, f"{table}.{_key(k)}" if table else _key(k))]
    return "\n".join(lines)


def _key(key: str) -> str:
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _key(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")
