"""Rollouts: changing what serves a pipeline while it serves, and judging the change live.

A rollout moves a pipeline from its stable version to one or more candidates by a strategy:

- ``hot-swap``: load beside, warm, switch 100 %, drain, unload the old (one call);
- ``canary``: candidate weight in steps, each step's window judged by the gates of
  ``rollout.controller`` on the gateway's live figures (``tick``, every
  ``LASTMILE_ROLLOUT_TICK_S``); a failing gate rolls back at once;
- ``ab``: fixed weights across 2+ variants, sticky per key (header or request parameter);
- ``shadow``: the stable version answers, candidates get a copy (all or a sample) and the
  gateway reports how their outputs differ;
- ``blue-green``: the candidate (green) loaded complete beside blue, one atomic ``switch``
  (and back, for as long as the rollout is active), ``promote`` keeps the serving colour.

Every change runs under the pipeline's lock, in one order: store change and routing push in
one transaction (the push confirmed before the commit), then drain and retire of what is no
longer routed. The state and the current window live in the store, so a restarted manager
resumes where it stopped. Each step and decision is a ``rollout_event`` with its reason and
figures; with the deployment events it is the pipeline's timeline (``history``).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any

from manager import store
from manager.domain import PipelineSpec
from manager.errors import Conflict, GatewayError, InvalidInput, LastmileError, NotFound
from manager.names import check_name, copy_prefix, triton_ensemble_name
from manager.services import (
    deployments,
    gateway_figures,
    gateway_pool,
    rollout_checks,
    rollout_report,
    serving,
)
from manager.services.context import Platform
from rollout import controller, windows

log = logging.getLogger(__name__)


# -- starting ---------------------------------------------------------------------------------
def start(
    platform: Platform,
    *,
    workspace: str,
    pipeline: str,
    strategy: str,
    candidates: list[int],
    params: dict[str, Any] | None = None,
    principal: str = "",
) -> dict[str, Any]:
    """Validate, load the candidates beside the stable version, and begin. Bad input (unknown
    versions, weights that do not sum to 100, a signature that differs) changes nothing."""
    check_name(workspace, kind="workspace")
    check_name(pipeline, kind="pipeline")
    with deployments.pipeline_lock(platform, workspace, pipeline):
        rollout_id = _create(platform, workspace, pipeline, strategy, candidates, params, principal)
        try:
            _load_candidates(platform, workspace, pipeline, rollout_id)
        except LastmileError as exc:
            try:  # nothing was routed to the candidates: end the rollout, unload them
                _finish(platform, workspace, pipeline, rollout_id, "aborted", None,
                        f"a candidate could not be loaded: {exc.message}", principal)  # fmt: skip
            except LastmileError as again:
                log.error("could not end rollout %s cleanly: %s", rollout_id, again)
            raise
        with platform.deploy_lock, platform.session() as session:
            rollout = _row(session, rollout_id)
            _begin(platform, session, rollout, workspace, pipeline, principal)
        if strategy == "hot-swap":
            _finish(
                platform, workspace, pipeline, rollout_id, "promoted", candidates[0],
                "hot-swap: the candidate is warm and takes all traffic", principal,
            )  # fmt: skip
    return rollout_report.status(
        platform, workspace=workspace, pipeline=pipeline, rollout_id=rollout_id
    )


def _create(
    platform: Platform,
    workspace: str,
    pipeline: str,
    strategy: str,
    candidates: list[int],
    params: dict[str, Any] | None,
    principal: str,
) -> int:
    with platform.deploy_lock, platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        pipe = store.get_pipeline(session, workspace=ws, name=pipeline)
        dep = store.get_deployment(session, pipeline=pipe)
        if dep is None or dep.state != "live":
            raise Conflict(
                f"pipeline {pipeline!r} is not live: a rollout starts from a live version",
                hint=f"deploy a version first: lastmile deploy {pipeline} --version N",
            )
        stable = session.get(store.PipelineVersion, dep.pipeline_version_id)
        assert stable is not None
        pool = platform.triton
        checked = rollout_checks.check(
            session, pipe, stable, strategy, candidates, params or {},
            pool_size=len(pool.replicas) if pool is not None else None,
        )  # fmt: skip
        deployments._require_triton(platform)
        rollout = store.add_rollout(
            session,
            store.Rollout(
                pipeline_id=pipe.id,  # type: ignore[arg-type]
                strategy=strategy,
                stable_version=stable.version,
                candidates=list(candidates),
                params=checked,
                state="pending",
                weights={str(stable.version): 100.0},
                created_by=principal,
            ),
        )
        versions = ", ".join(str(v) for v in candidates)
        store.add_rollout_event(
            session, rollout=rollout, action="create", principal=principal,
            reason=f"{strategy} from version {stable.version} to {versions}",
            figures={"params": checked},
        )  # fmt: skip
        session.commit()
        assert rollout.id is not None
        return rollout.id


def _load_candidates(platform: Platform, workspace: str, pipeline: str, rollout_id: int) -> None:
    with platform.deploy_lock, platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        pipe = store.get_pipeline(session, workspace=ws, name=pipeline)
        rollout = _row(session, rollout_id)
        for version in rollout.candidates:
            pv = store.get_pipeline_version(session, pipeline=pipe, version=version)
            ensemble = deployments.load_beside(
                platform, session, ws, pipe, pv, isolated=rollout.strategy == "blue-green"
            )
            deployments.warm_up(platform, ensemble, PipelineSpec.from_dict(pv.spec))


def _begin(
    platform: Platform,
    session: Any,
    rollout: store.Rollout,
    workspace: str,
    pipeline: str,
    principal: str,
) -> None:
    """pending -> running with the strategy's first weights, pushed before the commit."""
    now = time.time()
    stable, candidates = rollout.stable_version, rollout.candidates
    reason = "started"
    if rollout.strategy == "canary":
        plan = controller.Plan.from_dict(rollout.params["plan"])
        decision = controller.start(plan, now)
        _apply(rollout, decision)
        reason = decision.reason
    elif rollout.strategy == "ab":
        rollout.weights = dict(rollout.params["weights"])
        rollout.state = "running"
    elif rollout.strategy == "hot-swap":
        rollout.weights = {str(stable): 0.0, str(candidates[0]): 100.0}
        rollout.state = "running"
    else:  # shadow and blue-green: the stable version keeps all traffic at first
        rollout.weights = {str(stable): 100.0, **{str(v): 0.0 for v in candidates}}
        rollout.state = "running"
    start = _snapshot(rollout, workspace, pipeline, _read_figures(platform))
    # a canary's first step window opens with the rollout
    rollout.window = (
        {"start": start, "step": start} if rollout.strategy == "canary" else {"start": start}
    )
    rollout.step_started_at = now
    store.save_rollout(session, rollout)
    store.add_rollout_event(session, rollout=rollout, action="start", reason=reason,
                            principal=principal)  # fmt: skip
    serving.push_routes(platform, session)
    session.commit()


