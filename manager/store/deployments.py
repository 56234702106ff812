"""Deployments (one per pipeline) and their history."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, select

from manager.errors import Conflict
from manager.store.entities import (
    Deployment,
    DeploymentEvent,
    Pipeline,
    PipelineVersion,
    utcnow,
)


def get_deployment(session: Session, *, pipeline: Pipeline) -> Deployment | None:
    return session.exec(select(Deployment).where(Deployment.pipeline_id == pipeline.id)).first()


def list_deployments(session: Session, *, workspace_id: int | None = None) -> Sequence[Deployment]:
    query = select(Deployment)
    if workspace_id is not None:
        query = query.where(
            Deployment.pipeline_id == Pipeline.id, Pipeline.workspace_id == workspace_id
        )
    return session.exec(query.order_by(col(Deployment.id))).all()


def save_deployment(
    session: Session,
    *,
    pipeline: Pipeline,
    pipeline_version: PipelineVersion,
    ensemble: str,
    triton_models: list[str],
    state: str,
    error: str | None = None,
    isolated: bool = False,
) -> Deployment:
    deployment = get_deployment(session, pipeline=pipeline)
    if deployment is None:
        deployment = Deployment(
            pipeline_id=pipeline.id,  # type: ignore[arg-type]
            pipeline_version_id=pipeline_version.id,  # type: ignore[arg-type]
            ensemble=ensemble,
            triton_models=triton_models,
            state=state,
            error=error,
            isolated=isolated,
        )
    else:
        deployment.pipeline_version_id = pipeline_version.id  # type: ignore[assignment]
        deployment.ensemble = ensemble
        deployment.triton_models = triton_models
        deployment.state = state
        deployment.error = error
        deployment.isolated = isolated
        deployment.updated_at = utcnow()
    session.add(deployment)
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(
            f"pipeline {pipeline.name!r} was deployed by a concurrent request",
            hint="lastmile deployment status shows what is live",
        ) from exc
    return deployment


def add_deployment_event(
    session: Session,
    *,
    pipeline: Pipeline,
    version: int,
    action: str,
    outcome: str,
    principal: str,
    error: str | None = None,
) -> DeploymentEvent:
    event = DeploymentEvent(
        pipeline_id=pipeline.id,  # type: ignore[arg-type]
        version=version,
        action=action,
        outcome=outcome,
        principal=principal,
        error=error,
    )
    session.add(event)
    session.flush()
    return event


def list_deployment_events(
    session: Session, *, pipeline: Pipeline, after_id: int | None = None, limit: int = 100
) -> Sequence[DeploymentEvent]:
    """Newest first."""
    query = select(DeploymentEvent).where(DeploymentEvent.pipeline_id == pipeline.id)
    if after_id is not None:
        query = query.where(col(DeploymentEvent.id) < after_id)
    return session.exec(query.order_by(col(DeploymentEvent.id).desc()).limit(limit)).all()


def delete_pipeline_history(session: Session, *, pipeline: Pipeline) -> None:
    session.exec(delete(DeploymentEvent).where(col(DeploymentEvent.pipeline_id) == pipeline.id))  # type: ignore[call-overload]
    session.exec(delete(Deployment).where(col(Deployment.pipeline_id) == pipeline.id))  # type: ignore[call-overload]
    session.flush()
