"""Metrics of a workspace's models, the audit log, and the system's own events."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from manager import store
from manager.api.deps import CallerDep, PageDep, PlatformDep, ViewerScope, next_cursor
from manager.api.routes import ERRORS, WRITE_ERRORS
from manager.api.schemas import (
    AuditEventPublic,
    MetricPublic,
    Page,
    ScrapeResult,
    SystemEventPublic,
)
from manager.errors import Forbidden, InvalidInput
from manager.names import NAME_RE

router = APIRouter(prefix="/api/v1", tags=["observability"])


@router.get(
    "/workspaces/{workspace}/metrics",
    summary="The latest scraped Triton metrics of this workspace's models",
    responses=ERRORS,
)
def metrics(
    scope: ViewerScope,
    platform: PlatformDep,
    model: Annotated[str | None, Query(pattern=NAME_RE.pattern, max_length=63)] = None,
) -> list[MetricPublic]:
    prefix = f"{scope.workspace}."
    with platform.session() as session:
        rows = store.latest_metric_samples(
            session, model=f"{prefix}{model}" if model else None, model_prefix=prefix
        )
        return [
            MetricPublic(
                ts=s.ts,
                server=s.server,
                model=s.model,
                version=s.version,
                metric=s.metric,
                labels=s.labels,
                value=s.value,
            )
            for s in rows
        ]


@router.post("/metrics/scrape", summary="Scrape Triton now (owner)", responses=WRITE_ERRORS)
def scrape_now(request: Request, caller: CallerDep) -> ScrapeResult:
    caller.require_owner("trigger a scrape")
    scraper = request.app.state.system.scraper
    if scraper is None:
        raise InvalidInput("no scraper runs in this process", hint="start with lastmile up")
    return ScrapeResult(samples=scraper.scrape_once())


@router.get(
    "/audit",
    summary="The audit log, newest first (owner: all; admins: their workspaces)",
    responses=ERRORS,
)
def audit(
    caller: CallerDep,
    platform: PlatformDep,
    page: PageDep,
    workspace: Annotated[str | None, Query(pattern=NAME_RE.pattern, max_length=63)] = None,
    action: Annotated[str | None, Query(max_length=100)] = None,
    principal: Annotated[str | None, Query(pattern=NAME_RE.pattern, max_length=63)] = None,
) -> Page[AuditEventPublic]:
    if workspace is not None:
        caller.require(workspace, "admin")
        workspaces: list[str] | None = [workspace]
    elif caller.is_owner:
        workspaces = None
    else:
        workspaces = [ws for ws, role in caller.roles.items() if role == "admin"]
        if not workspaces:
            raise Forbidden("the audit log is for workspace admins and the server owner")
    with platform.session() as session:
        rows = store.list_audit_events(
            session,
            workspaces=workspaces,
            after_id=page.after_id,
            limit=page.limit + 1,
            action=action,
            principal=principal,
        )
        items = [AuditEventPublic.model_validate(r, from_attributes=True) for r in rows]
    more = items[page.limit - 1].id if len(items) > page.limit else None
    return Page(items=items[: page.limit], next_cursor=next_cursor(more))


@router.get(
    "/events",
    summary="What the system did on its own, newest first: restarts, failures, repairs (owner)",
    responses=ERRORS,
)
def events(
    caller: CallerDep,
    platform: PlatformDep,
    page: PageDep,
    kind: Annotated[str | None, Query(pattern=r"^[a-z_-]{1,32}$")] = None,
) -> Page[SystemEventPublic]:
    caller.require_owner("read the system's events")
    with platform.session() as session:
        rows = store.list_system_events(
            session, after_id=page.after_id, limit=page.limit + 1, kind=kind
        )
        items = [SystemEventPublic.model_validate(r, from_attributes=True) for r in rows]
    more = items[page.limit - 1].id if len(items) > page.limit else None
    return Page(items=items[: page.limit], next_cursor=next_cursor(more))
