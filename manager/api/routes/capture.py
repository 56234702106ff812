"""Data capture: a pipeline's capture rate and the summaries of what it saw and answered."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from manager.api.deps import CallerDep, EditorScope, PlatformDep, ViewerScope
from manager.api.routes import ERRORS, WRITE_ERRORS
from manager.errors import InvalidInput
from manager.names import NAME_RE
from manager.services import data_capture

router = APIRouter(prefix="/api/v1", tags=["capture"])

PipelineName = Annotated[str, PathParam(pattern=NAME_RE.pattern, max_length=63)]


class CaptureRate(BaseModel):
    rate: float = Field(ge=0, le=1, description="Fraction of inference calls sampled (0: none)")


@router.put(
    "/workspaces/{workspace}/pipelines/{pipeline}/capture",
    summary="Sample a fraction of the pipeline's inference calls for data capture",
    responses=WRITE_ERRORS,
)
async def set_capture(
    pipeline: PipelineName, body: CaptureRate, scope: EditorScope, platform: PlatformDep
) -> dict[str, Any]:
    return await run_in_threadpool(
        data_capture.set_rate,
        platform,
        workspace=scope.workspace,
        pipeline=pipeline,
        rate=body.rate,
    )


@router.get(
    "/workspaces/{workspace}/pipelines/{pipeline}/capture",
    summary="The capture rate and per-tensor summaries of captured traffic",
    responses=ERRORS,
)
def get_capture(
    pipeline: PipelineName,
    scope: ViewerScope,
    platform: PlatformDep,
    since: Annotated[datetime | None, Query(description="Windows starting at or after")] = None,
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> dict[str, Any]:
    return data_capture.view(
        platform, workspace=scope.workspace, pipeline=pipeline, since=since, version=version
    )


@router.post(
    "/capture/summarise",
    summary="Summarise the captured traffic waiting in the spool now (owner)",
    responses=WRITE_ERRORS,
)
async def summarise_now(request: Request, caller: CallerDep) -> dict[str, Any]:
    caller.require_owner("run the capture summariser")
    summariser = request.app.state.system.summariser
    if summariser is None:
        raise InvalidInput("no capture summariser runs in this process", hint="lastmile up")
    result = await run_in_threadpool(summariser.run_once)
    return result.to_dict()
