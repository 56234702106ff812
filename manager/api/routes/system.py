"""Liveness (the one route without a key), status, templates, reconciliation (owner)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from manager import __version__
from manager.api.deps import CallerDep, PlatformDep
from manager.api.routes import ERRORS, problems
from manager.api.schemas import Health, ReconcileReport, TemplatePublic
from manager.services import deployments, reconcile
from model_repository_templates import list_presets

router = APIRouter(tags=["system"])


@router.get("/health", summary="Liveness; needs no key and tells nothing else")
def health() -> Health:
    return Health(status="ok", version=__version__)


@router.get(
    "/api/v1/status", summary="What runs where; your workspaces' deployments", responses=ERRORS
)
def status(request: Request, caller: CallerDep, platform: PlatformDep) -> dict[str, Any]:
    info: dict[str, Any] = request.app.state.system.status()
    visible = None if caller.is_owner else set(caller.roles)
    info["deployments"] = deployments.list_deployments(platform, workspaces=visible)
    if not caller.is_owner:  # server paths and the database are the operator's business
        for private in ("home", "database", "pid"):
            info.pop(private, None)
        for triton in info.get("triton", []):
            triton.pop("pid", None)
        info.get("gateway", {}).pop("pid", None)
    return info


@router.get("/api/v1/templates", summary="Model config presets", responses=ERRORS)
def templates(_caller: CallerDep, platform: PlatformDep) -> list[TemplatePublic]:
    return [TemplatePublic(**t) for t in list_presets(platform.settings.template_dir)]


@router.post(
    "/api/v1/system/reconcile",
    summary="Bring repository, Triton and gateway back to what the store says is live (owner)",
    responses={**ERRORS, **problems(502, 503)},
)
async def reconcile_system(
    caller: CallerDep,
    platform: PlatformDep,
    dry_run: Annotated[bool, Query(description="List the actions without taking any")] = False,
) -> ReconcileReport:
    caller.require_owner("reconcile the system")
    report = await run_in_threadpool(reconcile.reconcile, platform, dry_run=dry_run)
    return ReconcileReport(**report)