def _apply(rollout: store.Rollout, decision: controller.Decision) -> None:
    """A canary decision's state and weights onto the row."""
    state = decision.state
    rollout.state = state.state
    rollout.step = state.step
    rollout.step_started_at = state.step_started_at
    rollout.paused_at = state.paused_at
    candidate = str(rollout.candidates[0])
    rollout.weights = {
        str(rollout.stable_version): decision.stable_weight,
        candidate: decision.candidate_weight,
    }
    rollout.reason = decision.reason


def _canary_state(rollout: store.Rollout) -> controller.CanaryState:
    return controller.CanaryState(
        state=rollout.state,  # type: ignore[arg-type]
        step=rollout.step,
        step_started_at=rollout.step_started_at,
        paused_at=rollout.paused_at,
    )


# -- figures ----------------------------------------------------------------------------------
Figures = dict[tuple[str, str], gateway_figures.VariantCounters]


def _read_figures(platform: Platform) -> Figures:
    """The gateway's figures now; none when they cannot be read (a window that starts then
    counts from the gateway's start)."""
    try:
        return gateway_pool.read(platform)
    except GatewayError as exc:
        log.warning("no gateway figures for a rollout window's start: %s", exc)
        return {}


def _snapshot(
    rollout: store.Rollout, workspace: str, pipeline: str, figures: Figures
) -> dict[str, Any]:
    """The cumulative counters of every variant of the rollout's route in ``figures``."""
    route = f"{workspace}/{pipeline}"
    out = {}
    for version in [rollout.stable_version, *rollout.candidates]:
        counters = figures.get((route, f"{pipeline}/{version}"))
        if counters is not None:
            out[str(version)] = counters.to_dict()
    return out


def variant_figures(
    before: dict[str, Any] | None, now: gateway_figures.VariantCounters | None
) -> controller.VariantFigures:
    if now is None:
        return controller.VariantFigures(0, 0, None)
    return windows.window_delta(gateway_figures.from_json(before), now.counters())


