"""What every converter shares: the errors, the file checks and the shape of a result.

Each framework module (``torch_onnx``, ``sklearn_onnx``, ...) turns a source model into an
ONNX file and hands back a ``ConvertedModel`` whose ``reference`` runs the *source* framework,
so the parity check compares what the user trained with what Triton will serve. The file
checks live here so that every converter refuses the same unsafe inputs with the same words
(DESIGN §5): files over the size limit are refused before being read, and anything that would
be unpickled needs the caller's explicit trust, which is logged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from manager.domain import NUMPY_DTYPES, TensorSpec
from manager.errors import InvalidInput, InvalidModelFile, RuntimeSetupError
from manager.names import check_tensor_name

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
Arrays = dict[str, np.ndarray]
Reference = Callable[[Arrays], Arrays]

# KServe v2 datatype -> numpy dtype, for inputs we generate and outputs we compare.
KSERVE_TO_NUMPY: dict[str, Any] = {**NUMPY_DTYPES, "BYTES": np.object_}
NUMPY_TO_KSERVE: dict[str, str] = {np.dtype(v).name: k for k, v in NUMPY_DTYPES.items()}


class ConversionError(InvalidModelFile):
    """The source framework's exporter could not turn the model into ONNX."""

    title = "Conversion failed"


class ParityError(InvalidModelFile):
    """The converted model answers differently from the source model beyond the tolerance."""

    title = "Parity check failed"


class MissingDependency(RuntimeSetupError):
    """A framework's optional extra is not installed: the server's setup, not the model."""

    title = "Missing converter dependency"


@dataclass
class ConvertedModel:
    """What a framework converter returns: the ONNX file and how to run the source model."""

    onnx_path: Path
    reference: Reference
    example: Arrays | None
    framework: str
    framework_version: str
    converter: str
    converter_version: str
    source: str
    source_sha256: str | None
    warnings: list[str] = field(default_factory=list)
    details: dict[str, str] = field(default_factory=dict)


def noop_progress(message: str) -> None:
    log.info("%s", message)


