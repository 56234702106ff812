"""Models and their versions: streamed upload (raw body or multipart), import by framework,
listing, lineage, artefact download, serving options (with ETags) and deletion."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from manager.api.deps import (
    EditorScope,
    PageDep,
    PlatformDep,
    ViewerScope,
    etag,
    next_cursor,
    parse_if_match,
)
from manager.api.routes import ERRORS, WRITE_ERRORS, problems
from manager.api.schemas import (
    INT32,
    ModelPublic,
    ModelVersionPublic,
    Page,
    ServingPublic,
    ServingUpdate,
)
from manager.api.scratch import scratch
from manager.api.uploads import receive_multipart, receive_raw, safe_filename
from manager.domain import ServingOptions
from manager.errors import Forbidden, InvalidInput
from manager.names import NAME_RE
from manager.services import models
from manager.services.context import Platform

router = APIRouter(prefix="/api/v1/workspaces/{workspace}", tags=["models"])

ModelName = Annotated[str, PathParam(pattern=NAME_RE.pattern, max_length=63)]
VersionNo = Annotated[int, PathParam(ge=1, le=INT32)]
MAX_HEADER_REPORT = 64 * 1024

UPLOAD_BODY = {
    "required": True,
    "content": {
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary"},
        },
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": "Model file"},
                    "sample": {
                        "type": "string",
                        "format": "binary",
                        "description": "Input rows (.npz): the parity check runs on them and they "
                        "become the model's drift baseline",
                    },
                },
            }
        },
    },
}


def _client_conversion(header: str | None) -> dict[str, Any] | None:
    """A conversion report the client made itself: kept, marked as the client's claim."""
    if not header:
        return None
    if len(header) > MAX_HEADER_REPORT:
        raise InvalidInput("X-Lastmile-Conversion is larger than 64 KiB")
    try:
        report = json.loads(base64.b64decode(header, validate=True))
    except (ValueError, binascii.Error) as exc:
        raise InvalidInput(
            "X-Lastmile-Conversion is not base64-encoded JSON", hint="send the SDK's report"
        ) from exc
    if not isinstance(report, dict):
        raise InvalidInput("X-Lastmile-Conversion must be a JSON object")
    return {
        "client_conversion": report,
        "converted_by": "client",
        "lineage": "client-supplied: not verified by the server",
    }


def _check_pickle(platform: Platform, role: str, trust_pickle: bool) -> None:
    if not trust_pickle:
        return
    if not platform.settings.allow_pickle_uploads:
        raise Forbidden(
            "trust_pickle is refused: unpickling an upload runs its code on the server",
            hint="upload ONNX, TorchScript or a booster's JSON instead; a server operator "
            "may set LASTMILE_ALLOW_PICKLE_UPLOADS=true for workspace admins",
        )
    if role != "admin":
        raise Forbidden("trust_pickle needs the admin role in this workspace")


