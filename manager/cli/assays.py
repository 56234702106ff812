"""``lastmile assay create|list|show|run|results|backfill|alerts|chart|enable|disable|delete``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from manager.cli.common import JsonOpt, WorkspaceOpt, client, emit, err, table
from manager.errors import InvalidInput
from manager.observe.durations import parse_duration, parse_when

assay_app = typer.Typer(
    help="Assays: drift of a pipeline's tensors against a baseline, health of its live "
    "figures; results, alerts, backfill, charts.",
    no_args_is_help=True,
)

PlotOpt = typer.Option(None, "--plot", help="Also write a chart: FILE.svg or FILE.png.")


def _edges(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidInput(
            f"--edges {text!r} is not a list of numbers", hint="e.g. --edges 0,0.5,1,2"
        ) from None


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _plot(name: str, path: Path | None, *, backfill: bool = False, since: Any = None) -> None:
    if path is None:
        return
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("svg", "png"):
        raise InvalidInput(f"--plot {path}: the file must end in .svg or .png")
    with client() as lm:
        body = lm.assay_chart(name, kind="scores", fmt=fmt, since=since, backfill=backfill)
    path.write_bytes(body)
    err.print(f"chart written to {path}")


@assay_app.command("create")
def create(
    name: str = typer.Argument(..., help="The assay's name."),
    pipeline: str = typer.Option(..., "--pipeline", "-p", help="The pipeline it watches."),
    tensor: str = typer.Option("", "--tensor", help="Drift: the tensor (e.g. an input name)."),
    side: str = typer.Option("inputs", "--side", help="Drift: inputs or outputs."),
    element: int | None = typer.Option(None, "--element", help="One element (default: all)."),
    version: int | None = typer.Option(
        None, "--version", help="Watch one pipeline version (e.g. a canary's candidate)."
    ),
    health: str | None = typer.Option(
        None,
        "--health",
        help="A health assay on a live figure instead: p50_ms, p95_ms, p99_ms, error_rate, "
        "queue_ms, compute_ms, request_ms.",
    ),
    step: str = typer.Option(
        "",
        "--step",
        help="The step (the model it runs): drift on its --side/--tensor, also one between "
        "steps (replayed from the captured inputs); health on its queue_ms, compute_ms, "
        "request_ms.",
    ),
    baseline: str | None = typer.Option(
        None, "--baseline", help="Baseline name (default: the model's import baseline)."
    ),
    binning: str = typer.Option("quantile", "--binning", help="quantile, equal_width, explicit."),
    bins: int = typer.Option(5, "--bins", min=1, max=1000),
    edges: str | None = typer.Option(None, "--edges", help="Explicit edges: 0,0.5,1,2."),
    outliers: bool = typer.Option(True, "--outliers/--no-outliers", help="Outlier bins."),
    metric: str = typer.Option("psi", "--metric", help="psi, ks, sum_diff, max_diff, js."),
    window: str = typer.Option("5m", "--window", help="Window width: 30s, 5m, 1h, 1d."),
    interval: str | None = typer.Option(None, "--interval", help="Between windows (= width)."),
    warning: float | None = typer.Option(None, "--warning", help="Warning threshold."),
    alert: float | None = typer.Option(None, "--alert", help="Alert threshold."),
    min_values: int | None = typer.Option(
        None,
        "--min-values",
        min=1,
        help="Drift: values a window needs to be judged (fewer: no_data, never an alert; "
        "default 100).",
        show_default=False,
    ),
    on_alert: str = typer.Option(
        "none", "--on-alert", help="At alert, on a rollout's candidate: none, pause, rollback."
    ),
    webhook: str | None = typer.Option(None, "--webhook", help="POST alerts to this URL."),
    webhook_secret: str | None = typer.Option(
        None, "--webhook-secret", envvar="LASTMILE_WEBHOOK_SECRET", help="Signs the alerts."
    ),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an assay: drift of a tensor against a baseline, or a health check."""
    spec: dict[str, Any] = {
        "kind": "health" if health else "drift",
        "figure": health or "",
        "step": step,
        "side": side,
        "tensor": tensor,
        "element": element,
        "version": version,
        "baseline": baseline,
        "binning": {"mode": binning, "bins": bins, "edges": _edges(edges), "outliers": outliers},
        "metric": metric,
        "window_s": parse_duration(window, what="--window"),
        "interval_s": parse_duration(interval, what="--interval") if interval else None,
        "warning": warning,
        "alert": alert,
        "on_alert": on_alert,
        "webhook_url": webhook,
        "webhook_secret": webhook_secret,
    }
    if min_values is not None:  # else the server's default
        spec["min_values"] = min_values
    with client(workspace) as lm:
        result = lm.create_assay(name, pipeline, **spec)
    emit(result, as_json, f"assay {name} created on {pipeline}")


