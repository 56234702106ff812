"""Principals (server owner) and API keys (your own; the owner's for anyone)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from manager.api.deps import CallerDep, PlatformDep
from manager.api.routes import ERRORS, WRITE_ERRORS
from manager.api.schemas import (
    KeyCreate,
    KeyCreated,
    KeyPublic,
    PrincipalCreate,
    PrincipalCreated,
    PrincipalPublic,
    WhoAmI,
)
from manager.names import NAME_RE
from manager.services import workspaces

router = APIRouter(prefix="/api/v1", tags=["principals and keys"])


@router.get("/whoami", summary="The caller: principal, key and roles", responses=ERRORS)
def whoami(caller: CallerDep, platform: PlatformDep) -> WhoAmI:
    return WhoAmI(**workspaces.whoami(platform, caller))


@router.post(
    "/principals",
    status_code=201,
    summary="Create a user with a first key, optionally a workspace member (owner)",
    responses=WRITE_ERRORS,
)
def create_principal(
    body: PrincipalCreate, caller: CallerDep, platform: PlatformDep
) -> PrincipalCreated:
    return PrincipalCreated(
        **workspaces.create_principal(
            platform,
            caller,
            name=body.name,
            workspace=body.workspace,
            role=body.role,
            expires_in_days=body.expires_in_days,
        )
    )


@router.get("/principals", summary="Every principal (owner)", responses=ERRORS)
def list_principals(caller: CallerDep, platform: PlatformDep) -> list[PrincipalPublic]:
    return [PrincipalPublic(**p) for p in workspaces.list_principals(platform, caller)]


@router.post("/keys", status_code=201, summary="Make an API key", responses=WRITE_ERRORS)
def create_key(body: KeyCreate, caller: CallerDep, platform: PlatformDep) -> KeyCreated:
    return KeyCreated(
        **workspaces.create_key(
            platform,
            caller,
            principal=body.principal,
            label=body.label,
            expires_in_days=body.expires_in_days,
        )
    )


@router.get("/keys", summary="Your keys (the owner: anyone's)", responses=ERRORS)
def list_keys(
    caller: CallerDep,
    platform: PlatformDep,
    principal: Annotated[str | None, Query(pattern=NAME_RE.pattern, max_length=63)] = None,
) -> list[KeyPublic]:
    return [KeyPublic(**k) for k in workspaces.list_keys(platform, caller, principal=principal)]


@router.delete("/keys/{key_id}", summary="Revoke a key", responses=WRITE_ERRORS)
def revoke_key(
    key_id: Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")],
    caller: CallerDep,
    platform: PlatformDep,
) -> KeyPublic:
    return KeyPublic(**workspaces.revoke_key(platform, caller, key_id=key_id))
