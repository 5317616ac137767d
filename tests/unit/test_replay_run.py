"""Replay runs: new requests keep their lineage, never touch live topics, and diff exactly."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from schemas import registry
from streams.config import parse_config
from streams.replay import rerun
from streams.replay.recording import Entry

T0 = 1_750_000_000_000
NOW = T0 + 86_400_000


def recorded(rid: str, at: int = T0, **extra: Any) -> Entry:
    request = {
        "request_id": rid,
        "tenant": "t1",
        "feature": "f",
        "priority": "high",
        "created_at": at,
        "model": "chat",
        "messages": [{"role": "user", "content": "hi"}],
        "metadata": {"trace": "abc"},
        **extra,
    }
    request = registry.decode(
        registry.CHAT_REQUEST, registry.encode(registry.CHAT_REQUEST, request)
    )
    return Entry(request, "sg.requests.high", 0, 0, at, 3)


def answer(
    status: str = "ok", content: str | None = "hello", cost: int = 10, saved: int = 0
) -> dict[str, Any]:
    return {
        "status": status,
        "content": content,
        "cost_micros": cost,
        "cost_saved_micros": saved,
        "total_ms": 50,
    }


def test_new_request_keeps_lineage_and_deadline_budget_and_drops_reply_to() -> None:
    entry = recorded("r1", deadline_ms=T0 + 5000, reply_to="sg.mine")
    new = rerun.new_request(entry.request, request_id="x1", run_id="run9", now_ms=NOW)
    assert new["request_id"] == "x1" and new["original_request_id"] == "r1"
    assert new["created_at"] == NOW and new["deadline_ms"] == NOW + 5000
    assert new["reply_to"] is None  # answers go to the namespace, never a live topic
    assert new["metadata"] == {"trace": "abc", rerun.REPLAY_OF: "r1", rerun.REPLAY_RUN: "run9"}
    assert entry.request["request_id"] == "r1"  # the recording is untouched


def test_lineage_root_is_kept_for_a_redriven_request() -> None:
    entry = recorded("r2", original_request_id="r0")
    new = rerun.new_request(entry.request, request_id="x2", run_id="run", now_ms=NOW)
    assert new["original_request_id"] == "r0" and new["metadata"][rerun.REPLAY_OF] == "r2"


def test_items_carry_recorded_offsets_for_pacing() -> None:
    ids = iter(["a", "b"])
    items = rerun.plan_items(
        [recorded("r1", T0), recorded("r2", T0 + 1500)],
        now_ms=NOW,
        run_id="z",
        new_id=lambda: next(ids),
    )
    assert [(i.request_id, i.offset_ms) for i in items] == [("a", 0), ("b", 1500)]
    assert registry.decode(registry.CHAT_REQUEST, items[1].value)["original_request_id"] == "r2"


def config(prefix: str, app_id: str = "sluicegate") -> Any:
    return parse_config(
        {
            "kafka": {"topic_prefix": prefix},
            "worker": {"app_id": app_id},
            "providers": {
                "p": {
                    "base_url": "https://api.example.invalid/v1",
                    "api_key_env": "P_KEY",
                    "models": {"m": {"input_usd_per_mtok": 1.5, "output_usd_per_mtok": 6}},
                }
            },
            "tenants": {"t1": {"features": {"f": {"daily_budget_usd": 2.5}}}},
        }
    )


@pytest.mark.parametrize(
    ("namespace", "app_id"), [("sg", "sluicegate-sg-replay"), ("sg-replay", "sluicegate")]
)
def test_a_namespace_sharing_live_topics_or_tables_is_refused(namespace: str, app_id: str) -> None:
    with pytest.raises(rerun.ReplayRunError):
        rerun.check_isolated(config("sg"), config(namespace, app_id))


def test_a_separate_namespace_is_accepted() -> None:
    rerun.check_isolated(config("sg"), config("sg-replay", "sluicegate-sg-replay"))


def test_worker_config_points_every_provider_at_the_simulator(tmp_path: Path) -> None:
    data = rerun.worker_config(
        config("sg"), provider_url="http://127.0.0.1:8900/", data_dir=tmp_path
    )
    text = rerun.to_toml(data)
    parsed = parse_config(tomllib.loads(text))  # valid TOML and a valid config
    provider = parsed.providers["p"]
    assert provider.base_url == "http://127.0.0.1:8900/v1" and provider.api_key_env is None
    assert parsed.worker.data_dir == str(tmp_path)
    assert parsed.tenants["t1"].features["f"].daily_budget_usd == 2.5
    kept = rerun.worker_config(config("sg"), provider_url=None, data_dir=tmp_path)
    assert kept["providers"]["p"]["base_url"] == "https://api.example.invalid/v1"


def test_identical_answers_make_no_difference() -> None:
    items = rerun.plan_items([recorded("r1")], now_ms=NOW, run_id="z", new_id=lambda: "x1")
    items[0].entry.response = answer()
    diff = rerun.diff(items, {"x1": answer()})
    assert diff.differences == 0 and diff.counts()["compared"] == 1


def test_cache_hit_against_a_fresh_call_compares_by_what_the_answer_cost() -> None:
    items = rerun.plan_items([recorded("r1")], now_ms=NOW, run_id="z", new_id=lambda: "x1")
    items[0].entry.response = answer("cached", cost=0, saved=10)
    diff = rerun.diff(items, {"x1": answer("ok", cost=10)})
    assert diff.differences == 0
    assert diff.cache_changes == {"cached -> ok": 1}


@pytest.mark.parametrize(
    ("replayed", "field"),
    [
        (answer(content="other"), "content"),
        (answer(cost=11), "cost"),
        (answer("rejected", content=None, cost=0), "outcome"),
    ],
)
def test_each_kind_of_difference_is_counted(replayed: dict[str, Any], field: str) -> None:
    items = rerun.plan_items([recorded("r1")], now_ms=NOW, run_id="z", new_id=lambda: "x1")
    items[0].entry.response = answer()
    counts = rerun.diff(items, {"x1": replayed}).counts()
    assert counts["differences"] == 1 and counts[field] == 1


def test_missing_replay_answer_is_a_difference_and_missing_record_is_not() -> None:
    ids = iter(["x1", "x2"])
    items = rerun.plan_items(
        [recorded("r1"), recorded("r2")], now_ms=NOW, run_id="z", new_id=lambda: next(ids)
    )
    items[0].entry.response = answer()  # r2 was never answered in the recording
    diff = rerun.diff(items, {"x2": answer()})
    assert diff.missing == ["x1"] and diff.not_recorded == 1 and diff.differences == 1


def test_paced_items_are_created_when_they_are_due() -> None:
    ids = iter(["a", "b"])
    items = rerun.plan_items(
        [recorded("r1", T0), recorded("r2", T0 + 3000)],
        now_ms=NOW,
        run_id="z",
        new_id=lambda: next(ids),
        speed=2.0,
    )
    assert [i.request["created_at"] for i in items] == [NOW, NOW + 1500]
