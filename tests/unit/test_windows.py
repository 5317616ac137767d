"""Calendar windows in a time zone: boundaries, DST days, month roll-up, ids and keys."""

from __future__ import annotations

import random
from datetime import datetime
from zoneinfo import ZoneInfoNotFoundError

import pytest

from streams.policies.windows import (
    WindowKind,
    quote_part,
    state_key,
    window_end_ms,
    window_id,
    window_start_ms,
)

HOUR = 3_600_000
DAY, MONTH, MINUTE = WindowKind.DAY, WindowKind.MONTH, WindowKind.MINUTE


def ms(iso: str) -> int:
    """Epoch ms of an ISO time written with its offset (``Z`` for UTC)."""
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


@pytest.mark.parametrize(
    ("tz", "now", "kind", "wid", "start", "end"),
    [
        ("UTC", "2026-11-27T13:05:42Z", DAY, "day/2026-11-27",
         "2026-11-27T00:00Z", "2026-11-28T00:00Z"),
        ("UTC", "2026-11-27T13:05:42Z", MINUTE, "minute/2026-11-27T13:05+00:00",
         "2026-11-27T13:05Z", "2026-11-27T13:06Z"),
        # New York: 23:59:59 local is still the 26th; midnight local is 05:00 UTC
        ("America/New_York", "2026-11-27T04:59:59.999Z", DAY, "day/2026-11-26",
         "2026-11-26T05:00Z", "2026-11-27T05:00Z"),
        ("America/New_York", "2026-11-27T05:00:00Z", DAY, "day/2026-11-27",
         "2026-11-27T05:00Z", "2026-11-28T05:00Z"),
        # Kolkata is UTC+05:30: the day turns at 18:30 UTC, hours turn at half past
        ("Asia/Kolkata", "2026-11-27T18:29:59.999Z", DAY, "day/2026-11-27",
         "2026-11-26T18:30Z", "2026-11-27T18:30Z"),
        ("Asia/Kolkata", "2026-11-27T18:30:00Z", DAY, "day/2026-11-28",
         "2026-11-27T18:30Z", "2026-11-28T18:30Z"),
        ("Asia/Kolkata", "2026-11-27T20:10:00Z", WindowKind.HOUR, "hour/2026-11-28T01:00+05:30",
         "2026-11-27T19:30Z", "2026-11-27T20:30Z"),
        # months roll up into the next year, in local time
        ("America/New_York", "2027-01-01T04:59:59.999Z", MONTH, "month/2026-12",
         "2026-12-01T05:00Z", "2027-01-01T05:00Z"),
        ("America/New_York", "2027-01-01T05:00:00Z", MONTH, "month/2027-01",
         "2027-01-01T05:00Z", "2027-02-01T05:00Z"),
        ("UTC", "2028-02-15T00:00:00Z", MONTH, "month/2028-02",  # a leap February
         "2028-02-01T00:00Z", "2028-03-01T00:00Z"),
        # a month that contains a DST change starts and ends at different UTC offsets
        ("America/New_York", "2026-03-20T12:00:00Z", MONTH, "month/2026-03",
         "2026-03-01T05:00Z", "2026-04-01T04:00Z"),
    ],
)  # fmt: skip
def test_window_boundaries_in_zone(
    tz: str, now: str, kind: WindowKind, wid: str, start: str, end: str
) -> None:
    assert window_id(kind, ms(now), tz) == wid
    assert window_start_ms(kind, ms(now), tz) == ms(start)
    assert window_end_ms(kind, ms(now), tz) == ms(end)


@pytest.mark.parametrize(
    ("tz", "now", "hours"),
    [
        ("America/New_York", "2026-03-08T12:00:00Z", 23),  # spring forward
        ("America/New_York", "2026-11-01T12:00:00Z", 25),  # fall back
        ("America/New_York", "2026-11-02T12:00:00Z", 24),
        ("Europe/London", "2026-03-29T12:00:00Z", 23),
        ("Asia/Kolkata", "2026-03-08T12:00:00Z", 24),  # no DST
        ("America/Santiago", "2024-09-08T12:00:00Z", 23),  # local midnight itself is skipped
    ],
)
def test_day_length_follows_dst(tz: str, now: str, hours: int) -> None:
    start, end = window_start_ms(DAY, ms(now), tz), window_end_ms(DAY, ms(now), tz)
    assert end - start == hours * HOUR


def test_skipped_midnight_day_starts_at_the_jump() -> None:
    # Santiago jumps from 00:00 (-04) to 01:00 (-03) on 2024-09-08: the day starts at 04:00 UTC
    assert window_start_ms(DAY, ms("2024-09-08T12:00:00Z"), "America/Santiago") == ms(
        "2024-09-08T04:00Z"
    )


def test_repeated_fall_back_hour_gets_two_windows() -> None:
    tz = "America/New_York"  # 01:00-02:00 local happens twice on 2026-11-01
    first, second = ms("2026-11-01T05:30:00Z"), ms("2026-11-01T06:30:00Z")
    assert window_id(WindowKind.HOUR, first, tz) == "hour/2026-11-01T01:00-04:00"
    assert window_id(WindowKind.HOUR, second, tz) == "hour/2026-11-01T01:00-05:00"
    assert window_end_ms(WindowKind.HOUR, first, tz) == window_start_ms(WindowKind.HOUR, second, tz)


@pytest.mark.parametrize(
    "tz", ["UTC", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Sydney"]
)
@pytest.mark.parametrize("kind", list(WindowKind))
def test_windows_tile_time_without_gaps(tz: str, kind: WindowKind) -> None:
    rng = random.Random(7)
    for _ in range(500):
        now = rng.randrange(ms("2020-01-01T00:00Z"), ms("2035-01-01T00:00Z"))
        start, end = window_start_ms(kind, now, tz), window_end_ms(kind, now, tz)
        assert start <= now < end
        assert window_start_ms(kind, end, tz) == end  # the next window starts where this ends
        wid = window_id(kind, now, tz)
        assert window_id(kind, start, tz) == window_id(kind, end - 1, tz) == wid
        assert window_id(kind, end, tz) != window_id(kind, now, tz)


def test_unknown_zone_is_an_error() -> None:
    with pytest.raises(ZoneInfoNotFoundError):
        window_id(DAY, 0, "Mars/Nowhere")


def test_state_key_carries_version_and_quotes_user_parts() -> None:
    key = state_key("budget", 1, quote_part("acme/eu"), "day/2026-11-27")
    assert key == "budget/v1/acme%2Feu/day/2026-11-27"
