"""The ``lastmile`` command line. The only place that prints: rich for people, --json for
machines. Every command that talks to a running system finds it through LASTMILE_HOME."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from manager.errors import InvalidInput, LastmileError
from manager.sdk import Lastmile
from manager.settings import Settings

app = typer.Typer(
    help="Lastmile: take trained models to production on NVIDIA Triton.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Register model versions.", no_args_is_help=True)
pipeline_app = typer.Typer(help="Define pipelines of model versions.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(pipeline_app, name="pipeline")
repo_app = typer.Typer(
    help="Triton model repositories: validate, import, export.", no_args_is_help=True
)
app.add_typer(repo_app, name="repo")

out = Console()
err = Console(stderr=True)

JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON.")


def _settings() -> Settings:
    return Settings()


def _client() -> Lastmile:
    return Lastmile.from_settings(_settings())


def _emit(data: Any, as_json: bool, human: Any = None) -> None:
    if as_json:
        out.print_json(json.dumps(data, default=str))
    elif human is not None:
        out.print(human)
    else:
        out.print(data)


def _kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False)
    for key, value in rows:
        table.add_row(key, str(value))
    return table


@app.command()
def up(
    detach: bool = typer.Option(False, "--detach", "-d", help="Run in the background."),
    as_json: bool = JsonOpt,
) -> None:
    """Start the embedded tritonserver, the gateway, the scraper and the management API."""
    from manager import supervisor

    settings = _settings()
    if not detach:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        supervisor.serve_foreground(settings)
        return
    with err.status("starting tritonserver, gateway and API…"):
        state = supervisor.start_detached(settings)
    _emit(
        state,
        as_json,
        f"[green]up[/green]: gateway {state['gateway']['http']}, "
        f"API {state['api']['url']} (lastmile status for more)",
    )


@app.command()
def down(as_json: bool = JsonOpt) -> None:
    """Stop everything `lastmile up` started."""
    from manager import supervisor

    with err.status("stopping…"):
        result = supervisor.stop(_settings())
    _emit(result, as_json, "stopped" if result["stopped"] else "nothing was running")


@app.command()
def status(as_json: bool = JsonOpt) -> None:
    """What runs where, and which pipelines are live."""
    with _client() as lm:
        info = lm.status()
    if as_json:
        _emit(info, True)
        return
    rows = [
        ("home", info["home"]),
        ("API", info["api"]["url"]),
        ("gateway http", info["gateway"]["http"]),
        ("gateway metrics", info["gateway"]["metrics"]),
    ]
    rows += [(f"triton {'(embedded)' if t['embedded'] else ''}", t["http"]) for t in info["triton"]]
    rows.append(("database", info["database"]))
    out.print(_kv_table("Lastmile", rows))
    table = Table(title="Deployments")
    for col in ("pipeline", "version", "state", "ensemble", "inputs", "outputs"):
        table.add_column(col)
    for d in info["deployments"]:
        table.add_row(
            d["pipeline"], str(d["version"]), d["state"], d["ensemble"],
            ", ".join(t["name"] for t in d["inputs"]), ", ".join(t["name"] for t in d["outputs"]),
        )  # fmt: skip
    out.print(table)


@model_app.command("import")
def model_import(
    path: Path = typer.Argument(..., help="Model file (.onnx, .pt, .pkl/.joblib, .json, .txt, …)."),
    name: str = typer.Option(..., "--name", help="Registered model name."),
    framework: str = typer.Option(
        "onnx",
        "--framework",
        help="onnx, pytorch, torchscript, sklearn, xgboost, lightgbm or keras.",
    ),
    input_spec: list[str] = typer.Option(
        [], "--input", help="NAME:DTYPE:SHAPE, e.g. x:float32:-1,8 (formats without a signature)."
    ),
    trust_pickle: bool = typer.Option(
        False, "--trust-pickle", help="Allow unpickling this file (only for files you trust)."
    ),
    rtol: float = typer.Option(1e-4, "--rtol", help="Parity: relative tolerance."),
    atol: float = typer.Option(1e-5, "--atol", help="Parity: absolute tolerance."),
    optimize: list[str] = typer.Option(
        [], "--optimize", help="Variants to try: ort, onnxslim, fp16, int8."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Register PATH as the next version of model NAME (converted to ONNX when needed)."""
    what = (
        "importing" if framework == "onnx" else f"converting {framework} → ONNX, checking parity,"
    )
    with _client() as lm, err.status(f"{what} {path}…"):
        info = lm.import_model(
            path,
            name=name,
            framework=framework,
            inputs=input_spec,
            trust_pickle=trust_pickle,
            rtol=rtol,
            atol=atol,
            optimize=tuple(optimize),
        )
    sig = info["signature"]
    human = (
        f"model [bold]{info['model']}[/bold] version {info['version']} "
        f"(sha256 {info['sha256'][:12]}…): inputs "
        + ", ".join(f"{t['name']}:{t['datatype']}{t['shape']}" for t in sig["inputs"])
        + " → outputs "
        + ", ".join(f"{t['name']}:{t['datatype']}{t['shape']}" for t in sig["outputs"])
    )
    _emit(info, as_json, human)


