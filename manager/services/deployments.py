"""Putting pipeline versions on Triton and telling the gateway where they are.

One Triton model per registered model (``<workspace>.<model>``) holds every version that a
live deployment needs, under a ``specific`` version policy; one ensemble per pipeline version
(``<workspace>.<pipeline>.v<N>``) wires them. Deploying loads composing models before the
ensemble, reloads the other ensembles that use a reloaded model (Triton unloads an ensemble
whose composing model is reloaded), and switches the gateway route only once the new ensemble
answers ready; the previous ensemble is unloaded after the switch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from manager import store
from manager.domain import PipelineSpec, ServingOptions, Signature
from manager.errors import Conflict, LastmileError, PipelineError, TritonError
from manager.names import (
    check_name,
    copy_prefix,
    step_model_name,
    triton_ensemble_name,
)
from manager.repository.config import (
    PYTHON_MODEL_FILENAME,
    effective_max_batch_size,
    ensemble_config,
    model_config,
    validate_pipeline,
)
from manager.repository.python_model import python_model_source
from manager.repository.writer import RepositoryWriter
from manager.services import serving
from manager.services.context import Platform
from manager.services.serving import served_specs
from manager.triton.client import TritonClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Needed:
    """A registered model as Triton must serve it: its versions and their files."""

    triton_name: str
    signature: Signature
    files: dict[int, Path]
    options: ServingOptions
    # version → sha256 of its stored file (its content address): what a published copy must be
    digests: dict[int, str] = field(default_factory=dict)
    model: str = ""  # the registered model's name


def collect_models(
    session: Any,
    ws: store.Workspace,
    specs: list[PipelineSpec],
    prefixes: list[str | None] | None = None,
) -> dict[str, _Needed]:
    """Every model version the given pipeline specs use, grouped per Triton model (keyed by
    its Triton name). ``prefixes[i]``: spec i's steps use the private copies of its pipeline
    version (``names.copy_prefix``); None: the workspace's shared models."""
    versions: dict[str, dict[int, store.ModelVersion]] = {}
    options: dict[str, ServingOptions] = {}
    names: dict[str, str] = {}
    for i, spec in enumerate(specs):
        prefix = prefixes[i] if prefixes else None
        for step in spec.steps:
            model = store.get_model(session, workspace=ws, name=step.model)
            mv = store.get_model_version(session, model=model, version=step.version)
            triton_name = step_model_name(ws.name, step.model, prefix)
            versions.setdefault(triton_name, {})[mv.version] = mv
            options[triton_name] = ServingOptions.from_dict(model.serving)
            names[triton_name] = step.model
    needed: dict[str, _Needed] = {}
    for triton_name, by_version in versions.items():
        model_name = names[triton_name]
        signatures = {v: Signature.from_dict(mv.signature) for v, mv in by_version.items()}
        first_version, first = next(iter(sorted(signatures.items())))
        for v, sig in signatures.items():
            if sig != first:
                raise PipelineError(
                    f"model {model_name!r}: versions {first_version} and {v} are both in use but "
                    "have different signatures; Triton serves all versions of a model with "
                    "one config",
                    hint="deploy pipelines that use the same version, or import the new "
                    "signature under a new model name",
                )
        needed[triton_name] = _Needed(
            triton_name=triton_name,
            signature=first,
            files={v: Path(mv.path) for v, mv in by_version.items()},
            options=options[triton_name],
            digests={v: mv.sha256 for v, mv in by_version.items()},
            model=model_name,
        )
    return needed


def version_extras(config: Any, versions: set[int]) -> dict[int, dict[str, bytes]] | None:
    """Files published next to each version's model file: the generated ``model.py`` of the
    CPU profile's Python-backend models."""
    if config.backend != "python":
        return None
    model_py = python_model_source().encode()
    return {v: {PYTHON_MODEL_FILENAME: model_py} for v in versions}


def _write_model(writer: RepositoryWriter, item: _Needed, config: Any, versions: set[int]) -> None:
    # The store is the source of truth: a published version whose files were damaged (deleted,
    # truncated) is replaced by the stored file, once that file is checked against its content
    # address (a damaged stored file is refused, never published).
    writer.write_model(
        item.triton_name,
        config,
        {v: item.files[v] for v in versions},
        extra_files=version_extras(config, versions),
        repair=True,
        expected_sha256={v: item.digests[v] for v in versions if v in item.digests},
    )


