"""Calendar windows (minute, hour, day, month) in a configured IANA time zone.

A window is the half-open interval ``[start_ms, end_ms)`` of epoch milliseconds that
contains ``now_ms``; ``end_ms`` is the moment the window resets. Days and months are
calendar days and months *in the zone*, so they follow daylight saving time: a day
is 23, 24 or 25 hours long, and it starts at local midnight (or, where midnight is
skipped by a DST jump, at the first instant of the new date). Minutes and hours are
floored in local time using the UTC offset in force at ``now_ms``: this is exact for
every zone whose offsets and DST shifts are whole quarter-hours on hour boundaries
(all current zones except Lord Howe Island's 30-minute shift). During a fall-back
hour the two local "01:00" hours are distinct windows: their ids carry the offset.

Window ids name the window in local time: ``minute/2026-11-27T13:05-05:00``,
``hour/2026-11-27T13:00+05:30``, ``day/2026-11-27``, ``month/2026-11``. State keys
are built from them with ``state_key``, e.g. ``budget/v1/tenant/acme/day/2026-11-27``.

Cost: O(1) per call; a few datetime conversions (``ZoneInfo`` caches zone data).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from enum import StrEnum
from urllib.parse import quote
from zoneinfo import ZoneInfo

UTC_ZONE = "UTC"
_MINUTE_MS = 60_000
_HOUR_MS = 3_600_000


class WindowKind(StrEnum):
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"


def zone(tz: str) -> ZoneInfo:
    """The zone named ``tz`` (IANA name, e.g. ``America/New_York``); raises if unknown."""
    return ZoneInfo(tz)  # ZoneInfo caches instances per key


def _local(now_ms: int, tz: str) -> datetime:
    return datetime.fromtimestamp(now_ms // 1000, zone(tz))


def _offset_ms(now_ms: int, tz: str) -> int:
    offset = _local(now_ms, tz).utcoffset()
    assert offset is not None  # a ZoneInfo datetime always has an offset
    return offset // timedelta(milliseconds=1)


def _midnight_ms(day: date, tz: str) -> int:
    # fold=0 picks the first occurrence of an ambiguous midnight and, for a skipped
    # midnight, the instant of the jump itself: in both cases the first instant of ``day``.
    local = datetime(day.year, day.month, day.day, tzinfo=zone(tz))
    return int(local.timestamp()) * 1000


def _next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def window_start_ms(kind: WindowKind, now_ms: int, tz: str = UTC_ZONE) -> int:
    """The first millisecond of the ``kind`` window containing ``now_ms`` in zone ``tz``."""
    if kind in (WindowKind.MINUTE, WindowKind.HOUR):
        size = _MINUTE_MS if kind is WindowKind.MINUTE else _HOUR_MS
        offset = _offset_ms(now_ms, tz)
        return (now_ms + offset) // size * size - offset
    today = _local(now_ms, tz).date()
    if kind is WindowKind.DAY:
        return _midnight_ms(today, tz)
    return _midnight_ms(today.replace(day=1), tz)


def window_end_ms(kind: WindowKind, now_ms: int, tz: str = UTC_ZONE) -> int:
    """The first millisecond after the window containing ``now_ms``: when it resets."""
    if kind in (WindowKind.MINUTE, WindowKind.HOUR):
        size = _MINUTE_MS if kind is WindowKind.MINUTE else _HOUR_MS
        return window_start_ms(kind, now_ms, tz) + size
    today = _local(now_ms, tz).date()
    if kind is WindowKind.DAY:
        return _midnight_ms(today + timedelta(days=1), tz)
    return _midnight_ms(_next_month(today), tz)


def window_id(kind: WindowKind, now_ms: int, tz: str = UTC_ZONE) -> str:
    """A readable, unique name of the window containing ``now_ms``, e.g. ``day/2026-11-27``."""
    if kind in (WindowKind.MINUTE, WindowKind.HOUR):
        start = _local(window_start_ms(kind, now_ms, tz), tz)
        return f"{kind}/{start.isoformat(timespec='minutes')}"
    today = _local(now_ms, tz).date()
    if kind is WindowKind.DAY:
        return f"day/{today.isoformat()}"
    return f"month/{today.year:04d}-{today.month:02d}"


def quote_part(part: str) -> str:
    """Escape one user-supplied key segment (a tenant, feature, provider) so ``/`` stays a
    separator: ``a/b`` becomes ``a%2Fb``."""
    return quote(part, safe="")


def state_key(namespace: str, version: int, *parts: str) -> str:
    """``namespace/v{version}/part/part/...``; callers quote user-supplied parts with
    ``quote_part`` and pass window ids as they are."""
    return "/".join((namespace, f"v{version}", *parts))
