"""PyTorch to ONNX, with a dynamic batch axis so Triton can batch the result.

Exporter choice for torch 2.13 on CPU (measured while writing this):

- ``nn.Module`` objects and ``torch.export`` programs go through the **dynamo exporter**
  (``torch.onnx.export(..., dynamo=True)``, built on ``torch.export`` and onnxscript), the
  default since torch 2.9. It marks the batch dim with ``torch.export.Dim`` and fails loudly
  on operators it cannot translate, instead of tracing something else. The first export in a
  process costs about 5 s (imports), later ones about 1 s.
- TorchScript ``ScriptModule`` objects (``torch.jit.load``) are refused by the dynamo exporter
  ("Exporting a ScriptModule is not supported"), so they use the **legacy TorchScript
  exporter** (``dynamo=False``), which torch 2.13 still ships, with ``dynamic_axes``.

Both write opset 18 in a single file (the dynamo exporter's default of external weights would
split small models in two). The example batch is at least 2 rows: ``torch.export`` specialises
a dimension of size 1 to a constant.

Loading files: a TorchScript archive (``torch.jit.save``) is loaded without Python pickle.
A ``torch.save`` of a whole module and a ``torch.export.save`` archive (``.pt2``:
``torch.export.load`` unpickles its weights with ``weights_only=False`` in torch 2.13) both
need ``trust_pickle``.

Run alone: ``python -m converters.torch_onnx model.pt --framework torchscript
--input x:float32:-1,8 --out-dir out/``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.common import (
    Arrays,
    ConversionError,
    ConvertedModel,
    Progress,
    arrays_from_specs,
    first_error_lines,
    framework_main,
    gate_pickle,
    open_source,
    require,
    tile_batch,
    version_of,
)
from manager.domain import TensorSpec
from manager.errors import InvalidInput, InvalidModelFile
from manager.names import check_tensor_name

log = logging.getLogger(__name__)

OPSET = 18
DYNAMO = "torch.onnx.export(dynamo=True)"
LEGACY = "torch.onnx.export(dynamo=False, TorchScript)"


def archive_kind(path: Path) -> str:
    """'torchscript', 'pt2', 'pickle' or 'unknown', from the zip member names alone."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            head = handle.read(2)
        # torch.save's legacy (non-zip) format is a bare pickle: protocol 2+ starts with 0x80.
        return "pickle" if head[:1] == b"\x80" else "unknown"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "unknown"
    if any(n.split("/", 1)[-1].startswith("code/") for n in names):
        return "torchscript"
    if any(n.endswith("/archive_format") for n in names):
        return "pt2"
    if any(n.endswith("data.pkl") for n in names):
        return "pickle"
    return "unknown"


def _load_file(torch: Any, path: Path, *, framework: str, trust_pickle: bool) -> tuple[Any, str]:
    kind = archive_kind(path)
    if kind == "unknown":
        raise InvalidModelFile(
            f"{path.name}: is not a TorchScript archive, a torch.export archive or a torch.save "
            "file (truncated, or another format)",
            hint="upload the complete file written by torch.jit.save or torch.export.save",
        )
    if kind == "pickle" and framework == "torchscript":
        raise InvalidModelFile(
            f"{path.name}: is a torch.save pickle, not a TorchScript archive",
            hint="save it with torch.jit.save(torch.jit.script(model)), or import it with "
            "framework 'pytorch' and trust_pickle",
        )
    try:
        if kind == "torchscript":
            return torch.jit.load(str(path), map_location="cpu"), "script"
        if kind == "pt2":
            gate_pickle(
                path,
                trust_pickle=trust_pickle,
                what="a torch.export archive (torch.export.load unpickles its weights)",
            )
            return torch.export.load(str(path)), "exported"
        gate_pickle(path, trust_pickle=trust_pickle, what="a torch.save file")
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except InvalidInput:
        raise
    except Exception as exc:  # torch raises RuntimeError, pickle errors, zip errors...
        raise InvalidModelFile(
            f"{path.name}: cannot be loaded by torch ({first_error_lines(exc, limit=300)})",
            hint="the file may be truncated, or saved by an incompatible torch version",
        ) from exc
    if isinstance(obj, dict):
        raise InvalidInput(
            f"{path.name}: holds a state_dict (weights without the architecture)",
            hint="pass the nn.Module object itself, or save it with torch.jit.save / "
            "torch.export.save",
        )
    if not isinstance(obj, torch.nn.Module):
        raise InvalidInput(f"{path.name}: holds a {type(obj).__name__}, not a torch.nn.Module")
    return obj, "module"


