"""Scraped Triton metrics: raw samples as read (bounded), and per-interval figures (points)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import String, cast, or_
from sqlmodel import Session, col, delete, func, select

from manager.store.entities import MetricPoint, MetricSample


def add_metric_samples(session: Session, *, samples: Iterable[MetricSample]) -> int:
    rows = list(samples)
    session.add_all(rows)
    session.flush()
    return len(rows)


def latest_metric_samples(
    session: Session, *, model: str | None = None, model_prefix: str | None = None
) -> Sequence[MetricSample]:
    """The samples of the most recent scrape (one row per server/model/version/metric)."""
    last = session.exec(select(func.max(MetricSample.ts))).one()
    if last is None:
        return []
    query = select(MetricSample).where(MetricSample.ts == last)
    if model is not None:
        query = query.where(MetricSample.model == model)
    if model_prefix is not None:
        query = query.where(col(MetricSample.model).startswith(model_prefix))
    return session.exec(query.order_by(MetricSample.model, MetricSample.metric)).all()


def prune_metric_samples(session: Session, *, before: datetime) -> None:
    session.exec(delete(MetricSample).where(col(MetricSample.ts) < before))  # type: ignore[call-overload]


# --- per-interval figures (manager.observe) ---------------------------------------------


@dataclass(frozen=True)
class PointStats:
    """The points of one figure of one server over a period, aggregated in SQL."""

    server: str
    version: int | None
    step: str
    name: str
    labels: dict[str, str]
    weighted: float  # sum of value x interval
    seconds: float  # sum of intervals
    low: float
    high: float
    count: int
    last_ts: datetime


def add_metric_points(session: Session, *, points: Iterable[MetricPoint]) -> int:
    rows = list(points)
    session.add_all(rows)
    session.flush()
    return len(rows)


def delete_metric_points(
    session: Session, *, source: str, after: datetime, until: datetime
) -> None:
    """Points of ``source`` whose interval ends in ``(after, until]`` (a re-read replaces)."""
    session.exec(
        delete(MetricPoint).where(  # type: ignore[call-overload]
            col(MetricPoint.source) == source,
            col(MetricPoint.ts) > after,
            col(MetricPoint.ts) <= until,
        )
    )


def prune_metric_points(session: Session, *, before: datetime) -> None:
    session.exec(delete(MetricPoint).where(col(MetricPoint.ts) < before))  # type: ignore[call-overload]


def oldest_metric_point(
    session: Session, *, below_resolution: int, before: datetime
) -> datetime | None:
    """The earliest end of a point finer than ``below_resolution`` s ending before ``before``."""
    return session.exec(
        select(func.min(MetricPoint.ts)).where(
            col(MetricPoint.resolution_s) < below_resolution, col(MetricPoint.ts) <= before
        )
    ).one()


def metric_points_between(
    session: Session, *, below_resolution: int, after: datetime, until: datetime
) -> Sequence[MetricPoint]:
    """Points finer than ``below_resolution`` s whose interval ends in ``(after, until]``."""
    return session.exec(
        select(MetricPoint).where(
            col(MetricPoint.resolution_s) < below_resolution,
            col(MetricPoint.ts) > after,
            col(MetricPoint.ts) <= until,
        )
    ).all()


def delete_metric_points_by_id(session: Session, *, ids: Sequence[int]) -> None:
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        session.exec(delete(MetricPoint).where(col(MetricPoint.id).in_(chunk)))  # type: ignore[call-overload]


def metric_point_stats(
    session: Session,
    *,
    workspace: str,
    pipeline: str,
    since: datetime,
    sources: Sequence[str],
    version: int | None = None,
    servers: Sequence[str] | None = None,
) -> list[PointStats]:
    """Per (server, version, step, name, labels): sums, extremes, count and last timestamp
    of the points ending at or after ``since``. ``version`` keeps that version's points and
    the version-less ones (shared steps); ``servers`` restricts to those servers."""
    labels_text = cast(MetricPoint.labels, String)
    query = select(  # type: ignore[call-overload]
        MetricPoint.server,
        MetricPoint.version,
        MetricPoint.step,
        MetricPoint.name,
        labels_text,
        func.sum(MetricPoint.value * MetricPoint.interval_s),
        func.sum(MetricPoint.interval_s),
        func.min(MetricPoint.value),
        func.max(MetricPoint.value),
        func.count(),
        func.max(MetricPoint.ts),
    ).where(
        MetricPoint.workspace == workspace,
        MetricPoint.pipeline == pipeline,
        col(MetricPoint.ts) >= since,
        col(MetricPoint.source).in_(sources),
    )
    if version is not None:
        query = query.where(
            or_(col(MetricPoint.version) == version, col(MetricPoint.version).is_(None))
        )
    if servers is not None:
        query = query.where(col(MetricPoint.server).in_(servers))
    query = query.group_by(
        MetricPoint.server, MetricPoint.version, MetricPoint.step, MetricPoint.name, labels_text
    )
    return [
        PointStats(
            server=row[0],
            version=row[1],
            step=row[2],
            name=row[3],
            labels=json.loads(row[4]) if row[4] else {},
            weighted=float(row[5] or 0.0),
            seconds=float(row[6] or 0.0),
            low=float(row[7]),
            high=float(row[8]),
            count=int(row[9]),
            last_ts=row[10],
        )
        for row in session.exec(query).all()  # type: ignore[call-overload]
    ]


def metric_points_at(
    session: Session,
    *,
    workspace: str,
    pipeline: str,
    times: Sequence[datetime],
    sources: Sequence[str],
) -> Sequence[MetricPoint]:
    """The points of a pipeline (or the server-wide ones: both "") ending at these times."""
    if not times:
        return []
    return session.exec(
        select(MetricPoint).where(
            MetricPoint.workspace == workspace,
            MetricPoint.pipeline == pipeline,
            col(MetricPoint.ts).in_(list(times)),
            col(MetricPoint.source).in_(sources),
        )
    ).all()
