"""What a rollout may start with: strategy, candidates and parameters, checked before anything
changes (a clear 4xx each: unknown versions, weights that do not sum to 100, a candidate whose
inputs or outputs differ from the stable version's, parameters another strategy takes, more
servers of its own for the candidates than the pool can spare)."""

from __future__ import annotations

import math
from typing import Any

from manager import store
from manager.domain import PipelineSpec
from manager.errors import InvalidInput
from rollout import controller
from rollout.routing import HEADER_NAME_RE, PARAMETER_NAME_RE, SHADOW_MAX_QUEUE

STRATEGIES = ("hot-swap", "canary", "ab", "shadow", "blue-green")
_PARAMS = {
    "hot-swap": frozenset(),
    "canary": frozenset({"steps", "interval_s", "min_requests", "gates", "assays"}),
    "ab": frozenset({"weights", "sticky_header", "sticky_parameter"}),
    "shadow": frozenset({"sample", "timeout_s", "max_queue", "tolerance"}),
    "blue-green": frozenset(),
}
# taken by every strategy that keeps the stable version serving beside its candidates
_PLACED = {k: frozenset() if k == "hot-swap" else frozenset({"candidate_servers"}) for k in _PARAMS}


def check(
    session: Any,
    pipe: store.Pipeline,
    stable: store.PipelineVersion,
    strategy: str,
    candidates: list[int],
    params: dict[str, Any],
    *,
    pool_size: int | None = None,
) -> dict[str, Any]:
    """The rollout's parameters, validated; InvalidInput (422) / NotFound (404) otherwise.
    ``pool_size``: the servers in the Triton pool (``candidate_servers`` must leave the
    stable version at least one; None: no pool attached, not checked here)."""
    if strategy not in STRATEGIES:
        raise InvalidInput(
            f"unknown strategy {strategy!r}", hint=f"one of: {', '.join(STRATEGIES)}"
        )
    if not candidates:
        raise InvalidInput("a rollout needs at least one candidate version")
    if len(set(candidates)) != len(candidates):
        raise InvalidInput(f"candidate versions repeat: {candidates}")
    if strategy not in ("ab", "shadow") and len(candidates) != 1:
        raise InvalidInput(f"a {strategy} rollout has exactly one candidate, got {candidates}")
    if stable.version in candidates:
        raise InvalidInput(
            f"version {stable.version} is the stable version; candidates are other versions"
        )
    if len(candidates) + 1 > 16:
        raise InvalidInput("at most 15 candidates (16 variants)")
    stable_spec = PipelineSpec.from_dict(stable.spec)
    for version in candidates:
        pv = store.get_pipeline_version(session, pipeline=pipe, version=version)  # 404
        _same_signature(pipe.name, stable.version, stable_spec, version, pv)
    params = dict(params)
    own = _check_candidate_servers(strategy, params.pop("candidate_servers", None), pool_size)
    checked = _check_strategy(strategy, params, (stable.version, *candidates), session, pipe)
    if own:
        checked["candidate_servers"] = own
    return checked


def _check_candidate_servers(strategy: str, value: Any, pool_size: int | None) -> int:
    """How many servers of the pool the candidates get to themselves (0: they share all)."""
    if value is None:
        return 0
    if strategy == "hot-swap":
        raise InvalidInput(
            "a hot-swap moves all traffic at once: candidate_servers applies to canary, ab, "
            "shadow and blue-green rollouts"
        )
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidInput(f"candidate_servers must be a whole number >= 1, got {value!r}")
    if pool_size is not None and value >= pool_size:
        raise InvalidInput(
            f"candidate_servers {value} leaves the stable version no server: the Triton pool "
            f"has {pool_size} server{'s' if pool_size != 1 else ''}",
            hint=f"run a larger pool (lastmile up --replicas {value + 1}, or list more servers "
            "in LASTMILE_TRITON_URL), or ask for fewer",
        )
    return value


def _check_strategy(
    strategy: str, params: dict[str, Any], variants: tuple[int, ...], session: Any, pipe: Any
) -> dict[str, Any]:
    """The strategy's own parameters; ``variants``: the stable version, then the candidates."""
    unknown = sorted(set(params) - _PARAMS[strategy])
    if unknown:
        allowed = ", ".join(sorted(_PARAMS[strategy] | _PLACED[strategy])) or "none"
        raise InvalidInput(
            f"unknown parameter(s) for a {strategy} rollout: {', '.join(unknown)}",
            hint=f"parameters of {strategy}: {allowed}",
        )
    if strategy == "canary":
        plan_params = {k: v for k, v in params.items() if k != "assays"}
        try:
            plan = controller.Plan.from_dict(plan_params)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"canary parameters: {exc}") from None
        checked: dict[str, Any] = {"plan": plan.to_dict()}
        if params.get("assays"):
            checked["assays"] = _check_gate_assays(session, pipe, params["assays"])
        return checked
    if strategy == "ab":
        return _check_ab(variants[0], list(variants[1:]), params)
    if strategy == "shadow":
        return _check_shadow(params)
    return {}


