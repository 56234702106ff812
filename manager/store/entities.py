"""The registry's tables. Each aggregate's functions live in their own module beside this one.

Entities are plain SQLModel tables; what the API reads and writes are the ``XCreate`` /
``XPublic`` models in ``manager.api.schemas``. Schema changes go through an Alembic migration
in ``manager/store/migrations`` (``alembic revision --autogenerate`` against this metadata).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from manager.assays.drift import DEFAULT_MIN_VALUES

DEFAULT_WORKSPACE = "default"
ROLES = ("viewer", "editor", "admin")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Workspace(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=63)
    created_at: datetime = Field(default_factory=utcnow)


class Principal(SQLModel, table=True):
    """Someone or something that holds API keys: a person, or a workspace's service account."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=63)
    kind: str = Field(default="user", max_length=16)  # user | service
    is_owner: bool = Field(default=False, description="The server owner: admin everywhere")
    created_at: datetime = Field(default_factory=utcnow)


class ApiKey(SQLModel, table=True):
    """A key is shown once; only its sha256 is kept (the key has 256 bits of entropy)."""

    __tablename__ = "api_key"
    id: int | None = Field(default=None, primary_key=True)
    key_id: str = Field(index=True, unique=True, max_length=16)
    principal_id: int = Field(foreign_key="principal.id", index=True)
    secret_sha256: str = Field(max_length=64)
    label: str = Field(default="", max_length=63)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class Membership(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("workspace_id", "principal_id"),)
    id: int | None = Field(default=None, primary_key=True)
    workspace_id: int = Field(foreign_key="workspace.id", index=True)
    principal_id: int = Field(foreign_key="principal.id", index=True)
    role: str = Field(max_length=16)  # viewer | editor | admin
    created_at: datetime = Field(default_factory=utcnow)


class AuditEvent(SQLModel, table=True):
    """One row per mutating API call, whatever its outcome."""

    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_event_workspace_id", "workspace", "id"),)
    id: int | None = Field(default=None, primary_key=True)
    ts: datetime = Field(default_factory=utcnow, index=True)
    principal: str = Field(default="", max_length=63, description="'' when unauthenticated")
    key_id: str = Field(default="", max_length=16)
    workspace: str = Field(default="", max_length=63)
    action: str = Field(max_length=255, description="METHOD and route template")
    target: str = Field(max_length=1024, description="The request path")
    status: int
    outcome: str = Field(max_length=16)  # ok | refused | failed
    request_id: str = Field(max_length=64)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class SystemEvent(SQLModel, table=True):
    """What the control plane did on its own: a process restarted and why, a reconciliation
    that repaired something. Operator-facing (the owner reads them)."""

    __tablename__ = "system_event"
    id: int | None = Field(default=None, primary_key=True)
    ts: datetime = Field(default_factory=utcnow, index=True)
    kind: str = Field(max_length=32, description="restart | failed | recovered | reconcile")
    component: str = Field(max_length=255, description="e.g. triton http://127.0.0.1:8100")
    message: str = Field(max_length=4096)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


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
    revision: int = Field(default=1, description="Bumped on every change of `serving` (ETag)")
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
    created_by: str = Field(default="", max_length=63)
    created_at: datetime = Field(default_factory=utcnow)


class Pipeline(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: int | None = Field(default=None, primary_key=True)
    workspace_id: int = Field(foreign_key="workspace.id", index=True)
    name: str = Field(max_length=63)
    created_at: datetime = Field(default_factory=utcnow)
    # fraction of its inference calls the gateway samples for data capture (0: none)
    capture_rate: float = Field(default=0.0)
    # its size on a Kubernetes cluster: {"replicas", "gpus", "gateway_replicas"}, each
    # optional (services/cluster_sizing.py); what `lastmile export k8s` renders by default
    cluster: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False, server_default="{}")
    )


class PipelineVersion(SQLModel, table=True):
    __tablename__ = "pipeline_version"
    __table_args__ = (UniqueConstraint("pipeline_id", "version"),)
    id: int | None = Field(default=None, primary_key=True)
    pipeline_id: int = Field(foreign_key="pipeline.id", index=True)
    version: int
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_by: str = Field(default="", max_length=63)
    created_at: datetime = Field(default_factory=utcnow)


