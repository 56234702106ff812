"""The audit log: written by the API for every mutating call, read by admins."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, select

from manager.store.entities import AuditEvent


def add_audit_event(session: Session, *, event: AuditEvent) -> AuditEvent:
    session.add(event)
    session.flush()
    return event


def list_audit_events(
    session: Session,
    *,
    workspaces: Sequence[str] | None,
    after_id: int | None = None,
    limit: int = 100,
    action: str | None = None,
    principal: str | None = None,
) -> Sequence[AuditEvent]:
    """Newest first; ``workspaces`` None means every workspace (the owner's view)."""
    query = select(AuditEvent)
    if workspaces is not None:
        query = query.where(col(AuditEvent.workspace).in_(list(workspaces)))
    if after_id is not None:
        query = query.where(col(AuditEvent.id) < after_id)
    if action:
        query = query.where(col(AuditEvent.action).contains(action))
    if principal:
        query = query.where(AuditEvent.principal == principal)
    return session.exec(query.order_by(col(AuditEvent.id).desc()).limit(limit)).all()
