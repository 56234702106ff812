"""Request and response bodies of the management API (``XCreate`` in, ``XPublic`` out).

Numbers have bounds that fit the store (int32 versions, int64 sizes) so a client's mistake is a
422 naming the field, never an overflow deep in the database; floats refuse NaN and infinity.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from manager.names import NAME_RE

T = TypeVar("T")
INT32 = 2**31 - 1
Name = Field(pattern=NAME_RE.pattern, max_length=63)
VersionNumber = Field(ge=1, le=INT32)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at end")


# -- workspaces, members, principals, keys ---------------------------------------------------


class WorkspaceCreate(Strict):
    name: str = Name


class WorkspacePublic(BaseModel):
    name: str
    created_at: datetime
    role: str | None = Field(description="The caller's role here")


class MemberSet(Strict):
    role: Literal["viewer", "editor", "admin"]


class MemberPublic(BaseModel):
    principal: str
    kind: str
    role: str
    since: datetime


class PrincipalCreate(Strict):
    name: str = Name
    workspace: str | None = Field(default=None, pattern=NAME_RE.pattern, max_length=63)
    role: Literal["viewer", "editor", "admin"] | None = None
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class PrincipalPublic(BaseModel):
    name: str
    kind: str
    is_owner: bool
    created_at: datetime


class KeyCreate(Strict):
    label: str = Field(default="", max_length=63)
    principal: str | None = Field(
        default=None, pattern=NAME_RE.pattern, max_length=63, description="Owner only"
    )
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class ServiceKeyCreate(Strict):
    name: str = Field(pattern=NAME_RE.pattern, max_length=40)
    role: Literal["viewer", "editor", "admin"] = "editor"
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class KeyPublic(BaseModel):
    key_id: str
    principal: str
    label: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    role: str | None = None


class KeyCreated(KeyPublic):
    key: str = Field(description="The key itself: shown this once, never again")


class PrincipalCreated(PrincipalPublic):
    key: str = Field(description="The principal's first key: shown this once")
    key_info: KeyPublic


class WhoAmI(BaseModel):
    principal: str
    key_id: str
    is_owner: bool
    workspaces: dict[str, str]


# -- models ----------------------------------------------------------------------------------


class TensorPublic(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class SignaturePublic(BaseModel):
    model_config = ConfigDict(extra="allow")
    inputs: list[TensorPublic]
    outputs: list[TensorPublic]
    batched: bool


class ModelVersionPublic(BaseModel):
    model: str
    version: int
    format: str
    sha256: str
    size_bytes: int
    signature: SignaturePublic
    details: dict[str, Any]
    created_by: str = ""
    created_at: datetime
    created: bool | None = Field(
        default=None, description="On import: false when an identical version already existed"
    )


class ModelPublic(BaseModel):
    name: str
    serving: dict[str, Any]
    revision: int = Field(description="Changes with the serving options (the ETag)")
    versions: list[ModelVersionPublic]


class ServingUpdate(Strict):
    """How Triton serves a model; unset fields keep the profile's preset."""

    tuning: list[str] = Field(default_factory=list, max_length=16)
    instances: int | None = Field(default=None, ge=1, le=64)
    gpus: list[int] | None = Field(default=None, max_length=64)
    max_batch_size: int | None = Field(default=None, ge=0, le=4096)
    preferred_batch_sizes: list[int] = Field(default_factory=list, max_length=16)
    max_queue_delay_us: int | None = Field(default=None, ge=0, le=60_000_000)
    response_cache: bool | None = None
    warmup: bool = False


class ServingPublic(BaseModel):
    model: str
    serving: dict[str, Any]
    config: str
    revision: int


# -- pipelines -------------------------------------------------------------------------------


class StepPublic(BaseModel):
    name: str
    model: str
    version: int
    inputs: dict[str, str]


class PipelineVersionPublic(BaseModel):
    pipeline: str
    version: int
    steps: list[StepPublic]
    inputs: list[TensorPublic]
    outputs: list[TensorPublic]
    created_by: str = ""
    created_at: datetime
    created: bool | None = None
    deployed_version: int | None = None


class PipelineValidation(BaseModel):
    valid: bool
    pipeline: PipelineVersionPublic | None = None


# -- deployments -----------------------------------------------------------------------------


class DeployRequest(Strict):
    pipeline: str = Name
    version: int | Literal["latest"] = Field(
        description="The pipeline version to put live, or `latest` — said explicitly"
    )


class RollbackRequest(Strict):
    version: int | None = Field(
        default=None, ge=1, le=INT32, description="Version to return to; default the one before"
    )


