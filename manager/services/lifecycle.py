"""A deployment after it went live: its status on Triton, its history, undeploy, rollback.

Undeploy takes the route out of the gateway first (no request is sent to a model that is
about to go), then unloads the ensemble and every model no other live deployment uses, and
removes them from the repository. Rollback is a deploy of an earlier version, recorded as such.
"""

from __future__ import annotations

import logging
from typing import Any

from manager import store
from manager.domain import PipelineSpec
from manager.errors import Conflict, LastmileError, NotFound
from manager.repository.writer import RepositoryWriter
from manager.services import deployments, serving
from manager.services.context import Platform
from manager.services.lookups import workspace_pipeline

log = logging.getLogger(__name__)


_pipeline = workspace_pipeline


def status(platform: Platform, *, workspace: str, pipeline: str) -> dict[str, Any]:
    """The deployment and, per Triton model it uses, whether Triton has it ready."""
    with platform.session() as session:
        _ws, pipe = _pipeline(session, workspace, pipeline)
        dep = store.get_deployment(session, pipeline=pipe)
        if dep is None:
            raise NotFound(
                f"pipeline {pipeline!r} has never been deployed",
                hint=f"lastmile deploy {pipeline} --version N",
            )
        info = platform.served_state(deployments.deployment_info(session, dep))
        pv = session.get(store.PipelineVersion, dep.pipeline_version_id)
        spec = PipelineSpec.from_dict(pv.spec)  # type: ignore[union-attr]
    steps: list[tuple[str, int | None]] = [
        (f"{workspace}.{s.model}", s.version) for s in spec.steps
    ]
    steps.append((info["ensemble"], None))
    info["steps"] = [_step_state(platform, name, version, info["state"]) for name, version in steps]
    return info


def _step_state(
    platform: Platform, name: str, version: int | None, deployment_state: str
) -> dict[str, Any]:
    entry: dict[str, Any] = {"triton_model": name, "version": version, "ready": None}
    if platform.triton is None:
        return entry | {"state": "no Triton attached"}
    if deployment_state != "live":
        entry["ready"] = False
    try:
        with platform.triton.client(5.0) as client:
            ready = client.is_model_ready(name, "" if version is None else str(version))
    except LastmileError as exc:
        return entry | {"state": f"unknown: {exc.message}"}
    return entry | {"ready": ready, "state": "READY" if ready else "UNAVAILABLE"}


