"""Cache policy: who may read and write, freshness, what is stored, what is evicted."""

from __future__ import annotations

from dataclasses import replace

import pytest

from streams.policies.cache_key import ring_head_key, ring_slot_key
from streams.policies.cache_policy import (
    Cacheable,
    CacheAction,
    CacheConfig,
    CacheControl,
    CacheEntry,
    CachePlan,
    Lookup,
    cache_action,
    effective_ttl_ms,
    eviction_victim,
    is_cacheable,
    lookup_decision,
    plan,
    plan_store,
    should_store,
)
from streams.policies.clock import ManualClock
from streams.policies.verdict import Status

C = CacheControl
DEFAULT = CacheConfig()
ZERO = {"temperature": 0}
WARM = {"temperature": 0.7}
ABSENT: dict[str, object] = {}


def entry(created_ms: int = 0, ttl_ms: int = 1_000, seq: int = 0) -> CacheEntry:
    return CacheEntry(
        content="Paris.",
        model="gpt-4o-mini",
        provider="openai",
        prompt_tokens=12,
        completion_tokens=2,
        cost_micros=30,
        created_ms=created_ms,
        ttl_ms=ttl_ms,
        seq=seq,
    )


@pytest.mark.parametrize(
    ("config", "params", "control", "expected"),
    [
        (DEFAULT, ZERO, C.DEFAULT, True),
        (DEFAULT, {"temperature": 0.0}, C.DEFAULT, True),
        (DEFAULT, WARM, C.DEFAULT, False),
        (DEFAULT, ABSENT, C.DEFAULT, False),  # absent = provider default 1.0
        (DEFAULT, {"temperature": None}, C.DEFAULT, False),
        (DEFAULT, ZERO, C.BYPASS, False),
        (DEFAULT, WARM, C.REFRESH, True),  # explicit opt-in
        (DEFAULT, WARM, C.ONLY_IF_CACHED, True),
        (CacheConfig(cacheable=Cacheable.ALWAYS), WARM, C.DEFAULT, True),
        (CacheConfig(cacheable=Cacheable.ALWAYS), WARM, C.BYPASS, False),
        (CacheConfig(cacheable=Cacheable.NEVER), ZERO, C.DEFAULT, False),
        (CacheConfig(cacheable=Cacheable.NEVER), ZERO, C.ONLY_IF_CACHED, False),
        (CacheConfig(enabled=False), ZERO, C.DEFAULT, False),
    ],
)
def test_only_deterministic_or_opted_in_requests_are_cacheable(
    config: CacheConfig, params: dict[str, object], control: CacheControl, expected: bool
) -> None:
    assert is_cacheable(config, params, control) is expected


@pytest.mark.parametrize(
    ("params", "control", "expected"),
    [
        (ZERO, C.DEFAULT, CachePlan(read=True, write=True, only_if_cached=False)),
        (ZERO, C.BYPASS, CachePlan(read=False, write=False, only_if_cached=False)),
        (ZERO, C.REFRESH, CachePlan(read=False, write=True, only_if_cached=False)),
        (ZERO, C.ONLY_IF_CACHED, CachePlan(read=True, write=False, only_if_cached=True)),
        (WARM, C.DEFAULT, CachePlan(read=False, write=False, only_if_cached=False)),
    ],
)
def test_cache_control_decides_reads_and_writes(
    params: dict[str, object], control: CacheControl, expected: CachePlan
) -> None:
    assert plan(DEFAULT, params, control) == expected


def test_only_if_cached_with_cache_disabled_never_reads_but_still_forbids_a_provider_call() -> None:
    p = plan(CacheConfig(enabled=False), ZERO, C.ONLY_IF_CACHED)
    assert (p.read, p.only_if_cached) == (False, True)
    assert cache_action(Lookup.MISS, C.ONLY_IF_CACHED) is CacheAction.REJECT


