"""Assays as a user makes and reads them: create (validated, edges fixed from the baseline),
list, describe, delete, results and alerts. Running them is manager.services.assay_runs.

A drift assay watches one tensor of a pipeline (inputs or outputs, one element or all of them
pooled, one version or all together) and scores each window of captured traffic against its
baseline with one metric; a health assay compares a live figure (latency percentile, error
rate, queue time) with thresholds. Both keep every window's result; a result at warning or
alert raises an alert, delivered to the assay's webhook and, for a candidate version under an
active rollout, able to pause or roll it back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from manager import store
from manager.assays import binning as binning_mod
from manager.assays import drift
from manager.assays.sketch import Summary
from manager.assays.windows import Thresholds
from manager.errors import InvalidInput, NotFound
from manager.names import check_name, check_tensor_name
from manager.services.assay_targets import StepTensor, step_tensor
from manager.services.context import Platform

KINDS = ("drift", "health")
SIDES = ("inputs", "outputs")
ACTIONS = ("none", "pause", "rollback")
# health figure -> (stored figure names, how a window's points become one number)
HEALTH_FIGURES: dict[str, tuple[tuple[str, ...], str]] = {
    "p50_ms": (("gateway_latency_p50_ms",), "max"),
    "p95_ms": (("gateway_latency_p95_ms",), "max"),
    "p99_ms": (("gateway_latency_p99_ms",), "max"),
    "error_rate": (("gateway_errors_per_s", "gateway_requests_per_s"), "ratio"),
    "queue_ms": (("queue_ms_avg",), "step_sum_mean"),
    "compute_ms": (("compute_ms_avg",), "step_sum_mean"),
    "request_ms": (("request_ms_avg",), "ensemble_mean"),
}
STEP_FIGURES = ("queue_ms", "compute_ms", "request_ms")  # what Triton measures per step
MAX_WINDOW_S = 30 * 86400


@dataclass(frozen=True)
class AssaySpec:
    """What a user asks for; validated by `create`."""

    name: str
    pipeline: str
    kind: str = "drift"
    side: str = "inputs"
    tensor: str = ""
    element: int | None = None
    version: int | None = None
    figure: str = ""
    step: str = ""
    baseline: str | None = None
    binning: dict[str, Any] | None = None
    metric: str = "psi"
    window_s: int = 300
    interval_s: int | None = None
    warning: float | None = None
    alert: float | None = None
    min_values: int = drift.DEFAULT_MIN_VALUES
    on_alert: str = "none"
    webhook_url: str | None = None
    webhook_secret: str | None = None


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise InvalidInput(f"{what} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _min_values(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(
            f"min_values must be a whole number >= 1, got {value!r}",
            hint=f"the values a drift window needs before it is judged (default "
            f"{drift.DEFAULT_MIN_VALUES}); 1 judges every window that has any",
        )
    return value


def _threshold(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"{what} threshold must be a finite number, got {value!r}")
    return float(value)


def _periods(spec: AssaySpec) -> tuple[int, int]:
    window = spec.window_s
    interval = spec.interval_s if spec.interval_s is not None else window
    for value, what in ((window, "window"), (interval, "interval")):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WINDOW_S:
            raise InvalidInput(
                f"{what} must be a whole number of seconds in [1, {MAX_WINDOW_S}], got {value!r}",
                hint="e.g. --window 5m --interval 1m",
            )
    return window, interval


def _baseline_for(
    session: Any,
    ws: store.Workspace,
    pipe: store.Pipeline,
    spec: AssaySpec,
    target: StepTensor | None = None,
) -> store.Baseline:
    if spec.baseline is not None:
        found = store.find_baseline(session, workspace=ws, name=spec.baseline)
        if found is None:
            raise NotFound(
                f"no baseline {spec.baseline!r} in workspace {ws.name!r}",
                hint="lastmile baseline list",
            )
        return found
    from manager.services import baselines

    side, tensor = (target.side, target.captured) if target else (spec.side, spec.tensor)
    found = None
    if side in SIDES:  # a pipeline tensor (a replayed one, side "step", is no model's own)
        found = baselines.default_for(session, ws, pipe, side, tensor)
    if found is None and target is not None:  # the step models' own, by their tensor names
        own = (
            (key, store.latest_import_baseline(session, workspace=ws, model=model, version=v))
            for model, version, key in target.known_as
            for v in (version, None)
        )
        found = next((b for key, b in own if b is not None and key in b.tensors), None)
    if found is None:
        raise InvalidInput(
            f"no baseline holds {spec.side} tensor {spec.tensor!r} of pipeline {pipe.name!r}",
            hint="import the model with --sample, or make one: lastmile baseline create "
            "(from captured traffic) or lastmile baseline upload (a file), then --baseline NAME",
        )
    return found


def _edges(
    baseline: store.Baseline, spec: AssaySpec, keys: list[str]
) -> tuple[dict[str, Any], list[float], list[int]]:
    key = next((k for k in keys if k in baseline.tensors), keys[0])
    entry = baseline.tensors.get(key)
    if entry is None:
        held = ", ".join(sorted(baseline.tensors)) or "nothing"
        raise InvalidInput(
            f"baseline {baseline.name!r} has no {' or '.join(map(repr, keys))}",
            hint=f"it holds {held}; choose --side/--tensor accordingly or another baseline",
        )
    if spec.element is None:
        summary = Summary.from_json(entry["pooled"])
    else:
        elements = entry.get("elements") or []
        if not 0 <= spec.element < len(elements):
            raise InvalidInput(
                f"element {spec.element} is outside {key!r} of baseline {baseline.name!r}",
                hint=f"elements 0..{len(elements) - 1}, or leave --element out for all"
                if elements
                else "this tensor has no per-element summaries: leave --element out",
            )
        summary = Summary.from_json(elements[spec.element])
    raw = dict(spec.binning or {})
    edges_in = raw.pop("edges", None)
    try:
        spec_binning = binning_mod.Binning(
            edges=tuple(float(e) for e in edges_in) if edges_in is not None else None, **raw
        )
    except TypeError as exc:
        raise InvalidInput(
            f"binning: {exc}", hint="binning takes mode, bins, edges and outliers"
        ) from None
    edges = binning_mod.make_edges(summary, spec_binning)
    counts = summary.bin_counts(edges, spec_binning.outliers)
    described = {
        "mode": spec_binning.mode,
        "bins": spec_binning.bins,
        "outliers": spec_binning.outliers,
    }
    return described, [float(e) for e in edges], [int(c) for c in counts]


def create(
    platform: Platform, *, workspace: str, spec: AssaySpec, principal: str = ""
) -> dict[str, Any]:
    check_name(spec.name, kind="assay")
    kind = _choice(spec.kind, KINDS, "kind")
    on_alert = _choice(spec.on_alert, ACTIONS, "on_alert")
    window, interval = _periods(spec)
    warning = _threshold(spec.warning, "warning")
    alert = _threshold(spec.alert, "alert")
    if warning is None and alert is None:
        raise InvalidInput(
            "an assay needs a warning or an alert threshold (or both)",
            hint="e.g. --warning 0.1 --alert 0.25 (PSI)",
        )
    Thresholds(warning=warning, alert=alert)  # warning <= alert
    if spec.version is not None and (isinstance(spec.version, bool) or spec.version < 1):
        raise InvalidInput(f"version must be a positive integer, got {spec.version!r}")
    webhook = None
    if spec.webhook_url:
        from manager.services.alert_delivery import validate_webhook_url

        webhook = validate_webhook_url(spec.webhook_url)
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        check_name(spec.pipeline, kind="pipeline")
        pipe = store.get_pipeline(session, workspace=ws, name=spec.pipeline)
        row = store.Assay(
            workspace_id=ws.id,  # type: ignore[arg-type]
            pipeline_id=pipe.id,  # type: ignore[arg-type]
            name=spec.name,
            kind=kind,
            version=spec.version,
            metric=spec.metric,
            window_s=window,
            interval_s=interval,
            warning=warning,
            alert=alert,
            min_values=_min_values(spec.min_values),
            on_alert=on_alert,
            webhook_url=webhook,
            webhook_secret=spec.webhook_secret or None,
            created_by=principal,
        )
        if kind == "drift":
            row.side = _choice(spec.side, SIDES, "side")
            row.tensor = check_tensor_name(spec.tensor, where="assay tensor")
            if spec.element is not None and (isinstance(spec.element, bool) or spec.element < 0):
                raise InvalidInput(f"element must be an index >= 0, got {spec.element!r}")
            row.element = spec.element
            row.metric = _choice(spec.metric, drift.METRICS, "metric")
            target = None
            if spec.step:  # as the pipeline's tensor it is, or replayed (side "step")
                check_name(spec.step, kind="model")
                target = step_tensor(
                    session, pipe, model=spec.step, side=row.side, tensor=row.tensor,
                    version=spec.version,
                )  # fmt: skip
                row.step, row.side, row.tensor = spec.step, target.side, target.captured
            baseline = _baseline_for(session, ws, pipe, spec, target)
            row.baseline_id = baseline.id
            keys = [f"{row.side}/{row.tensor}"]
            if target is not None:  # the step models' import baselines
                keys += [key for _model, _version, key in target.known_as]
            keys = list(dict.fromkeys(keys))
            row.binning, row.edges, row.baseline_counts = _edges(baseline, spec, keys)
        else:
            row.figure = _choice(spec.figure, tuple(HEALTH_FIGURES), "health figure")
            row.metric = row.figure
            if spec.step:
                row.step = _check_step(session, pipe, spec.step, row.figure)
        store.add_assay(session, row)
        session.commit()
        return describe(session, row)


def _check_step(session: Any, pipe: store.Pipeline, step: str, figure: str) -> str:
    """A health assay's step: a model some version of the pipeline runs, and a figure
    Triton measures per step."""
    if figure not in STEP_FIGURES:
        raise InvalidInput(
            f"{figure} is measured for the whole pipeline at the gateway, not per step",
            hint=f"per step: {', '.join(STEP_FIGURES)}; or leave --step out",
        )
    models = {
        str(s["model"])
        for pv in store.list_pipeline_versions(session, pipeline=pipe)
        for s in pv.spec.get("steps", [])
    }
    if step not in models:
        raise InvalidInput(
            f"pipeline {pipe.name!r} has no step running model {step!r}",
            hint=f"its steps run: {', '.join(sorted(models)) or 'nothing'}",
        )
    return step


def _get(session: Any, workspace: str, name: str) -> tuple[store.Workspace, store.Assay]:
    check_name(name, kind="assay")
    ws = store.get_workspace(session, name=workspace)
    assay = store.find_assay(session, workspace=ws, name=name)
    if assay is None:
        raise NotFound(f"no assay {name!r} in workspace {workspace!r}", hint="lastmile assay list")
    return ws, assay


def describe(session: Any, assay: store.Assay) -> dict[str, Any]:
    pipe = session.get(store.Pipeline, assay.pipeline_id)
    baseline = session.get(store.Baseline, assay.baseline_id) if assay.baseline_id else None
    latest = store.list_assay_results(session, assay_id=assay.id, limit=1)  # type: ignore[arg-type]
    return {
        "name": assay.name,
        "pipeline": pipe.name if pipe else None,
        "kind": assay.kind,
        "target": {
            "side": assay.side,
            "tensor": assay.tensor,
            "element": assay.element,
            "version": assay.version,
            "step": assay.step or None,  # the step whose tensor this pipeline tensor is
        }
        if assay.kind == "drift"
        else {"figure": assay.figure, "step": assay.step, "version": assay.version},
        "baseline": baseline.name if baseline else None,
        "binning": assay.binning,
        "edges": assay.edges,
        "baseline_counts": assay.baseline_counts,
        "metric": assay.metric,
        "window_s": assay.window_s,
        "interval_s": assay.interval_s,
        "warning": assay.warning,
        "alert": assay.alert,
        "min_values": assay.min_values,
        "on_alert": assay.on_alert,
        "webhook_url": assay.webhook_url,  # the secret is write-only
        "enabled": assay.enabled,
        "last_window_end": assay.last_window_end,
        "latest": result_dict(latest[0]) if latest else None,
        "created_by": assay.created_by,
        "created_at": assay.created_at,
    }


def result_dict(result: store.AssayResult) -> dict[str, Any]:
    return {
        "id": result.id,
        "window_start": result.window_start,
        "window_end": result.window_end,
        "score": result.score,
        "status": result.status,
        "count": result.count,
        "window_counts": result.window_counts,
        "details": result.details,
        "backfill": result.backfill,
    }


def alert_dict(alert: store.Alert, assay_name: str) -> dict[str, Any]:
    return {
        "id": alert.id,
        "assay": assay_name,
        "result_id": alert.result_id,
        "status": alert.status,
        "message": alert.message,
        "action": alert.action,
        "delivery": alert.delivery,
        "attempts": alert.attempts,
        "last_error": alert.last_error,
        "delivered_at": alert.delivered_at,
        "created_at": alert.created_at,
    }


def list_assays(
    platform: Platform, *, workspace: str, pipeline: str | None = None
) -> list[dict[str, Any]]:
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        pipe_id = None
        if pipeline is not None:
            pipe_id = store.get_pipeline(session, workspace=ws, name=pipeline).id
        rows = store.list_assays(session, workspace=ws, pipeline_id=pipe_id)
        return [describe(session, row) for row in rows]


def get(platform: Platform, *, workspace: str, name: str) -> dict[str, Any]:
    with platform.session() as session:
        _ws, assay = _get(session, workspace, name)
        return describe(session, assay)


def set_enabled(platform: Platform, *, workspace: str, name: str, enabled: bool) -> dict[str, Any]:
    with platform.session() as session:
        _ws, assay = _get(session, workspace, name)
        assay.enabled = enabled
        session.add(assay)
        session.commit()
        return describe(session, assay)


def delete(platform: Platform, *, workspace: str, name: str) -> None:
    with platform.session() as session:
        _ws, assay = _get(session, workspace, name)
        store.delete_assay(session, assay)
        session.commit()


def results(
    platform: Platform,
    *,
    workspace: str,
    name: str,
    since: datetime | None = None,
    backfill: bool = False,
    limit: int | None = None,
) -> dict[str, Any]:
    with platform.session() as session:
        _ws, assay = _get(session, workspace, name)
        rows = store.list_assay_results(
            session,
            assay_id=assay.id,  # type: ignore[arg-type]
            since=since,
            backfill=backfill,
            limit=limit,
        )
        return {**describe(session, assay), "results": [result_dict(r) for r in rows]}


def alerts(
    platform: Platform, *, workspace: str, name: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        if name is not None:
            _ws, assay = _get(session, workspace, name)
            assays = [assay]
        else:
            assays = list(store.list_assays(session, workspace=ws))
        names = {a.id: a.name for a in assays}
        rows = store.list_alerts(session, assay_ids=list(names), limit=limit)  # type: ignore[arg-type]
        return [alert_dict(a, names[a.assay_id]) for a in rows]