def version_of(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def require(module: str, *, extra: str, framework: str) -> Any:
    """Import a heavy optional framework, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"converting {framework} models needs the Python package {module!r}, "
            f"which is not installed ({exc})",
            hint=f"pip install 'lastmile[{extra}]'",
        ) from exc


def check_source_file(path: Path, *, max_bytes: int) -> int:
    """Refuse missing, special, empty and oversized files before reading a byte."""
    try:
        info = os.stat(path)
    except FileNotFoundError as exc:
        raise InvalidModelFile(f"{path.name}: file does not exist") from exc
    except OSError as exc:
        raise InvalidModelFile(f"{path.name}: cannot be read ({exc.strerror})") from exc
    if not stat.S_ISREG(info.st_mode):
        raise InvalidModelFile(f"{path.name}: is not a regular file")
    if info.st_size > max_bytes:
        raise InvalidModelFile(
            f"{path.name}: is {info.st_size} bytes, over the limit of {max_bytes} bytes",
            hint="raise LASTMILE_MAX_UPLOAD_BYTES if this model is expected to be that large",
        )
    if info.st_size == 0:
        raise InvalidModelFile(f"{path.name}: is empty")
    return info.st_size


def sha256_file(path: Path, *, max_bytes: int) -> str:
    digest = hashlib.sha256()
    seen = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            seen += len(chunk)
            if seen > max_bytes:  # grew after the size check
                raise InvalidModelFile(f"{path.name}: is over the limit of {max_bytes} bytes")
            digest.update(chunk)
    return digest.hexdigest()


def gate_pickle(path: Path, *, trust_pickle: bool, what: str) -> None:
    """Unpickling runs code chosen by whoever wrote the file: only with explicit trust."""
    if not trust_pickle:
        raise InvalidInput(
            f"{path.name}: {what} is a pickle, and loading a pickle runs code chosen by "
            "whoever wrote the file; it was not loaded",
            hint="pass --trust-pickle (trust_pickle=True) only for a file you made yourself, "
            "or export a safe format instead (ONNX, TorchScript, XGBoost JSON, LightGBM text)",
        )
    log.warning("unpickling %s (%s) because the caller trusted it (trust_pickle)", path, what)


_PROBE_PRELUDE = """
import resource, sys
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
"""


def probe_in_child(code: str, path: Path, *, what: str, hint: str, timeout: float = 120) -> None:
    """Parse an untrusted file in a child process with a memory cap before the server does.

    Some native parsers do not fail cleanly on corrupt input: LightGBM 4.7 calls
    std::terminate, XGBoost 3.2 has segfaulted or allocated until killed on a UBJSON file with
    a few flipped bytes. The child dies instead of the server, and its verdict is reported.
    ``code`` reads the file named by ``sys.argv[1]``.
    """
    import subprocess
    import sys

    limit = max(4 << 30, 8 * path.stat().st_size)
    try:
        result = subprocess.run(
            [sys.executable, "-c", _PROBE_PRELUDE + code, str(path), str(limit)],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise InvalidModelFile(f"{path.name}: {what} did not finish parsing it", hint=hint) from exc
    if result.returncode != 0:
        lines = [ln.strip() for ln in (result.stderr + result.stdout).splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"the parser died with exit status {result.returncode}"
        if result.returncode < 0:
            detail = f"the parser crashed (signal {-result.returncode})"
        raise InvalidModelFile(f"{path.name}: cannot be read as {what} ({detail[:300]})", hint=hint)


def source_path(source: object) -> Path | None:
    return Path(source) if isinstance(source, (str, os.PathLike)) else None


def describe_object(obj: object) -> str:
    kind = type(obj)
    return f"object {kind.__module__}.{kind.__qualname__}"


def open_source(source: object, *, max_bytes: int) -> tuple[Path | None, str | None, str]:
    """A converter's source as (path, sha256, description) before anything loads it.

    A file is checked (`check_source_file`) and hashed; an in-memory object has no path and
    no hash, only its type's name.
    """
    path = source_path(source)
    if path is None:
        return None, None, describe_object(source)
    check_source_file(path, max_bytes=max_bytes)
    return path, sha256_file(path, max_bytes=max_bytes), f"file {path.name}"


def write_onnx(onx: Any, out_path: Path) -> list[str]:
    """Write the ONNX ModelProto `onx` to `out_path`; its output names, in graph order."""
    out_path.write_bytes(onx.SerializeToString())
    return [o.name for o in onx.graph.output]


def framework_main(argv: list[str] | None, framework: str) -> int:
    """A framework module's CLI: ``converters.api``'s, `--framework` defaulting to `framework`."""
    from converters.api import main as api_main

    args = list(sys.argv[1:] if argv is None else argv)
    return api_main([*args, "--framework", framework] if "--framework" not in args else args)


def normalize_sample(
    sample: Mapping[str, np.ndarray] | np.ndarray | None,
    inputs: Sequence[TensorSpec] | None,
    *,
    default_name: str = "input",
) -> Arrays | None:
    """Name a bare array after the first declared input (or ``default_name``)."""
    if sample is None:
        return None
    if isinstance(sample, np.ndarray):
        name = inputs[0].name if inputs else default_name
        arrays = {name: sample}
    elif isinstance(sample, Mapping):
        arrays = {str(k): np.asarray(v) for k, v in sample.items()}
    else:
        raise InvalidInput(
            f"sample_input is a {type(sample).__name__}",
            hint="pass a numpy array or a dict of input name -> numpy array",
        )
    if not arrays:
        raise InvalidInput("sample_input is empty")
    for name, array in arrays.items():
        check_tensor_name(name, where="sample_input")
        if array.ndim == 0 or array.shape[0] == 0:
            raise InvalidInput(
                f"sample_input {name!r} has shape {array.shape}",
                hint="give a batch: the first dimension is the batch and must not be empty",
            )
    if inputs:
        declared = [spec.name for spec in inputs]
        if list(arrays) != declared:
            raise InvalidInput(
                f"sample_input names {list(arrays)} differ from the declared inputs {declared}",
                hint="use the same names, in the same order",
            )
    return arrays


def arrays_from_specs(specs: Sequence[TensorSpec], *, batch: int, seed: int = 0) -> Arrays:
    """Random inputs for a signature: the batch dim gets ``batch``; other dims must be known."""
    rng = np.random.default_rng(seed)
    arrays: Arrays = {}
    for position, spec in enumerate(specs):
        dims = list(spec.shape)
        for axis, dim in enumerate(dims):
            if dim >= 0:
                continue
            if axis == 0:
                dims[0] = batch
            else:
                raise InvalidInput(
                    f"input {spec.name!r} has a dynamic dimension {axis} (shape {spec.shape})",
                    hint="pass sample_input with real data so its size is known",
                )
        if not dims:
            dims = [batch]
        arrays[spec.name] = random_array(spec.datatype, tuple(dims), rng, seed + position)
    return arrays


def random_array(datatype: str, shape: tuple[int, ...], rng: Any, seed: int) -> np.ndarray:
    dtype = KSERVE_TO_NUMPY.get(datatype)
    if dtype is None or datatype == "BYTES":
        raise InvalidInput(
            f"cannot generate inputs of datatype {datatype}",
            hint="pass sample_input with real data for this model",
        )
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 8, size=shape).astype(dtype)
    return rng.standard_normal(size=shape).astype(dtype)


def tile_batch(arrays: Arrays, batch: int) -> Arrays:
    """Repeat rows along the batch axis so every array has exactly ``batch`` rows."""
    out: Arrays = {}
    for name, array in arrays.items():
        reps = -(-batch // array.shape[0])
        out[name] = np.concatenate([array] * reps, axis=0)[:batch] if reps > 1 else array[:batch]
    return out


def specs_from_arrays(arrays: Arrays) -> list[TensorSpec]:
    specs = []
    for name, array in arrays.items():
        datatype = NUMPY_TO_KSERVE.get(array.dtype.name)
        if datatype is None:
            raise InvalidInput(f"sample_input {name!r} has unsupported dtype {array.dtype}")
        specs.append(TensorSpec(name=name, datatype=datatype, shape=(-1, *array.shape[1:])))
    return specs


def first_error_lines(exc: BaseException, *, limit: int = 600) -> str:
    """A third-party exception message, without colour codes, trimmed to what a user reads."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip() or type(exc).__name__
    if "## Exception summary" in text:  # torch.onnx's long report: keep the summary
        text = text.split("## Exception summary", 1)[1]
        text = text.split("(Refer to the full stack trace", 1)[0]
    text = " ".join(line.strip() for line in text.splitlines() if line.strip() != "⬆️")
    return text if len(text) <= limit else text[: limit - 1] + "…"