def _window(
    rollout: store.Rollout, workspace: str, pipeline: str, figures: Figures
) -> controller.WindowFigures:
    route = f"{workspace}/{pipeline}"
    step = (rollout.window or {}).get("step") or {}
    stable, candidate = str(rollout.stable_version), str(rollout.candidates[0])
    return controller.WindowFigures(
        stable=variant_figures(step.get(stable), figures.get((route, f"{pipeline}/{stable}"))),
        candidate=variant_figures(
            step.get(candidate), figures.get((route, f"{pipeline}/{candidate}"))
        ),
    )


# -- the loop ---------------------------------------------------------------------------------
def tick(platform: Platform, now: float | None = None) -> list[dict[str, Any]]:
    """Evaluate every running canary once; the decisions taken (holds are not logged)."""
    taken: list[dict[str, Any]] = []
    with platform.session() as session:
        running: list[tuple[int, int]] = [
            (r.id, r.pipeline_id)
            for r in store.active_rollouts(session)
            if r.id is not None and r.strategy == "canary" and r.state == "running"
        ]
        names = {}
        for _rid, pid in running:
            pipe = session.get(store.Pipeline, pid)
            ws = session.get(store.Workspace, pipe.workspace_id)  # type: ignore[union-attr]
            names[pid] = (ws.name, pipe.name)  # type: ignore[union-attr]
    if not running:
        return taken
    try:
        figures = gateway_pool.read(platform)
    except GatewayError as exc:
        log.warning("rollout gates not evaluated: %s", exc)
        return taken
    for rollout_id, pipeline_id in running:
        workspace, pipeline = names[pipeline_id]
        try:
            with deployments.pipeline_lock(platform, workspace, pipeline):
                decision = _evaluate(platform, workspace, pipeline, rollout_id, figures, now)
        except Conflict:
            continue  # someone is changing this pipeline: evaluate at the next tick
        except LastmileError as exc:
            log.warning("rollout %s of %s: %s", rollout_id, pipeline, exc)
            continue
        if decision is not None:
            taken.append(decision)
    return taken


def _evaluate(
    platform: Platform,
    workspace: str,
    pipeline: str,
    rollout_id: int,
    figures: Figures,
    now: float | None,
) -> dict[str, Any] | None:
    now = time.time() if now is None else now
    with platform.deploy_lock, platform.session() as session:
        rollout = _row(session, rollout_id)
        if rollout.state != "running":
            return None
        plan = controller.Plan.from_dict(rollout.params["plan"])
        window = _window(rollout, workspace, pipeline, figures)
        decision = controller.evaluate(plan, _canary_state(rollout), window, now)
        gate = _assay_gate(platform, workspace, rollout)
        if gate is not None and "fail" in gate:  # an assay judged the candidate: roll back
            decision = controller.Decision(
                state=decision.state, action="rollback", candidate_weight=0.0,
                reason=f"assay gate failed: {gate['fail']}", gates=decision.gates,
            )  # fmt: skip
        elif gate is not None and decision.action in ("advance", "promote"):
            return None  # no assay has judged this step's window yet: no promotion on silence
        if decision.action == "hold":
            return None
        facts = {"gates": [g.to_dict() for g in decision.gates], "window": window.to_dict()}
        if gate is not None:
            facts["assay_gate"] = gate
        if decision.action == "advance":
            _apply(rollout, decision)
            # the next window starts from the reading this one was judged on
            rollout.window = {
                **rollout.window,
                "step": _snapshot(rollout, workspace, pipeline, figures),
            }
            store.save_rollout(session, rollout)
            store.add_rollout_event(session, rollout=rollout, action="advance",
                                    reason=decision.reason, figures=facts)  # fmt: skip
            serving.push_routes(platform, session)
            session.commit()
            log.info("rollout %s of %s: %s", rollout_id, pipeline, decision.reason)
            return decision.to_dict()
    winner = rollout.candidates[0] if decision.action == "promote" else rollout.stable_version
    state = "promoted" if decision.action == "promote" else "rolled_back"
    _finish(platform, workspace, pipeline, rollout_id, state, winner, decision.reason, "",
            figures=facts)  # fmt: skip
    log.info("rollout %s of %s: %s", rollout_id, pipeline, decision.reason)
    return decision.to_dict()


