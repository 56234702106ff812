"""The ``lastmile`` command line: every API capability, built on the SDK. Rich tables for
people, ``--json`` for scripts; the only place that prints.

Exit codes (stable, for scripts): 0 ok, 1 error, 2 usage, 3 not found, 4 conflict,
5 refused (unauthenticated or forbidden), 6 invalid input, 7 unavailable (API, Triton or
gateway not reachable).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import typer

from manager import __version__
from manager.cli import (
    assays,
    baselines,
    capture,
    deploys,
    models,
    observe,
    pipelines,
    reconcile,
    rollouts,
    teams,
)
from manager.cli.common import JsonOpt, client, emit, err, kv_table, out, settings, table
from manager.errors import InvalidInput, LastmileError

CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    help="Lastmile: take trained models to production on NVIDIA Triton.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings=CONTEXT,
)
repo_app = typer.Typer(
    help="Triton model repositories: validate, import, export.", no_args_is_help=True
)
export_app = typer.Typer(help="Export a pipeline to run elsewhere.", no_args_is_help=True)
for sub, name in (
    (models.model_app, "model"),
    (pipelines.pipeline_app, "pipeline"),
    (deploys.deployment_app, "deployment"),
    (rollouts.rollout_app, "rollout"),
    (capture.capture_app, "capture"),
    (assays.assay_app, "assay"),
    (baselines.baseline_app, "baseline"),
    (repo_app, "repo"),
    (export_app, "export"),
    (teams.workspace_app, "workspace"),
    (teams.member_app, "member"),
    (teams.key_app, "key"),
    (teams.principal_app, "principal"),
):
    app.add_typer(sub, name=name, context_settings=CONTEXT)
for command in (
    deploys.deploy,
    deploys.undeploy,
    deploys.rollback,
    rollouts.history,
    deploys.infer,
    observe.metrics,
    observe.prometheus_config,
    models.templates,
    teams.login,
    teams.logout,
    teams.whoami,
    teams.audit,
    teams.events,
    reconcile.reconcile,
):
    app.command(context_settings=CONTEXT)(command)


def _version(value: bool) -> None:
    if value:
        out.print(f"lastmile {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Lastmile: take trained models to production on NVIDIA Triton."""


@app.command(context_settings=CONTEXT)
def up(
    detach: bool = typer.Option(False, "--detach", "-d", help="Run in the background."),
    replicas: int | None = typer.Option(
        None,
        "--replicas",
        min=1,
        max=16,
        help="Embedded tritonservers to run as one pool (LASTMILE_TRITON_REPLICAS): each "
        "serves every model, the gateway balances between them.",
    ),
    as_json: JsonOpt = False,
) -> None:
    """Start the embedded tritonserver(s), the gateway, the scraper and the management API."""
    from manager import supervisor

    if replicas is not None:  # the detached child reads it from the environment too
        os.environ["LASTMILE_TRITON_REPLICAS"] = str(replicas)
    s = settings()
    # Everything the system writes under LASTMILE_HOME (store, models, logs, keys) is this
    # user's only: files 0600, folders 0700.
    os.umask(0o077)
    supervisor.check_can_start(s)
    new_key = supervisor.bootstrap_owner(s)
    if new_key is not None and sys.stderr.isatty():
        err.print(
            "[yellow]first start: this is the server owner's API key, shown once[/yellow] "
            f"(also in {s.owner_key_path}, mode 0600):"
        )
        err.print(new_key, highlight=False, soft_wrap=True)
    elif new_key is not None:  # a log (a container's, a CI job's) is no place for a secret
        err.print(
            f"first start: the server owner's API key is in {s.owner_key_path} (mode 0600); "
            "lastmile login reads it there"
        )
    if not detach:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        supervisor.serve_foreground(s)
        return
    with err.status("starting tritonserver, gateway and API…"):
        state = supervisor.start_detached(s)
    human = (
        f"[green]up[/green]: gateway {state['gateway']['http']}, "
        f"API {state['api']['url']} (lastmile status for more)"
    )
    emit(state, as_json, human)


