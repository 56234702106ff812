"""Assays: drift of a pipeline's tensors against a baseline and health of its live figures,
their results, alerts, backfill, and charts of both."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from manager.api.deps import EditorScope, PlatformDep, ViewerScope
from manager.api.routes import ERRORS, WRITE_ERRORS
from manager.names import NAME_RE
from manager.services import assay_charts, assay_runs, assays

router = APIRouter(prefix="/api/v1/workspaces/{workspace}", tags=["assays"])

AssayName = Annotated[str, PathParam(pattern=NAME_RE.pattern, max_length=63)]
SECONDS = 30 * 86400


class BinningIn(BaseModel):
    mode: Literal["quantile", "equal_width", "explicit"] = "quantile"
    bins: int = Field(default=5, ge=1, le=1000)
    edges: list[float] | None = Field(default=None, max_length=1001)
    outliers: bool = True


class AssayCreate(BaseModel):
    name: str = Field(pattern=NAME_RE.pattern, max_length=63)
    pipeline: str = Field(pattern=NAME_RE.pattern, max_length=63)
    kind: Literal["drift", "health"] = "drift"
    side: Literal["inputs", "outputs"] = "inputs"
    tensor: str = Field(default="", max_length=128)
    element: int | None = Field(default=None, ge=0, le=2**31 - 1)
    version: int | None = Field(default=None, ge=1, le=2**31 - 1)
    figure: str = Field(default="", max_length=32)
    step: str = Field(default="", max_length=63)
    baseline: str | None = Field(default=None, pattern=NAME_RE.pattern, max_length=63)
    binning: BinningIn = Field(default_factory=BinningIn)
    metric: str = Field(default="psi", max_length=16)
    window_s: int = Field(default=300, ge=1, le=SECONDS)
    interval_s: int | None = Field(default=None, ge=1, le=SECONDS)
    warning: float | None = None
    alert: float | None = None
    min_values: int = Field(default=assays.drift.DEFAULT_MIN_VALUES, ge=1, le=2**31 - 1)
    on_alert: Literal["none", "pause", "rollback"] = "none"
    webhook_url: str | None = Field(default=None, max_length=2048)
    webhook_secret: str | None = Field(default=None, max_length=255)


class Backfill(BaseModel):
    since: datetime
    until: datetime | None = None


class Enabled(BaseModel):
    enabled: bool


@router.post("/assays", summary="Create an assay", responses=WRITE_ERRORS, status_code=201)
async def create(body: AssayCreate, scope: EditorScope, platform: PlatformDep) -> dict[str, Any]:
    spec = assays.AssaySpec(**{**body.model_dump(), "binning": body.binning.model_dump()})
    return await run_in_threadpool(
        assays.create, platform, workspace=scope.workspace, spec=spec, principal=scope.principal
    )


@router.get("/assays", summary="The workspace's assays", responses=ERRORS)
def list_assays(
    scope: ViewerScope,
    platform: PlatformDep,
    pipeline: Annotated[str | None, Query(pattern=NAME_RE.pattern, max_length=63)] = None,
) -> list[dict[str, Any]]:
    return assays.list_assays(platform, workspace=scope.workspace, pipeline=pipeline)


@router.get("/assays/{name}", summary="One assay and its latest result", responses=ERRORS)
def get(name: AssayName, scope: ViewerScope, platform: PlatformDep) -> dict[str, Any]:
    return assays.get(platform, workspace=scope.workspace, name=name)


@router.patch("/assays/{name}", summary="Enable or disable an assay", responses=WRITE_ERRORS)
def enable(
    name: AssayName, body: Enabled, scope: EditorScope, platform: PlatformDep
) -> dict[str, Any]:
    return assays.set_enabled(platform, workspace=scope.workspace, name=name, enabled=body.enabled)


@router.delete(
    "/assays/{name}", summary="Delete an assay, its results and alerts", status_code=204,
    responses=WRITE_ERRORS,
)  # fmt: skip
def delete(name: AssayName, scope: EditorScope, platform: PlatformDep) -> Response:
    assays.delete(platform, workspace=scope.workspace, name=name)
    return Response(status_code=204)


@router.post(
    "/assays/{name}/run",
    summary="Judge the latest complete window now (alerts and actions included)",
    responses=WRITE_ERRORS,
)
async def run(
    name: AssayName, request: Request, scope: EditorScope, platform: PlatformDep
) -> dict[str, Any]:
    summariser = request.app.state.system.summariser
    return await run_in_threadpool(
        assay_runs.run_now,
        platform,
        workspace=scope.workspace,
        name=name,
        watermark=summariser.watermark if summariser is not None else None,
    )


@router.post(
    "/assays/{name}/backfill",
    summary="What the assay would have said over a past range (no alerts, no actions)",
    responses=WRITE_ERRORS,
)
async def backfill(
    name: AssayName, body: Backfill, scope: EditorScope, platform: PlatformDep
) -> dict[str, Any]:
    return await run_in_threadpool(
        assay_runs.backfill,
        platform,
        workspace=scope.workspace,
        name=name,
        since=body.since,
        until=body.until,
    )


@router.get("/assays/{name}/results", summary="Judged windows, oldest first", responses=ERRORS)
def results(
    name: AssayName,
    scope: ViewerScope,
    platform: PlatformDep,
    since: datetime | None = None,
    backfill: bool = False,
    limit: Annotated[int | None, Query(ge=1, le=10_000)] = None,
) -> dict[str, Any]:
    return assays.results(
        platform, workspace=scope.workspace, name=name, since=since, backfill=backfill,
        limit=limit,
    )  # fmt: skip


@router.get("/alerts", summary="Alerts of the workspace's assays, newest first", responses=ERRORS)
def alerts(
    scope: ViewerScope,
    platform: PlatformDep,
    assay: Annotated[str | None, Query(pattern=NAME_RE.pattern, max_length=63)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    return assays.alerts(platform, workspace=scope.workspace, name=assay, limit=limit)


@router.get(
    "/assays/{name}/chart",
    summary="A chart: the score over time with its thresholds, or baseline vs a window",
    response_class=Response,
    responses={**ERRORS, 200: {"content": {"image/svg+xml": {}, "image/png": {}}}},
)
def chart(
    name: AssayName,
    scope: ViewerScope,
    platform: PlatformDep,
    kind: Literal["scores", "histogram"] = "scores",
    fmt: Literal["svg", "png"] = "svg",
    since: datetime | None = None,
    backfill: bool = False,
) -> Response:
    body = assay_charts.render(
        platform, workspace=scope.workspace, name=name, kind=kind, fmt=fmt, since=since,
        backfill=backfill,
    )  # fmt: skip
    media = "image/svg+xml" if fmt == "svg" else "image/png"
    return Response(content=body, media_type=media)
