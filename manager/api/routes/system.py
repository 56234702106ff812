"""Liveness (the one route without a key), status, templates."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from manager import __version__
from manager.api.deps import CallerDep, PlatformDep
from manager.api.routes import ERRORS
from manager.api.schemas import Health, TemplatePublic
from manager.services import deployments
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
