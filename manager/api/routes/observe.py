"""Metrics of a workspace's models, the audit log, and the system's own events."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam

from manager import store
from manager.api.deps import CallerDep, PageDep, PlatformDep, ViewerScope, next_cursor
from manager.api.metric_schemas import PipelineMetrics, ScrapeResult
from manager.api.routes import ERRORS, WRITE_ERRORS
from manager.api.schemas import AuditEventPublic, MetricPublic, Page, SystemEventPublic
from manager.errors import Forbidden, InvalidInput
from manager.names import NAME_RE
from manager.services import metrics_charts, metrics_view

router = APIRouter(prefix="/api/v1", tags=["observability"])


@router.get(
    "/workspaces/{workspace}/pipelines/{pipeline}/metrics",
    summary="A pipeline's figures per variant: the latest, and a summary over the period",
    responses=ERRORS,
)
def pipeline_metrics(
    scope: ViewerScope,
    platform: PlatformDep,
    pipeline: Annotated[str, PathParam(pattern=NAME_RE.pattern, max_length=63)],
    since: Annotated[
        str, Query(max_length=16, description="The period: 30s, 15m, 2h, 7d (up to 400d)")
    ] = "15m",
    variant: Annotated[
        str | None, Query(max_length=80, description="One version: 2, v2 or <pipeline>/2")
    ] = None,
    source: Annotated[
        Literal["direct", "prometheus"],
        Query(description="direct: Lastmile's own scrapes; prometheus: read from "
              "LASTMILE_PROMETHEUS_URL"),
    ] = "direct",
) -> PipelineMetrics:  # fmt: skip
    info = metrics_view.pipeline_metrics(
        platform,
        workspace=scope.workspace,
        pipeline=pipeline,
        since=since,
        variant=variant,
        source=source,
    )
    return PipelineMetrics.model_validate(info)


@router.get(
    "/workspaces/{workspace}/pipelines/{pipeline}/metrics/chart",
    summary="A chart of one live figure per variant over time (SVG or PNG)",
    response_class=Response,
    responses={**ERRORS, 200: {"content": {"image/svg+xml": {}, "image/png": {}}}},
)
def pipeline_metrics_chart(
    scope: ViewerScope,
    platform: PlatformDep,
    pipeline: Annotated[str, PathParam(pattern=NAME_RE.pattern, max_length=63)],
    figure: Annotated[
        str, Query(max_length=16, description="p50, p95, p99, requests or errors")
    ] = "p99",
    since: Annotated[str, Query(max_length=16, description="30s, 15m, 2h, 7d")] = "1h",
    source: Literal["direct", "prometheus"] = "direct",
    fmt: Literal["svg", "png"] = "svg",
) -> Response:
    body = metrics_charts.render(
        platform, workspace=scope.workspace, pipeline=pipeline, figure=figure, since=since,
        source=source, fmt=fmt,
    )  # fmt: skip
    return Response(content=body, media_type="image/svg+xml" if fmt == "svg" else "image/png")


@router.get(
    "/workspaces/{workspace}/metrics",
    summary="The latest raw Triton samples of this workspace's models (cumulative counters)",
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
    recorded = scraper.scrape_once()
    return ScrapeResult(samples=recorded.samples, points=recorded.points)


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
