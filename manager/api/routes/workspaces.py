"""Workspaces, members and workspace service keys."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from manager.api.deps import AdminScope, CallerDep, PageDep, PlatformDep, ViewerScope, next_cursor
from manager.api.routes import ERRORS, WRITE_ERRORS
from manager.api.schemas import (
    KeyCreated,
    KeyPublic,
    MemberPublic,
    MemberSet,
    Page,
    ServiceKeyCreate,
    WorkspaceCreate,
    WorkspacePublic,
)
from manager.services import workspaces

router = APIRouter(prefix="/api/v1", tags=["workspaces"])


@router.post(
    "/workspaces",
    status_code=201,
    summary="Create a workspace (server owner)",
    responses=WRITE_ERRORS,
)
def create_workspace(
    body: WorkspaceCreate, caller: CallerDep, platform: PlatformDep
) -> WorkspacePublic:
    return WorkspacePublic(**workspaces.create_workspace(platform, caller, name=body.name))


@router.get("/workspaces", summary="Workspaces you are a member of", responses=ERRORS)
def list_workspaces(
    caller: CallerDep, platform: PlatformDep, page: PageDep
) -> Page[WorkspacePublic]:
    items, more = workspaces.list_workspaces(
        platform, caller, after_id=page.after_id, limit=page.limit
    )
    return Page(
        items=[WorkspacePublic(**w) for w in items],
        next_cursor=next_cursor(more),
    )


@router.get("/workspaces/{workspace}", summary="One workspace and your role", responses=ERRORS)
def get_workspace(scope: ViewerScope, platform: PlatformDep) -> WorkspacePublic:
    return WorkspacePublic(**workspaces.get_workspace(platform, scope.caller, name=scope.workspace))


@router.delete(
    "/workspaces/{workspace}",
    status_code=204,
    summary="Delete an empty workspace (admin)",
    responses=WRITE_ERRORS,
)
def delete_workspace(scope: AdminScope, platform: PlatformDep) -> Response:
    workspaces.delete_workspace(platform, scope.caller, name=scope.workspace)
    return Response(status_code=204)


@router.get("/workspaces/{workspace}/members", summary="Members and their roles", responses=ERRORS)
def list_members(scope: ViewerScope, platform: PlatformDep) -> list[MemberPublic]:
    return [
        MemberPublic(**m)
        for m in workspaces.list_members(platform, scope.caller, workspace=scope.workspace)
    ]


@router.put(
    "/workspaces/{workspace}/members/{principal}",
    summary="Add a member or change their role (admin)",
    responses=WRITE_ERRORS,
)
def set_member(
    principal: str, body: MemberSet, scope: AdminScope, platform: PlatformDep
) -> MemberPublic:
    return MemberPublic(
        **workspaces.set_member(
            platform, scope.caller, workspace=scope.workspace, principal=principal, role=body.role
        )
    )


@router.delete(
    "/workspaces/{workspace}/members/{principal}",
    status_code=204,
    summary="Remove a member (admin)",
    responses=WRITE_ERRORS,
)
def remove_member(principal: str, scope: AdminScope, platform: PlatformDep) -> Response:
    workspaces.remove_member(platform, scope.caller, workspace=scope.workspace, principal=principal)
    return Response(status_code=204)


@router.post(
    "/workspaces/{workspace}/service-keys",
    status_code=201,
    summary="Make a service account of this workspace with a key, e.g. for CI (admin)",
    responses=WRITE_ERRORS,
)
async def create_service_key(
    body: ServiceKeyCreate, scope: AdminScope, platform: PlatformDep
) -> KeyCreated:
    result = await run_in_threadpool(
        workspaces.create_service_key,
        platform,
        scope.caller,
        workspace=scope.workspace,
        name=body.name,
        role=body.role,
        expires_in_days=body.expires_in_days,
    )
    return KeyCreated(**result)


@router.get(
    "/workspaces/{workspace}/service-keys",
    summary="The workspace's service keys (admin)",
    responses=ERRORS,
)
def list_service_keys(scope: AdminScope, platform: PlatformDep) -> list[KeyPublic]:
    return [
        KeyPublic(**k)
        for k in workspaces.list_service_keys(platform, scope.caller, workspace=scope.workspace)
    ]
