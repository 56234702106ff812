"""``lastmile rollout start|status|list|pause|resume|promote|rollback|abort|switch|report`` and
``lastmile history``."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Group

from manager.cli.common import JsonOpt, WorkspaceOpt, client, emit, err, table
from manager.errors import InvalidInput
from rollout.routing import SHADOW_MAX_QUEUE

rollout_app = typer.Typer(
    help="Safe rollouts: hot-swap, canary, A/B/n, shadow, blue/green.", no_args_is_help=True
)

STRATEGIES = ("hot-swap", "canary", "ab", "shadow", "blue-green")


def _weights(items: list[str]) -> dict[str, float]:
    weights: dict[str, float] = {}
    for item in items:
        version, sep, percent = item.partition("=")
        try:
            if not sep:
                raise ValueError
            weights[str(int(version))] = float(percent)
        except ValueError:
            raise InvalidInput(
                f"--weight {item!r} is not VERSION=PERCENT", hint="e.g. --weight 1=70 --weight 2=30"
            ) from None
    return weights


@rollout_app.command("start")
def start(
    pipeline: str = typer.Argument(..., help="A live pipeline."),
    strategy: str = typer.Option(..., "--strategy", "-s", help=f"One of {', '.join(STRATEGIES)}."),
    candidate: list[int] = typer.Option(
        ..., "--candidate", "-c", help="Candidate pipeline version (repeat for A/B/n, shadow)."
    ),
    step: list[float] = typer.Option(
        [], "--step", help="canary: candidate percentage of a step (repeat; default 5 25 50 100)."
    ),
    interval: float | None = typer.Option(None, "--interval", help="canary: seconds per step."),
    min_requests: int | None = typer.Option(
        None, "--min-requests", help="canary: candidate requests a step needs before it passes."
    ),
    max_error_rate: float | None = typer.Option(
        None, "--max-error-rate", help="canary gate: candidate error rate (0.01 = 1 %)."
    ),
    max_error_rate_increase: float | None = typer.Option(
        None, "--max-error-rate-increase", help="canary gate: candidate minus stable error rate."
    ),
    max_p99_ratio: float | None = typer.Option(
        None, "--max-p99-ratio", help="canary gate: candidate p99 / stable p99."
    ),
    assay: list[str] = typer.Option(
        [],
        "--assay",
        help="canary gate: an assay that must judge each step's window without an alert (repeat).",
    ),
    weight: list[str] = typer.Option(
        [], "--weight", help="ab: VERSION=PERCENT for every variant, summing to 100 (repeat)."
    ),
    sticky_header: str | None = typer.Option(
        None, "--sticky-header", help="ab: header holding the sticky key (lastmile-key)."
    ),
    sticky_parameter: str | None = typer.Option(
        None, "--sticky-parameter", help="ab: request parameter holding the key, if no header."
    ),
    sample: float | None = typer.Option(
        None, "--sample", help="shadow: fraction of requests copied to the candidates (0-1]."
    ),
    shadow_timeout: float | None = typer.Option(
        None, "--shadow-timeout", help="shadow: seconds before a copy is abandoned."
    ),
    tolerance: float | None = typer.Option(
        None, "--tolerance", help="shadow: |a-b| <= tol + tol*|a| counts as agreement."
    ),
    shadow_queue: int | None = typer.Option(
        None,
        "--shadow-queue",
        help=f"shadow: copies in flight per route ({SHADOW_MAX_QUEUE}); past it, copies are "
        "dropped and counted.",
    ),
    candidate_servers: int | None = typer.Option(
        None,
        "--candidate-servers",
        help="The candidates' traffic goes to this many servers of the Triton pool of their "
        "own, the stable version's to the rest (not hot-swap).",
    ),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a rollout from the live version to the candidate(s)."""
    params: dict[str, Any] = {}
    gates = {
        k: v
        for k, v in (
            ("max_error_rate", max_error_rate),
            ("max_error_rate_increase", max_error_rate_increase),
            ("max_p99_ratio", max_p99_ratio),
        )
        if v is not None
    }
    for key, value in (
        ("steps", step or None),
        ("interval_s", interval),
        ("min_requests", min_requests),
        ("gates", gates or None),
        ("assays", assay or None),
        ("weights", _weights(weight) if weight else None),
        ("sticky_header", sticky_header),
        ("sticky_parameter", sticky_parameter),
        ("sample", sample),
        ("timeout_s", shadow_timeout),
        ("tolerance", tolerance),
        ("max_queue", shadow_queue),
        ("candidate_servers", candidate_servers),
    ):
        if value is not None:
            params[key] = value
    if strategy not in STRATEGIES:
        raise InvalidInput(
            f"--strategy {strategy!r} is unknown", hint=f"one of: {', '.join(STRATEGIES)}"
        )
    with (
        client(workspace) as lm,
        err.status(f"starting a {strategy} rollout of {pipeline} (loading, warming up)…"),
    ):
        info = lm.start_rollout(
            pipeline,
            strategy=strategy,  # type: ignore[arg-type]
            candidates=candidate,
            **params,
        )
    emit(info, as_json, _human(info))


