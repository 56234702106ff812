"""Rollouts, their step log, and the routing table's generation counter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, select

from manager.errors import Conflict
from manager.store.entities import (
    ROLLOUT_ACTIVE_STATES,
    Pipeline,
    Rollout,
    RolloutEvent,
    RoutingGeneration,
    utcnow,
)


def active_rollout(session: Session, *, pipeline: Pipeline) -> Rollout | None:
    return session.exec(select(Rollout).where(Rollout.active_pipeline_id == pipeline.id)).first()


def active_rollouts(session: Session) -> Sequence[Rollout]:
    return session.exec(
        select(Rollout)
        .where(col(Rollout.active_pipeline_id).is_not(None))
        .order_by(col(Rollout.id))
    ).all()


def get_rollout(session: Session, *, pipeline: Pipeline, rollout_id: int) -> Rollout | None:
    row = session.get(Rollout, rollout_id)
    return row if row is not None and row.pipeline_id == pipeline.id else None


def list_rollouts(
    session: Session, *, pipeline: Pipeline, after_id: int | None = None, limit: int = 100
) -> Sequence[Rollout]:
    """Newest first."""
    query = select(Rollout).where(Rollout.pipeline_id == pipeline.id)
    if after_id is not None:
        query = query.where(col(Rollout.id) < after_id)
    return session.exec(query.order_by(col(Rollout.id).desc()).limit(limit)).all()


def add_rollout(session: Session, rollout: Rollout) -> Rollout:
    """Insert an active rollout; Conflict when the pipeline already has one (even one being
    created by a concurrent request)."""
    rollout.active_pipeline_id = rollout.pipeline_id
    session.add(rollout)
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(
            "the pipeline already has an active rollout",
            hint="lastmile rollout status PIPELINE; finish it (promote, rollback or abort) first",
        ) from exc
    return rollout


def save_rollout(session: Session, rollout: Rollout) -> Rollout:
    """Write a rollout's new state; a terminal state frees the pipeline for the next one."""
    rollout.updated_at = utcnow()
    if rollout.state not in ROLLOUT_ACTIVE_STATES:
        rollout.active_pipeline_id = None
        rollout.finished_at = rollout.finished_at or rollout.updated_at
    session.add(rollout)
    session.flush()
    return rollout


def add_rollout_event(
    session: Session,
    *,
    rollout: Rollout,
    action: str,
    reason: str = "",
    figures: dict[str, Any] | None = None,
    principal: str = "",
) -> RolloutEvent:
    event = RolloutEvent(
        rollout_id=rollout.id,  # type: ignore[arg-type]
        pipeline_id=rollout.pipeline_id,
        action=action[:16],
        state=rollout.state,
        weights=dict(rollout.weights),
        reason=reason[:4096],
        figures=figures or {},
        principal=principal[:63],
    )
    session.add(event)
    session.flush()
    return event


def list_rollout_events(
    session: Session,
    *,
    pipeline: Pipeline | None = None,
    rollout: Rollout | None = None,
    limit: int = 1000,
) -> Sequence[RolloutEvent]:
    """Newest first."""
    query = select(RolloutEvent)
    if pipeline is not None:
        query = query.where(RolloutEvent.pipeline_id == pipeline.id)
    if rollout is not None:
        query = query.where(RolloutEvent.rollout_id == rollout.id)
    return session.exec(query.order_by(col(RolloutEvent.id).desc()).limit(limit)).all()


def delete_rollouts(session: Session, *, pipeline: Pipeline) -> None:
    session.exec(delete(RolloutEvent).where(col(RolloutEvent.pipeline_id) == pipeline.id))  # type: ignore[call-overload]
    session.exec(delete(Rollout).where(col(Rollout.pipeline_id) == pipeline.id))  # type: ignore[call-overload]
    session.flush()


def next_generation(session: Session) -> int:
    """The next routing-table generation (committed by the caller's transaction). The row is
    updated in place, so concurrent callers serialise on it and never get the same number."""
    result = session.execute(
        update(RoutingGeneration)
        .where(col(RoutingGeneration.id) == 1)
        .values(generation=RoutingGeneration.generation + 1)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        try:
            session.add(RoutingGeneration(id=1, generation=1))
            session.flush()
        except IntegrityError:
            session.rollback()
            return next_generation(session)
    row = session.get(RoutingGeneration, 1, populate_existing=True)
    assert row is not None
    return row.generation