def model_config_for(
    platform: Platform, item: _Needed, profile: Literal["cpu", "gpu"] | None = None
) -> Any:
    """The config of one Triton model serving every version in ``item``."""
    settings = platform.settings
    return model_config(
        triton_name=item.triton_name,
        signature=item.signature,
        profile=profile or settings.profile,
        max_batch_size=settings.max_batch_size,
        versions=sorted(item.files),
        options=item.options,
        template_dirs=settings.template_dir,
    )


def write_models(
    platform: Platform,
    writer: RepositoryWriter,
    needed: dict[str, _Needed],
    profile: Literal["cpu", "gpu"] | None = None,
) -> None:
    for item in needed.values():
        _write_model(writer, item, model_config_for(platform, item, profile), set(item.files))


@dataclass
class _Snapshot:
    """The repository before a deploy wrote to it: enough to put it back exactly."""

    configs: dict[str, Any]  # Triton name → previous config, None if the model was new
    folders: dict[str, set[int]]  # Triton name → version folders that existed
    ensemble_existed: bool


def _snapshot(writer: RepositoryWriter, needed: dict[str, _Needed], ensemble: str) -> _Snapshot:
    present = set(writer.list_models())
    return _Snapshot(
        configs={
            item.triton_name: writer.read_config(item.triton_name)
            if item.triton_name in present
            else None
            for item in needed.values()
        },
        folders={
            item.triton_name: set(writer.version_folders(item.triton_name))
            for item in needed.values()
            if item.triton_name in present
        },
        ensemble_existed=ensemble in present,
    )


def _roll_back(
    platform: Platform,
    writer: RepositoryWriter,
    needed: dict[str, _Needed],
    snapshot: _Snapshot,
    ensemble: str,
    dependents: list[str],
) -> None:
    """A deploy failed: restore the repository and what Triton serves to the state before."""
    assert platform.triton is not None
    by_triton = {item.triton_name: item for item in needed.values()}
    with platform.triton.client(platform.settings.triton_load_timeout_s) as client:
        if not snapshot.ensemble_existed:
            _quietly(client.unload_model, ensemble)
            writer.remove_model(ensemble)
        for name, old in snapshot.configs.items():
            if old is None:
                _quietly(client.unload_model, name)
                writer.remove_model(name)
                continue
            keep = set(old.version_policy.specific.versions)
            if keep <= set(by_triton[name].files):
                _write_model(writer, by_triton[name], old, keep)
            writer.remove_versions(name, snapshot.folders[name])
            _quietly(_load, platform, client, writer, name)
        for name in dependents:
            _quietly(_load, platform, client, writer, name)


def _quietly(call: Any, *args: Any) -> None:
    try:
        call(*args)
    except LastmileError as exc:
        log.warning("while rolling back: %s", exc)


def write_ensemble(
    platform: Platform,
    writer: RepositoryWriter,
    ws: str,
    spec: PipelineSpec,
    ensemble: str,
    needed: dict[str, _Needed],
    prefix: str | None = None,
) -> None:
    writer.write_ensemble(
        ensemble, ensemble_config_for(platform, ws, spec, ensemble, needed, prefix), repair=True
    )


def ensemble_config_for(
    platform: Platform,
    ws: str,
    spec: PipelineSpec,
    ensemble: str,
    needed: dict[str, _Needed],
    prefix: str | None = None,
) -> Any:
    """The config of a pipeline version's ensemble (``needed``: its workspace's models, by
    Triton name; ``prefix``: its steps are the version's private copies)."""
    step_models = {s.name: step_model_name(ws, s.model, prefix) for s in spec.steps}
    # Triton: an ensemble may not batch more than any of its steps. Each step's figure is the
    # one write_models put in its config (a configured 256 included, 0 when it cannot batch,
    # which makes the ensemble unbatched too), not the settings' default.
    max_batch = min(
        effective_max_batch_size(
            needed[step_models[s.name]].signature,
            default=platform.settings.max_batch_size,
            options=needed[step_models[s.name]].options,
        )
        for s in spec.steps
    )
    return ensemble_config(
        triton_name=ensemble, pipeline=spec, step_models=step_models, max_batch_size=max_batch
    )


def _uses(ws: str, spec: PipelineSpec, triton_models: set[str], prefix: str | None = None) -> bool:
    return any(step_model_name(ws, s.model, prefix) in triton_models for s in spec.steps)


def step_models(ws: str, spec: PipelineSpec, prefix: str | None = None) -> set[str]:
    """Triton names of a pipeline version's step models (shared, or its private copies)."""
    return {step_model_name(ws, s.model, prefix) for s in spec.steps}