def _check_gate_assays(session: Any, pipe: store.Pipeline, names: Any) -> list[str]:
    """Assays a canary step must pass: they exist and watch this pipeline."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InvalidInput("canary parameter assays must be a list of assay names")
    ws = session.get(store.Workspace, pipe.workspace_id)
    for name in names:
        assay = store.find_assay(session, workspace=ws, name=name)
        if assay is None:
            raise InvalidInput(
                f"canary gate: no assay {name!r} in this workspace", hint="lastmile assay list"
            )
        if assay.pipeline_id != pipe.id:
            raise InvalidInput(f"canary gate: assay {name!r} watches another pipeline")
    return list(dict.fromkeys(names))


def _same_signature(
    pipeline: str, stable_version: int, stable: PipelineSpec, version: int, pv: Any
) -> None:
    spec = PipelineSpec.from_dict(pv.spec)
    for what, mine, theirs in (
        ("inputs", stable.input_specs(), spec.input_specs()),
        ("outputs", stable.output_specs(), spec.output_specs()),
    ):
        a = sorted((t.name, t.datatype, tuple(t.shape)) for t in mine)
        b = sorted((t.name, t.datatype, tuple(t.shape)) for t in theirs)
        if a != b:
            raise InvalidInput(
                f"pipeline {pipeline!r} version {version} does not have the {what} of the "
                f"stable version {stable_version}: {_tensors(b)} vs {_tensors(a)}",
                hint="clients send the same request to every variant: the pipeline's inputs "
                "and outputs (names, types, shapes) must match; map model names in the steps",
            )


def _tensors(specs: list[tuple[str, str, tuple[int, ...]]]) -> str:
    return ", ".join(f"{n} {d}{list(s)}" for n, d, s in specs) or "none"


def _check_ab(stable: int, candidates: list[int], params: dict[str, Any]) -> dict[str, Any]:
    variants = [stable, *candidates]
    raw = params.get("weights")
    if raw is None:
        share = 100.0 / len(variants)
        weights = {str(v): share for v in variants}
    else:
        if not isinstance(raw, dict):
            raise InvalidInput("ab weights must be an object of version -> percent")
        try:
            weights = {str(int(k)): float(w) for k, w in raw.items()}
        except (TypeError, ValueError):
            raise InvalidInput(f"ab weights must map versions to numbers, got {raw}") from None
        if set(weights) != {str(v) for v in variants}:
            raise InvalidInput(
                f"ab weights must name every variant exactly: versions {variants}, "
                f"got {sorted(int(k) for k in weights)}"
            )
    if any(not math.isfinite(w) or w < 0 for w in weights.values()):
        raise InvalidInput(f"ab weights must be finite and >= 0, got {weights}")
    total = sum(weights.values())
    if abs(total - 100.0) > 1e-6:
        raise InvalidInput(
            f"ab weights must sum to 100, they sum to {total:g}",
            hint="e.g. --weight 1=70 --weight 2=30 --weight 3=0",
        )
    header = params.get("sticky_header", "lastmile-key")
    parameter = params.get("sticky_parameter", "")
    if not isinstance(header, str) or not HEADER_NAME_RE.fullmatch(header):
        raise InvalidInput(f"sticky_header must be a lower-case header name, got {header!r}")
    if not isinstance(parameter, str) or (parameter and not PARAMETER_NAME_RE.fullmatch(parameter)):
        raise InvalidInput(f"sticky_parameter must be a parameter name, got {parameter!r}")
    return {"weights": weights, "sticky_header": header, "sticky_parameter": parameter}


def _check_shadow(params: dict[str, Any]) -> dict[str, Any]:
    out = {
        "sample": params.get("sample", 1.0),
        "timeout_s": params.get("timeout_s", 5.0),
        "max_queue": params.get("max_queue", SHADOW_MAX_QUEUE),
        "tolerance": params.get("tolerance", 1e-5),
    }
    for key, low, high in (("sample", 0.0, 1.0), ("timeout_s", 0.0, 3600.0)):
        value = out[key]
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not low < value <= high
        ):
            raise InvalidInput(f"shadow {key} must be in ({low:g}, {high:g}], got {value!r}")
    if not isinstance(out["max_queue"], int) or not 1 <= out["max_queue"] <= 65536:
        raise InvalidInput(f"shadow max_queue must be in [1, 65536], got {out['max_queue']!r}")
    tol = out["tolerance"]
    if not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise InvalidInput(f"shadow tolerance must be a finite number >= 0, got {tol!r}")
    return out
