"""The response cache's glue: RocksDB tables, single-flight, the semantic index, purges.

Decisions come from the pure policies (policies/cache_key.py: the key; policies/
cache_policy.py: what to read, store, serve, evict); this module applies them to two
Faust tables with the RocksDB store:

- ``cache`` — cache key -> CacheEntry. Keys carry the namespace (the tenant, unless a
  shared namespace is configured) so one tenant's answers are never served to another.
  Written while handling the tenant's own request, so entries live on the tenant's
  partition and survive restarts (RocksDB + changelog).
- ``cache-index`` — per namespace: the eviction ring (head counter and slot -> key, at
  most ``max_entries_per_partition`` entries) and the ``purged_before`` mark a purge sets
  (older entries then count as misses and are overwritten by the ring in time).

Single-flight: the first miss for a key becomes the leader; identical requests that
arrive while it is in flight wait for its answer (status cached, ``coalesced``), or take
their own turn if it fails. The semantic index (opt-in per route) lives in memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from streams.config import CacheSettings, SluicegateConfig
from streams.policies.cache_key import (
    cache_key,
    cache_namespace,
    normalised_prompt_text,
    ring_head_key,
    ring_slot_key,
    semantic_scope,
)
from streams.policies.cache_policy import (
    Cacheable,
    CacheConfig,
    CacheControl,
    CacheEntry,
    CachePlan,
    Lookup,
    effective_ttl_ms,
    eviction_victim,
    lookup_decision,
    plan,
    plan_store,
    should_store,
)
from streams.policies.degradation import RouteConfig
from streams.policies.verdict import Status
from streams.records import Outcome

log = logging.getLogger("sluicegate.cache")

# Request fields that are not part of the cache key's parameters (the key takes model and
# messages separately; the rest of IGNORED_PARAMS is filtered by cache_key itself).
_NOT_PARAMS = frozenset({"model", "messages"})


def purge_key(namespace: str) -> str:
    return f"cache/v1/{namespace}/purged_before"


@dataclass
class CacheLookup:
    """What the cache knows about one request."""

    plan: CachePlan
    control: CacheControl
    config: CacheConfig
    key: str | None = None
    namespace: str = ""
    result: Lookup = Lookup.MISS
    entry: CacheEntry | None = None
    scope: str | None = None  # semantic scope, when the route opts in


def cache_config(settings: CacheSettings) -> CacheConfig:
    return CacheConfig(
        enabled=settings.enabled,
        ttl_ms=int(settings.ttl_s * 1000),
        max_entries_per_partition=settings.max_entries_per_namespace,
        cacheable=Cacheable(settings.cacheable),
        shared_namespace=settings.shared_namespace,
        semantic=settings.semantic,
        semantic_threshold=settings.semantic_threshold,
        max_ttl_ms=max(int(settings.max_ttl_s * 1000), int(settings.ttl_s * 1000)),
    )


class ResponseCache:
    def __init__(self, config: SluicegateConfig) -> None:
        self.config = config
        self.default = cache_config(config.cache)
        self.by_route = {
            name: cache_config(r.cache) for name, r in config.routes.items() if r.cache is not None
        }
        self.entries: Any = {}  # Faust tables, attached by streams/app.py
        self.index: Any = {}
        self._leaders: dict[str, list[Callable[[Outcome | None], None]]] = {}
        self.stats: dict[str, Counter[str]] = defaultdict(Counter)
        self._semantic: Any = None  # SemanticIndex, created on first use
        self._embedder: Any = None
        self._embedder_failed = False
        # Embeddings run one at a time, off the event loop: at most one core for them.
        self._embed_thread = ThreadPoolExecutor(1, thread_name_prefix="sluicegate-embed")

    # -- lookup ----------------------------------------------------------------------

    def lookup(self, request: dict[str, Any], route: RouteConfig, now_ms: int) -> CacheLookup:
        config = self.by_route.get(route.name, self.default)
        control = CacheControl(request.get("cache_mode") or "default")
        cache_plan = plan(config, request, control)
        found = CacheLookup(cache_plan, control, config)
        if not (cache_plan.read or cache_plan.write):
            return found
        found.namespace = cache_namespace(request["tenant"], config.shared_namespace)
        params = {k: v for k, v in request.items() if k not in _NOT_PARAMS}
        found.key = cache_key(found.namespace, route.name, request["messages"], params)
        if config.semantic:
            found.scope = semantic_scope(found.namespace, route.name, request["messages"], params)
        entry = self._entry(found.key, found.namespace)
        found.entry = entry
        found.result = lookup_decision(entry, now_ms, control, config.max_stale_ms)
        tenant_stats = self.stats[request["tenant"]]
        if cache_plan.read:
            tenant_stats["hits" if found.result == Lookup.HIT else "misses"] += 1
        return found

    def _entry(self, key: str, namespace: str) -> CacheEntry | None:
        data = self.entries.get(key)
        if data is None:
            return None
        entry = CacheEntry.from_dict(data)
        purged_before = self.index.get(purge_key(namespace))
        if purged_before is not None and entry.created_ms <= int(purged_before):
            return None
        return entry

    def hit(
        self, entry: CacheEntry, tenant: str, kind: str, similarity: float | None = None
    ) -> Outcome:
        """A cached answer: costs nothing, saves what the original call cost."""
        self.stats[tenant]["saved_micros"] += entry.cost_micros
        self.stats[tenant][f"served.{kind}"] += 1
        return Outcome(
            Status.CACHED,
            content=entry.content,
            finish_reason=entry.finish_reason,
            model=entry.model,
            provider=entry.provider,
            prompt_tokens=entry.prompt_tokens,
            completion_tokens=entry.completion_tokens,
            cost_micros=0,
            cost_saved_micros=entry.cost_micros,
            cache_kind=kind,
            similarity=similarity,
        )

    # -- single-flight -----------------------------------------------------------------

    def join(self, key: str, on_done: Callable[[Outcome | None], None]) -> bool:
        """Wait behind an in-flight call for ``key``: True if there is one (the callback
        gets its outcome, or None if it failed), False if the caller must lead."""
        followers = self._leaders.get(key)
        if followers is None:
            self._leaders[key] = []
            return False
        followers.append(on_done)
        return True

    def release(self, key: str, outcome: Outcome | None) -> None:
        """The leader finished: hand its answer (or None) to everyone waiting behind it."""
        for on_done in self._leaders.pop(key, []):
            on_done(outcome)

    # -- store ---------------------------------------------------------------------------

    def store(
        self, found: CacheLookup, request: dict[str, Any], outcome: Outcome, now_ms: int
    ) -> bool:
        if found.key is None or not should_store(
            outcome.status, outcome.finish_reason, found.control, found.plan.write
        ):
            return False
        ns = found.namespace
        head = int(self.index.get(ring_head_key(ns)) or 0)
        slot_plan = plan_store(head, found.config.max_entries_per_partition)
        slot_key = ring_slot_key(ns, slot_plan.slot)
        occupant_key = self.index.get(slot_key)
        occupant = None
        if occupant_key is not None and occupant_key in self.entries:
            occupant = CacheEntry.from_dict(self.entries[occupant_key])
        victim = eviction_victim(slot_plan, occupant_key, occupant, found.key)
        if victim is not None:
            del self.entries[victim]
            if self._semantic is not None and found.scope:
                self._semantic.discard(found.scope, victim)
        entry = CacheEntry(
            content=outcome.content or "",
            model=outcome.model or "",
            provider=outcome.provider or "",
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            cost_micros=outcome.cost_micros,
            created_ms=now_ms,
            ttl_ms=effective_ttl_ms(found.config, request["cache_ttl_ms"]),
            finish_reason=outcome.finish_reason or "stop",
            seq=slot_plan.seq,
        )
        self.entries[found.key] = entry.to_dict()
        self.index[slot_key] = found.key
        self.index[ring_head_key(ns)] = slot_plan.new_head
        self.stats[request["tenant"]]["stored"] += 1
        self.stats[request["tenant"]]["stored_bytes"] += len(entry.content.encode())
        return True

    def purge(self, tenant: str, before_ms: int) -> None:
        """Entries of the tenant's namespace created at or before ``before_ms`` are gone.

        Runs inside the purge agent (RocksDB tables are written only from a stream)."""
        self.index[purge_key(cache_namespace(tenant, None))] = before_ms
        self.stats[tenant]["purges"] += 1

    # -- semantic ------------------------------------------------------------------------

    def may_match_semantically(self, found: CacheLookup | None) -> bool:
        """Worth an embedding: the route has the semantic cache on and the request's scope
        already holds entries to compare with (the first request of a scope needs none)."""
        return (
            found is not None
            and found.config.semantic
            and found.scope is not None
            and found.plan.read
            and self._semantic is not None
            and self._semantic.size(found.scope) > 0
        )

    async def semantic_lookup(
        self, found: CacheLookup, request: dict[str, Any], now_ms: int
    ) -> tuple[CacheEntry, float] | None:
        if not found.config.semantic or found.scope is None or not found.plan.read:
            return None
        vector = await self._embed(normalised_prompt_text(request["messages"]))
        if vector is None or self._semantic is None:
            return None
        match = self._semantic.nearest(found.scope, vector, found.config.semantic_threshold)
        if match is None:
            return None
        key, similarity = match
        entry = self._entry(key, found.namespace)
        if entry is None or lookup_decision(entry, now_ms, found.control) != Lookup.HIT:
            self._semantic.discard(found.scope, key)
            return None
        return entry, float(similarity)

    async def remember_semantic(self, found: CacheLookup, request: dict[str, Any]) -> None:
        if not found.config.semantic or found.scope is None or found.key is None:
            return
        vector = await self._embed(normalised_prompt_text(request["messages"]))
        if vector is not None and self._semantic is not None:
            self._semantic.add(found.scope, found.key, vector)
            self.stats[request["tenant"]]["semantic_indexed"] += 1

    async def _embed(self, text: str) -> Any:
        if self._embedder_failed:
            return None
        from streams import semantic

        if self._embedder is None:
            try:
                self._embedder = await asyncio.to_thread(semantic.load_embedder)
            except semantic.SemanticUnavailableError as exc:
                log.error("semantic cache disabled: %s", exc)
                self._embedder_failed = True
                return None
            self._semantic = semantic.SemanticIndex()
        return await semantic.embed_async(self._embedder, text, self._embed_thread)

    def status(self) -> dict[str, Any]:
        out = {}
        for tenant, counts in self.stats.items():
            reads = counts["hits"] + counts["misses"]
            out[tenant] = {**counts, "hit_rate": round(counts["hits"] / reads, 4) if reads else 0}
        return out
