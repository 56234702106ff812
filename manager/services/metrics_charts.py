"""Charts of a pipeline's live figures over time, one line per variant: latency percentiles,
requests and errors per second as the gateway saw them (manager.charts draws them)."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import datetime
from typing import Any

from manager import charts, store
from manager.errors import InvalidInput
from manager.observe.durations import parse_duration
from manager.observe.figures import GATEWAY_FIGURES
from manager.services.context import Platform
from manager.services.metrics import when

# what a person asks for -> the stored figure and the axis label
CHARTS: dict[str, tuple[str, str]] = {
    "p50": ("gateway_latency_p50_ms", "p50 latency (ms)"),
    "p95": ("gateway_latency_p95_ms", "p95 latency (ms)"),
    "p99": ("gateway_latency_p99_ms", "p99 latency (ms)"),
    "requests": ("gateway_requests_per_s", "requests / s"),
    "errors": ("gateway_errors_per_s", "errors / s"),
}
assert all(name in GATEWAY_FIGURES for name, _ in CHARTS.values())
SOURCES = {"direct": "gateway", "prometheus": "prometheus"}


def series(
    platform: Platform,
    *,
    workspace: str,
    pipeline: str,
    figure: str,
    since: str,
    source: str = "direct",
) -> dict[str, list[tuple[datetime, float | None]]]:
    """Per variant ("<pipeline>/<version>"), the figure's points since `since` from the
    gateway's own figures ("direct") or Prometheus': rates added over the gateways of one
    interval, other figures the worst one's."""
    if figure not in CHARTS:
        raise InvalidInput(f"unknown chart {figure!r}", hint=f"one of {', '.join(CHARTS)}")
    if source not in SOURCES:
        raise InvalidInput(f"unknown metrics source {source!r}", hint="direct or prometheus")
    wanted = SOURCES[source]
    name, _label = CHARTS[figure]
    start = when(time.time() - parse_duration(since, what="since"))
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        store.get_pipeline(session, workspace=ws, name=pipeline)  # 404 for an unknown one
        points = store.metric_points_in(
            session,
            workspace=workspace,
            pipeline=pipeline,
            names=[name],
            after=start,
            until=when(time.time() + 1),
        )
    rate = name.endswith("_per_s")
    by_variant: dict[str, dict[datetime, float]] = defaultdict(dict)
    for p in points:
        if p.version is None or p.source != wanted:
            continue
        line = by_variant[f"{pipeline}/{p.version}"]
        before = line.get(p.ts)
        if before is None:
            line[p.ts] = p.value
        else:
            line[p.ts] = before + p.value if rate else max(before, p.value)
    return {
        variant: sorted((ts, value) for ts, value in line.items())
        for variant, line in sorted(by_variant.items())
    }


def render(
    platform: Platform,
    *,
    workspace: str,
    pipeline: str,
    figure: str = "p99",
    since: str = "1h",
    source: str = "direct",
    fmt: str = "svg",
) -> bytes:
    lines: Any = series(
        platform,
        workspace=workspace,
        pipeline=pipeline,
        figure=figure,
        since=since,
        source=source,
    )
    _name, label = CHARTS[figure]
    return charts.series_chart(
        lines, title=f"{pipeline} · {label} per variant · last {since}", y_label=label, fmt=fmt
    )