def _assay_gate(
    platform: Platform, workspace: str, rollout: store.Rollout
) -> dict[str, Any] | None:
    """The canary's assay gates over the current step's window (manager.services.assay_runs)."""
    names = rollout.params.get("assays") or []
    if not names:
        return None
    from manager.services import assay_runs

    step_start = datetime.fromtimestamp(rollout.step_started_at, tz=timezone.utc)
    return assay_runs.gate(platform, names=names, workspace=workspace, after=step_start)


class Loop:
    """The thread that ticks running canaries (``lastmile up`` runs one)."""

    def __init__(self, platform: Platform, interval_s: float) -> None:
        self.platform = platform
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rollouts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                tick(self.platform)
            except Exception:  # the loop must outlive one bad tick
                log.exception("rollout tick failed")


# -- operations -------------------------------------------------------------------------------
def act(
    platform: Platform,
    *,
    workspace: str,
    pipeline: str,
    action: str,
    version: int | None = None,
    principal: str = "",
    reason: str = "",
) -> dict[str, Any]:
    """pause | resume | promote [version] | rollback | abort | switch on the active rollout."""
    with deployments.pipeline_lock(platform, workspace, pipeline):
        with platform.session() as session:
            ws = store.get_workspace(session, name=workspace)
            pipe = store.get_pipeline(session, workspace=ws, name=pipeline)
            rollout = store.active_rollout(session, pipeline=pipe)
            if rollout is None:
                raise Conflict(
                    f"pipeline {pipeline!r} has no active rollout",
                    hint=f"start one: lastmile rollout start {pipeline} --strategy canary "
                    "--candidate N",
                )
            rollout_id, strategy = rollout.id, rollout.strategy
            stable, candidates, weights = (
                rollout.stable_version,
                list(rollout.candidates),
                dict(rollout.weights),
            )
            current = rollout.state
        assert rollout_id is not None
        by = f" by {principal}" if principal else ""
        if action in ("pause", "resume"):
            _pause_resume(
                platform, workspace, pipeline, rollout_id, action, principal,
                reason or f"{action}d{by}",
            )  # fmt: skip
        elif action == "switch":
            if strategy != "blue-green":
                raise InvalidInput(f"switch is for blue-green rollouts; this one is {strategy}")
            _switch(platform, rollout_id, principal, reason)
        elif action == "promote":
            winner = _winner(strategy, stable, candidates, weights, version)
            _finish(platform, workspace, pipeline, rollout_id, "promoted", winner,
                    reason or f"version {winner} promoted{by}", principal)  # fmt: skip
        elif action in ("rollback", "abort"):
            if version is not None and version != stable:
                raise InvalidInput(
                    f"a rollout rolls back to its stable version {stable}, not {version}",
                    hint="finish the rollout first, then: lastmile rollback PIPELINE --to N",
                )
            state = "rolled_back" if action == "rollback" else "aborted"
            if current == "pending" and action == "rollback":
                state = "aborted"
            _finish(platform, workspace, pipeline, rollout_id, state, stable,
                    reason or f"{action}{by}", principal)  # fmt: skip
        else:
            raise InvalidInput(
                f"unknown rollout action {action!r}",
                hint="pause, resume, promote, rollback, abort or switch",
            )
    return rollout_report.status(
        platform, workspace=workspace, pipeline=pipeline, rollout_id=rollout_id
    )


def _winner(
    strategy: str,
    stable: int,
    candidates: list[int],
    weights: dict[str, float],
    version: int | None,
) -> int:
    if version is not None:
        if version != stable and version not in candidates:
            raise InvalidInput(
                f"version {version} is not in this rollout (stable {stable}, candidates "
                f"{candidates})"
            )
        return version
    if len(candidates) > 1:
        raise InvalidInput(
            f"this rollout has {len(candidates)} candidates: say which version wins",
            hint="lastmile rollout promote PIPELINE --to N",
        )
    if strategy == "blue-green":  # the colour serving now stays
        return max((int(v) for v in weights), key=lambda v: weights[str(v)])
    return candidates[0]