def _load_models_then_dependents(
    platform: Platform,
    client: TritonClient,
    writer: RepositoryWriter,
    models: set[str],
    dependents: list[str],
) -> None:
    """Load composing models, then reload the ensembles using them: Triton unloads an
    ensemble whose composing model is reloaded."""
    for name in sorted(models):
        _load(platform, client, writer, name)
    for name in dependents:
        _load(platform, client, writer, name)


def _load(platform: Platform, client: TritonClient, writer: RepositoryWriter, name: str) -> None:
    """Load one model; push config and files when Triton does not share our disk."""
    assert platform.triton is not None
    if platform.triton.shares_repository:
        client.load_model(name)
    else:
        try:
            client.load_model(
                name, config=writer.read_config(name), files=writer.files_for_push(name)
            )
        except TritonError as exc:
            # Triton 2.51 loads a pushed ensemble, then also tries to poll its composing models
            # from its own repository (where pushed models are not) and reports that as a
            # failure. The ensemble itself is loaded; readiness below is the real check.
            if "failed to poll" not in exc.message or not client.is_model_ready(name):
                raise
            log.info("%s loaded; ignoring Triton's poll error for pushed models", name)
    if not client.is_model_ready(name):
        raise TritonError(f"Triton loaded {name!r} but it is not ready")


def check_resources(
    platform: Platform, needed: dict[str, _Needed], triton_models: set[str]
) -> None:
    """Before anything is written: every version a deploy publishes keeps its external data
    inside its folder and no tensor beyond LASTMILE_MAX_TENSOR_BYTES at its maximum batch."""
    from converters.onnx_limits import check_deployable

    settings = platform.settings
    for item in needed.values():
        if item.triton_name not in triton_models:
            continue  # already served by other live deployments
        batch = effective_max_batch_size(
            item.signature, default=settings.max_batch_size, options=item.options
        )
        for version, path in sorted(item.files.items()):
            check_deployable(
                path,
                max_batch_size=batch,
                max_tensor_bytes=settings.max_tensor_bytes,
                where=f"model {item.model!r} version {version}",
            )


def _require_triton(platform: Platform) -> None:
    if platform.triton is None:
        raise TritonError(
            "no Triton server is attached to this control plane",
            hint="start the system with: lastmile up",
        )


def deploy(
    platform: Platform,
    *,
    workspace: str,
    pipeline: str,
    version: int | None = None,
    principal: str = "",
    action: str = "deploy",
) -> dict[str, Any]:
    """Put a pipeline version live as a hot-swap: load it beside what serves, warm it, switch
    the gateway, drain the old version, unload it. A second deploy of the same pipeline while
    one runs is a 409, and so is a deploy while the pipeline has an active rollout; each outcome
    is recorded in the pipeline's history."""
    check_name(workspace, kind="workspace")
    check_name(pipeline, kind="pipeline")
    with pipeline_lock(platform, workspace, pipeline):
        info, retired = _deploy(platform, workspace, pipeline, version, principal, action)
        if retired is not None:
            drain(platform, workspace=workspace, pipeline=pipeline, version=retired[0])
            retire(platform, workspace=workspace, ensembles=[retired[1]])
    log.info("pipeline %s version %d is live as %s", pipeline, info["version"], info["ensemble"])
    return info


def pipeline_lock(platform: Platform, workspace: str, pipeline: str) -> Any:
    """One change of a pipeline at a time (deploy, rollout step, route push, retire): a second
    concurrent one is a 409 at once."""
    return platform.exclusive(
        f"deploy:{workspace}/{pipeline}", f"a deployment or rollout step of pipeline {pipeline!r}"
    )


