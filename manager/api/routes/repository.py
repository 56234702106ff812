"""Triton repositories in: a .tar.gz/.tar/.zip archive, streamed with a size limit and
extracted off the event loop with limits on extracted size and member count."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from manager.api.deps import EditorScope, PlatformDep
from manager.api.routes import WRITE_ERRORS, problems
from manager.api.schemas import RepositoryImported
from manager.api.scratch import scratch
from manager.api.uploads import extract_archive, receive_raw
from manager.services import repository

router = APIRouter(prefix="/api/v1/workspaces/{workspace}", tags=["repository"])

ARCHIVE_BODY = {
    "required": True,
    "content": {
        "application/gzip": {"schema": {"type": "string", "format": "binary"}},
        "application/zip": {"schema": {"type": "string", "format": "binary"}},
        "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
    },
}


@router.post(
    "/repository/import",
    status_code=201,
    summary="Register a Triton repository: models with versions, ensembles as pipelines",
    responses={**WRITE_ERRORS, **problems(413)},
    openapi_extra={"requestBody": ARCHIVE_BODY},
)
async def import_repository(
    request: Request, scope: EditorScope, platform: PlatformDep
) -> RepositoryImported:
    settings = platform.settings
    with scratch(settings, "import") as work:
        archive = work / "repository.archive"
        await receive_raw(request, archive, limit=settings.max_upload_bytes)
        root = work / "repository"
        root.mkdir()
        await run_in_threadpool(
            extract_archive,
            archive,
            root,
            max_total_bytes=settings.max_archive_bytes,
            max_members=settings.max_archive_members,
        )
        archive.unlink()
        result = await run_in_threadpool(
            repository.import_repository, platform, workspace=scope.workspace, root=root
        )
    return RepositoryImported(**result)