def _pause_resume(
    platform: Platform,
    workspace: str,
    pipeline: str,
    rollout_id: int,
    action: str,
    principal: str,
    reason: str,
) -> None:
    now = time.time()
    with platform.deploy_lock, platform.session() as session:
        rollout = _row(session, rollout_id)
        if rollout.strategy == "canary":
            plan = controller.Plan.from_dict(rollout.params["plan"])
            state = _canary_state(rollout)
            try:
                decision = (
                    controller.pause(plan, state, now)
                    if action == "pause"
                    else controller.resume(plan, state, now)
                )
            except controller.TransitionError as exc:
                raise Conflict(str(exc)) from None
            _apply(rollout, decision)
            if action == "resume":  # figures gathered while paused do not count
                step = _snapshot(rollout, workspace, pipeline, _read_figures(platform))
                rollout.window = {**rollout.window, "step": step}
        else:
            wanted = {"pause": ("running", "paused"), "resume": ("paused", "running")}[action]
            if rollout.state != wanted[0]:
                raise Conflict(f"rollout is {rollout.state}; only a {wanted[0]} one can {action}")
            rollout.state = wanted[1]
            rollout.paused_at = now if action == "pause" else None
        store.save_rollout(session, rollout)
        store.add_rollout_event(session, rollout=rollout, action=action, reason=reason,
                                principal=principal)  # fmt: skip
        session.commit()


def _switch(platform: Platform, rollout_id: int, principal: str, reason: str) -> None:
    with platform.deploy_lock, platform.session() as session:
        rollout = _row(session, rollout_id)
        if rollout.state != "running":
            raise Conflict(f"rollout is {rollout.state}; switch a running blue-green rollout")
        blue, green = str(rollout.stable_version), str(rollout.candidates[0])
        to = green if rollout.weights.get(blue, 0) > 0 else blue
        rollout.weights = {blue: 100.0 if to == blue else 0.0, green: 100.0 if to == green else 0.0}
        store.save_rollout(session, rollout)
        colour = "green" if to == green else "blue"
        store.add_rollout_event(
            session, rollout=rollout, action="switch", principal=principal,
            reason=reason or f"all traffic to {colour} (version {to})",
        )  # fmt: skip
        serving.push_routes(platform, session)
        session.commit()


def _finish(
    platform: Platform,
    workspace: str,
    pipeline: str,
    rollout_id: int,
    state: str,
    winner: int | None,
    reason: str,
    principal: str,
    *,
    figures: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """End a rollout (the caller holds the pipeline's lock): ``winner`` becomes (or stays) the
    live version and takes all traffic, pushed before the commit; then the others are drained
    and unloaded."""
    losers: list[tuple[int, str]] = []
    with platform.deploy_lock, platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        pipe = store.get_pipeline(session, workspace=ws, name=pipeline)
        rollout = _row(session, rollout_id)
        if rollout.state not in store.ROLLOUT_ACTIVE_STATES:
            raise Conflict(f"rollout #{rollout_id} is already {rollout.state}")
        versions = [rollout.stable_version, *rollout.candidates]
        winner = rollout.stable_version if winner is None else winner
        if winner != rollout.stable_version:
            pv = store.get_pipeline_version(session, pipeline=pipe, version=winner)
            isolated = rollout.strategy == "blue-green"  # green keeps its own copies
            prefix = copy_prefix(ws.name, pipe.name, winner) if isolated else None
            store.save_deployment(
                session,
                pipeline=pipe,
                pipeline_version=pv,
                ensemble=triton_ensemble_name(ws.name, pipe.name, winner),
                triton_models=sorted(
                    deployments.step_models(ws.name, PipelineSpec.from_dict(pv.spec), prefix)
                ),
                state="live",
                isolated=isolated,
            )
            store.add_deployment_event(
                session, pipeline=pipe, version=winner, action=rollout.strategy[:16],
                outcome="live", principal=principal,
            )  # fmt: skip
        rollout.state = state
        rollout.reason = reason
        rollout.weights = {str(v): 100.0 if v == winner else 0.0 for v in versions}
        store.save_rollout(session, rollout)
        action = {"promoted": "promote", "rolled_back": "rollback", "aborted": "abort"}[state]
        store.add_rollout_event(session, rollout=rollout, action=action, reason=reason,
                                figures=figures or {}, principal=principal)  # fmt: skip
        try:
            serving.push_routes(platform, session)
        except LastmileError:
            session.rollback()
            raise
        session.commit()
        losers = [(v, triton_ensemble_name(ws.name, pipe.name, v)) for v in versions if v != winner]
    for version, _ensemble in losers:
        deployments.drain(platform, workspace=workspace, pipeline=pipeline, version=version)
    deployments.retire(platform, workspace=workspace, ensembles=[e for _, e in losers])
    return {"state": state, "winner": winner}


def _row(session: Any, rollout_id: int) -> store.Rollout:
    row = session.get(store.Rollout, rollout_id)
    if row is None:
        raise NotFound(f"rollout #{rollout_id} does not exist")
    return row  # type: ignore[no-any-return]
