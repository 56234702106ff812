"""A pipeline's figures over a period, per variant, as ``lastmile metrics PIPELINE`` shows them.

For every figure: the latest value, and over the period its time-weighted mean, min and max;
rates also get their total (value x interval summed: a count of requests). Percentiles and
averages are the per-interval ones (the mean of p95s is not a p95 of the period: it says how
the interval p95 sat on average; ``max`` shows the worst interval).

With several Triton replicas a pipeline's counters are per server: rates (and totals) add up
across servers, other figures are averaged; min and max are per server.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from manager import store
from manager.errors import InvalidInput
from manager.observe.durations import parse_duration
from manager.observe.figures import GATEWAY_PREFIX, display_rank, figure_key, is_rate
from manager.services.context import Platform
from manager.services.metrics import when

SOURCES = {"direct": ("triton", "gateway"), "prometheus": ("prometheus",)}
_VARIANT = re.compile(r"^(?:v?([1-9][0-9]{0,9})|([a-z][a-z0-9_-]{0,62})/([1-9][0-9]{0,9}))$")


def parse_variant(text: str, *, pipeline: str) -> int:
    """The version a ``--variant`` names: ``3``, ``v3`` or ``<pipeline>/3``."""
    match = _VARIANT.match(text.strip()) if isinstance(text, str) else None
    if match is None or (match.group(2) is not None and match.group(2) != pipeline):
        raise InvalidInput(
            f"--variant {text!r} is not a version of pipeline {pipeline!r}",
            hint=f"name the version: --variant 2, --variant v2 or --variant {pipeline}/2",
        )
    return int(match.group(1) or match.group(3))


def _stats(
    groups: Sequence[store.PointStats], latest: dict[tuple[Any, ...], float], name: str
) -> dict[str, Any]:
    """One figure's summary from its per-server aggregates."""
    rate = is_rate(name)
    total = sum(g.weighted for g in groups)
    seconds = sum(g.seconds for g in groups)
    per_server = [g.weighted / g.seconds for g in groups if g.seconds > 0]
    lasts = [latest[_key(g)] for g in groups if _key(g) in latest]
    if rate:
        mean = sum(per_server)
        last = sum(lasts) if lasts else None
    else:
        mean = total / seconds if seconds > 0 else sum(g.low for g in groups) / len(groups)
        last = sum(lasts) / len(lasts) if lasts else None
    return {
        "latest": last,
        "latest_ts": max(g.last_ts for g in groups),
        "mean": mean,
        "min": min(g.low for g in groups),
        "max": max(g.high for g in groups),
        "total": total if rate else None,
        "points": sum(g.count for g in groups),
    }


def _key(g: store.PointStats) -> tuple[Any, ...]:
    return (g.server, g.version, g.step, g.name, tuple(sorted(g.labels.items())))


def _latest(
    session: Any, groups: Sequence[store.PointStats], *, workspace: str, pipeline: str,
    sources: Sequence[str],
) -> dict[tuple[Any, ...], float]:  # fmt: skip
    """Each group's value at its last timestamp."""
    times = sorted({g.last_ts for g in groups})
    wanted = {_key(g): g.last_ts for g in groups}
    out: dict[tuple[Any, ...], float] = {}
    for row in store.metric_points_at(
        session, workspace=workspace, pipeline=pipeline, times=times, sources=sources
    ):
        key = (row.server, row.version, row.step, row.name, tuple(sorted(row.labels.items())))
        if wanted.get(key) == row.ts:
            out[key] = row.value
    return out


def _figures(
    groups: Sequence[store.PointStats], latest: dict[tuple[Any, ...], float], *,
    drop: tuple[str, ...] = (),
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Figure key -> summary, the groups of all servers of one figure together."""
    by_figure: dict[str, list[store.PointStats]] = defaultdict(list)
    for g in groups:
        labels = {k: v for k, v in g.labels.items() if k not in drop}
        by_figure[figure_key(g.name, labels)].append(g)
    order = sorted(by_figure.items(), key=lambda kv: (display_rank(kv[1][0].name), kv[0]))
    return {k: _stats(v, latest, v[0].name) for k, v in order}


def pipeline_metrics(
    platform: Platform,
    *,
    workspace: str,
    pipeline: str,
    since: str = "15m",
    variant: str | None = None,
    source: str = "direct",
    now: float | None = None,
) -> dict[str, Any]:
    seconds = parse_duration(since, what="since")
    if source not in SOURCES:
        raise InvalidInput(
            f"unknown metrics source {source!r}",
            hint="use direct (Lastmile's own scrapes) or prometheus",
        )
    sources = SOURCES[source]
    end = time.time() if now is None else now
    start: datetime = when(end - seconds)
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        pipe = store.get_pipeline(session, workspace=ws, name=pipeline)
        version = None
        uses: set[str] | None = None  # the variant's steps, as "model:version"
        if variant is not None:
            version = parse_variant(variant, pipeline=pipeline)
            pv = store.get_pipeline_version(session, pipeline=pipe, version=version)
            uses = {f"{s['model']}:{s['version']}" for s in pv.spec.get("steps", [])}
        groups = store.metric_point_stats(
            session, workspace=workspace, pipeline=pipeline, since=start, sources=sources,
            version=version,
        )  # fmt: skip
        latest = _latest(session, groups, workspace=workspace, pipeline=pipeline, sources=sources)
        servers = sorted({g.server for g in groups if not g.name.startswith(GATEWAY_PREFIX)})
        server_groups = [
            g
            for g in store.metric_point_stats(
                session, workspace="", pipeline="", since=start, sources=sources, servers=servers
            )
            if g.step == ""
        ]
        latest |= _latest(session, server_groups, workspace="", pipeline="", sources=sources)
    variants = []
    for v in sorted({g.version for g in groups if g.version is not None}):
        mine = [g for g in groups if g.version == v]
        steps: dict[str, list[store.PointStats]] = defaultdict(list)
        for g in mine:
            if g.step:
                steps[g.step].append(g)
        variants.append(
            {
                "variant": f"{pipeline}/{v}",
                "version": v,
                "gateway": _figures([g for g in mine if g.name.startswith(GATEWAY_PREFIX)], latest),
                "triton": _figures(
                    [g for g in mine if not g.step and not g.name.startswith(GATEWAY_PREFIX)],
                    latest,
                ),
                "steps": {
                    s: _figures(gs, latest, drop=("model_version",))
                    for s, gs in sorted(steps.items())
                },
            }
        )  # fmt: skip
    shared: dict[str, list[store.PointStats]] = defaultdict(list)
    for g in groups:
        step = f"{g.step}:{g.labels.get('model_version', '?')}"
        if g.version is None and g.step and (uses is None or step in uses):
            shared[step].append(g)
    by_server: dict[str, list[store.PointStats]] = defaultdict(list)
    for g in server_groups:
        by_server[g.server].append(g)
    return {
        "workspace": workspace,
        "pipeline": pipeline,
        "source": source,
        "since": since,
        "start": start,
        "end": when(end),
        "variants": variants,
        "steps": {
            k: _figures(v, latest, drop=("model_version",)) for k, v in sorted(shared.items())
        },
        "servers": {k: _figures(v, latest) for k, v in sorted(by_server.items())},
    }
