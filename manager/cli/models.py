"""``lastmile model …`` and ``lastmile templates``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from manager.cli.common import JsonOpt, WorkspaceOpt, client, emit, err, out, table
from manager.errors import InvalidInput

model_app = typer.Typer(help="Register, inspect and retire model versions.", no_args_is_help=True)


def _int_list(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise InvalidInput(f"{option} {text!r}: give integers separated by commas") from exc


@model_app.command("import")
def model_import(
    path: Path = typer.Argument(..., help="Model file (.onnx, .pt, .joblib, .json, .txt, …)."),
    name: str = typer.Option(..., "--name", help="Registered model name."),
    framework: str | None = typer.Option(
        None,
        "--framework",
        help="onnx, pytorch, torchscript, sklearn, xgboost, lightgbm or keras "
        "(default: told by the file's extension).",
    ),
    input_spec: list[str] = typer.Option(
        [], "--input", help="NAME:DTYPE:SHAPE, e.g. x:float32:-1,8 (formats without a signature)."
    ),
    sample: Path | None = typer.Option(
        None,
        "--sample",
        help="Real input rows (.npy, .npz, .csv, .parquet): the parity check runs on them, and "
        "they become the model's drift baseline (<model>-v<N>).",
    ),
    trust_pickle: bool = typer.Option(
        False, "--trust-pickle", help="Allow unpickling this file (only for files you trust)."
    ),
    rtol: float = typer.Option(1e-4, "--rtol", help="Parity: relative tolerance."),
    atol: float = typer.Option(1e-5, "--atol", help="Parity: absolute tolerance."),
    optimize: list[str] = typer.Option(
        [], "--optimize", help="Variants to try: ort, onnxslim, fp16, int8."
    ),
    force: bool = typer.Option(
        False, "--force", help="Make a new version even if this exact file is one already."
    ),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register PATH as the next version of model NAME (converted to ONNX when needed)."""
    from manager.model_files import infer_framework, load_sample

    if not path.is_file():
        raise InvalidInput(f"{path} is not a file", hint="give the path of a model file")
    framework = framework or infer_framework(path)
    names = [spec.split(":", 1)[0] for spec in input_spec] or None
    rows = load_sample(sample, inputs=names) if sample is not None else None
    size = path.stat().st_size
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
        disable=as_json or not err.is_terminal,
    )
    what = "uploading" if framework == "onnx" else f"uploading ({framework} → ONNX on the server)"
    with client(workspace) as lm, progress:
        task = progress.add_task(f"{what} {path.name}", total=size)
        info = lm.import_model(
            path,
            name=name,
            framework=framework,
            inputs=input_spec,
            sample_input=rows,
            trust_pickle=trust_pickle,
            rtol=rtol,
            atol=atol,
            optimize=tuple(optimize),
            force=force,
            progress=lambda sent: progress.update(task, completed=sent),
        )
    sig = info["signature"]
    verb = "registered as" if info.get("created", True) else "already registered as"
    human = (
        f"{path.name} {verb} model [bold]{info['model']}[/bold] version {info['version']} "
        f"(sha256 {info['sha256'][:12]}…): inputs "
        + ", ".join(f"{t['name']}:{t['datatype']}{t['shape']}" for t in sig["inputs"])
        + " → outputs "
        + ", ".join(f"{t['name']}:{t['datatype']}{t['shape']}" for t in sig["outputs"])
    )
    emit(info, as_json, human)


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
    if_match: str | None = typer.Option(
        None, "--if-match", help="Only if the options are still at this ETag (model show)."
    ),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
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
    with client(workspace) as lm:
        info = lm.configure_model(name, if_match=if_match, **options)
    emit(info, as_json, f"[bold]{name}[/bold] will be served with:\n{info['config']}")


@model_app.command("list")
def model_list(
    prefix: str | None = typer.Option(None, "--prefix", help="Only names starting with this."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Registered models and their versions."""
    with client(workspace) as lm:
        models = lm.models(name_prefix=prefix)
    rows = [[m["name"], ", ".join(str(v["version"]) for v in m["versions"])] for m in models]
    emit(models, as_json, table("Models", ["model", "versions"], rows))


@model_app.command("show")
def model_show(
    name: str = typer.Argument(..., help="Registered model."),
    version: int | None = typer.Option(None, "--version", help="One version's lineage."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A model's versions, serving options and ETag, or one version's lineage and reports."""
    with client(workspace) as lm:
        if version is not None:
            info = lm.model_version(name, version)
            emit(info, as_json, info)
            return
        info = lm.model(name) | {"serving_etag": lm.serving(name)["etag"]}
    rows = [
        [v["version"], v["sha256"][:12], v["size_bytes"], v["created_by"], v["created_at"]]
        for v in info["versions"]
    ]
    human = table(
        f"{name} (serving ETag {info['serving_etag']})",
        ["version", "sha256", "bytes", "by", "created"],
        rows,
    )
    emit(info, as_json, human)


@model_app.command("download")
def model_download(
    name: str = typer.Argument(..., help="Registered model."),
    version: int = typer.Option(..., "--version", help="Version to download."),
    dest: Path = typer.Option(None, "--out", "-o", help="File to write (NAME-vN.onnx)."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Download a version's ONNX file."""
    target = dest or Path(f"{name}-v{version}.onnx")
    with client(workspace) as lm:
        path = lm.download_model(name, version, target)
    emit({"path": str(path)}, as_json, f"wrote {path}")


@model_app.command("delete")
def model_delete(
    name: str = typer.Argument(..., help="Registered model."),
    version: int = typer.Option(..., "--version", help="Version to delete."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete a model version that no deployment serves."""
    with client(workspace) as lm:
        lm.delete_model_version(name, version)
    emit({"deleted": {"model": name, "version": version}}, as_json, f"deleted {name} v{version}")


def templates(as_json: JsonOpt = False) -> None:
    """Model config presets: backends and tuning fragments (built-in and LASTMILE_TEMPLATE_DIR)."""
    with client() as lm:
        items = lm.templates()
    rows = [[t["name"], t["about"], t["origin"]] for t in items]
    emit(items, as_json, table("Model config presets", ["name", "about", "origin"], rows))


__all__ = ["model_app", "out", "templates"]
