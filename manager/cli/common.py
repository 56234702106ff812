"""What every command shares: the consoles (the only place that prints), the client built
from settings, ``--json`` / ``--workspace`` options, and the exit codes."""

from __future__ import annotations

import json
import re
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


TIME_COLUMNS = frozenset(
    {"when", "created", "updated", "window start", "window end", "expires", "last used"}
)
_ISO_TIME = re.compile(r"^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]00:?00)?$")


def when(value: str) -> str:
    """An ISO-8601 UTC time from the API, shown to the second: '2026-12-05 06:32:41Z'.
    Anything else is shown as it is."""
    m = _ISO_TIME.match(value)
    return f"{m[1]} {m[2]}Z" if m else value


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title)
    for column in columns:
        t.add_column(column)
    times = [i for i, column in enumerate(columns) if column in TIME_COLUMNS]
    for row in rows:
        cells = ["" if v is None else str(v) for v in row]
        for i in times:
            cells[i] = when(cells[i])
        t.add_row(*cells)
    return t
