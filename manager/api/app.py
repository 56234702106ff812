"""``create_app(settings)``: the management API. Its lifespan owns the System (Triton, the
gateway, the scraper) unless one is passed in; the owner and its key are made on first start.

Every route but ``/health`` needs an API key; every error is problem+json
(``problems``); Host/Origin/content-type guards and the audit log wrap every request
(``middleware``); routes live one module per resource in ``routes``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from manager import __version__
from manager.api import problems
from manager.api.middleware import GuardAndAudit
from manager.api.routes import (
    assays,
    baselines,
    capture,
    cluster,
    deployments,
    gateway,
    models,
    observe,
    pipelines,
    principals,
    repository,
    rollouts,
    workspaces,
)
from manager.api.routes import system as system_routes
from manager.api.schemas import Problem
from manager.services import auth
from manager.settings import Settings
from manager.system import System

log = logging.getLogger(__name__)

DESCRIPTION = """Lastmile's management API: models, pipelines, deployments, rollouts and
assays, per workspace. Send `Authorization: Bearer <API key>`; the server owner's key is in
`LASTMILE_HOME/admin.key` after the first start. Errors are `application/problem+json`."""


def _problems_everywhere(schema: dict[str, Any]) -> dict[str, Any]:
    """Every error response is ``application/problem+json`` with the Problem schema (FastAPI
    would document ``application/json`` and its own validation-error body)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status, response in responses.items():
                if status.isdigit() and int(status) >= 400:
                    response["content"] = problem
            if path != "/health":
                responses.setdefault("401", {"description": "No valid API key", "content": problem})
    return schema


def create_app(settings: Settings, *, system: System | None = None) -> FastAPI:
    holder: dict[str, System] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = system is None
        sys_ = system or System(settings)
        app.state.system = sys_
        holder["system"] = sys_
        new_key = await run_in_threadpool(auth.ensure_owner, sys_.platform)
        app.state.new_owner_key = new_key
        if owned:
            await run_in_threadpool(sys_.start)
        try:
            yield
        finally:
            if owned:
                await run_in_threadpool(sys_.stop)

    app = FastAPI(
        title="Lastmile",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[{"name": "system"}, {"name": "workspaces"}],
    )
    problems.install(app, settings.home)
    for module in (
        system_routes,
        workspaces,
        principals,
        models,
        pipelines,
        deployments,
        rollouts,
        repository,
        observe,
        capture,
        cluster,
        assays,
        baselines,
        gateway,
    ):
        app.include_router(module.router)

    def engine() -> object:
        return holder["system"].platform.engine if holder else None

    app.add_middleware(GuardAndAudit, settings=settings, engine=engine)

    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _problems_everywhere(original())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
