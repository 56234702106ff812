"""``lastmile pipeline …``."""

from __future__ import annotations

from pathlib import Path

import typer

from manager.cli.common import JsonOpt, WorkspaceOpt, client, emit, table

pipeline_app = typer.Typer(help="Define pipelines of model versions.", no_args_is_help=True)


def _steps(info: dict) -> str:  # type: ignore[type-arg]
    return " → ".join(f"{s['model']}:{s['version']}" for s in info["steps"])


@pipeline_app.command("create")
def pipeline_create(
    name: str = typer.Argument(..., help="Pipeline name."),
    step: list[str] = typer.Option(..., "--step", help="MODEL or MODEL:VERSION, in order."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create the next version of a pipeline chaining model versions (no-op if unchanged)."""
    with client(workspace) as lm:
        info = lm.create_pipeline(name, steps=step)
    verb = "version" if info.get("created", True) else "unchanged, still version"
    emit(info, as_json, f"pipeline [bold]{info['pipeline']}[/bold] {verb} {info['version']}: "
         + _steps(info))  # fmt: skip


@pipeline_app.command("apply")
def pipeline_apply(
    file: Path = typer.Argument(..., help="Pipeline definition (YAML): name, steps, outputs."),
    if_match: str | None = typer.Option(
        None, "--if-match", help='Only if the latest version is still this ETag (e.g. "v3").'
    ),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create the next version of a pipeline from a YAML DAG definition (no-op if unchanged)."""
    with client(workspace) as lm:
        info = lm.apply_pipeline(file, if_match=if_match)
    verb = "created" if info.get("created") else "unchanged,"
    human = (
        f"pipeline [bold]{info['pipeline']}[/bold] {verb} version {info['version']}: "
        + ", ".join(f"{s['name']}={s['model']}:{s['version']}" for s in info["steps"])
    )
    emit(info, as_json, human)


@pipeline_app.command("validate")
def pipeline_validate(
    file: Path = typer.Argument(..., help="Pipeline definition (YAML)."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a definition against the registry, like apply, without saving anything."""
    with client(workspace) as lm:
        info = lm.validate_pipeline(file)
    emit(info, as_json, f"[green]✓[/green] {file}: valid ({_steps(info['pipeline'])})")


@pipeline_app.command("list")
def pipeline_list(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Pipelines, their latest versions and what is deployed."""
    with client(workspace) as lm:
        items = lm.pipelines()
    rows = [[p["pipeline"], p["version"], p.get("deployed_version"), _steps(p)] for p in items]
    emit(items, as_json, table("Pipelines", ["pipeline", "latest", "deployed", "steps"], rows))


@pipeline_app.command("show")
def pipeline_show(
    name: str = typer.Argument(..., help="Pipeline."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every version of a pipeline, who made it and when."""
    with client(workspace) as lm:
        versions = lm.pipeline_versions(name)
    rows = [[v["version"], v["created_by"], v["created_at"], _steps(v)] for v in versions]
    emit(versions, as_json, table(f"Pipeline {name}", ["version", "by", "created", "steps"], rows))


@pipeline_app.command("delete")
def pipeline_delete(
    name: str = typer.Argument(..., help="Pipeline."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete a pipeline and all its versions (refused while it is deployed)."""
    with client(workspace) as lm:
        lm.delete_pipeline(name)
    emit({"deleted": name}, as_json, f"deleted pipeline {name}")


@pipeline_app.command("cluster")
def pipeline_cluster(
    name: str = typer.Argument(..., help="Pipeline."),
    replicas: int | None = typer.Option(None, "--replicas", help="Triton pods (1-64)."),
    gpus: int | None = typer.Option(None, "--gpus", help="GPUs per Triton pod (1-8)."),
    gateway_replicas: int | None = typer.Option(
        None, "--gateway-replicas", help="Gateway pods, the HPA's minimum (1-64)."
    ),
    reset: bool = typer.Option(False, "--reset", help="Back to the defaults."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The pipeline's size on a Kubernetes cluster, what `lastmile export k8s` renders by
    default: show it, or set it (editor)."""
    changes: dict[str, int | None] = {
        k: v
        for k, v in (("replicas", replicas), ("gpus", gpus), ("gateway_replicas", gateway_replicas))
        if v is not None
    }
    if reset:
        changes = dict.fromkeys(("replicas", "gpus", "gateway_replicas"))
    with client(workspace) as lm:
        info = lm.set_cluster(name, **changes) if changes else lm.cluster(name)
    own = set(info["set"])
    shown = ", ".join(
        f"{k} {info[k]}{'' if k in own else ' (default)'}"
        for k in ("replicas", "gpus", "gateway_replicas")
    )
    emit(info, as_json, f"pipeline {name} on a cluster: {shown}")