class StepState(BaseModel):
    triton_model: str
    version: int | None
    ready: bool | None
    state: str


class DeploymentPublic(BaseModel):
    workspace: str
    pipeline: str
    version: int
    state: str
    error: str | None
    ensemble: str
    triton_models: list[str]
    inputs: list[TensorPublic]
    outputs: list[TensorPublic]
    updated_at: datetime
    steps: list[StepState] | None = None


class DeploymentEventPublic(BaseModel):
    version: int
    action: str
    outcome: str
    error: str | None
    principal: str
    ts: datetime


# -- rollouts ---------------------------------------------------------------------------------


class RolloutStart(Strict):
    strategy: Literal["hot-swap", "canary", "ab", "shadow", "blue-green"] = Field(
        description="hot-swap: switch at once after warm-up; canary: weight in steps judged by "
        "live gates; ab: fixed sticky weights; shadow: candidates get a copy of live traffic; "
        "blue-green: a second complete copy and an atomic switch"
    )
    candidates: list[Annotated[int, Field(ge=1, le=INT32)]] = Field(
        min_length=1, max_length=15, description="Candidate pipeline versions"
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="canary: steps, interval_s, min_requests, gates {max_error_rate, "
        "max_error_rate_increase, max_p99_ratio, max_drift}; ab: weights {version: percent} "
        "summing to 100, sticky_header, sticky_parameter; shadow: sample, timeout_s, "
        "max_queue, tolerance",
    )


class RolloutAction(Strict):
    version: int | None = Field(
        default=None, ge=1, le=INT32, description="promote: the winning version (A/B/n)"
    )
    reason: str = Field(default="", max_length=1000, description="Recorded in the rollout's log")


class RolloutEventPublic(BaseModel):
    ts: datetime
    action: str
    state: str
    weights: dict[str, float]
    reason: str
    figures: dict[str, Any]
    principal: str


class RolloutServers(BaseModel):
    stable: list[str] = Field(description="HTTP URLs of the servers that take the stable version")
    candidates: list[str] = Field(description="HTTP URLs of the candidates' own servers")
    isolated: bool = Field(
        description="False when too few servers are up to keep the two apart: they share all"
    )


class RolloutPublic(BaseModel):
    id: int
    workspace: str
    pipeline: str
    strategy: str
    state: str
    stable_version: int
    candidates: list[int]
    weights: dict[str, float] = Field(description="Version -> percent of traffic now")
    params: dict[str, Any]
    step: int
    reason: str
    created_by: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    events: list[RolloutEventPublic] = Field(default_factory=list)
    servers: RolloutServers | None = Field(
        default=None,
        description="Where each side's traffic goes, for an active rollout whose candidates "
        "have servers of their own (candidate_servers)",
    )


class TimelineItem(BaseModel):
    ts: datetime
    kind: Literal["deployment", "rollout"]
    action: str
    version: int | None
    outcome: str
    detail: str
    principal: str
    rollout: int | None
    weights: dict[str, float] | None = None


# -- repository, metrics, audit, system -------------------------------------------------------


class RepositoryImported(BaseModel):
    models: list[dict[str, Any]]
    pipelines: list[dict[str, Any]]


class MetricPublic(BaseModel):
    ts: datetime
    server: str
    model: str
    version: str
    metric: str
    labels: dict[str, str]
    value: float


class AuditEventPublic(BaseModel):
    id: int
    ts: datetime
    principal: str
    key_id: str
    workspace: str
    action: str
    target: str
    status: int
    outcome: str
    request_id: str
    detail: dict[str, Any]


class SystemEventPublic(BaseModel):
    id: int
    ts: datetime
    kind: str
    component: str
    message: str
    detail: dict[str, Any]


class TemplatePublic(BaseModel):
    name: str
    about: str
    origin: str


class Health(BaseModel):
    status: str
    version: str


class ReconcileAction(BaseModel):
    kind: Literal["remove", "rewrite", "load", "unload", "push_routes"]
    target: str = Field(description="Triton name, `<name>/<version>`, a staging folder or gateway")
    reason: str


class ReconcileError(BaseModel):
    target: str
    error: str


class ReconcileReport(BaseModel):
    dry_run: bool
    actions: list[ReconcileAction] = Field(description="Taken, or with dry_run: to take")
    errors: list[ReconcileError] = Field(description="What could not be checked or repaired")
    in_sync: bool = Field(description="Nothing to do and nothing wrong")


class Problem(BaseModel):
    """An error: ``application/problem+json``."""

    type: str
    title: str
    status: int
    detail: str
    hint: str | None = None
    request_id: str | None = None
    errors: list[dict[str, str]] | None = None
