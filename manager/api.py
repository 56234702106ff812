"""Management API (FastAPI). ``create_app(settings)`` builds it; its lifespan owns the System.

This is the skeleton the CLI and SDK need; authentication (API keys, roles) and the full
resource model come with the management API issue. It binds loopback by default.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import re
import shutil
import tarfile
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from manager import __version__, store
from manager.domain import ServingOptions
from manager.errors import InvalidInput, LastmileError
from manager.services import deployments, models, pipelines, repository
from manager.services.context import Platform
from manager.settings import Settings
from manager.system import System
from model_repository_templates import list_presets

log = logging.getLogger(__name__)


class PipelineCreate(BaseModel):
    name: str = Field(description="Pipeline name")
    steps: list[str] = Field(description="Ordered steps, each MODEL or MODEL:VERSION")


class ServingBody(BaseModel):
    """How Triton serves a model; unset fields keep the profile's preset."""

    model_config = ConfigDict(extra="forbid")
    tuning: list[str] = Field(default_factory=list, description="Preset names, merged in order")
    instances: int | None = Field(default=None, ge=1, le=64)
    gpus: list[int] | None = Field(default=None, description="GPU ids (gpu profile)")
    max_batch_size: int | None = Field(default=None, ge=0, le=4096)
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    max_queue_delay_us: int | None = Field(default=None, ge=0)
    response_cache: bool | None = None
    warmup: bool = False


class DeployRequest(BaseModel):
    version: int | None = Field(default=None, description="Pipeline version; default latest")


def _safe_filename(name: str) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name)[:100].lstrip(".")
    return base or "upload.onnx"


