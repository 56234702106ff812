"""The registry: SQL entities and the functions that read and write them.

SQLite is the embedded default, PostgreSQL the production store; the same code runs on both
(JSON columns, no dialect-specific SQL). Store functions take the session first and the rest
by keyword; they flush but never commit, so a service decides what one transaction is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, create_engine, func, select

from manager.errors import Conflict, NotFound

DEFAULT_WORKSPACE = "default"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Workspace(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=63)
    created_at: datetime = Field(default_factory=utcnow)


class Model(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: int | None = Field(default=None, primary_key=True)
    workspace_id: int = Field(foreign_key="workspace.id", index=True)
    name: str = Field(max_length=63)
    serving: dict[str, Any] = Field(
        default_factory=dict,
        sa_column=Column(JSON, nullable=False),
        description="ServingOptions: how Triton serves this model (tuning)",
    )
    created_at: datetime = Field(default_factory=utcnow)


class ModelVersion(SQLModel, table=True):
    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("model_id", "version"),)
    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id", index=True)
    version: int
    format: str = Field(default="onnx", max_length=32)
    sha256: str = Field(max_length=64)
    size_bytes: int
    path: str = Field(description="Where the model file is kept (content-addressed).")
    signature: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class Pipeline(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: int | None = Field(default=None, primary_key=True)
    workspace_id: int = Field(foreign_key="workspace.id", index=True)
    name: str = Field(max_length=63)
    created_at: datetime = Field(default_factory=utcnow)


class PipelineVersion(SQLModel, table=True):
    __tablename__ = "pipeline_version"
    __table_args__ = (UniqueConstraint("pipeline_id", "version"),)
    id: int | None = Field(default=None, primary_key=True)
    pipeline_id: int = Field(foreign_key="pipeline.id", index=True)
    version: int
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class Deployment(SQLModel, table=True):
    """A pipeline version put on Triton. One deployment per pipeline; redeploy updates it."""

    __table_args__ = (UniqueConstraint("pipeline_id"),)
    id: int | None = Field(default=None, primary_key=True)
    pipeline_id: int = Field(foreign_key="pipeline.id", index=True)
    pipeline_version_id: int = Field(foreign_key="pipeline_version.id")
    ensemble: str = Field(description="Triton name of the ensemble")
    triton_models: list[str] = Field(sa_column=Column(JSON, nullable=False))
    state: str = Field(default="pending", max_length=16)  # pending | live | failed
    error: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class MetricSample(SQLModel, table=True):
    __tablename__ = "metric_sample"
    __table_args__ = (Index("ix_metric_sample_lookup", "metric", "model", "ts"),)
    id: int | None = Field(default=None, primary_key=True)
    ts: datetime = Field(index=True)
    server: str = Field(max_length=255)
    model: str = Field(default="", max_length=255)
    version: str = Field(default="", max_length=32)
    metric: str = Field(max_length=255)
    labels: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    value: float


# -- engine ----------------------------------------------------------------------------------


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def init_db(engine: Engine) -> None:
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        ensure_workspace(session, name=DEFAULT_WORKSPACE)
        session.commit()


# -- workspaces ------------------------------------------------------------------------------


def ensure_workspace(session: Session, *, name: str) -> Workspace:
    found = session.exec(select(Workspace).where(Workspace.name == name)).first()
    if found:
        return found
    workspace = Workspace(name=name)
    session.add(workspace)
    session.flush()
    return workspace


def get_workspace(session: Session, *, name: str) -> Workspace:
    found = session.exec(select(Workspace).where(Workspace.name == name)).first()
    if not found:
        raise NotFound(f"workspace {name!r} does not exist")
    return found


# -- models ----------------------------------------------------------------------------------


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


def list_models(session: Session, *, workspace: Workspace) -> Sequence[Model]:
    return session.exec(
        select(Model).where(Model.workspace_id == workspace.id).order_by(Model.name)
    ).all()


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
) -> tuple[Model, ModelVersion]:
    """Register the next version of a model (creating the model on its first version)."""
    model = session.exec(
        select(Model).where(Model.workspace_id == workspace.id, Model.name == name)
    ).first()
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
    )
    session.add(version)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent import took the same number
        raise Conflict(f"model {name!r} changed while importing; try again") from exc
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


def list_model_versions(session: Session, *, model: Model) -> Sequence[ModelVersion]:
    return session.exec(
        select(ModelVersion)
        .where(ModelVersion.model_id == model.id)
        .order_by(col(ModelVersion.version))
    ).all()


# -- pipelines -------------------------------------------------------------------------------


def add_pipeline_version(
    session: Session, *, workspace: Workspace, name: str, spec: dict[str, Any]
) -> tuple[Pipeline, PipelineVersion]:
    pipeline = session.exec(
        select(Pipeline).where(Pipeline.workspace_id == workspace.id, Pipeline.name == name)
    ).first()
    if pipeline is None:
        pipeline = Pipeline(workspace_id=workspace.id, name=name)  # type: ignore[arg-type]
        session.add(pipeline)
        session.flush()
    latest = session.exec(
        select(func.max(PipelineVersion.version)).where(PipelineVersion.pipeline_id == pipeline.id)
    ).one()
    version = PipelineVersion(
        pipeline_id=pipeline.id,  # type: ignore[arg-type]
        version=(latest or 0) + 1,
        spec=spec,
    )
    session.add(version)
    session.flush()
    return pipeline, version


def get_pipeline(session: Session, *, workspace: Workspace, name: str) -> Pipeline:
    found = session.exec(
        select(Pipeline).where(Pipeline.workspace_id == workspace.id, Pipeline.name == name)
    ).first()
    if not found:
        raise NotFound(
            f"pipeline {name!r} does not exist in workspace {workspace.name!r}",
            hint="create it: lastmile pipeline create " + name + " --step MODEL ...",
        )
    return found


def list_pipelines(session: Session, *, workspace: Workspace) -> Sequence[Pipeline]:
    return session.exec(
        select(Pipeline).where(Pipeline.workspace_id == workspace.id).order_by(Pipeline.name)
    ).all()


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


# -- deployments -----------------------------------------------------------------------------


def get_deployment(session: Session, *, pipeline: Pipeline) -> Deployment | None:
    return session.exec(select(Deployment).where(Deployment.pipeline_id == pipeline.id)).first()


def list_deployments(session: Session) -> Sequence[Deployment]:
    return session.exec(select(Deployment).order_by(col(Deployment.id))).all()


def save_deployment(
    session: Session,
    *,
    pipeline: Pipeline,
    pipeline_version: PipelineVersion,
    ensemble: str,
    triton_models: list[str],
    state: str,
    error: str | None = None,
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
        )
    else:
        deployment.pipeline_version_id = pipeline_version.id  # type: ignore[assignment]
        deployment.ensemble = ensemble
        deployment.triton_models = triton_models
        deployment.state = state
        deployment.error = error
        deployment.updated_at = utcnow()
    session.add(deployment)
    session.flush()
    return deployment


# -- metrics ---------------------------------------------------------------------------------


def add_metric_samples(session: Session, *, samples: Iterable[MetricSample]) -> int:
    rows = list(samples)
    session.add_all(rows)
    session.flush()
    return len(rows)


def latest_metric_samples(session: Session, *, model: str | None = None) -> Sequence[MetricSample]:
    """The samples of the most recent scrape (one row per server/model/version/metric)."""
    last = session.exec(select(func.max(MetricSample.ts))).one()
    if last is None:
        return []
    query = select(MetricSample).where(MetricSample.ts == last)
    if model is not None:
        query = query.where(MetricSample.model == model)
    return session.exec(query.order_by(MetricSample.model, MetricSample.metric)).all()


def prune_metric_samples(session: Session, *, before: datetime) -> None:
    from sqlmodel import delete

    session.exec(delete(MetricSample).where(col(MetricSample.ts) < before))  # type: ignore[call-overload]