class Deployment(SQLModel, table=True):
    """A pipeline version put on Triton. One deployment per pipeline; redeploy updates it."""

    __table_args__ = (UniqueConstraint("pipeline_id"),)
    id: int | None = Field(default=None, primary_key=True)
    pipeline_id: int = Field(foreign_key="pipeline.id", index=True)
    pipeline_version_id: int = Field(foreign_key="pipeline_version.id")
    ensemble: str = Field(description="Triton name of the ensemble")
    triton_models: list[str] = Field(sa_column=Column(JSON, nullable=False))
    state: str = Field(default="pending", max_length=16)  # pending | live | failed | undeployed
    error: str | None = None
    # its steps are private copies of their models (a blue/green rollout's green), named
    # ``<ws>.<pipeline>.v<N>.<model>``
    isolated: bool = Field(default=False)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class DeploymentEvent(SQLModel, table=True):
    """The history of a pipeline's deployment: who put which version live, or took it down."""

    __tablename__ = "deployment_event"
    id: int | None = Field(default=None, primary_key=True)
    pipeline_id: int = Field(foreign_key="pipeline.id", index=True)
    version: int
    action: str = Field(max_length=16)  # deploy | undeploy | rollback
    outcome: str = Field(max_length=16)  # live | failed | undeployed
    error: str | None = None
    principal: str = Field(default="", max_length=63)
    ts: datetime = Field(default_factory=utcnow)


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


class MetricPoint(SQLModel, table=True):
    """One figure (manager.observe.figures) of one interval, named the way users name
    things: workspace, pipeline, version, step. ``step`` is "" for a pipeline version's
    ensemble and for gateway figures; workspace and pipeline are "" for server-wide figures
    (CPU, GPU) and for Triton models no pipeline owns (``step`` then holds the Triton name).
    ``resolution_s`` is 0 as measured, 300 or 3600 once downsampled (old points)."""

    __tablename__ = "metric_point"
    __table_args__ = (Index("ix_metric_point_lookup", "workspace", "pipeline", "name", "ts"),)
    id: int | None = Field(default=None, primary_key=True)
    ts: datetime = Field(index=True, description="End of the interval")
    interval_s: float
    resolution_s: int = Field(default=0)
    source: str = Field(max_length=16)  # triton | gateway | prometheus
    server: str = Field(max_length=255)
    workspace: str = Field(default="", max_length=63)
    pipeline: str = Field(default="", max_length=63)
    version: int | None = None
    step: str = Field(default="", max_length=255)
    name: str = Field(max_length=63)
    labels: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    value: float


class CaptureSummary(SQLModel, table=True):
    """What one pipeline version saw (inputs) or answered (outputs) on one tensor during one
    window of captured traffic: manager.assays.sketch summaries, pooled over every element and
    per element (for tensors of at most CAPTURE_MAX_ELEMENTS elements per row). Names, not
    ids: the figures outlive an undeploy, like metrics do."""

    __tablename__ = "capture_summary"
    __table_args__ = (
        UniqueConstraint("workspace", "pipeline", "version", "side", "tensor", "window_start"),
        Index(
            "ix_capture_summary_lookup", "workspace", "pipeline", "side", "tensor", "window_start"
        ),
    )
    id: int | None = Field(default=None, primary_key=True)
    workspace: str = Field(max_length=63)
    pipeline: str = Field(max_length=63)
    version: int
    side: str = Field(max_length=8)  # inputs | outputs
    tensor: str = Field(max_length=128)
    window_start: datetime
    width_s: int
    rows: int = 0
    pooled: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    elements: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    # assay id -> exact bin counts of this window's values over that assay's edges, for the
    # drift assays that existed when the window was first summarised
    assay_counts: dict[str, list[int]] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )


ROLLOUT_ACTIVE_STATES = ("pending", "running", "paused")


class Rollout(SQLModel, table=True):
    """A change of what serves a pipeline: a strategy moving traffic from its stable version to
    one or more candidates, with the state machine's record (rollout.controller) and the
    weights in force. ``active_pipeline_id`` is the pipeline's id while the rollout is active
    and NULL once it ended: a unique column, so a pipeline has at most one active rollout
    whatever the races."""

    __table_args__ = (UniqueConstraint("active_pipeline_id"),)
    id: int | None = Field(default=None, primary_key=True)
    pipeline_id: int = Field(foreign_key="pipeline.id", index=True)
    active_pipeline_id: int | None = Field(default=None)
    strategy: str = Field(max_length=16)  # hot-swap | canary | ab | shadow | blue-green
    stable_version: int
    candidates: list[int] = Field(sa_column=Column(JSON, nullable=False))
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    state: str = Field(default="pending", max_length=16)
    # version (as text) -> percentage of traffic now
    weights: dict[str, float] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    step: int = -1
    step_started_at: float = 0.0
    paused_at: float | None = None
    # cumulative gateway counters when the current window began (rollout.controller)
    window: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    reason: str = Field(default="", max_length=4096)
    created_by: str = Field(default="", max_length=63)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class RolloutEvent(SQLModel, table=True):
    """One step or decision of a rollout, with its reason and the figures behind it."""

    __tablename__ = "rollout_event"
    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = Field(foreign_key="rollout.id", index=True)
    pipeline_id: int = Field(foreign_key="pipeline.id", index=True)
    ts: datetime = Field(default_factory=utcnow)
    action: str = Field(max_length=16)
    state: str = Field(max_length=16)
    weights: dict[str, float] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    reason: str = Field(default="", max_length=4096)
    figures: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    principal: str = Field(default="", max_length=63)


