"""Pipelines: create/update from JSON or YAML (with If-Match), validate without saving,
versions and their history, export as a Triton repository, delete when not deployed."""

from __future__ import annotations

import io
import json
import tarfile
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool

from manager import __version__
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
from manager.api.schemas import INT32, Page, PipelineValidation, PipelineVersionPublic
from manager.api.scratch import scratch
from manager.errors import BadRequest, InvalidInput, PayloadTooLarge
from manager.names import NAME_RE
from manager.services import k8s_export, pipelines, repository

router = APIRouter(prefix="/api/v1/workspaces/{workspace}", tags=["pipelines"])

PipelineName = Annotated[str, PathParam(pattern=NAME_RE.pattern, max_length=63)]
MAX_DEFINITION_BYTES = 1024 * 1024

DEFINITION_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["name", "steps"],
                "description": "A chain {name, steps: ['model[:version]', ...]} or a DAG "
                "{name, steps: [{name, model, inputs}], outputs}",
                "properties": {
                    "name": {"type": "string", "pattern": NAME_RE.pattern},
                    "steps": {"type": "array", "minItems": 1, "maxItems": 256},
                    "outputs": {"type": "object"},
                },
            }
        },
        "application/yaml": {"schema": {"type": "string"}},
    },
}


async def _definition(request: Request) -> Any:
    """The body as a document: JSON, or YAML for ``application/yaml``; bounded in size."""
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_DEFINITION_BYTES:
            raise PayloadTooLarge(
                f"a pipeline definition is limited to {MAX_DEFINITION_BYTES} bytes"
            )
        chunks.append(chunk)
    body = b"".join(chunks)
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media in ("application/yaml", "application/x-yaml", "text/yaml"):
        import yaml

        try:
            document = yaml.safe_load(body.decode("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise InvalidInput(
                f"the pipeline definition is not valid YAML{where}: "
                f"{getattr(exc, 'problem', None) or exc}",
                hint="check the indentation and quoting near that place",
            ) from exc
    else:
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the body is not JSON: {exc}", hint="send a JSON object") from exc
    if not isinstance(document, dict):
        raise InvalidInput(
            "a pipeline definition is an object with name and steps",
            hint="see the README's pipeline example",
        )
    return document


@router.post(
    "/pipelines",
    status_code=201,
    summary="Create the next version of a pipeline (no-op when unchanged)",
    response_model=PipelineVersionPublic,
    responses={
        200: {"model": PipelineVersionPublic, "description": "Unchanged: the latest version"},
        **WRITE_ERRORS,
        **problems(400, 412, 413),
    },
    openapi_extra={"requestBody": DEFINITION_BODY},
)
async def create_pipeline(
    request: Request,
    response: Response,
    scope: EditorScope,
    platform: PlatformDep,
    if_match: Annotated[str | None, Header(max_length=64)] = None,
) -> Any:
    document = await _definition(request)
    info = await run_in_threadpool(
        pipelines.apply_pipeline,
        platform,
        workspace=scope.workspace,
        document=document,
        created_by=scope.principal,
        if_version=parse_if_match(
            if_match,
            "v",
            hint='send the pipeline\'s ETag, e.g. "v3" ("v0" when it must not exist yet)',
        ),
    )
    if not info.get("created"):
        response.status_code = 200
    response.headers["ETag"] = etag("v", info["version"])
    return info


@router.post(
    "/pipelines/validate",
    summary="Resolve and validate a definition without saving it",
    responses={**WRITE_ERRORS, **problems(400, 413)},
    openapi_extra={"requestBody": DEFINITION_BODY},
)
async def validate_pipeline(
    request: Request, scope: ViewerScope, platform: PlatformDep
) -> PipelineValidation:
    document = await _definition(request)
    result = await run_in_threadpool(
        pipelines.validate_definition, platform, workspace=scope.workspace, document=document
    )
    return PipelineValidation(**result)


@router.get("/pipelines", summary="Pipelines with their latest version", responses=ERRORS)
def list_pipelines(
    scope: ViewerScope,
    platform: PlatformDep,
    page: PageDep,
    name_prefix: Annotated[str | None, Query(max_length=63)] = None,
) -> Page[PipelineVersionPublic]:
    items, more = pipelines.list_pipelines(
        platform,
        workspace=scope.workspace,
        after_id=page.after_id,
        limit=page.limit,
        name_prefix=name_prefix,
    )
    return Page(
        items=[PipelineVersionPublic(**p) for p in items],
        next_cursor=next_cursor(more),
    )


@router.get("/pipelines/{name}", summary="A pipeline's latest version (ETag)", responses=ERRORS)
def get_pipeline(
    name: PipelineName, scope: ViewerScope, platform: PlatformDep, response: Response
) -> PipelineVersionPublic:
    info = pipelines.get_pipeline(platform, workspace=scope.workspace, name=name)
    response.headers["ETag"] = etag("v", info["version"])
    return PipelineVersionPublic(**info)


@router.get("/pipelines/{name}/versions", summary="Every version, oldest first", responses=ERRORS)
def list_versions(
    name: PipelineName, scope: ViewerScope, platform: PlatformDep
) -> list[PipelineVersionPublic]:
    return [
        PipelineVersionPublic(**p)
        for p in pipelines.list_versions(platform, workspace=scope.workspace, name=name)
    ]


@router.get("/pipelines/{name}/versions/{version}", summary="One version", responses=ERRORS)
def get_version(
    name: PipelineName,
    version: Annotated[int, PathParam(ge=1, le=INT32)],
    scope: ViewerScope,
    platform: PlatformDep,
) -> PipelineVersionPublic:
    return PipelineVersionPublic(
        **pipelines.get_pipeline(platform, workspace=scope.workspace, name=name, version=version)
    )


@router.delete(
    "/pipelines/{name}",
    status_code=204,
    summary="Delete a pipeline and its versions (refused while deployed)",
    responses=WRITE_ERRORS,
)
def delete_pipeline(name: PipelineName, scope: EditorScope, platform: PlatformDep) -> Response:
    pipelines.delete_pipeline(platform, workspace=scope.workspace, name=name)
    return Response(status_code=204)


@router.get(
    "/pipelines/{name}/export",
    summary="The pipeline as a Triton model repository (tar.gz)",
    response_class=Response,
    responses={200: {"content": {"application/gzip": {}}, "description": "tar.gz"}, **ERRORS},
)
async def export_pipeline(
    name: PipelineName,
    scope: ViewerScope,
    platform: PlatformDep,
    version: Annotated[int | None, Query(ge=1, le=INT32)] = None,
    profile: Literal["cpu", "gpu"] = "gpu",
) -> Response:
    def build() -> bytes:
        with scratch(platform.settings, "export") as work:
            repository.export_pipeline(
                platform,
                workspace=scope.workspace,
                pipeline=name,
                out_dir=work / "repository",
                version=version,
                profile=profile,
            )
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
                tar.add(work / "repository", arcname=".")
            return buffer.getvalue()

    return Response(await run_in_threadpool(build), media_type="application/gzip")


@router.get(
    "/pipelines/{name}/export/k8s",
    summary="The pipeline as a Kustomize folder for a Kubernetes cluster (tar.gz)",
    response_class=Response,
    responses={200: {"content": {"application/gzip": {}}, "description": "tar.gz"}, **ERRORS},
)
async def export_pipeline_k8s(
    name: PipelineName,
    scope: ViewerScope,
    platform: PlatformDep,
    version: Annotated[int | None, Query(ge=1, le=INT32)] = None,
    overlay: Literal["gpu", "cpu-dev"] = "gpu",
    replicas: Annotated[
        int | None, Query(ge=1, le=64, description="Triton pods (default: the pipeline's)")
    ] = None,
    gpus: Annotated[
        int | None, Query(ge=1, le=8, description="GPUs per Triton pod (default: the pipeline's)")
    ] = None,
    gateway_replicas: Annotated[
        int | None, Query(ge=1, le=64, description="gateway pods (default: the pipeline's)")
    ] = None,
    namespace: Annotated[str, Query(max_length=63)] = "lastmile",
    image: Annotated[str | None, Query(max_length=300, description="gateway image")] = None,
    repository_url: Annotated[str | None, Query(max_length=1000)] = None,
) -> Response:
    def build() -> bytes:
        settings = k8s_export.settings_for(
            platform,
            workspace=scope.workspace,
            pipeline=name,
            replicas=replicas,
            gpus=gpus,
            gateway_replicas=gateway_replicas,
            overlay=overlay,
            namespace=namespace,
            gateway_image=image or f"ghcr.io/lastmile-ai/lastmile:{__version__}",
            repository_url=repository_url,
        )
        files = k8s_export.export_k8s(
            platform, workspace=scope.workspace, pipeline=name, version=version, settings=settings
        )
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for path, data in sorted(files.items()):
                member = tarfile.TarInfo(path)
                if data is None:  # an empty folder (an ensemble's version folder)
                    member.type, member.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(member)
                else:
                    member.size, member.mode = len(data), 0o644
                    tar.addfile(member, io.BytesIO(data))
        return buffer.getvalue()

    return Response(await run_in_threadpool(build), media_type="application/gzip")
