"""``lastmile export k8s``: a pipeline version as a Kustomize folder for a cluster. The
repository comes from the same builder as a local deploy (``repository.export_pipeline``,
GPU profile) and the routes from the same plan; ``manager.k8s.export`` renders the rest."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from manager.k8s.export import ExportSettings, render, repository_files
from manager.names import triton_ensemble_name
from manager.services import cluster_sizing, repository
from manager.services.context import Platform


def settings_for(
    platform: Platform,
    *,
    workspace: str,
    pipeline: str,
    replicas: int | None = None,
    gpus: int | None = None,
    gateway_replicas: int | None = None,
    **rest: Any,
) -> ExportSettings:
    """An export's settings: the sizes given, else the pipeline's own (``lastmile pipeline
    cluster``), else the defaults; ``rest``: the other ExportSettings fields."""
    own = cluster_sizing.sizes(platform, workspace=workspace, pipeline=pipeline)
    return ExportSettings(
        replicas=own["replicas"] if replicas is None else replicas,
        gpus=own["gpus"] if gpus is None else gpus,
        gateway_replicas=own["gateway_replicas"] if gateway_replicas is None else gateway_replicas,
        **rest,
    )


def export_k8s(
    platform: Platform,
    *,
    workspace: str,
    pipeline: str,
    version: int | None,
    settings: ExportSettings,
) -> dict[str, bytes | None]:
    """The bundle's files (path -> bytes; None: an empty folder); InvalidInput for settings
    it cannot serve."""
    settings.check()
    platform.settings.ensure_dirs()
    work = Path(tempfile.mkdtemp(dir=platform.settings.run_dir, prefix=".export-k8s-"))
    try:
        info = repository.export_pipeline(
            platform,
            workspace=workspace,
            pipeline=pipeline,
            out_dir=work / "repository",
            version=version,
            profile="gpu",
            # no GPU on cpu-dev nodes: NGC Triton's onnxruntime backend on CPU instances
            template="onnxruntime-cpu" if settings.overlay == "cpu-dev" else None,
        )
        files = repository_files(work / "repository")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return render(
        workspace=workspace,
        pipeline=pipeline,
        version=info["version"],
        ensemble=triton_ensemble_name(workspace, pipeline, info["version"]),
        repository=files,
        settings=settings,
    )
