"""``lastmile capture set|show|summarise``: data capture of a pipeline's traffic."""

from __future__ import annotations

import typer

from manager.cli.common import JsonOpt, WorkspaceOpt, client, emit, table
from manager.observe.durations import parse_when

capture_app = typer.Typer(
    help="Data capture: sample a pipeline's requests and answers into per-window summaries.",
    no_args_is_help=True,
)


@capture_app.command("set")
def set_rate(
    pipeline: str = typer.Argument(..., help="A pipeline."),
    rate: float = typer.Option(
        ..., "--rate", help="Fraction of inference calls sampled: 0.01 = 1 in 100, 0 stops."
    ),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Sample a fraction of the pipeline's inference calls (HTTP and gRPC) for data capture."""
    with client(workspace) as lm:
        result = lm.set_capture(pipeline, rate)
    emit(result, as_json, f"{pipeline}: {capture_rate_text(result['rate'])}")


def capture_rate_text(rate: float) -> str:
    """'capturing 5 % of its calls', 'capturing every call', 'not capturing'."""
    if rate <= 0:
        return "not capturing"
    if rate >= 1:
        return "capturing every call"
    return f"capturing {rate * 100:.4g} % of its calls"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


@capture_app.command("show")
def show(
    pipeline: str = typer.Argument(..., help="A pipeline."),
    since: str = typer.Option("1h", "--since", help="Windows of the last 30s, 15m, 2h, 7d."),
    version: int | None = typer.Option(None, "--version", min=1, help="One pipeline version."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What the pipeline saw and answered: per tensor, rows and values' count, missing,
    min, max and mean over the captured windows."""
    start = parse_when(since)
    with client(workspace) as lm:
        result = lm.capture(pipeline, since=start, version=version)
    rows = [
        [
            str(t["version"]),
            t["side"],
            t["tensor"],
            str(t["rows"]),
            str(t["count"]),
            str(t["missing"]),
            _num(t["min"]),
            _num(t["max"]),
            _num(t["mean"]),
            str(len(t["windows"])),
        ]
        for t in result["tensors"]
    ]
    title = f"{pipeline}: capture rate {result['rate']:g}, windows since {since} ago"
    columns = ["version", "side", "tensor", "rows", "values", "missing", "min", "max", "mean"]
    emit(result, as_json, table(title, [*columns, "windows"], rows))


@capture_app.command("summarise")
def summarise(as_json: JsonOpt = False) -> None:
    """Summarise the traffic waiting in the gateway's capture spool now (owner)."""
    with client() as lm:
        result = lm.summarise_capture()
    text = (
        f"{result['segments']} segment(s), {result['records']} call(s), "
        f"{result['values']} value(s) summarised"
    )
    if result.get("replayed") or result.get("replay_failed"):  # tensors between steps
        text += f"; {result['replayed']} call(s) replayed through step models"
        if result["replay_failed"]:
            text += f", [red]{result['replay_failed']} failed[/red] (the manager's log says why)"
    emit(result, as_json, text)
