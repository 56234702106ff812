"""Window figures from cumulative gateway counters: deltas that survive a gateway restart,
and Prometheus-style quantiles of histogram buckets. Pure, like rollout.controller, which
judges the figures these produce."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rollout.controller_types import VariantFigures

# --- window figures from cumulative gateway metrics ---------------------------------------

Buckets = Sequence[tuple[float, float]]  # (upper bound, cumulative count), +Inf last


@dataclass(frozen=True, slots=True)
class VariantCounters:
    """One variant's cumulative metrics as scraped (they count since the gateway started):
    requests, errors and the latency histogram's buckets."""

    requests: int
    errors: int
    buckets: tuple[tuple[float, float], ...] = ()


def counter_delta(before: float, after: float) -> float:
    """How much a cumulative counter grew; one that went down was reset (the gateway
    restarted), so the window restarts from 0 and ``after`` is the growth."""
    return after if after < before else after - before


def buckets_delta(before: Buckets, after: Buckets) -> list[tuple[float, float]]:
    """Per-bucket growth of a cumulative histogram; ``after`` as is when any bucket went down
    or the bounds changed (a restarted or reconfigured gateway)."""
    if [b for b, _ in before] != [b for b, _ in after] or any(
        a < b for (_, b), (_, a) in zip(before, after, strict=True)
    ):
        return list(after)
    return [(bound, a - b) for (bound, b), (_, a) in zip(before, after, strict=True)]


def restarted(before: VariantCounters, after: VariantCounters) -> bool:
    if after.requests < before.requests or after.errors < before.errors:
        return True
    if not before.buckets:  # no latency observed yet: the histogram grows from nothing
        return False
    if [b for b, _ in before.buckets] != [b for b, _ in after.buckets]:
        return True
    return any(a < b for (_, b), (_, a) in zip(before.buckets, after.buckets, strict=True))


def window_buckets(
    before: VariantCounters | None, after: VariantCounters
) -> list[tuple[float, float]]:
    """The latency histogram of a window (non-cumulative in time, cumulative in bounds), with
    the same restart rule as ``window_delta``."""
    if before is None or restarted(before, after):
        return list(after.buckets)
    return buckets_delta(before.buckets, after.buckets)


def window_delta(before: VariantCounters | None, after: VariantCounters) -> VariantFigures:
    """A variant's window figures from two scrapes (``before``: at the window's start, None
    when there is none). One process's series restart together: when any of them went down
    (or the bucket bounds changed), all restarted and ``after`` is the window as is. A restart
    followed by more traffic than before cannot be seen (as with Prometheus' ``increase``)."""
    p99 = p99_from_histogram(window_buckets(before, after))
    if before is None or restarted(before, after):
        return VariantFigures(after.requests, after.errors, p99)
    return VariantFigures(after.requests - before.requests, after.errors - before.errors, p99)


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """Prometheus' ``histogram_quantile``: linear interpolation inside the bucket holding the
    rank (the first bucket starts at 0); a rank in the +Inf bucket gives the highest finite
    bound; counts that go down are raised to the running maximum, as Prometheus does. None
    for an empty histogram or one with only the +Inf bucket."""
    if not 0 <= q <= 1:
        raise ValueError(f"q must be in [0, 1], not {q!r}")
    if not buckets:
        return None
    bounds: list[float] = []
    counts: list[float] = []
    for bound, count in buckets:
        if math.isnan(bound) or (bounds and bound <= bounds[-1]):
            raise ValueError(f"bucket bounds must be strictly increasing, not {bound!r}")
        if not math.isfinite(count) or count < 0:
            raise ValueError(f"bucket counts must be finite and >= 0, not {count!r}")
        bounds.append(float(bound))
        counts.append(max(float(count), counts[-1] if counts else 0.0))
    if bounds[-1] != math.inf:
        raise ValueError("the last bucket must be +Inf")
    total = counts[-1]
    if total == 0 or len(bounds) < 2:
        return None
    rank = q * total
    i = next((i for i in range(len(bounds) - 1) if counts[i] >= rank), len(bounds) - 1)
    if i == len(bounds) - 1:
        return bounds[-2]
    if i == 0 and bounds[0] <= 0:
        return bounds[0]
    start, below = (bounds[i - 1], counts[i - 1]) if i else (0.0, 0.0)
    inside = counts[i] - below
    return start if inside <= 0 else start + (bounds[i] - start) * (rank - below) / inside


def p99_from_histogram(buckets: Buckets) -> float | None:
    """The 99th percentile of a cumulative histogram (see ``histogram_quantile``)."""
    return histogram_quantile(0.99, buckets)
