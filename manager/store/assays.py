"""Assays, their results and alerts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, select

from manager.errors import Conflict
from manager.store.entities import Alert, Assay, AssayResult, MetricPoint, Workspace


def add_assay(session: Session, assay: Assay) -> Assay:
    session.add(assay)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(
            f"an assay named {assay.name!r} already exists in this workspace",
            hint="choose another name, or delete that assay first",
        ) from None
    return assay


def find_assay(session: Session, *, workspace: Workspace, name: str) -> Assay | None:
    return session.exec(
        select(Assay).where(Assay.workspace_id == workspace.id, Assay.name == name)
    ).first()


def list_assays(
    session: Session, *, workspace: Workspace | None = None, pipeline_id: int | None = None
) -> Sequence[Assay]:
    query = select(Assay)
    if workspace is not None:
        query = query.where(Assay.workspace_id == workspace.id)
    if pipeline_id is not None:
        query = query.where(Assay.pipeline_id == pipeline_id)
    return session.exec(query.order_by(col(Assay.id))).all()


def delete_assay(session: Session, assay: Assay) -> None:
    session.exec(delete(Alert).where(col(Alert.assay_id) == assay.id))  # type: ignore[call-overload]
    session.exec(delete(AssayResult).where(col(AssayResult.assay_id) == assay.id))  # type: ignore[call-overload]
    session.delete(assay)
    session.flush()


def save_assay_result(session: Session, result: AssayResult) -> AssayResult:
    """Insert, or replace the result of the same window (a backfill run again)."""
    old = session.exec(
        select(AssayResult).where(
            AssayResult.assay_id == result.assay_id,
            AssayResult.window_end == result.window_end,
            AssayResult.backfill == result.backfill,
        )
    ).first()
    if old is not None:
        session.exec(delete(Alert).where(col(Alert.result_id) == old.id))  # type: ignore[call-overload]
        session.delete(old)
        session.flush()
    session.add(result)
    session.flush()
    return result


def list_assay_results(
    session: Session,
    *,
    assay_id: int,
    backfill: bool = False,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
) -> Sequence[AssayResult]:
    """Oldest window first (the latest `limit` when a limit is given)."""
    query = select(AssayResult).where(
        AssayResult.assay_id == assay_id, AssayResult.backfill == backfill
    )
    if since is not None:
        query = query.where(col(AssayResult.window_end) > since)
    if until is not None:
        query = query.where(col(AssayResult.window_start) < until)
    if limit is not None:
        latest = session.exec(query.order_by(col(AssayResult.window_end).desc()).limit(limit)).all()
        return list(reversed(latest))
    return session.exec(query.order_by(col(AssayResult.window_end))).all()


def add_alert(session: Session, alert: Alert) -> Alert:
    session.add(alert)
    session.flush()
    return alert


def list_alerts(
    session: Session,
    *,
    assay_ids: Sequence[int] | None = None,
    limit: int = 100,
) -> Sequence[Alert]:
    """Newest first."""
    query = select(Alert)
    if assay_ids is not None:
        query = query.where(col(Alert.assay_id).in_(list(assay_ids)))
    return session.exec(query.order_by(col(Alert.id).desc()).limit(limit)).all()


def due_alert_deliveries(session: Session, *, now: datetime, limit: int = 50) -> Sequence[Alert]:
    """Alerts whose webhook delivery is pending and due, oldest first."""
    return session.exec(
        select(Alert)
        .where(Alert.delivery == "pending")
        .where(col(Alert.next_attempt_at) <= now)
        .order_by(col(Alert.id))
        .limit(limit)
    ).all()


def metric_points_in(
    session: Session,
    *,
    workspace: str,
    pipeline: str,
    names: Sequence[str],
    after: datetime,
    until: datetime,
    version: int | None = None,
) -> Sequence[MetricPoint]:
    """A pipeline's figures called `names` whose interval ends in (after, until]."""
    query = select(MetricPoint).where(
        MetricPoint.workspace == workspace,
        MetricPoint.pipeline == pipeline,
        col(MetricPoint.name).in_(list(names)),
        col(MetricPoint.ts) > after,
        col(MetricPoint.ts) <= until,
    )
    if version is not None:
        query = query.where(MetricPoint.version == version)
    return session.exec(query.order_by(col(MetricPoint.ts))).all()
