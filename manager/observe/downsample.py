"""Old figures averaged into coarser intervals (5 minutes, then an hour).

A figure's point covers the interval that ends at its timestamp. Points whose intervals end in
the same bucket ``(end - bucket, end]`` become one point at the bucket's end: its interval is
the sum of theirs and its value their mean weighted by interval. For rates that keeps
``value x interval`` (the count) exact; for averages, gauges and percentiles it is a
time-weighted mean: good for a long-term view, not a recomputed percentile.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Point:
    key: Hashable  # what the figure is about: source, server, owner, name, labels
    ts: float  # end of the interval, seconds since the epoch
    interval_s: float
    value: float


def bucket_end(ts: float, bucket_s: int) -> float:
    """The end of the bucket that holds an interval ending at ``ts`` (a bound belongs to the
    bucket it ends)."""
    return float(math.ceil(ts / bucket_s) * bucket_s)


def downsample(points: Iterable[Point], bucket_s: int) -> list[Point]:
    """One point per (key, bucket), in the order first seen."""
    if bucket_s <= 0:
        raise ValueError(f"bucket_s must be > 0, not {bucket_s!r}")
    sums: dict[tuple[Hashable, float], list[float]] = {}
    for p in points:
        acc = sums.setdefault((p.key, bucket_end(p.ts, bucket_s)), [0.0, 0.0, 0.0, 0.0])
        acc[0] += p.value * p.interval_s
        acc[1] += p.interval_s
        acc[2] += p.value
        acc[3] += 1
    out = []
    for (key, end), (weighted, interval, plain, count) in sums.items():
        value = weighted / interval if interval > 0 else plain / count
        out.append(Point(key, end, interval, value))
    return out