def _human(info: dict[str, Any]) -> Any:
    weights = ", ".join(f"v{v} {w:g}%" for v, w in info["weights"].items())
    title = (
        f"rollout #{info['id']} of {info['pipeline']}: {info['strategy']}, {info['state']} "
        f"({weights})"
    )
    servers = info.get("servers")
    if servers:
        apart = "" if servers["isolated"] else " (too few servers up: shared)"
        title += (
            f"\nservers: stable {', '.join(servers['stable'])}; "
            f"candidates {', '.join(servers['candidates'])}{apart}"
        )
    rows = [
        [e["ts"], e["action"], e["state"], _short(e["weights"]), e["reason"], e["principal"]]
        for e in info.get("events", [])
    ]
    return table(title, ["when", "action", "state", "weights", "reason", "by"], rows)


def _short(weights: dict[str, float]) -> str:
    return " ".join(f"v{v}:{w:g}" for v, w in weights.items())


@rollout_app.command("status")
def status(
    pipeline: str = typer.Argument(..., help="Pipeline."),
    rollout_id: int | None = typer.Option(None, "--id", help="A rollout by id (default: current)."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The active rollout (else the latest) and its log of steps and decisions."""
    with client(workspace) as lm:
        info = lm.rollout(pipeline, rollout_id)
    emit(info, as_json, _human(info))


@rollout_app.command("list")
def list_rollouts(
    pipeline: str = typer.Argument(..., help="Pipeline."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The pipeline's rollouts, newest first."""
    with client(workspace) as lm:
        items = lm.rollouts(pipeline)
    rows = [
        [r["id"], r["strategy"], r["state"], r["stable_version"], r["candidates"],
         _short(r["weights"]), r["reason"]]
        for r in items
    ]  # fmt: skip
    emit(
        items,
        as_json,
        table(
            f"Rollouts of {pipeline}",
            ["id", "strategy", "state", "stable", "candidates", "weights", "reason"],
            rows,
        ),
    )


def _action(action: str, doc: str, with_version: bool = False) -> Any:
    def command(
        pipeline: str = typer.Argument(..., help="Pipeline with an active rollout."),
        to: int | None = typer.Option(
            None, "--to", help="promote: the winning version (A/B/n with several candidates)."
        )
        if with_version
        else None,
        reason: str = typer.Option("", "--reason", help="Recorded in the rollout's log."),
        workspace: WorkspaceOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        with client(workspace) as lm, err.status(f"{action} {pipeline}…"):
            info = lm.rollout_action(pipeline, action, version=to, reason=reason)
        emit(info, as_json, _human(info))

    command.__doc__ = doc
    return command


for _name, _doc, _v in (
    ("pause", "Hold the weights where they are; gates stop being evaluated.", False),
    ("resume", "Continue a paused rollout (a canary's step window starts again).", False),
    ("promote", "The candidate (or --to VERSION) takes all traffic and becomes live.", True),
    ("rollback", "The stable version takes all traffic again; candidates are unloaded.", False),
    ("abort", "End the rollout without a change: the stable version keeps serving.", False),
    ("switch", "blue-green: send all traffic to the other colour (instant, repeatable).", False),
):
    rollout_app.command(_name)(_action(_name, _doc, _v))


@rollout_app.command("report")
def report(
    pipeline: str = typer.Argument(..., help="Pipeline."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Per-variant requests, errors and latency since the rollout began; for a shadow rollout
    the output-diff report per output tensor."""
    with client(workspace) as lm:
        info = lm.rollout_report(pipeline)
    emit(info, as_json, report_human(pipeline, info))


def report_human(pipeline: str, info: dict[str, Any]) -> Any:
    """The report as tables: one of the variants, one per shadow with its outputs."""
    rows = [
        [v["variant"], f"{v['weight']:g}%", v["requests"], v["errors"],
         _rate(v["error_rate"]), v["p50_ms"], v["p95_ms"], v["p99_ms"]]
        for v in info["variants"]
    ]  # fmt: skip
    parts: list[Any] = [
        table(
            f"rollout #{info['rollout']} of {pipeline} ({info['strategy']}, {info['state']})",
            ["variant", "weight", "requests", "errors", "error rate", "p50 ms", "p95 ms", "p99 ms"],
            rows,
        )
    ]
    for mirror, diff in (info.get("shadow") or {}).items():
        if not isinstance(diff, dict) or "outputs" not in diff:
            continue
        out_rows = [
            [name, o.get("compared"), _rate(o.get("agreement")), o.get("max_abs_diff"),
             o.get("mean_abs_diff"), _rate(o.get("class_agreement"))]
            for name, o in diff["outputs"].items()
        ]  # fmt: skip
        latency = diff.get("latency") or {}
        parts.append(
            table(
                f"shadow {mirror}: {diff.get('pairs', 0)} pairs, "
                f"{diff.get('sampled', diff.get('pairs', 0))} compared; mean latency "
                f"candidate {_ms(latency.get('candidate_mean_ms'))} ms, "
                f"primary {_ms(latency.get('primary_mean_ms'))} ms",
                ["output", "pairs", "agreement", "max |diff|", "mean |diff|", "class agreement"],
                out_rows,
            )
        )
    return Group(*parts)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value:.2%}"


def history(
    pipeline: str = typer.Argument(..., help="Pipeline."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Deployments and rollout steps of a pipeline as one timeline (newest first)."""
    with client(workspace) as lm:
        items = lm.history(pipeline)
    rows = [
        [i["ts"], i["kind"], i["action"], i["version"], i["outcome"],
         _short(i["weights"]) if i.get("weights") else "", i["detail"], i["principal"]]
        for i in items
    ]  # fmt: skip
    emit(
        items,
        as_json,
        table(
            f"History of {pipeline}",
            ["when", "kind", "action", "version", "outcome", "weights", "detail", "by"],
            rows,
        ),
    )
