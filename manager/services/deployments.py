"""Putting pipeline versions on Triton and telling the gateway where they are.

One Triton model per registered model (``<workspace>.<model>``) holds every version that a
live deployment needs, under a ``specific`` version policy; one ensemble per pipeline version
(``<workspace>.<pipeline>.v<N>``) wires them. Deploying loads composing models before the
ensemble, reloads the other ensembles that use a reloaded model (Triton unloads an ensemble
whose composing model is reloaded), and switches the gateway route only once the new ensemble
answers ready and has been warmed up; the previous ensemble is unloaded once the gateway has
drained the requests in flight to it. The building blocks live in ``publish``; rollouts reuse
``load_beside``, ``warm_up``, ``drain`` and ``retire``.
"""

from __future__ import annotations

import logging
from typing import Any

from manager import store
from manager.domain import PipelineSpec
from manager.errors import Conflict, LastmileError, TritonError
from manager.names import (
    check_name,
    copy_prefix,
    triton_ensemble_name,
)
from manager.repository.config import (
    validate_pipeline,
)
from manager.repository.writer import RepositoryWriter
from manager.services import gateway_pool, serving
from manager.services.context import Platform
from manager.services.publish import (  # noqa: F401  (kept importable from here)
    _load,
    _load_models_then_dependents,
    _Needed,
    _quietly,
    _roll_back,
    _Snapshot,
    _snapshot,
    _uses,
    _write_model,
    check_resources,
    collect_models,
    ensemble_config_for,
    model_config_for,
    step_models,
    version_extras,
    write_ensemble,
    write_models,
)
from manager.services.serving import served_specs

log = logging.getLogger(__name__)


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
                platform, client, writer, own_models, dependents, new=[ensemble]
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
    gateway_pool.wait_drained(
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
        composing: set[str] = set()  # the models the retired ensembles chained
        for ensemble in ensembles:
            if ensemble in served:
                continue  # went live again meanwhile: a late retire never undoes it
            composing |= _composing_models(writer, ensemble)
            try:
                client.unload_model(ensemble)
            except LastmileError as exc:
                log.warning("could not unload %s: %s", ensemble, exc)
            writer.remove_model(ensemble)
        needed = collect_models(session, ws, [s for _, s in live], [d.prefix for d, _ in live])
        retired = tuple(f"{e}." for e in ensembles if e not in served)
        for name in writer.list_models():
            # private copies of a retired version's steps, and shared models that only the
            # retired versions used (blue/green promoted a green copy over them): unloaded once
            # drained, not left loaded until the next reconciliation
            mine = bool(retired) and name.startswith(retired)
            if (mine or name in composing) and name not in needed:
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


def _composing_models(writer: RepositoryWriter, ensemble: str) -> set[str]:
    """The models an ensemble in the repository chains (none if it is not there)."""
    try:
        config = writer.read_config(ensemble)
    except LastmileError:
        return set()
    return {step.model_name for step in config.ensemble_scheduling.step}


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
        infos = [deployment_info(session, d) for d in store.list_deployments(session)]
    # asked once (a store query and each Triton replica's index), not once per deployment
    unserved = platform.unserved() if any(i["state"] == "live" for i in infos) else {}
    infos = [platform.served_state(info, unserved) for info in infos]
    return [d for d in infos if workspaces is None or d["workspace"] in workspaces]
