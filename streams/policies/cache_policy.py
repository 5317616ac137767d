"""Cache policy: what may be cached, whether a stored answer is fresh, and what to evict.

Decisions, each O(1):

* ``plan(config, params, control)`` -- may this request read and/or write the cache? By
  default only deterministic requests (``temperature`` explicitly 0; an absent temperature is
  the provider's default, 1.0) are cached. ``cacheable="always"`` caches everything,
  ``"never"`` nothing. A request's ``CacheControl`` narrows this: ``bypass`` neither reads nor
  writes, ``refresh`` writes without reading, ``only_if_cached`` reads and never calls a
  provider (a miss is answered ``rejected/cache_miss``). ``refresh`` and ``only_if_cached`` also
  opt a non-deterministic request in, so a client can populate and read its own entries.
* ``lookup_decision(entry, now_ms, control)`` -- HIT while younger than its TTL; STALE after
  (for ``max_stale_ms`` more, if given), usable only as a degraded answer when every provider
  failed; MISS otherwise. ``cache_action`` turns that into what the worker does next.
* ``should_store(...)`` -- only complete, successful provider answers are stored: status ``ok``
  and a finish reason in ``COMPLETE_FINISH_REASONS``. Errors, degraded and cached answers are
  not; neither are truncated ones (``length``): a provider under pressure may cut answers
  short, and pinning a cut answer for a whole TTL costs more than one more call.
* Eviction -- each namespace has a ring of ``max_entries_per_partition`` slots in the key-value
  table (``cache_key.ring_slot_key``) and an insertion counter (``cache_key.ring_head_key``).
  Storing entry number ``seq`` writes slot ``seq % max``; the slot's previous occupant, the
  oldest insertion, is deleted if it still is the entry that was put there (its ``seq``
  matches): an entry re-stored later lives in a newer slot and is kept. Three table writes
  and one read per store; no scan, ever.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from streams.policies.verdict import Status

DEFAULT_TTL_MS = 3_600_000  # 1 hour
DEFAULT_MAX_TTL_MS = 7 * 86_400_000  # a request may ask for up to a week
DEFAULT_MAX_STALE_MS = 86_400_000  # a day past its TTL an entry still serves degraded answers
DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_SEMANTIC_THRESHOLD = 0.95  # all-MiniLM-L6-v2 cosine; paraphrases score ~0.90-0.99

# Finish reasons of a complete answer (OpenAI and Anthropic spellings).
COMPLETE_FINISH_REASONS = frozenset(
    {"stop", "end_turn", "stop_sequence", "tool_calls", "tool_use", "function_call"}
)


class Cacheable(StrEnum):
    DETERMINISTIC = "deterministic"
    ALWAYS = "always"
    NEVER = "never"


class CacheControl(StrEnum):
    """The request's ``cache_mode``."""

    DEFAULT = "default"
    BYPASS = "bypass"  # neither read nor write
    REFRESH = "refresh"  # do not read; write the fresh answer
    ONLY_IF_CACHED = "only_if_cached"  # read; on a miss answer rejected/cache_miss


class Lookup(StrEnum):
    HIT = "hit"
    STALE = "stale"  # past its TTL: only for a degraded answer
    MISS = "miss"


class CacheAction(StrEnum):
    SERVE = "serve"  # answer from the entry, status cached
    SERVE_STALE = "serve_stale"  # answer from the stale entry, status degraded
    REJECT = "reject"  # rejected/cache_miss: only-if-cached and nothing usable
    CALL_PROVIDER = "call_provider"


@dataclass(frozen=True)
class CacheConfig:
    enabled: bool = True
    ttl_ms: int = DEFAULT_TTL_MS
    max_entries_per_partition: int = DEFAULT_MAX_ENTRIES  # per namespace
    cacheable: Cacheable = Cacheable.DETERMINISTIC
    shared_namespace: str | None = None  # None: each tenant is its own namespace
    semantic: bool = False
    semantic_threshold: float = DEFAULT_SEMANTIC_THRESHOLD
    max_ttl_ms: int = DEFAULT_MAX_TTL_MS
    max_stale_ms: int | None = DEFAULT_MAX_STALE_MS  # None: stale entries serve until evicted

    def __post_init__(self) -> None:
        if self.ttl_ms <= 0 or self.max_ttl_ms < self.ttl_ms:
            raise ValueError("cache ttl_ms must be positive and at most max_ttl_ms")
        if self.max_entries_per_partition < 1:
            raise ValueError("cache max_entries_per_partition must be at least 1")
        if not 0.0 < self.semantic_threshold <= 1.0:
            raise ValueError("cache semantic_threshold must be in (0, 1]")
        if self.max_stale_ms is not None and self.max_stale_ms < 0:
            raise ValueError("cache max_stale_ms must not be negative")


@dataclass(frozen=True)
class CachePlan:
    read: bool
    write: bool
    only_if_cached: bool  # never call a provider; a miss is rejected/cache_miss