def _model_kind(torch: Any, model: object) -> str:
    if isinstance(model, torch.jit.ScriptModule):
        return "script"
    if isinstance(model, torch.export.ExportedProgram):
        return "exported"
    if isinstance(model, torch.nn.Module):
        return "module"
    raise InvalidInput(
        f"framework pytorch expects a torch.nn.Module, a TorchScript module or a "
        f"torch.export program, got {type(model).__name__}",
        hint="pass the model object or the path of a torch.jit.save / torch.export.save file",
    )


def _float_dtype(torch: Any, model: Any, kind: str) -> Any:
    tensors = model.state_dict.values() if kind == "exported" else model.parameters()
    for tensor in tensors:
        if torch.is_floating_point(tensor):
            return tensor.dtype
    return None


def _example_inputs(
    torch: Any,
    model: Any,
    kind: str,
    *,
    inputs: Sequence[TensorSpec] | None,
    sample: Arrays | None,
    warnings: list[str],
) -> Arrays:
    if sample is not None:
        arrays = dict(sample)
    elif inputs:
        arrays = arrays_from_specs(inputs, batch=4)
    elif kind == "exported" and model.example_inputs is not None:
        args, _kwargs = model.example_inputs
        specs = model.graph_signature.input_specs
        user = [s.arg.name for s in specs if s.kind.name == "USER_INPUT"]
        names = user if len(user) == len(args) else [f"input_{i}" for i in range(len(args))]
        if len(names) == 1:
            names = ["input"]
        arrays = {n: a.detach().cpu().numpy() for n, a in zip(names, args, strict=True)}
    else:
        raise InvalidInput(
            "a PyTorch model does not carry its input signature",
            hint="pass sample_input (a batch of real inputs) or inputs, e.g. "
            "--input x:float32:-1,8",
        )
    param_dtype = _float_dtype(torch, model, kind)
    for name, array in arrays.items():
        if array.dtype == np.float64 and param_dtype == torch.float32:
            arrays[name] = array.astype(np.float32)
            warnings.append(f"input {name!r} was float64; cast to float32 like the model")
    return arrays


def _flatten(torch: Any, result: Any) -> list[tuple[str | None, Any]]:
    if isinstance(result, torch.Tensor):
        return [(None, result)]
    if isinstance(result, dict):
        return [(str(k), v) for k, v in result.items()]
    if isinstance(result, (tuple, list)):
        return [(None, v) for v in result]
    raise ConversionError(
        f"the model returns a {type(result).__name__}",
        hint="return a tensor, a tuple of tensors or a dict of tensors",
    )


def _output_names(torch: Any, result: Any) -> list[str]:
    items = _flatten(torch, result)
    for key, value in items:
        if not isinstance(value, torch.Tensor):
            raise ConversionError(
                f"output {key or ''} is a {type(value).__name__}, not a tensor",
                hint="return only tensors (nested structures are not served by Triton)",
            )
    if len(items) == 1 and items[0][0] is None:
        return ["output"]
    names = [key if key is not None else f"output_{i}" for i, (key, _v) in enumerate(items)]
    for name in names:
        check_tensor_name(name, where="the model's outputs")
    return names


