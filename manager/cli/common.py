"""What every command shares: the consoles (the only place that prints), the client built
from settings, ``--json`` / ``--workspace`` options, and the exit codes."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from manager.sdk import Lastmile
from manager.settings import Settings

out = Console()
err = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
WorkspaceOpt = Annotated[
    str | None,
    typer.Option(
        "--workspace",
        "-w",
        help="Workspace to work in (default: LASTMILE_WORKSPACE, else 'default').",
        show_default=False,
    ),
]

# Stable exit codes (documented in the README): scripts can branch on them.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def settings() -> Settings:
    return Settings()


def client(workspace: str | None = None) -> Lastmile:
    s = settings()
    return Lastmile.from_settings(s, workspace=workspace or s.workspace)


def emit(data: Any, as_json: bool, human: Any = None) -> None:
    if as_json:
        out.print_json(json.dumps(data, default=str))
    elif human is not None:
        out.print(human)
    else:
        out.print(data)


def kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False)
    for key, value in rows:
        table.add_row(key, str(value))
    return table


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title)
    for column in columns:
        t.add_column(column)
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    return t