@app.command(context_settings=CONTEXT)
def down(as_json: JsonOpt = False) -> None:
    """Stop everything `lastmile up` started."""
    from manager import supervisor

    with err.status("stopping…"):
        result = supervisor.stop(settings())
    emit(result, as_json, "stopped" if result["stopped"] else "nothing was running")


def _health(server: dict[str, object]) -> str:
    """'up', 'up (1 restart(s))' or 'failed (2 restart(s)); last error: ...' for a
    supervised process."""
    state = str(server.get("state") or "up")
    restarts = server.get("restarts") or 0
    text = state if not restarts else f"{state} ({restarts} restart(s))"
    if state != "up" and server.get("last_error"):
        text += f"; last error: {server['last_error']}"
    return f"[{'green' if state == 'up' else 'red'}]{text}[/]"


@app.command(context_settings=CONTEXT)
def status(as_json: JsonOpt = False) -> None:
    """What runs where, and which pipelines are live."""
    with client() as lm:
        info = lm.status()
    if as_json:
        emit(info, True)
        return
    rows = [
        ("API", info["api"]["url"]),
        ("gateway http", f"{info['gateway']['http']} {_health(info['gateway'])}"),
        ("gateway metrics", info["gateway"]["metrics"]),
    ]
    workers = info["gateway"].get("workers") or []
    if len(workers) > 1:
        up = sum(w["state"] == "up" for w in workers)
        restarted = sum(max(0, (w.get("starts") or 1) - 1) for w in workers)
        rows.append(("gateway workers", f"{up}/{len(workers)} up, {restarted} restart(s)"))
    if "home" in info:
        rows.insert(0, ("home", info["home"]))
    rows += [
        (
            f"triton {t.get('replica', 0)}{' (embedded)' if t['embedded'] else ''}",
            f"{t['http']} {_health(t)}"
            + (
                f" serving {t['serving']}/{t['of']} pipelines"
                if t.get("serving") is not None
                else ""
            )
            + (f" on CPUs {t['cpus']}" if t.get("cpus") else ""),
        )
        for t in info["triton"]
    ]
    if "database" in info:
        rows.append(("database", info["database"]))
    out.print(kv_table("Lastmile", rows))
    out.print(
        table(
            "Deployments",
            ["workspace", "pipeline", "version", "state", "ensemble", "inputs", "outputs"],
            [
                [d["workspace"], d["pipeline"], d["version"], d["state"], d["ensemble"],
                 ", ".join(t["name"] for t in d["inputs"]),
                 ", ".join(t["name"] for t in d["outputs"])]
                for d in info["deployments"]
            ],
        )
    )  # fmt: skip


@repo_app.command("validate")
def repo_validate(
    directory: Path = typer.Argument(
        ..., help="Triton model repository folder, or one model's folder."
    ),
    as_json: JsonOpt = False,
) -> None:
    """Check a repository the way Triton would; exit 1 if there are errors (warnings pass)."""
    from manager.repository.validate import errors, validate_repository

    problems = validate_repository(directory)
    failed = errors(problems)
    warnings = len(problems) - len(failed)
    if as_json:
        emit([p.to_dict() for p in problems], True)
    else:
        for problem in problems:
            mark = "[red]✗[/red]" if problem.is_error else "[yellow]![/yellow]"
            out.print(f"{mark} {problem}", highlight=False)
        if failed:
            out.print(f"{len(failed)} error(s), {warnings} warning(s) in {directory}")
        elif warnings:
            out.print(f"[green]✓[/green] {directory}: no errors ({warnings} warning(s))")
        else:
            out.print(f"[green]✓[/green] {directory}: no problems")
    if failed:
        raise typer.Exit(1)