def _deploy(
    platform: Platform,
    workspace: str,
    pipeline: str,
    version: int | None,
    principal: str,
    action: str,
) -> tuple[dict[str, Any], tuple[int, str] | None]:
    """(the deployment's info, (version, ensemble) now to retire or None)."""
    with platform.deploy_lock, platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        pipe = store.get_pipeline(session, workspace=ws, name=pipeline)
        pv = store.get_pipeline_version(session, pipeline=pipe, version=version)
        active = store.active_rollout(session, pipeline=pipe)
        if active is not None:
            raise Conflict(
                f"pipeline {pipeline!r} has an active {active.strategy} rollout "
                f"(#{active.id}, {active.state})",
                hint=f"finish it first: lastmile rollout promote|rollback|abort {pipeline}",
            )
        _require_triton(platform)
        previous = store.get_deployment(session, pipeline=pipe)
        prev_version: tuple[int, str] | None = None
        if previous is not None and previous.state == "live":
            old = session.get(store.PipelineVersion, previous.pipeline_version_id)
            prev_version = (old.version, previous.ensemble)  # type: ignore[union-attr]
        try:
            ensemble = load_beside(platform, session, ws, pipe, pv)
            warm_up(platform, ensemble, PipelineSpec.from_dict(pv.spec))
        except LastmileError as exc:
            _record_failure(session, pipe, pv, previous, str(exc), principal, action, ws.name)
            raise
        own_models = step_models(ws.name, pv_spec(pv))
        deployment = store.save_deployment(
            session,
            pipeline=pipe,
            pipeline_version=pv,
            ensemble=ensemble,
            triton_models=sorted(own_models),
            state="live",
        )
        store.add_deployment_event(
            session, pipeline=pipe, version=pv.version, action=action, outcome="live",
            principal=principal,
        )  # fmt: skip
        try:
            serving.push_routes(platform, session)
        except LastmileError as exc:
            # nothing of this deploy is committed: the previous version still serves
            session.rollback()
            _push_failed(platform, workspace, pipeline, pv.version, str(exc), principal, action)
            if prev_version is None or prev_version[1] != ensemble:
                _retire_locked(platform, workspace, [ensemble])
            raise
        session.commit()
        info = deployment_info(session, deployment)
    if prev_version is not None and prev_version[1] != ensemble:
        return info, prev_version
    return info, None


def _push_failed(
    platform: Platform,
    workspace: str,
    pipeline: str,
    version: int,
    error: str,
    principal: str,
    action: str,
) -> None:
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        pipe = store.get_pipeline(session, workspace=ws, name=pipeline)
        pv = store.get_pipeline_version(session, pipeline=pipe, version=version)
        previous = store.get_deployment(session, pipeline=pipe)
        _record_failure(session, pipe, pv, previous, error, principal, action, workspace)


def pv_spec(pv: store.PipelineVersion) -> PipelineSpec:
    return PipelineSpec.from_dict(pv.spec)


def _record_failure(
    session: Any,
    pipe: store.Pipeline,
    pv: store.PipelineVersion,
    previous: store.Deployment | None,
    error: str,
    principal: str,
    action: str,
    workspace: str,
) -> None:
    if previous is None or previous.state != "live":
        store.save_deployment(
            session,
            pipeline=pipe,
            pipeline_version=pv,
            ensemble=triton_ensemble_name(workspace, pipe.name, pv.version),
            triton_models=sorted(step_models(workspace, pv_spec(pv))),
            state="failed",
            error=error,
        )
    store.add_deployment_event(
        session, pipeline=pipe, version=pv.version, action=action, outcome="failed",
        principal=principal, error=error,
    )  # fmt: skip
    session.commit()


def load_beside(
    platform: Platform,
    session: Any,
    ws: store.Workspace,
    pipe: store.Pipeline,
    pv: store.PipelineVersion,
    *,
    isolated: bool = False,
) -> str:
    """Write and load ``pv``'s ensemble and models beside everything served now (nothing that
    serves is unloaded); the ensemble's name. ``isolated``: its steps get private copies of
    their models (blue/green), so nothing that serves is even reloaded. On failure the
    repository and Triton are put back as they were and the error is raised. Called under
    ``deploy_lock``."""
    assert platform.triton is not None
    spec = pv_spec(pv)
    validate_pipeline(spec)
    ensemble = triton_ensemble_name(ws.name, pipe.name, pv.version)
    prefix = copy_prefix(ws.name, pipe.name, pv.version) if isolated else None
    own_models = step_models(ws.name, spec, prefix)
    serving_now = [
        (served, other)
        for served, other in served_specs(session, workspace_id=ws.id)
        if served.ensemble != ensemble
    ]
    needed = collect_models(
        session,
        ws,
        [spec] + [s for _, s in serving_now],
        [prefix] + [d.prefix for d, _ in serving_now],
    )
    check_resources(platform, needed, own_models)
    writer = RepositoryWriter(platform.settings.repository_dir)
    dependents = [
        d.ensemble for d, other in serving_now if _uses(ws.name, other, own_models, d.prefix)
    ]
    snapshot = _snapshot(writer, needed, ensemble)
    try:
        write_models(platform, writer, needed)
        write_ensemble(platform, writer, ws.name, spec, ensemble, needed, prefix)
        with platform.triton.client(platform.settings.triton_load_timeout_s) as client:
            _load_models_then_dependents(
                platform, client, writer, own_models, [*dependents, ensemble]
            )
    except LastmileError as exc:
        log.error("loading %s failed, rolling back: %s", ensemble, exc)
        _roll_back(platform, writer, needed, snapshot, ensemble, dependents)
        raise
    return ensemble


