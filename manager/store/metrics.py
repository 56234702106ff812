"""Scraped Triton metrics as a time series."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlmodel import Session, col, delete, func, select

from manager.store.entities import MetricSample


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
