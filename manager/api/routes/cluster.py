"""A pipeline's size on a Kubernetes cluster (services/cluster_sizing.py): what
``GET .../export/k8s`` renders when the export does not say otherwise."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from manager.api.deps import EditorScope, PlatformDep, ViewerScope
from manager.api.routes import ERRORS, WRITE_ERRORS
from manager.names import NAME_RE
from manager.services import cluster_sizing

router = APIRouter(prefix="/api/v1", tags=["pipelines"])

PipelineName = Annotated[str, PathParam(pattern=NAME_RE.pattern, max_length=63)]


class ClusterSizing(BaseModel):
    """Settings to change; a field set to null goes back to its default, one left out stays."""

    model_config = ConfigDict(extra="forbid")
    replicas: int | None = Field(default=None, description="Triton pods (1-64)")
    gpus: int | None = Field(default=None, description="GPUs per Triton pod (1-8)")
    gateway_replicas: int | None = Field(default=None, description="gateway pods (1-64)")


@router.put(
    "/workspaces/{workspace}/pipelines/{pipeline}/cluster",
    summary="Size the pipeline for a Kubernetes cluster (what lastmile export k8s renders)",
    responses=WRITE_ERRORS,
)
async def set_cluster(
    pipeline: PipelineName, body: ClusterSizing, scope: EditorScope, platform: PlatformDep
) -> dict[str, Any]:
    return await run_in_threadpool(
        cluster_sizing.update,
        platform,
        workspace=scope.workspace,
        pipeline=pipeline,
        changes=body.model_dump(exclude_unset=True),
    )


@router.get(
    "/workspaces/{workspace}/pipelines/{pipeline}/cluster",
    summary="The pipeline's size on a Kubernetes cluster (its own settings, else defaults)",
    responses=ERRORS,
)
def get_cluster(
    pipeline: PipelineName, scope: ViewerScope, platform: PlatformDep
) -> dict[str, Any]:
    return cluster_sizing.get(platform, workspace=scope.workspace, pipeline=pipeline)
