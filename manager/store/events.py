"""System events: restarts, recoveries and repairs the control plane made on its own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlmodel import Session, col, select

from manager.store.entities import SystemEvent


def add_system_event(
    session: Session,
    *,
    kind: str,
    component: str,
    message: str,
    detail: dict[str, Any] | None = None,
) -> SystemEvent:
    event = SystemEvent(
        kind=kind[:32], component=component[:255], message=message[:4096], detail=detail or {}
    )
    session.add(event)
    session.flush()
    return event


def list_system_events(
    session: Session,
    *,
    after_id: int | None = None,
    limit: int = 100,
    kind: str | None = None,
) -> Sequence[SystemEvent]:
    """Newest first; ``after_id`` pages towards older events."""
    query = select(SystemEvent)
    if after_id is not None:
        query = query.where(col(SystemEvent.id) < after_id)
    if kind:
        query = query.where(SystemEvent.kind == kind)
    return session.exec(query.order_by(col(SystemEvent.id).desc()).limit(limit)).all()
