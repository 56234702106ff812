"""Rollouts of a pipeline: start one by a strategy, act on the active one (pause, resume,
promote, rollback, abort, switch), read its state, log and report, and the pipeline's
timeline of deployments and rollout steps."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool

from manager.api.deps import EditorScope, PlatformDep, ViewerScope
from manager.api.routes import ERRORS, WRITE_ERRORS, problems
from manager.api.schemas import (
    INT32,
    RolloutAction,
    RolloutPublic,
    RolloutStart,
    TimelineItem,
)
from manager.names import NAME_RE
from manager.services import lifecycle, rollout_report, rollouts

router = APIRouter(prefix="/api/v1/workspaces/{workspace}/pipelines/{pipeline}", tags=["rollouts"])

PipelineName = Annotated[str, PathParam(pattern=NAME_RE.pattern, max_length=63)]
ROLLOUT_ERRORS = {**WRITE_ERRORS, **problems(502, 503)}


@router.post(
    "/rollouts",
    summary="Start a rollout: load the candidates beside the stable version and begin",
    responses=ROLLOUT_ERRORS,
    status_code=201,
)
async def start(
    pipeline: PipelineName, body: RolloutStart, scope: EditorScope, platform: PlatformDep
) -> RolloutPublic:
    info = await run_in_threadpool(
        rollouts.start,
        platform,
        workspace=scope.workspace,
        pipeline=pipeline,
        strategy=body.strategy,
        candidates=body.candidates,
        params=body.params,
        principal=scope.principal,
    )
    return RolloutPublic(**info)


@router.get("/rollouts", summary="The pipeline's rollouts, newest first", responses=ERRORS)
async def list_rollouts(
    pipeline: PipelineName, scope: ViewerScope, platform: PlatformDep
) -> list[RolloutPublic]:
    items = await run_in_threadpool(
        rollout_report.list_rollouts, platform, workspace=scope.workspace, pipeline=pipeline
    )
    return [RolloutPublic(**i) for i in items]


@router.get(
    "/rollouts/current",
    summary="The active rollout (else the latest) with its log",
    responses=ERRORS,
)
async def current(
    pipeline: PipelineName, scope: ViewerScope, platform: PlatformDep
) -> RolloutPublic:
    info = await run_in_threadpool(
        rollout_report.status, platform, workspace=scope.workspace, pipeline=pipeline
    )
    return RolloutPublic(**info)


@router.get(
    "/rollouts/current/report",
    summary="Per-variant figures since the rollout began; the shadow output diff",
    responses=ERRORS,
)
async def report(
    pipeline: PipelineName, scope: ViewerScope, platform: PlatformDep
) -> dict[str, Any]:
    return await run_in_threadpool(
        rollout_report.report, platform, workspace=scope.workspace, pipeline=pipeline
    )


@router.post(
    "/rollouts/current/{action}",
    summary="Act on the active rollout",
    responses=ROLLOUT_ERRORS,
)
async def act(
    pipeline: PipelineName,
    action: Literal["pause", "resume", "promote", "rollback", "abort", "switch"],
    scope: EditorScope,
    platform: PlatformDep,
    body: RolloutAction | None = None,
) -> RolloutPublic:
    info = await run_in_threadpool(
        rollouts.act,
        platform,
        workspace=scope.workspace,
        pipeline=pipeline,
        action=action,
        version=body.version if body else None,
        reason=body.reason if body else "",
        principal=scope.principal,
    )
    return RolloutPublic(**info)


@router.get("/rollouts/{rollout_id}", summary="One rollout with its log", responses=ERRORS)
async def get_rollout(
    pipeline: PipelineName,
    rollout_id: Annotated[int, PathParam(ge=1, le=INT32)],
    scope: ViewerScope,
    platform: PlatformDep,
) -> RolloutPublic:
    info = await run_in_threadpool(
        rollout_report.status,
        platform,
        workspace=scope.workspace,
        pipeline=pipeline,
        rollout_id=rollout_id,
    )
    return RolloutPublic(**info)


@router.get(
    "/history",
    summary="Deployments and rollout steps as one timeline, newest first",
    responses=ERRORS,
)
async def history(
    pipeline: PipelineName, scope: ViewerScope, platform: PlatformDep
) -> list[TimelineItem]:
    items = await run_in_threadpool(
        lifecycle.timeline, platform, workspace=scope.workspace, pipeline=pipeline
    )
    return [TimelineItem(**i) for i in items]
