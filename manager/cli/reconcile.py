"""``lastmile reconcile``: repair drift between the store and what is served."""

from __future__ import annotations

import typer

from manager.cli.common import JsonOpt, client, emit, err, out, table
from manager.cli.exits import EXIT_ERROR


def reconcile(
    dry_run: bool = typer.Option(
        False, "--dry-run", help="List what would be repaired; change nothing."
    ),
    as_json: JsonOpt = False,
) -> None:
    """Repair drift between the store and what is served (owner only).

    Rewrites damaged files from the stored models, removes leftovers, loads what is missing,
    re-pushes routes. Exit code 1 when something could not be checked or repaired.
    """
    with client() as lm, err.status("reconciling…" if not dry_run else "comparing…"):
        report = lm.reconcile(dry_run=dry_run)
    if as_json:
        emit(report, True)
    else:
        verb = "to do" if dry_run else "done"
        if report["actions"]:
            rows = [[a["kind"], a["target"], a["reason"]] for a in report["actions"]]
            out.print(table(f"Reconcile: {verb}", ["action", "target", "reason"], rows))
        if report["errors"]:
            rows = [[e["target"], e["error"]] for e in report["errors"]]
            out.print(table("Reconcile: not repaired", ["target", "error"], rows))
        if report["in_sync"]:
            out.print("[green]in sync[/green]: store, repository, Triton and gateway agree")
        elif not report["errors"]:
            count = len(report["actions"])
            out.print(f"{count} action(s) {'to take' if dry_run else 'taken'}")
    if report["errors"]:
        raise typer.Exit(EXIT_ERROR)