def _row(a: dict[str, Any]) -> list[str]:
    target = a["target"]
    what = (
        f"{target['side']}/{target['tensor']}"
        + (f"[{target['element']}]" if target.get("element") is not None else "")
        if a["kind"] == "drift"
        else target["figure"] + (f" @{target['step']}" if target.get("step") else "")
    )
    latest = a.get("latest") or {}
    return [
        a["name"],
        a["pipeline"],
        a["kind"],
        what + (f" v{target['version']}" if target.get("version") else ""),
        a["metric"],
        f"{a['window_s']}s/{a['interval_s']}s",
        f"{_fmt(a['warning'])} / {_fmt(a['alert'])}",
        f"{latest.get('status', '-')} {_fmt(latest.get('score'))}",
        "yes" if a["enabled"] else "no",
    ]


COLUMNS = ["name", "pipeline", "kind", "target", "metric", "window", "warn / alert", "latest", "on"]


@assay_app.command("list")
def list_(
    pipeline: str | None = typer.Option(None, "--pipeline", "-p"),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The workspace's assays with their latest result."""
    with client(workspace) as lm:
        rows = lm.assays(pipeline)
    emit(rows, as_json, table("assays", COLUMNS, [_row(a) for a in rows]))


@assay_app.command("show")
def show(name: str, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """One assay: target, baseline, edges, thresholds, latest result."""
    with client(workspace) as lm:
        a = lm.assay(name)
    emit(a, as_json, table(f"assay {name}", COLUMNS, [_row(a)]))


def _results_table(title: str, results: list[dict[str, Any]]) -> Any:
    rows = [
        [str(r["window_start"]), str(r["window_end"]), _fmt(r["score"]), r["status"],
         str(r["count"])]
        for r in results
    ]  # fmt: skip
    return table(title, ["window start", "window end", "score", "status", "values"], rows)


@assay_app.command("run")
def run(name: str, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Judge the latest complete window now (alerts and actions as scheduled runs do)."""
    with client(workspace) as lm:
        result = lm.run_assay(name)
    emit(result, as_json, _results_table(f"assay {name}", [result]))


@assay_app.command("results")
def results(
    name: str,
    since: str = typer.Option("1d", "--since", help="Windows of the last 30m, 2h, 7d."),
    backfill: bool = typer.Option(False, "--backfill", help="The backfilled results."),
    plot: Path | None = PlotOpt,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Judged windows, oldest first."""
    start = parse_when(since)
    with client(workspace) as lm:
        out = lm.assay_results(name, since=start, backfill=backfill)
    emit(out, as_json, _results_table(f"assay {name}", out["results"]))
    _plot(name, plot, backfill=backfill, since=start)


@assay_app.command("backfill")
def backfill(
    name: str,
    since: str = typer.Option(..., "--since", help="From: 30d ago, or an ISO time."),
    until: str | None = typer.Option(None, "--until", help="To (default now)."),
    plot: Path | None = PlotOpt,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What the assay would have said over a past range (kept apart; no alerts, no actions)."""
    start = parse_when(since)
    end = parse_when(until, what="--until") if until else None
    with err.status(f"backfilling {name}…"), client(workspace) as lm:
        out = lm.backfill_assay(name, start, end)
    emit(out, as_json, _results_table(f"assay {name} (backfill)", out["results"]))
    _plot(name, plot, backfill=True, since=start)


@assay_app.command("alerts")
def alerts(
    assay: str | None = typer.Option(None, "--assay"),
    limit: int = typer.Option(50, "--limit", min=1, max=1000),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Alerts, newest first: what was seen, what was done, whether the webhook got it."""
    with client(workspace) as lm:
        rows = lm.alerts(assay, limit)
    body = [
        [str(a["created_at"]), a["assay"], a["status"], a["message"], a["action"] or "-",
         f"{a['delivery']} ({a['attempts']})"]
        for a in rows
    ]  # fmt: skip
    columns = ["when", "assay", "status", "message", "action", "webhook"]
    emit(rows, as_json, table("alerts", columns, body))


@assay_app.command("chart")
def chart(
    name: str,
    out: Path = typer.Option(..., "--out", "-o", help="FILE.svg or FILE.png."),
    kind: str = typer.Option("scores", "--kind", help="scores or histogram."),
    workspace: WorkspaceOpt = None,
) -> None:
    """Write a chart: the score over time with the thresholds, or baseline vs latest window."""
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("svg", "png"):
        raise InvalidInput(f"--out {out}: the file must end in .svg or .png")
    with client(workspace) as lm:
        out.write_bytes(lm.assay_chart(name, kind=kind, fmt=fmt))
    err.print(f"chart written to {out}")


@assay_app.command("enable")
def enable(name: str, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Run the assay on its schedule again."""
    with client(workspace) as lm:
        emit(lm.enable_assay(name, True), as_json, f"assay {name} enabled")


@assay_app.command("disable")
def disable(name: str, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Stop scheduled runs (results are kept)."""
    with client(workspace) as lm:
        emit(lm.enable_assay(name, False), as_json, f"assay {name} disabled")


@assay_app.command("delete")
def delete(name: str, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Delete the assay, its results and its alerts."""
    with client(workspace) as lm:
        lm.delete_assay(name)
    emit({"deleted": name}, as_json, f"assay {name} deleted")
