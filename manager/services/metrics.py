"""Scrapes into per-interval figures, named the way users name things, in the store.

The ``Collector`` remembers each server's previous reading (in memory: a restarted control
plane starts again from its first scrape, which gives no rate) and turns each new reading into
the interval's figures (manager.observe): Triton's per-model counters into rates and
averages, the gateway's per-variant counters into requests/errors per second and latency
percentiles. The figures are attributed to workspace / pipeline / version / step
(manager.services.metric_names) and stored as ``MetricPoint`` rows. When the control plane
restarts a server itself it says so (``restarted``): that server's counters start again from
zero at that moment, which the numbers alone cannot always tell.

Raw samples (``MetricSample``: Triton's cumulative counters as read) are kept only for
``metrics_samples_retention_s`` (an hour by default, 0: none), for ``lastmile metrics
--model``: every question people ask is answered from the points, and a raw copy of every
series every few seconds would be most of the database. Points are downsampled as they age
(``apply_retention``): 5-minute averages after ``metrics_full_resolution_s``, hourly ones
after ``metrics_five_minute_s``, deleted after ``metrics_retention_s``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from manager import store
from manager.observe import gateway as gateway_figures
from manager.observe.downsample import Point, bucket_end, downsample
from manager.observe.figures import Figure, VariantFigure
from manager.observe.triton import Sample, Scrape, parse_samples, triton_figures
from manager.services.context import Platform
from manager.services.metric_names import NameCache, NameMap
from rollout.windows import VariantCounters

log = logging.getLogger(__name__)

GatewayReadings = dict[tuple[str, str], VariantCounters]
TIERS = ((300, "metrics_full_resolution_s"), (3600, "metrics_five_minute_s"))
CHUNK_BUCKETS = 12  # buckets downsampled per query (an hour of 5-minute ones)
MAX_CHUNKS = 50  # per tier and retention pass: a backlog is worked off over several passes


def when(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def raw_samples(
    samples: Iterable[Sample], *, server: str, ts: datetime
) -> list[store.MetricSample]:
    """Rows of raw Triton samples as read (``lastmile metrics --model``)."""
    return [
        store.MetricSample(
            ts=ts,
            server=server,
            model=s.model,
            version=s.version,
            metric=s.family,
            labels=s.labels,
            value=s.value,
        )
        for s in samples
    ]


def triton_points(
    names: NameMap, figures: Sequence[Figure], *, source: str, server: str, ts: float,
    interval_s: float,
) -> list[store.MetricPoint]:  # fmt: skip
    """Points of one server's figures, one per owner of each figure's Triton model."""
    points = []
    for f in figures:
        for owner in names.owners(f.model, f.model_version) if f.model else [None]:
            labels = dict(f.labels)
            if owner is not None and owner.step:
                labels["model_version"] = f.model_version
            points.append(
                store.MetricPoint(
                    ts=when(ts),
                    interval_s=interval_s,
                    source=source,
                    server=server,
                    workspace=owner.workspace if owner else "",
                    pipeline=owner.pipeline if owner else "",
                    version=owner.version if owner else None,
                    step=owner.step if owner else "",
                    name=f.name,
                    labels=dict(sorted(labels.items())),
                    value=f.value,
                )
            )
    return points


def variant_points(
    figures: Sequence[VariantFigure], *, source: str, server: str, ts: float, interval_s: float
) -> list[store.MetricPoint]:
    return [
        store.MetricPoint(
            ts=when(ts),
            interval_s=interval_s,
            source=source,
            server=server,
            workspace=f.workspace,
            pipeline=f.pipeline,
            version=f.version,
            step="",
            name=f.name,
            labels={},
            value=f.value,
        )
        for f in figures
    ]


@dataclass(frozen=True)
class Recorded:
    samples: int  # raw Triton samples
    points: int  # figures


class Collector:
    """Readings in, points out; one per running system (the scraper thread and the API's
    scrape-now both go through it, one at a time)."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.names = NameCache()
        self._lock = threading.Lock()
        self._triton: dict[str, Scrape] = {}
        self._gateway: tuple[float, GatewayReadings] | None = None
        self._restarted_at: dict[str, float] = {}

    def restarted(self, server: str, ts: float | None = None) -> None:
        """``server`` (a Triton's HTTP URL, or the gateway's metrics URL) was (re)started at
        ``ts``: its counters grow from zero from then on, and a reading taken before is
        stale."""
        ts = time.time() if ts is None else ts
        with self._lock:
            self._restarted_at[server] = ts
            if server == self.platform.gateway_metrics_url:
                self._gateway = (ts, {})
            else:
                self._triton[server] = Scrape.empty(ts)

    def record(
        self, *, ts: float, triton: dict[str, str], gateway: GatewayReadings | None = None
    ) -> Recorded:
        """Store the figures of these readings (all taken from ``ts`` on: Triton's exposition
        text per server, the gateway's counters); how many rows were stored."""
        keep_raw = self.platform.settings.metrics_samples_retention_s > 0
        default_interval = self.platform.settings.scrape_interval_s
        raw: list[store.MetricSample] = []
        with self._lock, self.platform.session() as session:
            names = self.names.get(session)
            points: list[store.MetricPoint] = []
            for server, text in triton.items():
                if ts < self._restarted_at.get(server, float("-inf")):
                    continue  # read before a restart: the counters it saw are gone
                samples = list(parse_samples(text))
                if keep_raw:
                    raw += raw_samples(samples, server=server, ts=when(ts))
                scrape = Scrape.of(samples, ts=ts)
                before = self._triton.get(server)
                interval = ts - before.ts if before and ts > before.ts else default_interval
                figures = triton_figures(before, scrape)
                self._triton[server] = scrape
                points += triton_points(
                    names, figures, source="triton", server=server, ts=ts, interval_s=interval
                )
            url = self.platform.gateway_metrics_url or "gateways"
            if gateway is not None and ts >= self._restarted_at.get(url, float("-inf")):
                earlier = self._gateway
                interval = ts - earlier[0] if earlier else 0.0
                figures_v = gateway_figures.variant_figures(
                    earlier[1] if earlier else None, gateway, interval
                )
                self._gateway = (ts, gateway)
                points += variant_points(
                    figures_v, source="gateway", server=url, ts=ts, interval_s=interval
                )
            samples_count = store.add_metric_samples(session, samples=raw)
            count = store.add_metric_points(session, points=points)
            session.commit()
        return Recorded(samples=samples_count, points=count)


