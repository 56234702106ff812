"""Deployments: put a pinned pipeline version live, undeploy, roll back, status per step on
Triton, and the history of who deployed what when."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool

from manager.api.deps import EditorScope, PageDep, PlatformDep, ViewerScope, next_cursor
from manager.api.routes import ERRORS, WRITE_ERRORS, problems
from manager.api.schemas import (
    DeploymentEventPublic,
    DeploymentPublic,
    DeployRequest,
    Page,
    RollbackRequest,
)
from manager.names import NAME_RE
from manager.services import deployments, lifecycle

router = APIRouter(prefix="/api/v1/workspaces/{workspace}", tags=["deployments"])

PipelineName = Annotated[str, PathParam(pattern=NAME_RE.pattern, max_length=63)]
DEPLOY_ERRORS = {**WRITE_ERRORS, **problems(502, 503)}


@router.post(
    "/deployments",
    summary="Deploy a pipeline version (give the number, or `latest` explicitly)",
    responses=DEPLOY_ERRORS,
)
async def deploy(
    body: DeployRequest, scope: EditorScope, platform: PlatformDep
) -> DeploymentPublic:
    version = None if body.version == "latest" else body.version
    if isinstance(version, int) and not 1 <= version <= 2**31 - 1:
        from manager.errors import InvalidInput

        raise InvalidInput(f"body field 'version': {version} is not a pipeline version number")
    info = await run_in_threadpool(
        deployments.deploy,
        platform,
        workspace=scope.workspace,
        pipeline=body.pipeline,
        version=version,
        principal=scope.principal,
    )
    return DeploymentPublic(**info)


@router.get("/deployments", summary="The workspace's deployments", responses=ERRORS)
def list_deployments(scope: ViewerScope, platform: PlatformDep) -> list[DeploymentPublic]:
    return [
        DeploymentPublic(**d)
        for d in deployments.list_deployments(platform, workspaces={scope.workspace})
    ]


@router.get(
    "/deployments/{pipeline}",
    summary="A deployment with the Triton state of each step",
    responses=ERRORS,
)
async def get_deployment(
    pipeline: PipelineName, scope: ViewerScope, platform: PlatformDep
) -> DeploymentPublic:
    info = await run_in_threadpool(
        lifecycle.status, platform, workspace=scope.workspace, pipeline=pipeline
    )
    return DeploymentPublic(**info)


@router.delete(
    "/deployments/{pipeline}",
    summary="Undeploy: route out, unload, remove from the repository",
    responses=DEPLOY_ERRORS,
)
async def undeploy(
    pipeline: PipelineName, scope: EditorScope, platform: PlatformDep
) -> DeploymentPublic:
    info = await run_in_threadpool(
        lifecycle.undeploy,
        platform,
        workspace=scope.workspace,
        pipeline=pipeline,
        principal=scope.principal,
    )
    return DeploymentPublic(**info)


@router.post(
    "/deployments/{pipeline}/rollback",
    summary="Deploy an earlier version again (default: the one live before)",
    responses=DEPLOY_ERRORS,
)
async def rollback(
    pipeline: PipelineName,
    scope: EditorScope,
    platform: PlatformDep,
    body: RollbackRequest | None = None,
) -> DeploymentPublic:
    info = await run_in_threadpool(
        lifecycle.rollback,
        platform,
        workspace=scope.workspace,
        pipeline=pipeline,
        version=body.version if body else None,
        principal=scope.principal,
    )
    return DeploymentPublic(**info)


@router.get(
    "/deployments/{pipeline}/history",
    summary="Who deployed, rolled back or undeployed which version when (newest first)",
    responses=ERRORS,
)
def history(
    pipeline: PipelineName, scope: ViewerScope, platform: PlatformDep, page: PageDep
) -> Page[DeploymentEventPublic]:
    items, more = lifecycle.history(
        platform,
        workspace=scope.workspace,
        pipeline=pipeline,
        after_id=page.after_id,
        limit=page.limit,
    )
    return Page(
        items=[DeploymentEventPublic(**e) for e in items],
        next_cursor=next_cursor(more),
    )