def warm_up(platform: Platform, ensemble: str, spec: PipelineSpec) -> None:
    """``LASTMILE_WARMUP_REQUESTS`` requests of zeros straight to Triton before any client
    is routed to a freshly loaded ensemble."""
    count = platform.settings.warmup_requests
    if count <= 0 or platform.triton is None:
        return
    inputs = [(t.name, t.datatype, list(t.shape)) for t in spec.input_specs()]
    with platform.triton.client(platform.settings.triton_load_timeout_s) as client:
        client.warm_up(ensemble, inputs, count)


def drain(platform: Platform, *, workspace: str, pipeline: str, version: int) -> None:
    """Wait (bounded) until the gateway has no request in flight to a variant it no longer
    routes to, so unloading it fails no request that was already on its way."""
    from manager.services import gateway_figures

    gateway_figures.wait_drained(
        platform,
        route=f"{workspace}/{pipeline}",
        variant=f"{pipeline}/{version}",
        timeout_s=platform.settings.drain_timeout_s,
    )


def retire(platform: Platform, *, workspace: str, ensembles: list[str]) -> None:
    """Unload the given ensembles unless they are served again by now (a newer deploy or
    rollback), then drop model versions that nothing served uses any more."""
    with platform.deploy_lock:
        _retire_locked(platform, workspace, ensembles)


def _retire_locked(platform: Platform, workspace: str, ensembles: list[str]) -> None:
    assert platform.triton is not None
    with (
        platform.triton.client(platform.settings.triton_load_timeout_s) as client,
        platform.session() as session,
    ):
        ws = store.get_workspace(session, name=workspace)
        live = served_specs(session, workspace_id=ws.id)
        served = {d.ensemble for d, _ in live}
        writer = RepositoryWriter(platform.settings.repository_dir)
        for ensemble in ensembles:
            if ensemble in served:
                continue  # went live again meanwhile: a late retire never undoes it
            try:
                client.unload_model(ensemble)
            except LastmileError as exc:
                log.warning("could not unload %s: %s", ensemble, exc)
            writer.remove_model(ensemble)
        needed = collect_models(session, ws, [s for _, s in live], [d.prefix for d, _ in live])
        retired = tuple(f"{e}." for e in ensembles if e not in served)
        for name in writer.list_models():  # private copies of a retired version's steps
            if retired and name.startswith(retired) and name not in needed:
                try:
                    client.unload_model(name)
                except LastmileError as exc:
                    log.warning("could not unload %s: %s", name, exc)
                writer.remove_model(name)
        shrunk = {
            item.triton_name
            for item in needed.values()
            if set(writer.read_config(item.triton_name).version_policy.specific.versions)
            != set(item.files)
        }
        if not shrunk:
            return
        shrunk_needed = {k: v for k, v in needed.items() if v.triton_name in shrunk}
        write_models(platform, writer, shrunk_needed)
        dependents = [d.ensemble for d, spec in live if _uses(ws.name, spec, shrunk, d.prefix)]
        try:
            _load_models_then_dependents(platform, client, writer, shrunk, dependents)
        except LastmileError as exc:
            log.warning("could not drop unused model versions: %s", exc)
            return
        for item in shrunk_needed.values():
            writer.remove_versions(item.triton_name, set(item.files))


def deployment_info(session: Any, deployment: store.Deployment) -> dict[str, Any]:
    pipe = session.get(store.Pipeline, deployment.pipeline_id)
    pv = session.get(store.PipelineVersion, deployment.pipeline_version_id)
    ws = session.get(store.Workspace, pipe.workspace_id)
    spec = PipelineSpec.from_dict(pv.spec)
    return {
        "workspace": ws.name,
        "pipeline": pipe.name,
        "version": pv.version,
        "state": deployment.state,
        "error": deployment.error,
        "ensemble": deployment.ensemble,
        "triton_models": deployment.triton_models,
        "inputs": [t.to_dict() for t in spec.input_specs()],
        "outputs": [t.to_dict() for t in spec.output_specs()],
        "updated_at": deployment.updated_at.isoformat(),
    }


def list_deployments(
    platform: Platform, *, workspaces: set[str] | None = None
) -> list[dict[str, Any]]:
    """Deployments of the given workspaces (all when None)."""
    with platform.session() as session:
        infos = [
            platform.served_state(deployment_info(session, d))
            for d in store.list_deployments(session)
        ]
    return [d for d in infos if workspaces is None or d["workspace"] in workspaces]
