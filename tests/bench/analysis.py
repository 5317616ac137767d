"""Pure arithmetic behind the benchmark's figures (no I/O, unit-tested).

- ``steady_rate``: throughput of a drained backlog, over the middle 80% of its answers, so
  the ramp-up and the last stragglers do not count.
- ``recovery_time``: how long after an event (a kill, the end of a burst) a sampled series
  first stays on the good side of a threshold for ``hold`` consecutive samples.
- ``backlog_size``: requests for a drain of about ``seconds`` at an estimated rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence


def steady_rate(answer_times_s: Sequence[float], trim: float = 0.1) -> float:
    """Answers per second between the ``trim`` and ``1 - trim`` quantiles of answer times."""
    times = sorted(answer_times_s)
    n = len(times)
    if n < 20:
        return math.nan
    lo, hi = int(n * trim), int(n * (1 - trim)) - 1
    span = times[hi] - times[lo]
    return (hi - lo) / span if span > 0 else math.nan


def recovery_time(
    t: Sequence[float],
    values: Sequence[float],
    event_t: float,
    good: Callable[[float], bool],
    hold: int = 2,
    step: float = 0.0,
) -> float | None:
    """Seconds from ``event_t`` until ``values`` is ``good`` for ``hold`` samples in a row.

    Samples at or after the event count; when the series was never bad after the event the
    answer is 0. ``step`` (the sample width) is added when a sample stands for the interval
    that ends ``step`` after its time stamp (rate buckets). None: never recovered.
    """
    after = [(ti, v) for ti, v in zip(t, values, strict=True) if ti >= event_t]
    if all(good(v) for _, v in after):
        return 0.0
    first_bad = next(i for i, (_, v) in enumerate(after) if not good(v))
    run = 0
    for i in range(first_bad + 1, len(after)):
        run = run + 1 if good(after[i][1]) else 0
        if run == hold:
            start_t = after[i - hold + 1][0]
            return max(0.0, start_t + step - event_t)
    return None


def backlog_size(rate: float, seconds: float, low: int = 1000, high: int = 60_000) -> int:
    """Requests to pre-produce so a drain at ``rate`` lasts about ``seconds``."""
    if not rate or rate != rate:
        return low
    return max(low, min(high, int(rate * seconds)))
