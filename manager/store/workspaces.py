"""Workspaces and who is a member of them with which role."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from manager.errors import Conflict, NotFound
from manager.store.entities import (
    Baseline,
    Membership,
    Model,
    Pipeline,
    Principal,
    Workspace,
)


def ensure_workspace(session: Session, *, name: str) -> Workspace:
    found = session.exec(select(Workspace).where(Workspace.name == name)).first()
    if found:
        return found
    workspace = Workspace(name=name)
    session.add(workspace)
    session.flush()
    return workspace


def create_workspace(session: Session, *, name: str) -> Workspace:
    workspace = Workspace(name=name)
    session.add(workspace)
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"workspace {name!r} already exists", hint="pick another name") from exc
    return workspace


def get_workspace(session: Session, *, name: str) -> Workspace:
    found = session.exec(select(Workspace).where(Workspace.name == name)).first()
    if not found:
        raise NotFound(f"workspace {name!r} does not exist")
    return found


def list_workspaces(session: Session) -> Sequence[Workspace]:
    return session.exec(select(Workspace).order_by(col(Workspace.id))).all()


def workspace_is_empty(session: Session, *, workspace: Workspace) -> bool:
    models = session.exec(
        select(func.count()).select_from(Model).where(Model.workspace_id == workspace.id)
    ).one()
    pipelines = session.exec(
        select(func.count()).select_from(Pipeline).where(Pipeline.workspace_id == workspace.id)
    ).one()
    baselines = session.exec(
        select(func.count()).select_from(Baseline).where(Baseline.workspace_id == workspace.id)
    ).one()
    return not models and not pipelines and not baselines


def delete_workspace(session: Session, *, workspace: Workspace) -> None:
    for membership in session.exec(
        select(Membership).where(Membership.workspace_id == workspace.id)
    ).all():
        session.delete(membership)
    session.flush()
    session.delete(workspace)
    session.flush()


def get_membership(
    session: Session, *, workspace: Workspace, principal: Principal
) -> Membership | None:
    return session.exec(
        select(Membership).where(
            Membership.workspace_id == workspace.id, Membership.principal_id == principal.id
        )
    ).first()


def set_membership(
    session: Session, *, workspace: Workspace, principal: Principal, role: str
) -> Membership:
    membership = get_membership(session, workspace=workspace, principal=principal)
    if membership is None:
        membership = Membership(
            workspace_id=workspace.id,  # type: ignore[arg-type]
            principal_id=principal.id,  # type: ignore[arg-type]
            role=role,
        )
    else:
        membership.role = role
    session.add(membership)
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(
            f"the membership of {principal.name!r} in {workspace.name!r} changed concurrently",
            hint="read the members again and retry",
        ) from exc
    return membership


def list_memberships(
    session: Session, *, workspace: Workspace
) -> Sequence[tuple[Membership, Principal]]:
    return session.exec(
        select(Membership, Principal)
        .where(Membership.workspace_id == workspace.id, Membership.principal_id == Principal.id)
        .order_by(Principal.name)
    ).all()


def memberships_of(session: Session, *, principal: Principal) -> dict[int, str]:
    """Workspace id → role, for every workspace ``principal`` is a member of."""
    rows = session.exec(select(Membership).where(Membership.principal_id == principal.id)).all()
    return {m.workspace_id: m.role for m in rows}
