"""``lastmile deploy / undeploy / rollback / deployment … / infer``."""

from __future__ import annotations

import json
from typing import Any

import typer

from manager.cli.common import JsonOpt, WorkspaceOpt, client, emit, err, table
from manager.errors import InvalidInput

deployment_app = typer.Typer(help="What is deployed, and its history.", no_args_is_help=True)


def _version(text: str) -> int | str:
    if text == "latest":
        return "latest"
    if not text.isdigit() or not 1 <= int(text) <= 2**31 - 1:
        raise InvalidInput(
            f"--version {text!r} is neither a version number nor 'latest'",
            hint="e.g. --version 3, or --version latest",
        )
    return int(text)


def deploy(
    pipeline: str = typer.Argument(..., help="Pipeline to deploy."),
    version: str = typer.Option(
        ..., "--version", help="Pipeline version to put live, or 'latest' (said explicitly)."
    ),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the Triton repository and ensemble, load them, and route the gateway to them."""
    with (
        client(workspace) as lm,
        err.status(f"deploying {pipeline} (building, loading on Triton)…"),
    ):
        info = lm.deploy(pipeline, version=_version(version))  # type: ignore[arg-type]
        url = f"{lm.gateway_url}/v2/models/{info['pipeline']}/infer"
    emit(
        info,
        as_json,
        f"[green]live[/green]: {info['pipeline']} v{info['version']} as "
        f"{info['ensemble']}; infer at {url}",
    )


def undeploy(
    pipeline: str = typer.Argument(..., help="Deployed pipeline."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop serving a pipeline: route out of the gateway, unload from Triton."""
    with client(workspace) as lm, err.status(f"undeploying {pipeline}…"):
        info = lm.undeploy(pipeline)
    emit(info, as_json, f"{pipeline} v{info['version']} is no longer served")


def rollback(
    pipeline: str = typer.Argument(..., help="Deployed pipeline."),
    version: int | None = typer.Option(
        None,
        "--to",
        "--version",
        help="Version to go back to (default: the one live before; during a rollout its "
        "stable version).",
    ),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Put an earlier version back live in one step (during a rollout: its stable version,
    still loaded, takes all traffic again at once)."""
    with client(workspace) as lm, err.status(f"rolling {pipeline} back…"):
        info = lm.rollback(pipeline, version=version)
    emit(info, as_json, f"[green]live[/green]: {pipeline} v{info['version']} (rolled back)")


@deployment_app.command("list")
def deployment_list(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """The workspace's deployments."""
    with client(workspace) as lm:
        items = lm.deployments()
    rows = [
        [d["pipeline"], d["version"], d["state"], d["ensemble"], d["updated_at"]] for d in items
    ]
    emit(
        items,
        as_json,
        table("Deployments", ["pipeline", "version", "state", "ensemble", "updated"], rows),
    )


@deployment_app.command("status")
def deployment_status(
    pipeline: str = typer.Argument(..., help="Pipeline."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A deployment and the Triton state of each of its steps."""
    with client(workspace) as lm:
        info = lm.deployment(pipeline)
    rows = [[s["triton_model"], s["version"], s["state"]] for s in info["steps"]]
    title = f"{pipeline} v{info['version']}: {info['state']}"
    if info.get("error"):
        title += f" ({info['error']})"
    emit(info, as_json, table(title, ["Triton model", "version", "state"], rows))


@deployment_app.command("history")
def deployment_history(
    pipeline: str = typer.Argument(..., help="Pipeline."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Who deployed, rolled back or undeployed which version, and when (newest first)."""
    with client(workspace) as lm:
        items = lm.deployment_history(pipeline)
    rows = [
        [e["ts"], e["action"], e["version"], e["outcome"], e["principal"], e["error"]]
        for e in items
    ]
    emit(
        items,
        as_json,
        table(
            f"History of {pipeline}", ["when", "action", "version", "outcome", "by", "error"], rows
        ),
    )


def _parse_inputs(items: list[str]) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise InvalidInput(f"invalid --input {item!r}", hint="write NAME=JSON_ARRAY")
        try:
            inputs[name] = json.loads(text)
        except ValueError as exc:
            raise InvalidInput(
                f"--input {name}: {text!r} is not JSON ({exc})",
                hint='write e.g. --input x="[[1.0, 2.0, 3.0, 4.0]]"',
            ) from exc
    return inputs


def infer(
    pipeline: str = typer.Argument(..., help="Deployed pipeline."),
    input: list[str] = typer.Option(..., "--input", help="NAME=JSON_ARRAY, once per input."),
    as_json: JsonOpt = False,
) -> None:
    """Send one inference request through the gateway."""
    inputs = _parse_inputs(input)
    with client() as lm:
        result = lm.infer(pipeline, inputs)
    data = {name: array.tolist() for name, array in result.items()}
    emit(data, as_json, "\n".join(f"{name} = {value}" for name, value in data.items()))