def test_entry_is_a_hit_until_its_ttl_then_stale_then_a_miss() -> None:
    clock = ManualClock(start_ms=10_000)
    stored = entry(created_ms=clock.now_ms(), ttl_ms=1_000)
    assert lookup_decision(stored, clock.now_ms(), C.DEFAULT, max_stale_ms=500) is Lookup.HIT
    clock.advance(999)
    assert lookup_decision(stored, clock.now_ms(), C.DEFAULT, max_stale_ms=500) is Lookup.HIT
    clock.advance(1)
    assert lookup_decision(stored, clock.now_ms(), C.DEFAULT, max_stale_ms=500) is Lookup.STALE
    clock.advance(499)
    assert lookup_decision(stored, clock.now_ms(), C.DEFAULT, max_stale_ms=500) is Lookup.STALE
    clock.advance(1)
    assert lookup_decision(stored, clock.now_ms(), C.DEFAULT, max_stale_ms=500) is Lookup.MISS


def test_without_a_stale_limit_an_expired_entry_stays_stale() -> None:
    assert lookup_decision(entry(ttl_ms=10), 10**12, C.DEFAULT) is Lookup.STALE


@pytest.mark.parametrize(
    ("control", "expected"),
    [
        (C.DEFAULT, Lookup.HIT),
        (C.ONLY_IF_CACHED, Lookup.HIT),
        (C.BYPASS, Lookup.MISS),
        (C.REFRESH, Lookup.MISS),
    ],
)
def test_bypass_and_refresh_never_read_a_fresh_entry(
    control: CacheControl, expected: Lookup
) -> None:
    assert lookup_decision(entry(), 0, control) is expected


def test_no_entry_is_a_miss() -> None:
    assert lookup_decision(None, 0, C.DEFAULT) is Lookup.MISS


@pytest.mark.parametrize(
    ("lookup", "control", "degrading", "expected"),
    [
        (Lookup.HIT, C.DEFAULT, False, CacheAction.SERVE),
        (Lookup.HIT, C.ONLY_IF_CACHED, False, CacheAction.SERVE),
        (Lookup.STALE, C.DEFAULT, False, CacheAction.CALL_PROVIDER),
        (Lookup.STALE, C.DEFAULT, True, CacheAction.SERVE_STALE),
        (Lookup.MISS, C.DEFAULT, True, CacheAction.CALL_PROVIDER),
        (Lookup.MISS, C.ONLY_IF_CACHED, False, CacheAction.REJECT),
        (Lookup.STALE, C.ONLY_IF_CACHED, False, CacheAction.REJECT),
        (Lookup.MISS, C.REFRESH, False, CacheAction.CALL_PROVIDER),
    ],
)
def test_stale_entries_serve_only_when_degrading_and_only_if_cached_never_calls_a_provider(
    lookup: Lookup, control: CacheControl, degrading: bool, expected: CacheAction
) -> None:
    assert cache_action(lookup, control, degrading) is expected


@pytest.mark.parametrize(
    ("status", "finish_reason", "control", "cacheable", "expected"),
    [
        (Status.OK, "stop", C.DEFAULT, True, True),
        (Status.OK, "end_turn", C.REFRESH, True, True),
        (Status.OK, "tool_calls", C.DEFAULT, True, True),
        (Status.OK, "length", C.DEFAULT, True, False),  # truncated
        (Status.OK, "content_filter", C.DEFAULT, True, False),
        (Status.OK, None, C.DEFAULT, True, False),
        (Status.OK, "stop", C.DEFAULT, False, False),
        (Status.OK, "stop", C.BYPASS, True, False),
        (Status.OK, "stop", C.ONLY_IF_CACHED, True, False),
        (Status.DEGRADED, "stop", C.DEFAULT, True, False),
        (Status.CACHED, "stop", C.DEFAULT, True, False),
        (Status.FAILED, None, C.DEFAULT, True, False),
        (Status.REJECTED, None, C.DEFAULT, True, False),
    ],
)
def test_only_complete_successful_provider_answers_are_stored(
    status: Status,
    finish_reason: str | None,
    control: CacheControl,
    cacheable: bool,
    expected: bool,
) -> None:
    assert should_store(status, finish_reason, control, cacheable) is expected


