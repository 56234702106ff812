"""Two readings of the gateway's per-variant counters -> the interval's figures per variant.

The deltas, the restart rule (a variant's series that went down restarted together) and the
quantiles are rollout.windows' own, the ones the canary gates judge by: a figure shown to a
person and a figure a rollout decides on are computed the same way.
"""

from __future__ import annotations

from collections.abc import Mapping

from manager.observe.figures import QUANTILES, VariantFigure
from rollout import windows

# (route "<workspace>/<pipeline>", variant "<pipeline>/<version>") -> cumulative counters
Readings = Mapping[tuple[str, str], windows.VariantCounters]


def variant_of(route: str, variant: str) -> tuple[str, str, int] | None:
    """(workspace, pipeline, version) of a gateway series; None for series of no pipeline
    version (the gateway's own ``_unknown`` route, refusals before a variant was chosen)."""
    workspace, sep, pipeline = route.partition("/")
    name, vsep, version = variant.rpartition("/")
    if not sep or not vsep or name != pipeline or not version.isdigit():
        return None
    return workspace, pipeline, int(version)


def variant_figures(
    before: Readings | None, after: Readings, interval_s: float
) -> list[VariantFigure]:
    """Per variant: requests/s and errors/s over the interval, and the p50/p95/p99 latency of
    the requests answered in it (none when none was). Nothing for a first reading (no
    interval yet); a variant absent from ``before`` started from zero."""
    if before is None or interval_s <= 0:
        return []
    out: list[VariantFigure] = []
    for (route, variant), now in sorted(after.items()):
        owner = variant_of(route, variant)
        if owner is None:
            continue
        then = before.get((route, variant))
        window = windows.window_delta(then, now)
        buckets = windows.window_buckets(then, now)

        def figure(name: str, value: float, owner: tuple[str, str, int] = owner) -> VariantFigure:
            return VariantFigure(owner[0], owner[1], owner[2], name, value)

        out.append(figure("gateway_requests_per_s", window.requests / interval_s))
        out.append(figure("gateway_errors_per_s", window.errors / interval_s))
        for name, q in QUANTILES:
            seconds = windows.histogram_quantile(q, buckets)
            if seconds is not None:
                out.append(figure(name, seconds * 1000))
    return out
