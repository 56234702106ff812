"""Baselines of drift assays: listed and read by viewers; made from captured traffic or an
uploaded file (streamed with the upload limit), and deleted, by editors. Import baselines are
made by a model import with a sample (``POST .../models/{name}/versions``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from manager.api.deps import EditorScope, PlatformDep, ViewerScope
from manager.api.routes import ERRORS, WRITE_ERRORS, problems
from manager.api.schemas import INT32
from manager.api.scratch import scratch
from manager.api.uploads import receive_multipart
from manager.errors import InvalidInput
from manager.names import NAME_RE
from manager.services import baselines

router = APIRouter(prefix="/api/v1/workspaces/{workspace}", tags=["baselines"])

BaselineName = Annotated[str, PathParam(pattern=NAME_RE.pattern, max_length=63)]


class BaselineFromCapture(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_RE.pattern, max_length=63, description="The new baseline")
    pipeline: str = Field(pattern=NAME_RE.pattern, max_length=63)
    since: datetime = Field(description="Windows starting at or after (UTC if no zone)")
    until: datetime = Field(description="…and before this")
    version: int | None = Field(
        default=None, ge=1, le=INT32, description="One version; all if unset"
    )


FILE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "Rows: .npy, .npz, .csv or .parquet (told by the name)",
                    },
                    "tensor": {
                        "type": "string",
                        "description": "The tensor (required but for .npz: one per array)",
                    },
                    "side": {"type": "string", "enum": ["inputs", "outputs"]},
                },
            }
        }
    },
}


@router.get(
    "/baselines", summary="The workspace's baselines with per-tensor figures", responses=ERRORS
)
def list_baselines(
    scope: ViewerScope,
    platform: PlatformDep,
    model: Annotated[
        str | None,
        Query(pattern=NAME_RE.pattern, max_length=63, description="Import baselines of a model"),
    ] = None,
) -> list[dict[str, Any]]:
    return baselines.list_baselines(platform, workspace=scope.workspace, model=model)


@router.get("/baselines/{name}", summary="One baseline", responses=ERRORS)
def get_baseline(name: BaselineName, scope: ViewerScope, platform: PlatformDep) -> dict[str, Any]:
    return baselines.get_baseline(platform, workspace=scope.workspace, name=name)


@router.post(
    "/baselines",
    status_code=201,
    summary="A baseline from a time range of a pipeline's captured traffic",
    responses=WRITE_ERRORS,
)
async def create_from_capture(
    body: BaselineFromCapture, scope: EditorScope, platform: PlatformDep
) -> dict[str, Any]:
    return await run_in_threadpool(
        baselines.from_capture,
        platform,
        workspace=scope.workspace,
        name=body.name,
        pipeline=body.pipeline,
        since=body.since,
        until=body.until,
        version=body.version,
        principal=scope.principal,
    )


def _field(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidInput(f"form field {name!r} is given {len(values)} times", hint="send it once")
    return values[0]


@router.post(
    "/baselines/{name}/file",
    status_code=201,
    summary="A baseline from an uploaded file of rows (.npy, .npz, .csv, .parquet)",
    responses={**WRITE_ERRORS, **problems(413, 415)},
    openapi_extra={"requestBody": FILE_BODY},
)
async def upload_baseline(
    name: BaselineName, request: Request, scope: EditorScope, platform: PlatformDep
) -> dict[str, Any]:
    """A `multipart/form-data` form: the `file` part, and the `tensor` and `side` fields
    (side `inputs` by default). Streamed to disk, refused once it passes the upload limit."""
    limit = platform.settings.max_upload_bytes
    with scratch(platform.settings, "upload") as work:
        form = await receive_multipart(request, work, limit=limit, file_fields=("file",))
        if "file" not in form.files:
            raise InvalidInput("the form has no 'file' part", hint="send the rows as 'file'")
        side = _field(form.fields, "side") or "inputs"
        uploaded = form.files["file"]
        return await run_in_threadpool(
            baselines.from_file,
            platform,
            workspace=scope.workspace,
            name=name,
            path=uploaded.path,
            filename=uploaded.filename,
            tensor=_field(form.fields, "tensor"),
            side=side,
            principal=scope.principal,
        )


@router.delete(
    "/baselines/{name}",
    status_code=204,
    summary="Delete a baseline no assay uses",
    responses=WRITE_ERRORS,
)
def delete_baseline(name: BaselineName, scope: EditorScope, platform: PlatformDep) -> Response:
    baselines.delete_baseline(platform, workspace=scope.workspace, name=name)
    return Response(status_code=204)
