"""Importing model files into the registry.

The file is checked completely (ONNX checker, shape inference, signature) before anything is
written; it is then stored content-addressed under ``LASTMILE_HOME/models`` (tmp + fsync +
rename) and only then registered, so a bad file leaves neither a row nor a file behind.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters.onnx_import import inspect_onnx, load_self_contained
from converters.onnx_limits import check_tensor_sizes
from manager import store
from manager.domain import PipelineSpec, ServingOptions, Signature
from manager.errors import Conflict, InvalidInput, PreconditionFailed
from manager.names import check_name, triton_model_name
from manager.repository.config import effective_max_batch_size, model_config
from manager.repository.digests import sha256_file
from manager.services import import_baselines
from manager.services.context import Platform
from manager.triton.client import config_to_text

log = logging.getLogger(__name__)


def _store_file(src: Path | bytes, dest_dir: Path, sha256: str) -> Path:
    """Keep ``src`` (a file, or the bytes of a model whose external data was embedded) as
    ``<sha256>.onnx``."""
    dest = dest_dir / f"{sha256}.onnx"
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest  # a damaged copy (truncated, edited) is replaced by this good one
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".import-")
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(src, bytes):
                out.write(src)
            else:
                with open(src, "rb") as inp:
                    shutil.copyfileobj(inp, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def model_version_info(model: store.Model, version: store.ModelVersion) -> dict[str, Any]:
    return {
        "model": model.name,
        "version": version.version,
        "format": version.format,
        "sha256": version.sha256,
        "size_bytes": version.size_bytes,
        "signature": version.signature,
        "details": version.details,
        "created_by": version.created_by,
        "created_at": version.created_at.isoformat(),
    }


def model_info(session: Any, model: store.Model) -> dict[str, Any]:
    return {
        "name": model.name,
        "serving": ServingOptions.from_dict(model.serving).to_dict(),
        "revision": model.revision,
        "versions": [
            model_version_info(model, v) for v in store.list_model_versions(session, model=model)
        ],
    }


def register_onnx(
    platform: Platform,
    session: Any,
    *,
    workspace: store.Workspace,
    name: str,
    path: Path,
    details: dict[str, Any] | None = None,
    created_by: str = "",
    on_signature: Callable[[Signature], None] | None = None,
) -> tuple[store.Model, store.ModelVersion]:
    """Check ``path`` completely, keep it, and add the next version (flushed, not committed).

    External data is embedded into the stored file (one file per version is what a deploy
    copies), and the graph's tensors must fit ``max_tensor_bytes`` at the batch size the
    model will be served with (its serving option, else ``max_batch_size``). ``on_signature``
    sees the checked signature before anything is stored (it may refuse by raising).
    """
    check_name(name, kind="model")
    if not path.is_file():
        raise InvalidInput(f"{path} is not a file", hint="give the path of an .onnx file")
    settings = platform.settings
    info = inspect_onnx(path, max_bytes=settings.max_upload_bytes)
    model, embedded = load_self_contained(path, max_bytes=settings.max_upload_bytes)
    existing = store.find_model(session, workspace=workspace, name=name)
    check_tensor_sizes(
        model,
        max_batch_size=effective_max_batch_size(
            info.signature,
            default=settings.max_batch_size,
            options=ServingOptions.from_dict(existing.serving) if existing else None,
        ),
        max_tensor_bytes=settings.max_tensor_bytes,
        where=path.name,
    )
    source: Path | bytes = path
    sha256 = info.sha256
    if embedded:
        source = model.SerializeToString()
        sha256 = hashlib.sha256(source).hexdigest()
        details = {**(details or {}), "external_data_embedded": embedded}
    del model
    if on_signature is not None:
        on_signature(info.signature)
    stored = _store_file(source, settings.models_dir, sha256)
    return store.add_model_version(
        session,
        workspace=workspace,
        name=name,
        sha256=sha256,
        size_bytes=stored.stat().st_size,
        path=str(stored.resolve()),
        signature=info.signature.to_dict(),
        details={
            "opset": info.opset,
            "ir_version": info.ir_version,
            "producer": info.producer,
            **(details or {}),
        },
        created_by=created_by,
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
    sample: dict[str, np.ndarray] | np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise InvalidInput(
                    f"{name} must be a finite number >= 0, not {value}",
                    hint="e.g. rtol=1e-4, atol=1e-5",
                )


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
        sample_input=options.sample,
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
    created_by: str = "",
    force: bool = False,
) -> dict[str, Any]:
    """Register ``path`` as the next version of model ``name``: an ONNX file as it is, any
    other framework's file converted (parity-checked, benchmarked) first.

    A file whose content (sha256 of what was uploaded) is already a version of this model
    answers with that version (``created: false``) unless ``force``.
    """
    check_name(workspace, kind="workspace")
    check_name(name, kind="model")
    conversion = conversion or ConversionOptions()
    source_sha = file_sha256(path)
    if not force:
        existing = _same_content(platform, workspace, name, source_sha, path)
        if existing is not None:
            return existing
    extra = dict(details or {})
    extra["source_sha256"] = source_sha
    if conversion.framework != "onnx" or conversion.optimize:
        path, converted = _convert(platform, path, conversion)
        extra.update(converted)
    # an ONNX file as the user made it: the sample must fit it (a converter took it otherwise)
    plain = not {"conversion", "client_conversion"} & extra.keys()
    prepared: list[import_baselines.ImportBaseline | None] = []

    def baseline_of(signature: Signature) -> None:  # the sample's summaries (issue #11)
        if conversion.sample is not None:
            prepared.append(
                import_baselines.prepare_import(conversion.sample, signature, path, strict=plain)
            )

    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        model, version = register_onnx(
            platform,
            session,
            workspace=ws,
            name=name,
            path=path,
            details=extra,
            created_by=created_by,
            on_signature=baseline_of,
        )
        if prepared and prepared[0] is not None:
            import_baselines.record_import(
                session,
                workspace=ws,
                model=model,
                version=version,
                prepared=prepared[0],
                created_by=created_by,
            )
        session.commit()
        result = model_version_info(model, version) | {"created": True}
    log.info("imported %s as %s version %d", path.name, name, result["version"])
    return result


def _same_content(
    platform: Platform, workspace: str, name: str, source_sha: str, path: Path
) -> dict[str, Any] | None:
    """The version that already holds this content. When the stored file is the upload itself
    and was damaged (truncated, edited), the upload puts it right: the stored files are what
    every repair of the repository copies from."""
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        model = store.find_model(session, workspace=ws, name=name)
        if model is None:
            return None
        for version in reversed(store.list_model_versions(session, model=model)):
            if source_sha in (version.sha256, version.details.get("source_sha256")):
                if version.sha256 == source_sha:
                    _store_file(path, Path(version.path).parent, source_sha)
                return model_version_info(model, version) | {"created": False}
    return None


def configure_model(
    platform: Platform,
    *,
    workspace: str,
    name: str,
    options: ServingOptions,
    if_revision: int | None = None,
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
        if if_revision is not None and if_revision != model.revision:
            raise PreconditionFailed(
                f"model {name!r} is at serving revision {model.revision}, not {if_revision}",
                hint="read it again (GET …/serving) and send the new ETag in If-Match",
            )
        latest = store.get_model_version(session, model=model, version=None)
        signature = Signature.from_dict(latest.signature)
        config = model_config(
            triton_name=triton_model_name(workspace, name),
            signature=signature,
            profile=settings.profile,
            max_batch_size=settings.max_batch_size,
            versions=[latest.version],
            options=options,
            template_dirs=settings.template_dir,
        )
        check_tensor_sizes(  # a larger max batch size may make a tensor too large
            Path(latest.path),
            max_batch_size=effective_max_batch_size(
                signature, default=settings.max_batch_size, options=options
            ),
            max_tensor_bytes=settings.max_tensor_bytes,
            where=f"model {name!r} version {latest.version}",
        )
        model.serving = options.to_dict()
        model.revision += 1
        session.add(model)
        session.commit()
        revision = model.revision
    return {
        "model": name,
        "serving": options.to_dict(),
        "config": config_to_text(config),
        "revision": revision,
    }


def get_serving(platform: Platform, *, workspace: str, name: str) -> dict[str, Any]:
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        model = store.get_model(session, workspace=ws, name=name)
        options = ServingOptions.from_dict(model.serving)
        latest = store.get_model_version(session, model=model, version=None)
        config = model_config(
            triton_name=triton_model_name(workspace, name),
            signature=Signature.from_dict(latest.signature),
            profile=platform.settings.profile,
            max_batch_size=platform.settings.max_batch_size,
            versions=[latest.version],
            options=options,
            template_dirs=platform.settings.template_dir,
        )
        return {
            "model": name,
            "serving": options.to_dict(),
            "config": config_to_text(config),
            "revision": model.revision,
        }


def list_models(
    platform: Platform,
    *,
    workspace: str,
    after_id: int | None = None,
    limit: int | None = None,
    name_prefix: str | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """A page of models (by id) and the id to continue after, None at the end."""
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        page, more = store.list_models(
            session, workspace=ws, after_id=after_id, limit=limit, name_prefix=name_prefix
        )
        return [model_info(session, m) for m in page], more


def get_model(platform: Platform, *, workspace: str, name: str) -> dict[str, Any]:
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        return model_info(session, store.get_model(session, workspace=ws, name=name))


def get_version(
    platform: Platform, *, workspace: str, name: str, version: int
) -> tuple[dict[str, Any], Path]:
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        model = store.get_model(session, workspace=ws, name=name)
        mv = store.get_model_version(session, model=model, version=version)
        return model_version_info(model, mv), Path(mv.path)


def _versions_in_use(session: Any, ws: store.Workspace, model: str) -> dict[int, list[str]]:
    """Model version → the pipelines (name:version) whose deployment serves it."""
    used: dict[int, list[str]] = {}
    for dep in store.list_deployments(session, workspace_id=ws.id):
        if dep.state not in ("live", "pending"):
            continue
        pv = session.get(store.PipelineVersion, dep.pipeline_version_id)
        pipe = session.get(store.Pipeline, dep.pipeline_id)
        for step in PipelineSpec.from_dict(pv.spec).steps:
            if step.model == model:
                used.setdefault(step.version, []).append(f"{pipe.name}:{pv.version}")
    return used


def delete_version(platform: Platform, *, workspace: str, name: str, version: int) -> None:
    """Drop a model version no deployment serves; its file goes when no version keeps it.
    The model itself goes with its last version."""
    with platform.deploy_lock, platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        model = store.get_model(session, workspace=ws, name=name)
        mv = store.get_model_version(session, model=model, version=version)
        users = _versions_in_use(session, ws, name).get(version)
        if users:
            raise Conflict(
                f"model {name!r} version {version} is served by deployment(s) " + ", ".join(users),
                hint="undeploy or redeploy those pipelines first",
            )
        path, sha = Path(mv.path), mv.sha256
        store.delete_model_version(session, version=mv)
        if not store.list_model_versions(session, model=model):
            store.delete_model(session, model=model)
        session.commit()
        if not store.sha_in_use(session, sha256=sha):
            path.unlink(missing_ok=True)
    log.info("deleted model %s version %d", name, version)