@pytest.mark.parametrize(
    ("requested", "expected"),
    [(None, 3_600_000), (60_000, 60_000), (0, 1), (10**15, 7 * 86_400_000)],
)
def test_request_ttl_overrides_the_default_within_bounds(
    requested: int | None, expected: int
) -> None:
    assert effective_ttl_ms(DEFAULT, requested) == expected


def test_entry_round_trips_through_a_dict() -> None:
    stored = replace(entry(created_ms=5, seq=42), finish_reason="end_turn")
    assert CacheEntry.from_dict(stored.to_dict()) == stored


def test_entry_from_an_older_dict_gets_defaults() -> None:
    data = entry().to_dict()
    del data["seq"], data["finish_reason"]
    assert CacheEntry.from_dict(data) == entry()


@pytest.mark.parametrize(("field", "value"), [("content", 3), ("ttl_ms", "10"), ("seq", True)])
def test_corrupt_entry_dict_is_rejected(field: str, value: object) -> None:
    data: dict[str, object] = {**entry().to_dict(), field: value}
    with pytest.raises(ValueError):
        CacheEntry.from_dict(data)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ttl_ms": 0},
        {"ttl_ms": 10, "max_ttl_ms": 5},
        {"max_entries_per_partition": 0},
        {"semantic_threshold": 0.0},
        {"semantic_threshold": 1.5},
        {"max_stale_ms": -1},
    ],
)
def test_bad_config_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        CacheConfig(**kwargs)  # type: ignore[arg-type]


class KeyValueCache:
    """The glue's use of the ring, over two dicts standing in for Faust tables."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.entries: dict[str, CacheEntry] = {}
        self.index: dict[str, object] = {}

    def store(self, key: str, value: CacheEntry, namespace: str = "acme") -> None:
        head = self.index.get(ring_head_key(namespace), 0)
        assert isinstance(head, int)
        store = plan_store(head, self.max_entries)
        slot_key = ring_slot_key(namespace, store.slot)
        occupant_key = self.index.get(slot_key)
        assert occupant_key is None or isinstance(occupant_key, str)
        occupant = self.entries.get(occupant_key) if occupant_key else None
        victim = eviction_victim(store, occupant_key, occupant, key)
        if victim is not None:
            del self.entries[victim]
        self.entries[key] = replace(value, seq=store.seq)
        self.index[slot_key] = key
        self.index[ring_head_key(namespace)] = store.new_head


def test_ring_evicts_the_oldest_insertion_first() -> None:
    cache = KeyValueCache(max_entries=3)
    for key in "abcd":
        cache.store(key, entry())
    assert sorted(cache.entries) == ["b", "c", "d"]
    cache.store("e", entry())
    assert sorted(cache.entries) == ["c", "d", "e"]


def test_ring_keeps_an_entry_that_was_stored_again_later() -> None:
    cache = KeyValueCache(max_entries=3)
    for key in "abcb":  # "b" re-stored: it now lives in the newest slot, evicting "a"
        cache.store(key, entry())
    assert sorted(cache.entries) == ["b", "c"]
    cache.store("d", entry())  # reuses b's old slot, but b was stored again since: kept
    assert sorted(cache.entries) == ["b", "c", "d"]
    cache.store("e", entry())  # c is now the oldest
    assert sorted(cache.entries) == ["b", "d", "e"]


def test_ring_does_not_evict_the_key_being_stored() -> None:
    cache = KeyValueCache(max_entries=1)
    cache.store("a", entry())
    cache.store("a", entry(created_ms=7))
    assert cache.entries["a"].created_ms == 7


def test_ring_bounds_each_namespace_separately() -> None:
    cache = KeyValueCache(max_entries=2)
    for key in ("a1", "a2", "a3"):
        cache.store(key, entry(), namespace="acme")
    cache.store("g1", entry(), namespace="globex")
    assert sorted(cache.entries) == ["a2", "a3", "g1"]


def test_store_plan_wraps_around_the_ring() -> None:
    first, wrapped = plan_store(1, 3), plan_store(4, 3)
    assert (first.slot, first.evict_seq, first.new_head) == (1, None, 2)
    assert (wrapped.slot, wrapped.evict_seq, wrapped.seq) == (1, 1, 4)
