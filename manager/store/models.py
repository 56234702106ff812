"""Models and their versions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from manager.errors import Conflict, NotFound
from manager.store.entities import Model, ModelVersion, Workspace
from manager.store.paging import page_of


def get_model(session: Session, *, workspace: Workspace, name: str) -> Model:
    found = session.exec(
        select(Model).where(Model.workspace_id == workspace.id, Model.name == name)
    ).first()
    if not found:
        raise NotFound(
            f"model {name!r} is not registered in workspace {workspace.name!r}",
            hint="import it first: lastmile model import FILE.onnx --name " + name,
        )
    return found


def list_models(
    session: Session,
    *,
    workspace: Workspace,
    after_id: int | None = None,
    limit: int | None = None,
    name_prefix: str | None = None,
) -> tuple[Sequence[Model], int | None]:
    """A page of the workspace's models by id, and the id to continue after."""
    return page_of(
        session,
        Model,
        workspace_id=workspace.id,
        after_id=after_id,
        limit=limit,
        name_prefix=name_prefix,
    )


def _collision(name: str, exc: IntegrityError) -> Conflict:
    return Conflict(
        f"model {name!r} was registered by a concurrent import",
        hint="retry: the next import gets the next version",
    )


def add_model_version(
    session: Session,
    *,
    workspace: Workspace,
    name: str,
    sha256: str,
    size_bytes: int,
    path: str,
    signature: dict[str, Any],
    details: dict[str, Any],
    format: str = "onnx",
    created_by: str = "",
) -> tuple[Model, ModelVersion]:
    """Register the next version of a model (creating the model on its first version).

    Two imports racing for the same name or number hit a unique constraint; that is a 409
    naming the model, never a 500, and the session is left usable (rolled back).
    """
    model = session.exec(
        select(Model).where(Model.workspace_id == workspace.id, Model.name == name)
    ).first()
    try:
        if model is None:
            model = Model(workspace_id=workspace.id, name=name)  # type: ignore[arg-type]
            session.add(model)
            session.flush()
        latest = session.exec(
            select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)
        ).one()
        version = ModelVersion(
            model_id=model.id,  # type: ignore[arg-type]
            version=(latest or 0) + 1,
            format=format,
            sha256=sha256,
            size_bytes=size_bytes,
            path=path,
            signature=signature,
            details=details,
            created_by=created_by,
        )
        session.add(version)
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise _collision(name, exc) from exc
    return model, version


def get_model_version(session: Session, *, model: Model, version: int | None) -> ModelVersion:
    query = select(ModelVersion).where(ModelVersion.model_id == model.id)
    if version is None:
        query = query.order_by(col(ModelVersion.version).desc())
    else:
        query = query.where(ModelVersion.version == version)
    found = session.exec(query).first()
    if not found:
        which = "any version" if version is None else f"version {version}"
        raise NotFound(f"model {model.name!r} has no {which}")
    return found


def find_version_by_sha(session: Session, *, model: Model, sha256: str) -> ModelVersion | None:
    return session.exec(
        select(ModelVersion)
        .where(ModelVersion.model_id == model.id, ModelVersion.sha256 == sha256)
        .order_by(col(ModelVersion.version).desc())
    ).first()


def find_model(session: Session, *, workspace: Workspace, name: str) -> Model | None:
    return session.exec(
        select(Model).where(Model.workspace_id == workspace.id, Model.name == name)
    ).first()


def list_model_versions(session: Session, *, model: Model) -> Sequence[ModelVersion]:
    return session.exec(
        select(ModelVersion)
        .where(ModelVersion.model_id == model.id)
        .order_by(col(ModelVersion.version))
    ).all()


def delete_model_version(session: Session, *, version: ModelVersion) -> None:
    session.delete(version)
    session.flush()


def delete_model(session: Session, *, model: Model) -> None:
    session.delete(model)
    session.flush()


def sha_in_use(session: Session, *, sha256: str) -> bool:
    """Whether any model version (of any workspace) still keeps the file with this hash."""
    return (
        session.exec(select(ModelVersion.id).where(ModelVersion.sha256 == sha256)).first()
        is not None
    )