@router.post(
    "/models/{name}/versions",
    status_code=201,
    summary="Upload a model file as the next version (converted to ONNX when needed)",
    response_model=ModelVersionPublic,
    responses={
        200: {"model": ModelVersionPublic, "description": "Same content: the existing version"},
        **problems(400, 401, 403, 404, 409, 413, 415, 422),
    },
    openapi_extra={"requestBody": UPLOAD_BODY},
)
async def import_model(
    name: ModelName,
    request: Request,
    response: Response,
    scope: EditorScope,
    platform: PlatformDep,
    filename: Annotated[str, Query(max_length=255, description="Names the file")] = "model.onnx",
    framework: Annotated[
        Literal["onnx", "pytorch", "torchscript", "sklearn", "xgboost", "lightgbm", "keras"] | None,
        Query(description="Default: told by the file name's extension"),
    ] = None,
    inputs: Annotated[
        list[Annotated[str, Query(max_length=200)]] | None,
        Query(max_length=32, description="NAME:DTYPE:SHAPE, formats without a signature"),
    ] = None,
    trust_pickle: Annotated[
        bool, Query(description="Unpickle (server setting and admin role needed)")
    ] = False,
    rtol: Annotated[float, Query(ge=0, le=1, allow_inf_nan=False)] = 1e-4,
    atol: Annotated[float, Query(ge=0, le=1e6, allow_inf_nan=False)] = 1e-5,
    optimize: Annotated[
        list[Literal["ort", "onnxslim", "fp16", "int8"]] | None, Query(max_length=4)
    ] = None,
    force: Annotated[bool, Query(description="A new version even for identical content")] = False,
    x_lastmile_conversion: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Any:
    """The body is the file itself (`application/octet-stream`) or a `multipart/form-data`
    form with a `file` part and an optional `sample` part (.npz of input rows). It is
    streamed to disk and refused as soon as it passes the server's upload limit."""
    _check_pickle(platform, scope.role, trust_pickle)
    if trust_pickle:
        request.state.audit_detail = {"trust_pickle": True}
    details = _client_conversion(x_lastmile_conversion)
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    limit = platform.settings.max_upload_bytes
    with scratch(platform.settings, "upload") as work:
        sample = None
        if media == "multipart/form-data":
            form = await receive_multipart(request, work, limit=limit)
            if "file" not in form.files:
                raise InvalidInput("the form has no 'file' part", hint="send the model as 'file'")
            path = form.files["file"].path.rename(work / form.files["file"].filename)
            filename = form.files["file"].filename
            if "sample" in form.files:
                from manager.model_files import sample_from_npz_bytes

                sample = sample_from_npz_bytes(
                    form.files["sample"].path.read_bytes(), max_bytes=limit
                )
        else:
            path = work / safe_filename(filename, "model.onnx")
            await receive_raw(request, path, limit=limit)
        chosen = framework or _framework_for(path)
        result = await run_in_threadpool(
            models.import_model,
            platform,
            workspace=scope.workspace,
            name=name,
            path=path,
            conversion=models.ConversionOptions(
                framework=chosen,
                inputs=tuple(inputs or ()),
                trust_pickle=trust_pickle,
                rtol=rtol,
                atol=atol,
                optimize=tuple(optimize or ()),
                sample=sample,
            ),
            details=details,
            created_by=scope.principal,
            force=force,
        )
    if not result.get("created", True):
        response.status_code = 200
    return result


def _framework_for(path: Path) -> str:
    from manager.model_files import infer_framework

    return infer_framework(path)


@router.get("/models", summary="Models with their versions (paginated)", responses=ERRORS)
def list_models(
    scope: ViewerScope,
    platform: PlatformDep,
    page: PageDep,
    name_prefix: Annotated[str | None, Query(max_length=63)] = None,
) -> Page[ModelPublic]:
    items, more = models.list_models(
        platform,
        workspace=scope.workspace,
        after_id=page.after_id,
        limit=page.limit,
        name_prefix=name_prefix,
    )
    return Page(items=[ModelPublic(**m) for m in items], next_cursor=next_cursor(more))


@router.get("/models/{name}", summary="One model and its versions", responses=ERRORS)
def get_model(name: ModelName, scope: ViewerScope, platform: PlatformDep) -> ModelPublic:
    return ModelPublic(**models.get_model(platform, workspace=scope.workspace, name=name))


@router.get(
    "/models/{name}/versions/{version}",
    summary="One version: signature, lineage and reports",
    responses=ERRORS,
)
def get_version(
    name: ModelName, version: VersionNo, scope: ViewerScope, platform: PlatformDep
) -> ModelVersionPublic:
    info, _path = models.get_version(
        platform, workspace=scope.workspace, name=name, version=version
    )
    return ModelVersionPublic(**info)


@router.get(
    "/models/{name}/versions/{version}/artifact",
    summary="Download the version's ONNX file",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The ONNX file"},
        **ERRORS,
    },
)
def download_version(
    name: ModelName, version: VersionNo, scope: ViewerScope, platform: PlatformDep
) -> FileResponse:
    _info, path = models.get_version(
        platform, workspace=scope.workspace, name=name, version=version
    )
    if not path.is_file():
        raise InvalidInput(f"the file of model {name!r} version {version} is missing")
    return FileResponse(
        path, media_type="application/octet-stream", filename=f"{name}-v{version}.onnx"
    )


@router.delete(
    "/models/{name}/versions/{version}",
    status_code=204,
    summary="Delete a version that no deployment serves",
    responses=WRITE_ERRORS,
)
def delete_version(
    name: ModelName, version: VersionNo, scope: EditorScope, platform: PlatformDep
) -> Response:
    models.delete_version(platform, workspace=scope.workspace, name=name, version=version)
    return Response(status_code=204)


@router.get(
    "/models/{name}/serving",
    summary="How Triton serves the model, and the config that gives (ETag)",
    responses=ERRORS,
)
def get_serving(
    name: ModelName, scope: ViewerScope, platform: PlatformDep, response: Response
) -> ServingPublic:
    info = models.get_serving(platform, workspace=scope.workspace, name=name)
    response.headers["ETag"] = etag("r", info["revision"])
    return ServingPublic(**info)


@router.put(
    "/models/{name}/serving",
    summary="Set the serving options (checked against the model first; If-Match optional)",
    responses={**WRITE_ERRORS, **problems(400, 412)},
)
def configure_model(
    name: ModelName,
    body: ServingUpdate,
    scope: EditorScope,
    platform: PlatformDep,
    response: Response,
    if_match: Annotated[str | None, Header(max_length=64)] = None,
) -> ServingPublic:
    info = models.configure_model(
        platform,
        workspace=scope.workspace,
        name=name,
        options=ServingOptions.from_dict(body.model_dump()),
        if_revision=parse_if_match(if_match, "r", hint='send the ETag, e.g. "r3"'),
    )
    response.headers["ETag"] = etag("r", info["revision"])
    return ServingPublic(**info)