def _int_list(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise InvalidInput(f"{option} {text!r}: give integers separated by commas") from exc


@model_app.command("configure")
def model_configure(
    name: str = typer.Argument(..., help="Registered model."),
    tuning: list[str] = typer.Option([], "--tuning", help="Preset to merge (lastmile templates)."),
    instances: int | None = typer.Option(None, "--instances", help="Model instances."),
    gpus: str | None = typer.Option(None, "--gpus", help="GPU ids, e.g. 0,1 (gpu profile)."),
    max_batch_size: int | None = typer.Option(None, "--max-batch-size"),
    preferred_batch: str | None = typer.Option(
        None, "--preferred-batch", help="Dynamic batching preferred sizes, e.g. 8,16."
    ),
    queue_delay_us: int | None = typer.Option(
        None, "--queue-delay-us", help="Dynamic batching max queue delay (microseconds)."
    ),
    response_cache: bool | None = typer.Option(
        None, "--response-cache/--no-response-cache", help="Triton's response cache."
    ),
    warmup: bool = typer.Option(False, "--warmup", help="Warm up with zeros at load."),
    as_json: bool = JsonOpt,
) -> None:
    """Set how Triton serves a model (replaces its previous options; applies at next deploy)."""
    options: dict[str, Any] = {
        "tuning": tuning,
        "instances": instances,
        "gpus": _int_list(gpus, "--gpus"),
        "max_batch_size": max_batch_size,
        "preferred_batch_sizes": _int_list(preferred_batch, "--preferred-batch") or [],
        "max_queue_delay_us": queue_delay_us,
        "response_cache": response_cache,
        "warmup": warmup,
    }
    with _client() as lm:
        info = lm.configure_model(name, **options)
    _emit(info, as_json, f"[bold]{name}[/bold] will be served with:\n{info['config']}")


@app.command()
def templates(as_json: bool = JsonOpt) -> None:
    """Model config presets: backends and tuning fragments (built-in and LASTMILE_TEMPLATE_DIR)."""
    with _client() as lm:
        items = lm.templates()
    table = Table(title="Model config presets")
    for col in ("name", "about", "origin"):
        table.add_column(col)
    for t in items:
        table.add_row(t["name"], t["about"], t["origin"])
    _emit(items, as_json, table)


@model_app.command("list")
def model_list(as_json: bool = JsonOpt) -> None:
    """Registered models and their versions."""
    with _client() as lm:
        models = lm.models()
    table = Table(title="Models")
    for col in ("model", "versions"):
        table.add_column(col)
    for m in models:
        table.add_row(m["name"], ", ".join(str(v["version"]) for v in m["versions"]))
    _emit(models, as_json, table)


@pipeline_app.command("create")
def pipeline_create(
    name: str = typer.Argument(..., help="Pipeline name."),
    step: list[str] = typer.Option(..., "--step", help="MODEL or MODEL:VERSION, in order."),
    as_json: bool = JsonOpt,
) -> None:
    """Create the next version of a pipeline chaining model versions (no-op if unchanged)."""
    with _client() as lm:
        info = lm.create_pipeline(name, steps=step)
    verb = "version" if info.get("created", True) else "unchanged, still version"
    human = f"pipeline [bold]{info['pipeline']}[/bold] {verb} {info['version']}: " + " → ".join(
        f"{s['model']}:{s['version']}" for s in info["steps"]
    )
    _emit(info, as_json, human)


@pipeline_app.command("apply")
def pipeline_apply(
    file: Path = typer.Argument(..., help="Pipeline definition (YAML): name, steps, outputs."),
    as_json: bool = JsonOpt,
) -> None:
    """Create the next version of a pipeline from a YAML DAG definition (no-op if unchanged)."""
    with _client() as lm:
        info = lm.apply_pipeline(file)
    verb = "created" if info.get("created") else "unchanged,"
    human = (
        f"pipeline [bold]{info['pipeline']}[/bold] {verb} version {info['version']}: "
        + ", ".join(f"{s['name']}={s['model']}:{s['version']}" for s in info["steps"])
    )
    _emit(info, as_json, human)


@pipeline_app.command("list")
def pipeline_list(as_json: bool = JsonOpt) -> None:
    """Pipelines and their latest versions."""
    with _client() as lm:
        items = lm.pipelines()
    table = Table(title="Pipelines")
    for col in ("pipeline", "version", "steps"):
        table.add_column(col)
    for p in items:
        steps = " → ".join(f"{s['model']}:{s['version']}" for s in p["steps"])
        table.add_row(p["pipeline"], str(p["version"]), steps)
    _emit(items, as_json, table)


@repo_app.command("validate")
def repo_validate(
    directory: Path = typer.Argument(..., help="Triton model repository folder."),
    as_json: bool = JsonOpt,
) -> None:
    """Check a repository the way Triton would; exit 1 and list the problems if any."""
    from manager.repository.validate import validate_repository

    problems = validate_repository(directory)
    if as_json:
        _emit([p.to_dict() for p in problems], True)
    elif problems:
        for problem in problems:
            out.print(f"[red]✗[/red] {problem}", highlight=False)
        out.print(f"{len(problems)} problem(s) in {directory}")
    else:
        out.print(f"[green]✓[/green] {directory}: no problems")
    if problems:
        raise typer.Exit(1)


@repo_app.command("export")
def repo_export(
    pipeline: str = typer.Argument(..., help="Pipeline to export."),
    directory: Path = typer.Argument(..., help="New or empty folder to write."),
    version: int | None = typer.Option(None, "--version", help="Pipeline version (latest)."),
    profile: str = typer.Option(
        "gpu", "--profile", help="gpu: backend onnxruntime (NGC Triton); cpu: embedded profile."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Write a pipeline as a Triton model repository that a stock Triton loads."""
    if profile not in ("cpu", "gpu"):
        raise InvalidInput(f"unknown profile {profile!r}", hint="use --profile gpu or cpu")
    with _client() as lm:
        info = lm.export_pipeline(pipeline, directory, version=version, profile=profile)
    _emit(info, as_json, f"wrote {', '.join(info['models'])} to {directory}")


@repo_app.command("import")
def repo_import(
    directory: Path = typer.Argument(..., help="Triton model repository folder."),
    as_json: bool = JsonOpt,
) -> None:
    """Register a repository: each model with its versions and config, ensembles as pipelines."""
    with _client() as lm, err.status(f"importing {directory}…"):
        info = lm.import_repository(directory)
    human = (
        "models: "
        + ", ".join(f"{m['name']} ({m['versions']} version(s))" for m in info["models"])
        + "\npipelines: "
        + (", ".join(f"{p['pipeline']} v{p['version']}" for p in info["pipelines"]) or "none")
    )
    _emit(info, as_json, human)


@app.command()
def deploy(
    pipeline: str = typer.Argument(..., help="Pipeline to deploy."),
    version: int | None = typer.Option(None, "--version", help="Pipeline version (latest)."),
    as_json: bool = JsonOpt,
) -> None:
    """Build the Triton repository and ensemble, load them, and route the gateway to them."""
    with _client() as lm, err.status(f"deploying {pipeline} (building, loading on Triton)…"):
        info = lm.deploy(pipeline, version=version)
    human = (
        f"[green]live[/green]: {info['pipeline']} v{info['version']} as {info['ensemble']}; "
        f"infer at {lm.gateway_url}/v2/models/{info['pipeline']}/infer"
    )
    _emit(info, as_json, human)


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


@app.command()
def infer(
    pipeline: str = typer.Argument(..., help="Deployed pipeline."),
    input: list[str] = typer.Option(..., "--input", help="NAME=JSON_ARRAY, once per input."),
    as_json: bool = JsonOpt,
) -> None:
    """Send one inference request through the gateway."""
    inputs = _parse_inputs(input)
    with _client() as lm:
        result = lm.infer(pipeline, inputs)
    data = {name: array.tolist() for name, array in result.items()}
    human = "\n".join(f"{name} = {value}" for name, value in data.items())
    _emit(data, as_json, human)


@app.command()
def metrics(
    model: str | None = typer.Option(None, "--model", help="Triton model name filter."),
    scrape: bool = typer.Option(False, "--scrape", help="Scrape now instead of waiting."),
    as_json: bool = JsonOpt,
) -> None:
    """Latest scraped Triton metrics from the SQL store."""
    with _client() as lm:
        rows = lm.metrics(model=model, scrape=scrape)
    table = Table(title=f"Triton metrics ({rows[0]['ts'] if rows else 'none scraped yet'})")
    for col in ("model", "version", "metric", "value"):
        table.add_column(col)
    for r in rows:
        if r["model"]:
            table.add_row(r["model"], r["version"], r["metric"], f"{r['value']:g}")
    _emit(rows, as_json, table)


@app.command()
def demo() -> None:
    """Run the whole story end to end on the embedded Triton; exit 0 only if all worked."""
    from manager.demo import run_demo

    raise typer.Exit(run_demo(_settings(), out))


def main() -> None:
    try:
        app()
    except LastmileError as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False)
        if exc.hint:
            err.print(f"  hint: {exc.hint}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