@repo_app.command("export")
def repo_export(
    pipeline: str = typer.Argument(..., help="Pipeline to export."),
    directory: Path = typer.Argument(..., help="New or empty folder to write."),
    version: int | None = typer.Option(None, "--version", help="Pipeline version (latest)."),
    profile: str = typer.Option(
        "gpu", "--profile", help="gpu: backend onnxruntime (NGC Triton); cpu: embedded profile."
    ),
    workspace: str | None = typer.Option(None, "--workspace", "-w", help="Workspace."),
    as_json: JsonOpt = False,
) -> None:
    """Write a pipeline as a Triton model repository that a stock Triton loads."""
    if profile not in ("cpu", "gpu"):
        raise InvalidInput(f"unknown profile {profile!r}", hint="use --profile gpu or cpu")
    with client(workspace) as lm:
        info = lm.export_pipeline(pipeline, directory, version=version, profile=profile)
    emit(info, as_json, f"wrote {', '.join(info['models'])} to {directory}")


@export_app.command("k8s")
def export_k8s(
    pipeline: str = typer.Argument(..., help="Pipeline to export."),
    out_dir: Path = typer.Option(..., "--out", help="New or empty folder to write."),
    overlay: str = typer.Option("gpu", "--overlay", help="gpu (GPU nodes) or cpu-dev."),
    version: int | None = typer.Option(None, "--version", help="Pipeline version (latest)."),
    replicas: int | None = typer.Option(
        None, "--replicas", help="Triton pods (default: the pipeline's, lastmile pipeline cluster)."
    ),
    gpus: int | None = typer.Option(
        None, "--gpus", help="GPUs per Triton pod, gpu overlay (default: the pipeline's)."
    ),
    gateway_replicas: int | None = typer.Option(
        None, "--gateway-replicas", help="Gateway pods, HPA min (default: the pipeline's)."
    ),
    namespace: str = typer.Option("lastmile", "--namespace", help="Kubernetes namespace."),
    image: str | None = typer.Option(None, "--image", help="Gateway image (pinned tag)."),
    repository_url: str | None = typer.Option(
        None,
        "--repository-url",
        help="Serve the repository from s3:// gs:// or as:// instead "
        "of ConfigMaps (upload model_repository/ there).",
    ),
    workspace: str | None = typer.Option(None, "--workspace", "-w", help="Workspace."),
    as_json: JsonOpt = False,
) -> None:
    """Write a pipeline as a Kustomize folder: Triton on GPU nodes, the gateway, its routes;
    then `kubectl apply -k DIR`."""
    if overlay not in ("gpu", "cpu-dev"):
        raise InvalidInput(f"unknown overlay {overlay!r}", hint="use --overlay gpu or cpu-dev")
    with client(workspace) as lm:
        info = lm.export_k8s(
            pipeline, out_dir, version=version, overlay=overlay, replicas=replicas, gpus=gpus,
            gateway_replicas=gateway_replicas, namespace=namespace, image=image,
            repository_url=repository_url,
        )  # fmt: skip
    emit(
        info, as_json, f"wrote {len(info['files'])} files to {out_dir}: kubectl apply -k {out_dir}"
    )


@repo_app.command("import")
def repo_import(
    directory: Path = typer.Argument(..., help="Triton model repository folder."),
    workspace: str | None = typer.Option(None, "--workspace", "-w", help="Workspace."),
    as_json: JsonOpt = False,
) -> None:
    """Register a repository: each model with its versions and config, ensembles as pipelines."""
    with client(workspace) as lm, err.status(f"importing {directory}…"):
        info = lm.import_repository(directory)
    human = (
        "models: "
        + ", ".join(f"{m['name']} ({m['versions']} version(s))" for m in info["models"])
        + "\npipelines: "
        + (", ".join(f"{p['pipeline']} v{p['version']}" for p in info["pipelines"]) or "none")
    )
    emit(info, as_json, human)


@app.command(context_settings=CONTEXT)
def demo() -> None:
    """Run the whole story end to end on the embedded Triton; exit 0 only if all worked."""
    from manager.demo import run_demo

    raise typer.Exit(run_demo(settings(), out))


def main() -> None:
    from manager.cli.exits import exit_code

    try:
        app()
    except LastmileError as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False)
        if exc.hint:
            err.print(f"  hint: {exc.hint}", highlight=False)
        sys.exit(exit_code(exc))


if __name__ == "__main__":
    main()