@contextmanager
def _scratch(settings: Settings, purpose: str) -> Iterator[Path]:
    """A private folder under LASTMILE_HOME/run for one request, removed whatever happens."""
    settings.ensure_dirs()
    work = Path(tempfile.mkdtemp(dir=settings.run_dir, prefix=f".{purpose}-"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _receive_upload(request: Request, dest: Path, *, limit: int) -> None:
    """Stream the request body to ``dest``, refusing it as soon as it passes ``limit``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise InvalidInput(
            f"upload of {int(declared)} bytes exceeds the limit of {limit} bytes",
            hint="raise LASTMILE_MAX_UPLOAD_BYTES on the server",
        )
    size = 0
    with open(dest, "wb") as out:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise InvalidInput(
                    f"upload exceeds the limit of {limit} bytes",
                    hint="raise LASTMILE_MAX_UPLOAD_BYTES on the server",
                )
            out.write(chunk)
    if size == 0:
        raise InvalidInput("the upload is empty", hint="send the file as the request body")


def _client_conversion(header: str | None) -> dict[str, Any] | None:
    if not header:
        return None
    try:
        report = json.loads(base64.b64decode(header, validate=True))
    except (ValueError, binascii.Error) as exc:
        raise InvalidInput(
            "X-Lastmile-Conversion is not base64-encoded JSON", hint="send the SDK's report"
        ) from exc
    if not isinstance(report, dict):
        raise InvalidInput("X-Lastmile-Conversion must be a JSON object")
    return {"conversion": report, "converted_by": "client"}


def _problem(exc: LastmileError) -> JSONResponse:
    body: dict[str, Any] = {
        "type": type(exc).__name__,
        "title": exc.title,
        "status": exc.status_code,
        "detail": exc.message,
    }
    if exc.hint:
        body["hint"] = exc.hint
    return JSONResponse(body, status_code=exc.status_code, media_type="application/problem+json")


def create_app(settings: Settings, *, system: System | None = None) -> FastAPI:
    """The app; without ``system`` the lifespan starts one (Triton, gateway, scraper)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = system is None
        sys_ = system or System(settings)
        if owned:
            await run_in_threadpool(sys_.start)
        app.state.system = sys_
        try:
            yield
        finally:
            if owned:
                await run_in_threadpool(sys_.stop)

    app = FastAPI(title="Lastmile", version=__version__, lifespan=lifespan)

    @app.exception_handler(LastmileError)
    async def _handle(_request: Request, exc: LastmileError) -> JSONResponse:
        return _problem(exc)

    def platform(request: Request) -> Platform:
        return request.app.state.system.platform  # type: ignore[no-any-return]

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/v1/status")
    def status(request: Request) -> dict[str, Any]:
        info = request.app.state.system.status()
        info["deployments"] = deployments.list_deployments(platform(request))
        return info  # type: ignore[no-any-return]

    @app.post("/v1/workspaces/{workspace}/models/{name}/versions", status_code=201)
    async def import_model(
        workspace: str,
        name: str,
        request: Request,
        filename: str = "upload.onnx",
        framework: str = "onnx",
        inputs: Annotated[list[str] | None, Query()] = None,
        trust_pickle: bool = False,
        rtol: float = 1e-4,
        atol: float = 1e-5,
        optimize: Annotated[list[str] | None, Query()] = None,
    ) -> dict[str, Any]:
        """Upload a model file as the raw request body (streamed, size-limited).

        ONNX is registered as it is; other frameworks are converted to ONNX with a parity
        check first. ``filename`` names the file in messages (and tells its format).
        A client that converted the model itself may send its report in the
        ``X-Lastmile-Conversion`` header (base64 JSON); it is stored as given.
        """
        details = _client_conversion(request.headers.get("x-lastmile-conversion"))
        with _scratch(settings, "upload") as upload_dir:
            tmp = upload_dir / _safe_filename(filename)
            await _receive_upload(request, tmp, limit=settings.max_upload_bytes)
            return await run_in_threadpool(
                models.import_model,
                platform(request),
                workspace=workspace,
                name=name,
                path=tmp,
                conversion=models.ConversionOptions(
                    framework=framework,
                    inputs=tuple(inputs or ()),
                    trust_pickle=trust_pickle,
                    rtol=rtol,
                    atol=atol,
                    optimize=tuple(optimize or ()),
                ),
                details=details,
            )

    @app.put("/v1/workspaces/{workspace}/models/{name}/serving")
    def configure_model(
        workspace: str, name: str, body: ServingBody, request: Request
    ) -> dict[str, Any]:
        """Set a model's serving options (tuning); answers with the config they give."""
        return models.configure_model(
            platform(request),
            workspace=workspace,
            name=name,
            options=ServingOptions.from_dict(body.model_dump()),
        )

    @app.get("/v1/templates")
    def templates() -> list[dict[str, str]]:
        return list_presets(settings.template_dir)

    @app.get("/v1/workspaces/{workspace}/models")
    def list_models(workspace: str, request: Request) -> list[dict[str, Any]]:
        return models.list_models(platform(request), workspace=workspace)

    @app.post("/v1/workspaces/{workspace}/pipelines", status_code=201)
    def create_pipeline(workspace: str, body: PipelineCreate, request: Request) -> dict[str, Any]:
        return pipelines.create_pipeline(
            platform(request), workspace=workspace, name=body.name, steps=body.steps
        )

    @app.post("/v1/workspaces/{workspace}/pipelines/apply", status_code=201)
    def apply_pipeline(
        workspace: str, document: dict[str, Any], request: Request
    ) -> dict[str, Any]:
        """Create a pipeline version from a DAG definition (the YAML of `pipeline apply`)."""
        return pipelines.apply_pipeline(platform(request), workspace=workspace, document=document)

    @app.get("/v1/workspaces/{workspace}/pipelines")
    def list_pipelines(workspace: str, request: Request) -> list[dict[str, Any]]:
        return pipelines.list_pipelines(platform(request), workspace=workspace)

    @app.post("/v1/workspaces/{workspace}/pipelines/{name}/deploy")
    def deploy(
        workspace: str, name: str, request: Request, body: DeployRequest | None = None
    ) -> dict[str, Any]:
        return deployments.deploy(
            platform(request),
            workspace=workspace,
            pipeline=name,
            version=body.version if body else None,
        )

    @app.get("/v1/workspaces/{workspace}/pipelines/{name}/export")
    def export_pipeline(
        workspace: str,
        name: str,
        request: Request,
        version: int | None = None,
        profile: Literal["cpu", "gpu"] = "gpu",
    ) -> Response:
        """The pipeline version as a Triton repository, in a tar.gz."""
        with _scratch(settings, "export") as work:
            repository.export_pipeline(
                platform(request),
                workspace=workspace,
                pipeline=name,
                out_dir=work / "repository",
                version=version,
                profile=profile,
            )
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
                tar.add(work / "repository", arcname=".")
        return Response(buffer.getvalue(), media_type="application/gzip")

    @app.post("/v1/workspaces/{workspace}/repository/import", status_code=201)
    async def import_repository(workspace: str, request: Request) -> dict[str, Any]:
        """Register a Triton repository sent as a tar.gz body (models, versions, ensembles)."""
        with _scratch(settings, "import") as work:
            archive = work / "repository.tar.gz"
            await _receive_upload(request, archive, limit=settings.max_upload_bytes)
            root = work / "repository"
            root.mkdir()
            try:
                with tarfile.open(archive, mode="r:gz") as tar:
                    tar.extractall(root, filter="data")
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise InvalidInput(
                    f"the upload is not a usable tar.gz archive: {exc}",
                    hint="lastmile repo import DIR packs the folder for you",
                ) from exc
            return await run_in_threadpool(
                repository.import_repository, platform(request), workspace=workspace, root=root
            )

    @app.get("/v1/deployments")
    def list_deployments(request: Request) -> list[dict[str, Any]]:
        return deployments.list_deployments(platform(request))

    @app.get("/v1/metrics")
    def metrics(request: Request, model: str | None = None) -> list[dict[str, Any]]:
        with platform(request).session() as session:
            return [
                {
                    "ts": s.ts.isoformat(),
                    "server": s.server,
                    "model": s.model,
                    "version": s.version,
                    "metric": s.metric,
                    "labels": s.labels,
                    "value": s.value,
                }
                for s in store.latest_metric_samples(session, model=model)
            ]

    @app.post("/v1/metrics/scrape")
    def scrape_now(request: Request) -> dict[str, int]:
        scraper = request.app.state.system.scraper
        if scraper is None:
            raise InvalidInput("no scraper runs in this process", hint="start with lastmile up")
        return {"samples": scraper.scrape_once()}

    return app