class RoutingGeneration(SQLModel, table=True):
    """The gateway routing table's generation: one row, bumped by every table the control
    plane builds, so generations come from the store, not from a clock."""

    __tablename__ = "routing_generation"
    id: int | None = Field(default=None, primary_key=True)
    generation: int = 0


class Baseline(SQLModel, table=True):
    """Per-tensor summaries (manager.assays.sketch) that assays compare windows against:
    made from a model's sample data at import, from a time range of captured traffic, or
    from an uploaded file. ``tensors`` maps "<side>/<tensor>" to {"rows", "pooled",
    "elements"} in the form capture summaries use."""

    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: int | None = Field(default=None, primary_key=True)
    workspace_id: int = Field(foreign_key="workspace.id", index=True)
    name: str = Field(max_length=63)
    source: str = Field(max_length=16)  # import | capture | file
    model: str = Field(default="", max_length=63)  # source import: the registered model
    model_version: int | None = None
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    tensors: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_by: str = Field(default="", max_length=63)
    created_at: datetime = Field(default_factory=utcnow)


class Assay(SQLModel, table=True):
    """A scheduled check of one pipeline: drift of a tensor against a baseline (kind
    "drift"), or a live figure against thresholds (kind "health"). Edges and the
    baseline's bin counts are fixed when the assay is made, so every window is binned alike."""

    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: int | None = Field(default=None, primary_key=True)
    workspace_id: int = Field(foreign_key="workspace.id", index=True)
    pipeline_id: int = Field(foreign_key="pipeline.id", index=True)
    name: str = Field(max_length=63)
    kind: str = Field(max_length=8)  # drift | health
    side: str = Field(default="inputs", max_length=8)
    tensor: str = Field(default="", max_length=128)
    element: int | None = None  # None: every element pooled
    version: int | None = None  # the pipeline version watched; None: all together
    figure: str = Field(default="", max_length=32)  # health: which live figure
    step: str = Field(default="", max_length=63)  # health: one step's figure ("" pipeline)
    baseline_id: int | None = Field(default=None, foreign_key="baseline.id")
    binning: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    edges: list[float] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    baseline_counts: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    metric: str = Field(default="psi", max_length=16)
    window_s: int
    interval_s: int
    warning: float | None = None
    alert: float | None = None
    min_values: int = Field(default=DEFAULT_MIN_VALUES)  # drift: fewer values in a window: no_data
    on_alert: str = Field(default="none", max_length=16)  # none | pause | rollback
    webhook_url: str | None = Field(default=None, max_length=2048)
    webhook_secret: str | None = Field(default=None, max_length=255)
    enabled: bool = Field(default=True)
    last_window_end: datetime | None = None
    created_by: str = Field(default="", max_length=63)
    created_at: datetime = Field(default_factory=utcnow)


class AssayResult(SQLModel, table=True):
    """One window judged: the score, its status against the thresholds and the figures."""

    __tablename__ = "assay_result"
    __table_args__ = (UniqueConstraint("assay_id", "window_end", "backfill"),)
    id: int | None = Field(default=None, primary_key=True)
    assay_id: int = Field(foreign_key="assay.id", index=True)
    window_start: datetime
    window_end: datetime
    score: float | None = None
    status: str = Field(max_length=8)  # ok | warning | alert | no_data
    count: int = 0  # values in the window (drift) or figure points (health)
    window_counts: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    backfill: bool = Field(default=False)
    created_at: datetime = Field(default_factory=utcnow)


class Alert(SQLModel, table=True):
    """A result at warning or alert: what the webhook was told (with its delivery state) and
    what was done about it (a rollout paused or rolled back)."""

    id: int | None = Field(default=None, primary_key=True)
    assay_id: int = Field(foreign_key="assay.id", index=True)
    result_id: int = Field(foreign_key="assay_result.id")
    status: str = Field(max_length=8)  # warning | alert
    message: str = Field(default="", max_length=4096)
    action: str = Field(default="", max_length=255)
    delivery: str = Field(default="none", max_length=16)  # none | pending | delivered | failed
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = Field(default=None, max_length=1024)
    delivered_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