def convert_torch(
    source: object,
    *,
    framework: str,
    out_path: Path,
    inputs: Sequence[TensorSpec] | None,
    sample: Arrays | None,
    trust_pickle: bool,
    max_bytes: int,
    progress: Progress,
) -> ConvertedModel:
    torch = require("torch", extra="torch", framework=framework)
    warnings: list[str] = []
    path, sha256, described = open_source(source, max_bytes=max_bytes)
    if path is not None:
        progress(f"loading {path.name} with torch {torch.__version__}")
        model, kind = _load_file(torch, path, framework=framework, trust_pickle=trust_pickle)
    else:
        model, kind = source, _model_kind(torch, source)
    if kind in ("module", "script") and model.training:
        model.eval()
        warnings.append("the module was in training mode; it was switched to eval mode")
    example = _example_inputs(torch, model, kind, inputs=inputs, sample=sample, warnings=warnings)
    input_names = list(example)
    rows = next(iter(example.values())).shape[0]
    export_example = tile_batch(example, max(2, rows))
    run = model.module() if kind == "exported" else model

    def forward(arrays: Arrays) -> Any:
        tensors = [torch.from_numpy(np.ascontiguousarray(arrays[n])) for n in input_names]
        with torch.no_grad():
            return run(*tensors)

    try:
        output_names = _output_names(torch, forward(export_example))
    except ConversionError:
        raise
    except Exception as exc:
        raise InvalidInput(
            f"the model fails on the example input: {first_error_lines(exc, limit=400)}",
            hint="check the sample_input / inputs shapes and dtypes",
        ) from exc

    def reference(arrays: Arrays) -> Arrays:
        values = [v for _k, v in _flatten(torch, forward(arrays))]
        return {n: v.detach().cpu().numpy() for n, v in zip(output_names, values, strict=True)}

    exporter = LEGACY if kind == "script" else DYNAMO
    progress(f"exporting to ONNX with {exporter}, opset {OPSET}, dynamic batch")
    _export(torch, model, kind, export_example, input_names, output_names, out_path)
    details = {"exporter": exporter}
    if exporter == DYNAMO:
        details["onnxscript_version"] = version_of("onnxscript")
    return ConvertedModel(
        onnx_path=out_path,
        reference=reference,
        example=example,
        framework="pytorch" if kind != "script" else "torchscript",
        framework_version=str(torch.__version__),
        converter="torch.onnx",
        converter_version=str(torch.__version__),
        source=described,
        source_sha256=sha256,
        warnings=warnings,
        details=details,
    )


def _export(
    torch: Any,
    model: Any,
    kind: str,
    example: Arrays,
    input_names: list[str],
    output_names: list[str],
    out_path: Path,
) -> None:
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[n])) for n in input_names)
    # Without torchvision installed the exporter warns once per torchvision op it skips.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), torch.no_grad():
            if kind == "script":
                axes = {name: {0: "batch"} for name in (*input_names, *output_names)}
                torch.onnx.export(
                    model,
                    args,
                    str(out_path),
                    input_names=input_names,
                    output_names=output_names,
                    dynamic_axes=axes,
                    opset_version=OPSET,
                    dynamo=False,
                )
            else:
                batch = torch.export.Dim("batch")
                torch.onnx.export(
                    model,
                    () if kind == "exported" else args,
                    str(out_path),
                    input_names=input_names,
                    output_names=output_names,
                    dynamic_shapes=None if kind == "exported" else tuple({0: batch} for _ in args),
                    opset_version=OPSET,
                    dynamo=True,
                    external_data=False,
                )
    except Exception as exc:  # OnnxExporterError, UnsupportedOperatorError, export errors
        log.debug("exporter output:\n%s", chatter.getvalue())
        raise ConversionError(
            f"torch.onnx cannot export the model: {first_error_lines(exc)}",
            hint="an operator without an ONNX translation (custom op, rare aten op) or "
            "code torch.export cannot trace (data-dependent control flow, a batch-size-1 "
            "assumption); rewrite that part, or export to ONNX yourself and import the .onnx",
        ) from exc
    log.debug("exporter output:\n%s", chatter.getvalue())


def main(argv: list[str] | None = None) -> int:
    return framework_main(argv, "pytorch")


if __name__ == "__main__":
    sys.exit(main())
