"""Reading rollouts: their state and log, and the report that compares their variants.

The report's figures come from the gateway: per variant, requests, errors and latency
percentiles since the rollout began (the difference of its cumulative counters from the
snapshot taken at the start), and for a shadow rollout the gateway's output-diff report.
"""

from __future__ import annotations

import math
from typing import Any

import httpx

from manager import store
from manager.errors import GatewayError, NotFound
from manager.plan.routes import placement
from manager.services import gateway_figures, gateway_pool, serving
from manager.services.context import Platform
from rollout import windows


def rollout_info(session: Any, rollout: store.Rollout, *, events: bool = True) -> dict[str, Any]:
    pipe = session.get(store.Pipeline, rollout.pipeline_id)
    ws = session.get(store.Workspace, pipe.workspace_id)
    info: dict[str, Any] = {
        "id": rollout.id,
        "workspace": ws.name,
        "pipeline": pipe.name,
        "strategy": rollout.strategy,
        "state": rollout.state,
        "stable_version": rollout.stable_version,
        "candidates": list(rollout.candidates),
        "weights": {
            k: float(v) for k, v in sorted(rollout.weights.items(), key=lambda kv: int(kv[0]))
        },
        "params": rollout.params,
        "step": rollout.step,
        "reason": rollout.reason,
        "created_by": rollout.created_by,
        "created_at": rollout.created_at.isoformat(),
        "updated_at": rollout.updated_at.isoformat(),
        "finished_at": rollout.finished_at.isoformat() if rollout.finished_at else None,
    }
    if events:
        info["events"] = [
            _event_info(e) for e in reversed(store.list_rollout_events(session, rollout=rollout))
        ]
    return info


def _event_info(e: store.RolloutEvent) -> dict[str, Any]:
    return {
        "ts": e.ts.isoformat(),
        "action": e.action,
        "state": e.state,
        "weights": e.weights,
        "reason": e.reason,
        "figures": e.figures,
        "principal": e.principal,
    }


def status(
    platform: Platform, *, workspace: str, pipeline: str, rollout_id: int | None = None
) -> dict[str, Any]:
    """A rollout (``rollout_id``, else the pipeline's active one, else its latest)."""
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        pipe = store.get_pipeline(session, workspace=ws, name=pipeline)
        if rollout_id is not None:
            rollout = store.get_rollout(session, pipeline=pipe, rollout_id=rollout_id)
        else:
            rollout = store.active_rollout(session, pipeline=pipe) or next(
                iter(store.list_rollouts(session, pipeline=pipe, limit=1)), None
            )
        if rollout is None:
            raise NotFound(
                f"pipeline {pipeline!r} has no rollout"
                + (f" #{rollout_id}" if rollout_id is not None else ""),
                hint=f"lastmile rollout start {pipeline} --strategy canary --candidate N",
            )
        info = rollout_info(session, rollout)
    if rollout.params.get("candidate_servers") and rollout.finished_at is None:
        info["servers"] = _placement(platform, rollout.params)
    return info


def _placement(platform: Platform, params: dict[str, Any]) -> dict[str, Any]:
    """Where the variants' traffic goes now: the stable version's servers and the
    candidates', and whether they are apart (too few servers up: they share them all)."""
    if platform.triton is None:
        return {"stable": [], "candidates": [], "isolated": False}
    where = placement(params, serving.endpoints(platform))
    return {
        "stable": [e.http_url for e in where.stable],
        "candidates": [e.http_url for e in where.candidates],
        "isolated": where.isolated,
    }


def list_rollouts(platform: Platform, *, workspace: str, pipeline: str) -> list[dict[str, Any]]:
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        pipe = store.get_pipeline(session, workspace=ws, name=pipeline)
        return [
            rollout_info(session, r, events=False)
            for r in store.list_rollouts(session, pipeline=pipe)
        ]


def report(platform: Platform, *, workspace: str, pipeline: str) -> dict[str, Any]:
    """Per-variant figures since the rollout (active, else latest) began; the shadow diff."""
    info = status(platform, workspace=workspace, pipeline=pipeline)
    route = f"{workspace}/{pipeline}"
    with platform.session() as session:
        row = session.get(store.Rollout, info["id"])
        assert row is not None
        start = (row.window or {}).get("start") or {}
    try:
        figures = gateway_pool.read(platform)
        source = "gateway"
    except GatewayError as exc:
        figures, source = {}, f"unavailable: {exc.message}"
    variants = []
    for version in [info["stable_version"], *info["candidates"]]:
        name = f"{pipeline}/{version}"
        now = figures.get((route, name))
        variants.append(
            {"variant": name, "version": version, "weight": info["weights"].get(str(version), 0.0)}
            | _figures(start.get(str(version)), now)
        )
    out: dict[str, Any] = {
        "rollout": info["id"],
        "strategy": info["strategy"],
        "state": info["state"],
        "source": source,
        "variants": variants,
    }
    if info["strategy"] == "shadow":
        out["shadow"] = _shadow(platform, route)
    return out


def _figures(
    before: dict[str, Any] | None, now: gateway_figures.VariantCounters | None
) -> dict[str, Any]:
    if now is None:
        return {"requests": 0, "errors": 0, "error_rate": None, "p50_ms": None,
                "p95_ms": None, "p99_ms": None, "shadow": {}}  # fmt: skip
    after = now.counters()
    prior = gateway_figures.from_json(before)
    window = windows.window_delta(prior, after)
    buckets = windows.window_buckets(prior, after)
    shadow = {k: v - int((before or {}).get("shadow", {}).get(k, 0)) for k, v in now.shadow.items()}

    def ms(q: float) -> float | None:
        try:
            value = windows.histogram_quantile(q, buckets)
        except ValueError:
            return None
        return None if value is None or math.isinf(value) else round(value * 1000, 3)

    return {
        "requests": window.requests,
        "errors": window.errors,
        "error_rate": window.error_rate,
        "p50_ms": ms(0.5),
        "p95_ms": ms(0.95),
        "p99_ms": ms(0.99),
        "shadow": shadow,
    }


def _shadow(platform: Platform, route: str) -> dict[str, Any]:
    """The gateway's output-diff report of the route's mirrors (empty when none yet)."""
    if not platform.gateway_admin_url:
        return {}
    try:
        response = httpx.get(
            f"{platform.gateway_admin_url}/shadow",
            headers=platform.gateway_admin_headers(),
            timeout=10,
        )
        response.raise_for_status()
        routes = response.json().get("routes") or {}
    except (httpx.HTTPError, ValueError) as exc:
        return {"error": f"the gateway's shadow report could not be read: {exc}"}
    return dict(routes.get(route) or {})
