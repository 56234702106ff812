"""``lastmile baseline list|show|create|upload|delete``: what drift assays compare against."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import typer

from manager.cli.common import JsonOpt, WorkspaceOpt, client, emit, kv_table, table
from manager.errors import InvalidInput
from manager.observe.durations import parse_when

baseline_app = typer.Typer(
    help="Baselines of drift assays: from a model's import sample, captured traffic or a file.",
    no_args_is_help=True,
)


def _num(value: Any) -> str:
    return "-" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))


def _tensor_rows(info: dict[str, Any]) -> list[list[str]]:
    return [
        [
            t["side"],
            t["tensor"],
            str(t["rows"]),
            str(t["elements"]),
            str(t["count"]),
            str(t["missing"]),
            _num(t["min"]),
            _num(t["max"]),
            _num(t["mean"]),
        ]
        for t in info["tensors"]
    ]


TENSOR_COLUMNS = ["side", "tensor", "rows", "elements", "values", "missing", "min", "max", "mean"]


def _origin(info: dict[str, Any]) -> str:
    details = info["details"]
    if info["source"] == "import":
        return f"{info['model']} v{info['version']}"
    if info["source"] == "capture":
        version = f" v{details['version']}" if details.get("version") else ""
        return f"{details.get('pipeline')}{version} {details.get('since')} → {details.get('until')}"
    return str(details.get("file", ""))


def _show(info: dict[str, Any]) -> Any:
    from rich.console import Group

    head = kv_table(
        f"baseline {info['name']}",
        [
            ("source", info["source"]),
            ("from", _origin(info)),
            ("created", f"{info['created']} by {info['created_by'] or '-'}"),
            *[(k, v) for k, v in info["details"].items() if k not in ("since", "until")],
        ],
    )
    return Group(head, table("tensors", TENSOR_COLUMNS, _tensor_rows(info)))


@baseline_app.command("list")
def baseline_list(
    model: str | None = typer.Option(None, "--model", help="Only this model's import baselines."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The workspace's baselines."""
    with client(workspace) as lm:
        items = lm.baselines(model=model)
    rows = [
        [
            b["name"],
            b["source"],
            _origin(b),
            ", ".join(f"{t['side']}/{t['tensor']}" for t in b["tensors"]),
            b["created"],
        ]
        for b in items
    ]
    emit(items, as_json, table("Baselines", ["name", "source", "from", "tensors", "created"], rows))


@baseline_app.command("show")
def baseline_show(
    name: str = typer.Argument(..., help="A baseline."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A baseline's origin and, per tensor, rows, values, missing, min, max and mean."""
    with client(workspace) as lm:
        info = lm.baseline(name)
    emit(info, as_json, _show(info))


@baseline_app.command("create")
def baseline_create(
    name: str = typer.Argument(..., help="Name of the new baseline."),
    pipeline: str = typer.Option(..., "--pipeline", "-p", help="The pipeline whose traffic."),
    since: str = typer.Option(
        ..., "--since", help="Start: a duration before now (2h, 7d) or an ISO date and time."
    ),
    until: str | None = typer.Option(
        None, "--until", help="End (default: now): a duration before now or an ISO date and time."
    ),
    version: int | None = typer.Option(
        None, "--version", min=1, help="One pipeline version (default: all)."
    ),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A baseline from a time range of a pipeline's captured traffic (lastmile capture)."""
    now = datetime.now(timezone.utc)
    start = parse_when(since, what="--since", now=now)
    end = parse_when(until, what="--until", now=now) if until is not None else now
    with client(workspace) as lm:
        info = lm.create_baseline_from_capture(
            name, pipeline=pipeline, since=start, until=end, version=version
        )
    emit(info, as_json, _show(info))


@baseline_app.command("upload")
def baseline_upload(
    name: str = typer.Argument(..., help="Name of the new baseline."),
    path: Path = typer.Argument(..., help="Rows: .npy, .npz, .csv or .parquet."),
    tensor: str | None = typer.Option(
        None,
        "--tensor",
        "-t",
        help="The tensor the rows are (needed but for .npz, whose arrays are named).",
    ),
    side: str = typer.Option("inputs", "--side", help="inputs or outputs."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A baseline from a file of rows (CSV/Parquet columns: the tensor's elements)."""
    if side not in ("inputs", "outputs"):
        raise InvalidInput(f"--side {side!r}", hint="use --side inputs or --side outputs")
    with client(workspace) as lm:
        info = lm.upload_baseline(name, path, tensor=tensor, side=side)  # type: ignore[arg-type]
    emit(info, as_json, _show(info))


@baseline_app.command("delete")
def baseline_delete(
    name: str = typer.Argument(..., help="A baseline no assay uses."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete a baseline (refused while an assay compares against it)."""
    with client(workspace) as lm:
        lm.delete_baseline(name)
    emit({"deleted": name}, as_json, f"deleted baseline {name}")
