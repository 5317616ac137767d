"""Deadlines: when a request stops being worth doing, and whether it still is.

A request's deadline is an absolute time in epoch milliseconds. The client may ask
for one; otherwise it is ``created_ms`` plus a default per priority (critical work
is urgent, low work can wait). A requested deadline is capped at ``max_ms`` after
creation so that no request can park in the gateway forever. A deadline already in
the past is kept as asked: the request is then shed, not silently extended.

``check`` answers "proceed, or shed with ``deadline_expired``". It can also take the
expected queue wait: work that cannot start before its deadline is shed now, at the
door, instead of later, after it has held a queue slot. A request whose remaining
time is exactly zero (or exactly its expected wait) is shed: it could only start at
the instant it stops being useful.

Cost: every function is O(1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from streams.policies.verdict import Reason

DEFAULT_DEADLINE_MS: Mapping[str, int] = {
    "critical": 30_000,
    "high": 60_000,
    "normal": 120_000,
    "low": 300_000,
}
DEFAULT_MAX_DEADLINE_MS = 3_600_000


def _default_deadlines() -> dict[str, int]:
    return dict(DEFAULT_DEADLINE_MS)


@dataclass(frozen=True)
class DeadlineConfig:
    """Default deadline per priority name (relative to creation), and the longest allowed."""

    default_ms_by_priority: Mapping[str, int] = field(default_factory=_default_deadlines)
    max_ms: int = DEFAULT_MAX_DEADLINE_MS

    def __post_init__(self) -> None:
        if self.max_ms <= 0:
            raise ValueError(f"max_ms must be positive, got {self.max_ms}")
        for name, ms in self.default_ms_by_priority.items():
            if name != name.lower():
                raise ValueError(f"priority names are lower case, got {name!r}")
            if not 0 < ms <= self.max_ms:
                raise ValueError(f"default deadline for {name!r} must be in (0, max_ms], got {ms}")

    def default_ms(self, priority: str | Enum) -> int:
        """The default deadline of ``priority`` (a name or a ``Priority``), relative to creation."""
        name = priority.name.lower() if isinstance(priority, Enum) else priority.strip().lower()
        try:
            return self.default_ms_by_priority[name]
        except KeyError:
            known = ", ".join(sorted(self.default_ms_by_priority))
            raise ValueError(
                f"no default deadline for priority {name!r} (known: {known})"
            ) from None


@dataclass(frozen=True, slots=True)
class DeadlineVerdict:
    """Proceed (``reason`` is ``NONE``) or shed with ``DEADLINE_EXPIRED``, with the figures."""

    proceed: bool
    reason: Reason
    remaining_ms: int
    expected_wait_ms: int = 0


def effective_deadline_ms(
    created_ms: int,
    requested_deadline_ms: int | None,
    priority: str | Enum,
    config: DeadlineConfig,
) -> int:
    """The absolute deadline to enforce: the requested one (capped), else the priority default.

    ``requested_deadline_ms`` is absolute epoch milliseconds; ``None`` or ``0`` mean "not given".
    """
    cap = created_ms + config.max_ms
    if requested_deadline_ms is None or requested_deadline_ms <= 0:
        return created_ms + config.default_ms(priority)
    return min(requested_deadline_ms, cap)


def remaining_ms(now_ms: int, deadline_ms: int) -> int:
    """Milliseconds left before the deadline; 0 once it has passed."""
    return max(0, deadline_ms - now_ms)


def check(now_ms: int, deadline_ms: int, expected_wait_ms: int = 0) -> DeadlineVerdict:
    """Proceed while the deadline lies beyond now plus the expected wait; otherwise shed."""
    left = deadline_ms - now_ms
    wait = max(0, expected_wait_ms)
    if left <= wait:
        return DeadlineVerdict(False, Reason.DEADLINE_EXPIRED, max(0, left), wait)
    return DeadlineVerdict(True, Reason.NONE, left, wait)