def history(
    platform: Platform, *, workspace: str, pipeline: str, after_id: int | None, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    with platform.session() as session:
        _ws, pipe = _pipeline(session, workspace, pipeline)
        rows = store.list_deployment_events(
            session, pipeline=pipe, after_id=after_id, limit=limit + 1
        )
        page = rows[:limit]
        more = page[-1].id if len(rows) > limit else None
        return [
            {
                "version": e.version,
                "action": e.action,
                "outcome": e.outcome,
                "error": e.error,
                "principal": e.principal,
                "ts": e.ts,
            }
            for e in page
        ], more


def rollback(
    platform: Platform,
    *,
    workspace: str,
    pipeline: str,
    version: int | None = None,
    principal: str = "",
) -> dict[str, Any]:
    """Back to an earlier version in one step. During a rollout: its stable version takes all
    traffic again at once (still loaded, so no load). Otherwise ``version``, or the last one
    that was live before the current one, is hot-swapped in (load, warm, switch, drain)."""
    from manager.services import rollouts

    with platform.session() as session:
        _ws, pipe = _pipeline(session, workspace, pipeline)
        active = store.active_rollout(session, pipeline=pipe)
        if active is None and version is None:
            dep = store.get_deployment(session, pipeline=pipe)
            if dep is None or dep.state != "live":
                raise Conflict(f"pipeline {pipeline!r} is not live; there is nothing to roll back")
            current = session.get(store.PipelineVersion, dep.pipeline_version_id).version  # type: ignore[union-attr]
            events = store.list_deployment_events(session, pipeline=pipe, limit=1000)
            earlier = [e.version for e in events if e.outcome == "live" and e.version != current]
            if not earlier:
                raise Conflict(
                    f"pipeline {pipeline!r} has no earlier live version than {current}",
                    hint="deploy a version explicitly: lastmile deploy NAME --version N",
                )
            version = earlier[0]
    if active is not None:
        rollouts.act(
            platform,
            workspace=workspace,
            pipeline=pipeline,
            action="rollback",
            version=version,
            principal=principal,
        )
        return status(platform, workspace=workspace, pipeline=pipeline)
    return deployments.deploy(
        platform,
        workspace=workspace,
        pipeline=pipeline,
        version=version,
        principal=principal,
        action="rollback",
    )


def timeline(
    platform: Platform, *, workspace: str, pipeline: str, limit: int = 200
) -> list[dict[str, Any]]:
    """Deployments and rollout steps of a pipeline as one history, newest first."""
    with platform.session() as session:
        _ws, pipe = _pipeline(session, workspace, pipeline)
        items: list[dict[str, Any]] = [
            {
                "ts": e.ts,
                "kind": "deployment",
                "action": e.action,
                "version": e.version,
                "outcome": e.outcome,
                "detail": e.error or "",
                "principal": e.principal,
                "rollout": None,
            }
            for e in store.list_deployment_events(session, pipeline=pipe, limit=limit)
        ]
        for e in store.list_rollout_events(session, pipeline=pipe, limit=limit):
            items.append(
                {
                    "ts": e.ts,
                    "kind": "rollout",
                    "action": e.action,
                    "version": None,
                    "outcome": e.state,
                    "detail": e.reason,
                    "principal": e.principal,
                    "rollout": e.rollout_id,
                    "weights": e.weights,
                }
            )
    items.sort(key=lambda item: item["ts"], reverse=True)
    return items[:limit]


def undeploy(
    platform: Platform, *, workspace: str, pipeline: str, principal: str = ""
) -> dict[str, Any]:
    """Take the route out of the gateway (in the same transaction as the store's change: if
    the gateway does not confirm, nothing changes), then unload what only this pipeline used.
    An active rollout of the pipeline is aborted with it."""
    with deployments.pipeline_lock(platform, workspace, pipeline):
        with platform.deploy_lock, platform.session() as session:
            ws, pipe = _pipeline(session, workspace, pipeline)
            dep = store.get_deployment(session, pipeline=pipe)
            if dep is None or dep.state not in ("live", "failed"):
                raise NotFound(f"pipeline {pipeline!r} is not deployed")
            deployments._require_triton(platform)
            assert platform.triton is not None
            pv = session.get(store.PipelineVersion, dep.pipeline_version_id)
            ensembles = [dep.ensemble] + [
                s.ensemble
                for s, _ in serving.served_specs(session, workspace_id=ws.id)
                if s.pipeline_id == pipe.id and s.role == "candidate"
            ]
            models = set(dep.triton_models)
            rollout = store.active_rollout(session, pipeline=pipe)
            if rollout is not None:
                rollout.state, rollout.reason = "aborted", "the pipeline was undeployed"
                store.save_rollout(session, rollout)
                store.add_rollout_event(
                    session, rollout=rollout, action="abort", reason=rollout.reason,
                    principal=principal,
                )  # fmt: skip
            dep.state, dep.error, dep.updated_at = "undeployed", None, store.utcnow()
            session.add(dep)
            store.add_deployment_event(
                session,
                pipeline=pipe,
                version=pv.version,  # type: ignore[union-attr]
                action="undeploy",
                outcome="undeployed",
                principal=principal,
            )
            session.flush()
            info = deployments.deployment_info(session, dep)
            still_used = {
                name for d, _ in serving.served_specs(session) for name in d.triton_models
            }
            serving.push_routes(platform, session)  # the gateway stops sending requests first
            session.commit()
        writer = RepositoryWriter(platform.settings.repository_dir)
        with platform.triton.client(platform.settings.triton_load_timeout_s) as client:
            for name in [*ensembles, *sorted(models - still_used)]:
                try:
                    client.unload_model(name)
                except LastmileError as exc:
                    log.warning("undeploy %s: could not unload %s: %s", pipeline, name, exc)
                writer.remove_model(name)
        # model versions only the undeployed pipeline used leave the shared models' policies
        deployments.retire(platform, workspace=workspace, ensembles=ensembles)
    log.info("pipeline %s undeployed (%s)", pipeline, ensembles[0])
    return info