def apply_retention(platform: Platform, *, now: float | None = None) -> dict[str, int]:
    """Prune raw samples, downsample aging points, delete the oldest; counts of what was
    done (bounded per call: a large backlog takes several calls)."""
    s = platform.settings
    now = time.time() if now is None else now
    done = {"downsampled": 0, "into": 0}
    with platform.session() as session:
        store.prune_metric_samples(session, before=when(now - s.metrics_samples_retention_s))
        store.prune_metric_points(session, before=when(now - s.metrics_retention_s))
        session.commit()
    for bucket_s, age_setting in TIERS:
        cutoff = bucket_end(now - float(getattr(s, age_setting)), bucket_s) - bucket_s
        for _ in range(MAX_CHUNKS):
            with platform.session() as session:
                oldest = store.oldest_metric_point(
                    session, below_resolution=bucket_s, before=when(cutoff)
                )
                if oldest is None:
                    break
                start = bucket_end(oldest.timestamp(), bucket_s) - bucket_s
                end = min(start + CHUNK_BUCKETS * bucket_s, cutoff)
                rows = store.metric_points_between(
                    session, below_resolution=bucket_s, after=when(start), until=when(end)
                )
                merged = _downsample(rows, bucket_s)
                store.delete_metric_points_by_id(session, ids=[r.id for r in rows if r.id])
                store.add_metric_points(session, points=merged)
                session.commit()
                done["downsampled"] += len(rows)
                done["into"] += len(merged)
    return done


def _downsample(rows: Sequence[store.MetricPoint], bucket_s: int) -> list[store.MetricPoint]:
    def key(r: store.MetricPoint) -> tuple[str, str, str, str, int | None, str, str, str]:
        labels = json.dumps(r.labels, sort_keys=True)
        return (r.source, r.server, r.workspace, r.pipeline, r.version, r.step, r.name, labels)

    points = [Point(key(r), r.ts.timestamp(), r.interval_s, r.value) for r in rows]
    out = []
    for p in downsample(points, bucket_s):
        source, server, workspace, pipeline, version, step, name, labels = key_of(p)
        out.append(
            store.MetricPoint(
                ts=when(p.ts),
                interval_s=p.interval_s,
                resolution_s=bucket_s,
                source=source,
                server=server,
                workspace=workspace,
                pipeline=pipeline,
                version=version,
                step=step,
                name=name,
                labels=json.loads(labels),
                value=p.value,
            )
        )
    return out


def key_of(point: Point) -> tuple[str, str, str, str, int | None, str, str, str]:
    return point.key  # type: ignore[return-value]
