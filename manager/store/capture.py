"""Summaries of captured traffic, one row per pipeline version, side, tensor and window."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlmodel import Session, col, delete, select

from manager.store.entities import CaptureSummary


def find_capture_summary(
    session: Session,
    *,
    workspace: str,
    pipeline: str,
    version: int,
    side: str,
    tensor: str,
    window_start: datetime,
) -> CaptureSummary | None:
    return session.exec(
        select(CaptureSummary).where(
            CaptureSummary.workspace == workspace,
            CaptureSummary.pipeline == pipeline,
            CaptureSummary.version == version,
            CaptureSummary.side == side,
            CaptureSummary.tensor == tensor,
            CaptureSummary.window_start == window_start,
        )
    ).first()


def add_capture_summary(session: Session, row: CaptureSummary) -> CaptureSummary:
    session.add(row)
    session.flush()
    return row


def list_capture_summaries(
    session: Session,
    *,
    workspace: str,
    pipeline: str,
    side: str | None = None,
    tensor: str | None = None,
    version: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Sequence[CaptureSummary]:
    """Oldest window first; `since` <= window_start < `until`."""
    query = select(CaptureSummary).where(
        CaptureSummary.workspace == workspace, CaptureSummary.pipeline == pipeline
    )
    if side is not None:
        query = query.where(CaptureSummary.side == side)
    if tensor is not None:
        query = query.where(CaptureSummary.tensor == tensor)
    if version is not None:
        query = query.where(CaptureSummary.version == version)
    if since is not None:
        query = query.where(col(CaptureSummary.window_start) >= since)
    if until is not None:
        query = query.where(col(CaptureSummary.window_start) < until)
    return session.exec(
        query.order_by(col(CaptureSummary.window_start), col(CaptureSummary.id))
    ).all()


def prune_capture_summaries(session: Session, *, before: datetime) -> None:
    session.exec(delete(CaptureSummary).where(col(CaptureSummary.window_start) < before))  # type: ignore[call-overload]
