"""Baselines: the per-tensor summaries assays compare windows against."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from manager.errors import Conflict, NotFound
from manager.store.entities import Assay, Baseline, Workspace


def add_baseline(session: Session, baseline: Baseline) -> Baseline:
    session.add(baseline)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(
            f"a baseline named {baseline.name!r} already exists in this workspace",
            hint="choose another name, or delete that baseline first (lastmile baseline delete)",
        ) from None
    return baseline


def find_baseline(session: Session, *, workspace: Workspace, name: str) -> Baseline | None:
    return session.exec(
        select(Baseline).where(Baseline.workspace_id == workspace.id, Baseline.name == name)
    ).first()


def get_baseline(session: Session, *, workspace: Workspace, name: str) -> Baseline:
    found = find_baseline(session, workspace=workspace, name=name)
    if found is None:
        raise NotFound(
            f"baseline {name!r} does not exist in workspace {workspace.name!r}",
            hint="lastmile baseline list shows the workspace's baselines",
        )
    return found


def list_baselines(
    session: Session, *, workspace: Workspace, model: str | None = None
) -> Sequence[Baseline]:
    """Oldest first; with ``model``, only the import baselines of that model."""
    query = select(Baseline).where(Baseline.workspace_id == workspace.id)
    if model is not None:
        query = query.where(Baseline.model == model)
    return session.exec(query.order_by(col(Baseline.id))).all()


def latest_import_baseline(
    session: Session, *, workspace: Workspace, model: str, version: int | None = None
) -> Baseline | None:
    """The newest baseline made at an import of ``model`` (of its ``version`` if given)."""
    query = select(Baseline).where(
        Baseline.workspace_id == workspace.id,
        Baseline.source == "import",
        Baseline.model == model,
    )
    if version is not None:
        query = query.where(Baseline.model_version == version)
    return session.exec(query.order_by(col(Baseline.id).desc())).first()


def assays_using_baseline(session: Session, baseline: Baseline) -> list[str]:
    """Names of the assays that compare against ``baseline``."""
    return list(
        session.exec(
            select(Assay.name).where(Assay.baseline_id == baseline.id).order_by(col(Assay.name))
        ).all()
    )


def delete_baseline(session: Session, baseline: Baseline) -> None:
    session.delete(baseline)
    session.flush()
