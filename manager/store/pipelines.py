"""Pipelines and their immutable versions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from manager.errors import Conflict, NotFound
from manager.store.entities import Pipeline, PipelineVersion, Workspace
from manager.store.paging import page_of


def add_pipeline_version(
    session: Session,
    *,
    workspace: Workspace,
    name: str,
    spec: dict[str, Any],
    created_by: str = "",
) -> tuple[Pipeline, PipelineVersion]:
    pipeline = session.exec(
        select(Pipeline).where(Pipeline.workspace_id == workspace.id, Pipeline.name == name)
    ).first()
    try:
        if pipeline is None:
            pipeline = Pipeline(workspace_id=workspace.id, name=name)  # type: ignore[arg-type]
            session.add(pipeline)
            session.flush()
        latest = session.exec(
            select(func.max(PipelineVersion.version)).where(
                PipelineVersion.pipeline_id == pipeline.id
            )
        ).one()
        version = PipelineVersion(
            pipeline_id=pipeline.id,  # type: ignore[arg-type]
            version=(latest or 0) + 1,
            spec=spec,
            created_by=created_by,
        )
        session.add(version)
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(
            f"pipeline {name!r} got a new version from a concurrent request",
            hint="read the pipeline again and retry",
        ) from exc
    return pipeline, version


def get_pipeline(session: Session, *, workspace: Workspace, name: str) -> Pipeline:
    found = find_pipeline(session, workspace=workspace, name=name)
    if not found:
        raise NotFound(
            f"pipeline {name!r} does not exist in workspace {workspace.name!r}",
            hint="create it: lastmile pipeline create " + name + " --step MODEL ...",
        )
    return found


def find_pipeline(session: Session, *, workspace: Workspace, name: str) -> Pipeline | None:
    return session.exec(
        select(Pipeline).where(Pipeline.workspace_id == workspace.id, Pipeline.name == name)
    ).first()


def list_pipelines(
    session: Session,
    *,
    workspace: Workspace,
    after_id: int | None = None,
    limit: int | None = None,
    name_prefix: str | None = None,
) -> tuple[Sequence[Pipeline], int | None]:
    """A page of the workspace's pipelines by id, and the id to continue after."""
    return page_of(
        session,
        Pipeline,
        workspace_id=workspace.id,
        after_id=after_id,
        limit=limit,
        name_prefix=name_prefix,
    )


def get_pipeline_version(
    session: Session, *, pipeline: Pipeline, version: int | None = None
) -> PipelineVersion:
    query = select(PipelineVersion).where(PipelineVersion.pipeline_id == pipeline.id)
    if version is None:
        query = query.order_by(col(PipelineVersion.version).desc())
    else:
        query = query.where(PipelineVersion.version == version)
    found = session.exec(query).first()
    if not found:
        raise NotFound(f"pipeline {pipeline.name!r} has no version {version}")
    return found


def list_pipeline_versions(session: Session, *, pipeline: Pipeline) -> Sequence[PipelineVersion]:
    return session.exec(
        select(PipelineVersion)
        .where(PipelineVersion.pipeline_id == pipeline.id)
        .order_by(col(PipelineVersion.version))
    ).all()


def all_pipeline_specs(session: Session, *, workspace: Workspace) -> Sequence[PipelineVersion]:
    return session.exec(
        select(PipelineVersion).where(
            PipelineVersion.pipeline_id == Pipeline.id, Pipeline.workspace_id == workspace.id
        )
    ).all()


def delete_pipeline(session: Session, *, pipeline: Pipeline) -> None:
    for version in list_pipeline_versions(session, pipeline=pipeline):
        session.delete(version)
    session.flush()
    session.delete(pipeline)
    session.flush()
