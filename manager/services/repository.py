"""Triton repositories in and out of the registry.

Export writes, for one pipeline version, the repository a stock Triton container loads (the
``gpu`` profile: ``backend: "onnxruntime"``) or the embedded one does (``cpu``), built by the
same code as a deploy and validated before it is handed out. Import takes any Triton
repository of ONNX models: it is validated first, then every model version and every ensemble
(as a pipeline) is registered in one transaction, so a refused import registers nothing.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from manager import store
from manager.domain import PipelineSpec, ServingOptions, Signature
from manager.errors import InvalidInput, PipelineError
from manager.names import NAME_RE, check_name, triton_ensemble_name
from manager.repository.importer import ensemble_pipeline
from manager.repository.pipeline import validate_pipeline
from manager.repository.python_model import python_model_source
from manager.repository.reader import RepoModel
from manager.repository.validate import (
    effective_backend,
    errors,
    model_file_name,
    read_repository_or_model,
    validate_repository,
)
from manager.repository.writer import RepositoryWriter
from manager.services import deployments
from manager.services.context import Platform
from manager.services.models import register_onnx
from manager.services.pipelines import pipeline_version_info

log = logging.getLogger(__name__)


def export_pipeline(
    platform: Platform,
    *,
    workspace: str,
    pipeline: str,
    out_dir: Path,
    version: int | None = None,
    profile: Literal["cpu", "gpu"] = "gpu",
    template: str | None = None,
) -> dict[str, Any]:
    """Write pipeline ``pipeline`` (latest or ``version``) as a Triton repository in out_dir
    (``template``: the models' backend preset instead of the profile's)."""
    check_name(workspace, kind="workspace")
    check_name(pipeline, kind="pipeline")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InvalidInput(f"{out_dir} is not empty", hint="export into a new or empty folder")
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        pipe = store.get_pipeline(session, workspace=ws, name=pipeline)
        pv = store.get_pipeline_version(session, pipeline=pipe, version=version)
        spec = PipelineSpec.from_dict(pv.spec)
        needed = deployments.collect_models(session, ws, [spec])
        ensemble = triton_ensemble_name(ws.name, pipe.name, pv.version)
    writer = RepositoryWriter(out_dir)
    deployments.write_models(platform, writer, needed, profile=profile, template=template)
    deployments.write_ensemble(platform, writer, ws.name, spec, ensemble, needed)
    problems = errors(validate_repository(out_dir))  # warnings do not make it unusable
    if problems:  # a bug of ours, never the user's: say so plainly
        raise PipelineError(
            "the exported repository does not validate: " + "; ".join(map(str, problems))
        )
    return {"pipeline": pipeline, "version": pv.version, "models": writer.list_models()}


def _registry_name(triton_name: str, workspace: str, *, ensemble: bool) -> str:
    """``default.scaler`` → ``scaler``, ``default.fraud.v3`` → ``fraud``; others lower-cased."""
    name = triton_name
    if name.startswith(f"{workspace}."):
        name = name[len(workspace) + 1 :]
    if ensemble:
        name = re.sub(r"\.v\d+$", "", name)
    name = re.sub(r"[^a-z0-9_-]", "-", name.lower()).strip("-_")
    if not NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"model folder {triton_name!r} gives no usable name ({name!r})",
            hint="rename the folder (and its config's name) to lower-case letters, digits, "
            "'_' or '-'",
        )
    return name


def _onnx_files(model: RepoModel) -> dict[int, Path]:
    """The ONNX file of every served version; other model kinds are refused (DESIGN §5)."""
    backend = effective_backend(model)
    if backend == "python":
        for folder in model.versions.values():
            code = folder / "model.py"
            if not code.is_file() or code.read_text() != python_model_source():
                raise InvalidInput(
                    f"model {model.name!r} runs its own Python code (model.py)",
                    hint="Lastmile imports ONNX models; user Python models need a workspace "
                    "admin and are not imported",
                )
        filename = "model.onnx"
    elif backend == "onnxruntime":
        filename = model_file_name(model) or "model.onnx"
    else:
        raise InvalidInput(
            f"model {model.name!r} uses backend {backend!r}",
            hint="Lastmile imports ONNX models (backend onnxruntime); convert the model to ONNX "
            "and import it, TensorRT plans are built by Lastmile on the target GPU",
        )
    return {v: model.versions[v] / filename for v in model.served_versions()}


def _serving_options(model: RepoModel) -> ServingOptions:
    config = model.config
    batching = config.dynamic_batching if config.HasField("dynamic_batching") else None
    group = config.instance_group[0] if config.instance_group else None
    return ServingOptions(
        instances=group.count if group is not None and group.count > 0 else None,
        gpus=tuple(group.gpus) if group is not None and group.gpus else None,
        max_batch_size=config.max_batch_size,
        preferred_batch_sizes=tuple(batching.preferred_batch_size) if batching else (),
        max_queue_delay_us=batching.max_queue_delay_microseconds if batching else None,
        response_cache=config.response_cache.enable if config.HasField("response_cache") else None,
        warmup=bool(config.model_warmup),
    )


def import_repository(platform: Platform, *, workspace: str, root: Path) -> dict[str, Any]:
    """Register every model (all served versions, serving options) and every ensemble."""
    check_name(workspace, kind="workspace")
    problems = errors(validate_repository(root))  # warnings (an empty folder) do not block
    if problems:
        raise InvalidInput(
            f"the repository has {len(problems)} problem(s): " + "; ".join(map(str, problems)),
            hint="lastmile repo validate DIR lists them; fix them and import again",
        )
    repo = read_repository_or_model(root)  # read as validated: a model folder is one model
    models = {n: m for n, m in repo.models.items() if not m.is_ensemble}
    ensembles = {n: m for n, m in repo.models.items() if m.is_ensemble}
    names = {n: _registry_name(n, workspace, ensemble=False) for n in models}
    files = {n: _onnx_files(m) for n, m in models.items()}  # refuse before writing anything
    for n in ensembles:
        _registry_name(n, workspace, ensemble=True)
    kept_before = set(platform.settings.models_dir.glob("*.onnx"))
    try:
        return _register_all(platform, workspace, repo, models, ensembles, names, files)
    except BaseException:
        # Nothing was committed; drop the model files this import brought in.
        for path in set(platform.settings.models_dir.glob("*.onnx")) - kept_before:
            path.unlink(missing_ok=True)
        raise


def _register_all(
    platform: Platform,
    workspace: str,
    repo: Any,
    models: dict[str, RepoModel],
    ensembles: dict[str, RepoModel],
    names: dict[str, str],
    files: dict[str, dict[int, Path]],
) -> dict[str, Any]:
    pipeline_names = {n: _registry_name(n, workspace, ensemble=True) for n in ensembles}
    result: dict[str, Any] = {"models": [], "pipelines": []}
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        # (Triton name, its version) → our version and the signature read from the ONNX file
        registered: dict[tuple[str, int], store.ModelVersion] = {}
        for triton_name, model in models.items():
            db_model = None
            for triton_version, path in sorted(files[triton_name].items()):
                db_model, mv = register_onnx(
                    platform,
                    session,
                    workspace=ws,
                    name=names[triton_name],
                    path=path,
                    details={"imported_from": f"{triton_name}/{triton_version}"},
                )
                registered[(triton_name, triton_version)] = mv
            if db_model is not None:
                db_model.serving = _serving_options(model).to_dict()
                session.add(db_model)
            result["models"].append(
                {
                    "name": names[triton_name],
                    "from": triton_name,
                    "versions": len(files[triton_name]),
                }
            )
        for triton_name, ens in ensembles.items():
            spec = ensemble_pipeline(
                repo, ens, pipeline_name=pipeline_names[triton_name], model_names=names
            )
            by_registry = {v: k for k, v in names.items()}
            steps = []
            for step in spec.steps:
                mv = registered[(by_registry[step.model], step.version)]
                steps.append(
                    replace(step, version=mv.version, signature=Signature.from_dict(mv.signature))
                )
            spec = replace(spec, steps=tuple(steps))
            validate_pipeline(spec)
            pipe, pv = store.add_pipeline_version(
                session, workspace=ws, name=spec.name, spec=spec.to_dict()
            )
            result["pipelines"].append(pipeline_version_info(pipe, pv) | {"from": triton_name})
        session.commit()
    log.info("imported %d models, %d pipelines", len(result["models"]), len(result["pipelines"]))
    return result