@dataclass(frozen=True)
class CacheEntry:
    """A stored answer, as plain data for a key-value table."""

    content: str
    model: str
    provider: str
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    created_ms: int
    ttl_ms: int
    finish_reason: str = "stop"
    seq: int = 0  # insertion number in its namespace's ring (StorePlan.seq)

    @property
    def expires_ms(self) -> int:
        return self.created_ms + self.ttl_ms

    def to_dict(self) -> dict[str, str | int]:
        return {
            "content": self.content,
            "model": self.model,
            "provider": self.provider,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_micros": self.cost_micros,
            "created_ms": self.created_ms,
            "ttl_ms": self.ttl_ms,
            "finish_reason": self.finish_reason,
            "seq": self.seq,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> CacheEntry:
        def text(name: str, default: str | None = None) -> str:
            value = data.get(name, default)
            if not isinstance(value, str):
                raise ValueError(f"cache entry field {name!r} must be a string")
            return value

        def number(name: str, default: int | None = None) -> int:
            value = data.get(name, default)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"cache entry field {name!r} must be an integer")
            return value

        return cls(
            content=text("content"),
            model=text("model"),
            provider=text("provider"),
            prompt_tokens=number("prompt_tokens"),
            completion_tokens=number("completion_tokens"),
            cost_micros=number("cost_micros"),
            created_ms=number("created_ms"),
            ttl_ms=number("ttl_ms"),
            finish_reason=text("finish_reason", "stop"),
            seq=number("seq", 0),
        )


def is_deterministic(params: Mapping[str, object]) -> bool:
    """Temperature explicitly 0. Absent means the provider default (1.0): not deterministic."""
    temperature = params.get("temperature")
    return isinstance(temperature, int | float) and temperature == 0


def is_cacheable(config: CacheConfig, params: Mapping[str, object], control: CacheControl) -> bool:
    """May this request use the cache at all (read or write)?"""
    if not config.enabled or config.cacheable is Cacheable.NEVER or control is CacheControl.BYPASS:
        return False
    if config.cacheable is Cacheable.ALWAYS:
        return True
    opted_in = control in (CacheControl.REFRESH, CacheControl.ONLY_IF_CACHED)
    return opted_in or is_deterministic(params)


def plan(config: CacheConfig, params: Mapping[str, object], control: CacheControl) -> CachePlan:
    """Whether to look the request up and whether to store its answer."""
    cacheable = is_cacheable(config, params, control)
    return CachePlan(
        read=cacheable and control in (CacheControl.DEFAULT, CacheControl.ONLY_IF_CACHED),
        write=cacheable and control in (CacheControl.DEFAULT, CacheControl.REFRESH),
        only_if_cached=control is CacheControl.ONLY_IF_CACHED,
    )


def effective_ttl_ms(config: CacheConfig, requested_ttl_ms: int | None) -> int:
    """The TTL to store with: the request's ``cache_ttl_ms`` within [1, max_ttl_ms], else the
    configured default. It applies to the stored entry, not to what a lookup accepts."""
    if requested_ttl_ms is None:
        return config.ttl_ms
    return min(max(requested_ttl_ms, 1), config.max_ttl_ms)


def lookup_decision(
    entry: CacheEntry | None,
    now_ms: int,
    control: CacheControl,
    max_stale_ms: int | None = None,
) -> Lookup:
    """HIT before ``expires_ms``; STALE from then on (for ``max_stale_ms``, if given); MISS when
    there is no entry, it is too stale, or the request does not read the cache."""
    if entry is None or control in (CacheControl.BYPASS, CacheControl.REFRESH):
        return Lookup.MISS
    if now_ms < entry.expires_ms:
        return Lookup.HIT
    if max_stale_ms is None or now_ms < entry.expires_ms + max_stale_ms:
        return Lookup.STALE
    return Lookup.MISS


def cache_action(lookup: Lookup, control: CacheControl, degrading: bool = False) -> CacheAction:
    """What to do with a lookup: serve it, serve it stale (only when ``degrading``: every
    provider already failed), reject an only-if-cached request, or call a provider."""
    if lookup is Lookup.HIT:
        return CacheAction.SERVE
    if lookup is Lookup.STALE and degrading:
        return CacheAction.SERVE_STALE
    if control is CacheControl.ONLY_IF_CACHED:
        return CacheAction.REJECT
    return CacheAction.CALL_PROVIDER


def should_store(
    status: Status, finish_reason: str | None, control: CacheControl, cacheable: bool
) -> bool:
    """Store only a complete provider answer (status ok, complete finish reason) of a request
    that may write the cache (``cacheable``: pass ``plan(...).write``)."""
    if not cacheable or control in (CacheControl.BYPASS, CacheControl.ONLY_IF_CACHED):
        return False
    return status is Status.OK and finish_reason in COMPLETE_FINISH_REASONS


@dataclass(frozen=True)
class StorePlan:
    seq: int  # the new entry's insertion number: store it as CacheEntry.seq
    slot: int  # ring slot that receives the new key
    new_head: int  # the namespace's insertion counter afterwards
    evict_seq: int | None  # insertion number of the slot's previous occupant, if any


def plan_store(head: int, max_entries: int) -> StorePlan:
    """Where entry number ``head`` (the namespace's counter, 0 when unset) goes in the ring."""
    if max_entries < 1 or head < 0:
        raise ValueError("plan_store needs max_entries >= 1 and head >= 0")
    evict_seq = head - max_entries if head >= max_entries else None
    return StorePlan(seq=head, slot=head % max_entries, new_head=head + 1, evict_seq=evict_seq)


def eviction_victim(
    store: StorePlan, occupant_key: str | None, occupant: CacheEntry | None, new_key: str
) -> str | None:
    """The cache key to delete before storing ``new_key``, or None.

    ``occupant_key`` is the slot's current value (``ring_slot_key``) and ``occupant`` its
    entry, if still stored. It is deleted only if it is still the insertion that took this
    slot: re-stored entries (newer ``seq``) and the key being stored are kept.
    """
    if occupant_key is None or occupant is None or occupant_key == new_key:
        return None
    if store.evict_seq is None or occupant.seq != store.evict_seq:
        return None
    return occupant_key
