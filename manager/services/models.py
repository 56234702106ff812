"""Importing model files into the registry.

The file is checked completely (ONNX checker, shape inference, signature) before anything is
written; it is then stored content-addressed under ``LASTMILE_HOME/models`` (tmp + fsync +
rename) and only then registered, so a bad file leaves neither a row nor a file behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converters.onnx_import import inspect_onnx
from manager import store
from manager.domain import ServingOptions, Signature
from manager.errors import InvalidInput
from manager.names import check_name, triton_model_name
from manager.repository.config import model_config
from manager.services.context import Platform
from manager.triton.client import config_to_text

log = logging.getLogger(__name__)


def _store_file(src: Path, dest_dir: Path, sha256: str) -> Path:
    dest = dest_dir / f"{sha256}.onnx"
    if dest.exists():
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".import-")
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def model_version_info(model: store.Model, version: store.ModelVersion) -> dict[str, Any]:
    return {
        "model": model.name,
        "version": version.version,
        "format": version.format,
        "sha256": version.sha256,
        "size_bytes": version.size_bytes,
        "signature": version.signature,
        "details": version.details,
        "created_at": version.created_at.isoformat(),
    }


def register_onnx(
    platform: Platform,
    session: Any,
    *,
    workspace: store.Workspace,
    name: str,
    path: Path,
    details: dict[str, Any] | None = None,
) -> tuple[store.Model, store.ModelVersion]:
    """Check ``path`` completely, keep it, and add the next version (flushed, not committed)."""
    check_name(name, kind="model")
    if not path.is_file():
        raise InvalidInput(f"{path} is not a file", hint="give the path of an .onnx file")
    info = inspect_onnx(path, max_bytes=platform.settings.max_upload_bytes)
    stored = _store_file(path, platform.settings.models_dir, info.sha256)
    return store.add_model_version(
        session,
        workspace=workspace,
        name=name,
        sha256=info.sha256,
        size_bytes=stored.stat().st_size,
        path=str(stored.resolve()),
        signature=info.signature.to_dict(),
        details={
            "opset": info.opset,
            "ir_version": info.ir_version,
            "producer": info.producer,
            **(details or {}),
        },
    )


@dataclass(frozen=True)
class ConversionOptions:
    """How to turn a non-ONNX model file into the ONNX that gets registered."""

    framework: str = "onnx"
    inputs: tuple[str, ...] = ()  # NAME:DTYPE:SHAPE, for formats without a signature
    trust_pickle: bool = False
    rtol: float = 1e-4
    atol: float = 1e-5
    optimize: tuple[str, ...] = ()


def _convert(
    platform: Platform, path: Path, options: ConversionOptions
) -> tuple[Path, dict[str, Any]]:
    """Convert to ONNX with a parity check; the recommended candidate gets registered."""
    from converters.api import FRAMEWORKS, convert, parse_input_spec

    if options.framework not in FRAMEWORKS:
        raise InvalidInput(
            f"unknown framework {options.framework!r}", hint="use one of " + ", ".join(FRAMEWORKS)
        )
    report = convert(
        path,
        framework=options.framework,
        out_dir=path.parent / "converted",
        inputs=[parse_input_spec(text) for text in options.inputs] or None,
        trust_pickle=options.trust_pickle,
        rtol=options.rtol,
        atol=options.atol,
        optimize=options.optimize,
        max_bytes=platform.settings.max_upload_bytes,
        progress=lambda message: log.info("%s: %s", path.name, message),
    )
    return report.chosen_path, {"conversion": report.record()}


def import_model(
    platform: Platform,
    *,
    workspace: str,
    name: str,
    path: Path,
    conversion: ConversionOptions | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Register ``path`` as the next version of model ``name``: an ONNX file as it is, any
    other framework's file converted (parity-checked, benchmarked) first."""
    check_name(workspace, kind="workspace")
    check_name(name, kind="model")
    conversion = conversion or ConversionOptions()
    extra = dict(details or {})
    if conversion.framework != "onnx" or conversion.optimize:
        path, converted = _convert(platform, path, conversion)
        extra.update(converted)
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        model, version = register_onnx(
            platform, session, workspace=ws, name=name, path=path, details=extra
        )
        session.commit()
        result = model_version_info(model, version)
    log.info("imported %s as %s version %d", path.name, name, result["version"])
    return result


def configure_model(
    platform: Platform, *, workspace: str, name: str, options: ServingOptions
) -> dict[str, Any]:
    """Set how Triton serves a model. The config is built once against the latest version
    first, so options that do not fit the model are refused before anything is stored; the
    new options take effect at the next deploy of a pipeline using the model."""
    check_name(workspace, kind="workspace")
    check_name(name, kind="model")
    settings = platform.settings
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        model = store.get_model(session, workspace=ws, name=name)
        latest = store.get_model_version(session, model=model, version=None)
        config = model_config(
            triton_name=triton_model_name(workspace, name),
            signature=Signature.from_dict(latest.signature),
            profile=settings.profile,
            max_batch_size=settings.max_batch_size,
            versions=[latest.version],
            options=options,
            template_dirs=settings.template_dir,
        )
        model.serving = options.to_dict()
        session.add(model)
        session.commit()
    return {"model": name, "serving": options.to_dict(), "config": config_to_text(config)}


def list_models(platform: Platform, *, workspace: str) -> list[dict[str, Any]]:
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        return [
            {
                "name": model.name,
                "serving": ServingOptions.from_dict(model.serving).to_dict(),
                "versions": [
                    model_version_info(model, v)
                    for v in store.list_model_versions(session, model=model)
                ],
            }
            for model in store.list_models(session, workspace=ws)
        ]
