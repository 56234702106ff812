"""Read what Triton needs to know from an ONNX file, and refuse files that would hurt us.

Uploads are untrusted: the size is checked before the file is read, the protobuf is parsed
without following external data, and every external-data location must be a plain file
inside the model's folder (DESIGN §5: no ``..``, absolute path or symbolic link), never a name
Lastmile writes into a Triton version folder (``model.py``, ``config.pbtxt``, ``model.onnx``)
— onnxruntime would otherwise read any file the server can see. External data is embedded
into the stored model at import (``load_self_contained``; the rules live in
``converters.onnx_external``), so a stored version is one file.
Errors name the file and say what is wrong, because the person reading them has to fix the
export, not our code.

Run alone: ``python -m converters.onnx_import model.onnx`` prints the signature as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from converters.onnx_external import (
    PROTOBUF_LIMIT,
    check_external_data,
    embed_external_data,
)
from manager.domain import Signature, TensorSpec
from manager.errors import InvalidInput, InvalidModelFile
from manager.names import check_tensor_name

log = logging.getLogger(__name__)

# ONNX element type -> KServe v2 datatype. Anything else (complex, float8, int4, ...) has no
# Triton datatype and is refused.
ONNX_TO_KSERVE: dict[int, str] = {
    TensorProto.FLOAT: "FP32",
    TensorProto.DOUBLE: "FP64",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.INT8: "INT8",
    TensorProto.INT16: "INT16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.UINT8: "UINT8",
    TensorProto.UINT16: "UINT16",
    TensorProto.UINT32: "UINT32",
    TensorProto.UINT64: "UINT64",
    TensorProto.BOOL: "BOOL",
    TensorProto.STRING: "BYTES",
}

_STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}


@dataclass(frozen=True)
class OnnxInfo:
    """What the registry stores about an imported ONNX file."""

    signature: Signature
    opset: int
    ir_version: int
    producer: str
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "signature": self.signature.to_dict(),
            "opset": self.opset,
            "ir_version": self.ir_version,
            "producer": self.producer,
            "sha256": self.sha256,
        }


def _refuse(path: Path, problem: str, hint: str | None = None) -> InvalidModelFile:
    return InvalidModelFile(f"{path.name}: {problem}", hint=hint)


def _read_limited(path: Path, max_bytes: int) -> bytes:
    try:
        info = os.stat(path)
    except FileNotFoundError as exc:
        raise _refuse(path, "file does not exist") from exc
    except OSError as exc:
        raise _refuse(path, f"cannot be read ({exc.strerror})") from exc
    if not stat.S_ISREG(info.st_mode):
        raise _refuse(path, "is not a regular file")
    if info.st_size > max_bytes:
        raise _refuse(
            path,
            f"is {info.st_size} bytes, over the limit of {max_bytes} bytes",
            hint="raise LASTMILE_MAX_UPLOAD_BYTES or store large weights as ONNX external data",
        )
    if info.st_size == 0:
        raise _refuse(path, "is empty")
    with open(path, "rb") as handle:
        data = handle.read(info.st_size + 1)  # never more than the size checked above
    if len(data) > info.st_size:  # grew between stat and read
        raise _refuse(path, "changed while it was read", hint="import it again once written")
    return data


def load_self_contained(path: Path, *, max_bytes: int) -> tuple[onnx.ModelProto, list[str]]:
    """The model at ``path`` with its external data read into it, and the locations read
    (empty: the file was self-contained and is returned as decoded).

    Lastmile stores and deploys one file per model version, so external data is embedded at
    import: onnxruntime in Triton never opens a file next to the model, and the stored model
    cannot lose its weights. See ``converters.onnx_external.embed_external_data``.
    """
    path = Path(path)
    model = _decode(path, _read_limited(path, max_bytes))
    return model, embed_external_data(path, model, max_bytes=max_bytes)


def load_model_file(path: Path, *, max_bytes: int = PROTOBUF_LIMIT) -> onnx.ModelProto:
    """Read and decode one ONNX file (size-checked), leaving external data unread."""
    path = Path(path)
    return _decode(path, _read_limited(path, max_bytes))


def _tensor_spec(path: Path, value: onnx.ValueInfoProto, role: str) -> TensorSpec:
    try:
        check_tensor_name(value.name, where=f"{path.name} ({role})")
    except InvalidInput as exc:
        raise InvalidModelFile(f"{path.name}: {exc.message}", hint=exc.hint) from exc
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        hint = None
        if kind in ("sequence_type", "map_type"):
            hint = "export plain tensors (for scikit-learn classifiers: options zipmap=False)"
        raise _refuse(path, f"{role} {value.name!r} is a {kind or 'untyped value'}", hint=hint)
    tensor = value.type.tensor_type
    datatype = ONNX_TO_KSERVE.get(tensor.elem_type)
    if datatype is None:
        type_name = TensorProto.DataType.Name(tensor.elem_type) if tensor.elem_type else "unset"
        raise _refuse(
            path,
            f"{role} {value.name!r} has element type {type_name}, which Triton cannot serve",
            hint="supported: " + ", ".join(sorted(set(ONNX_TO_KSERVE.values()))),
        )
    if not tensor.HasField("shape"):
        raise _refuse(
            path,
            f"{role} {value.name!r} has an unknown rank",
            hint="declare its shape when exporting (dynamic dims may stay named)",
        )
    shape = tuple(
        dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else -1
        for dim in tensor.shape.dim
    )
    return TensorSpec(name=value.name, datatype=datatype, shape=shape)


def _opset(model: onnx.ModelProto) -> int:
    return max(
        (op.version for op in model.opset_import if op.domain in ("", "ai.onnx")),
        default=0,
    )


def _decode(path: Path, data: bytes) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as exc:
        raise _refuse(
            path,
            "is not an ONNX model: the protobuf cannot be decoded (truncated or not ONNX)",
            hint="upload the complete .onnx file written by your exporter",
        ) from exc
    if not model.HasField("graph") or model.ir_version <= 0:
        raise _refuse(path, "is not an ONNX model: it has no graph or no IR version")
    if not model.graph.node:
        raise _refuse(path, "has an empty graph (no operators)")
    return model


def _check_and_infer(
    path: Path, model: onnx.ModelProto, *, has_external_data: bool
) -> onnx.ModelProto:
    try:
        # The in-memory checker resolves external data against the working directory; by
        # path it uses the model's folder (locations were already confined to it).
        onnx.checker.check_model(str(path) if has_external_data else model)
    except Exception as exc:  # ValidationError, or other C++-bound types for odd protos
        raise _refuse(path, f"fails the ONNX checker: {exc}") from exc
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:  # onnx raises InferenceError, a C++-bound class
        raise _refuse(
            path,
            f"fails ONNX shape inference: {exc}",
            hint="the graph's declared types or shapes disagree with its operators",
        ) from exc


def _signature(path: Path, model: onnx.ModelProto) -> Signature:
    graph = model.graph
    initializers = {t.name for t in graph.initializer} | {
        t.values.name for t in graph.sparse_initializer
    }
    inferred = {v.name: v for v in graph.value_info}
    inputs = tuple(
        _tensor_spec(path, value, "input")
        for value in graph.input
        if value.name not in initializers
    )
    outputs = []
    for value in graph.output:
        if not value.type.HasField("tensor_type") and value.name in inferred:
            value = inferred[value.name]
        outputs.append(_tensor_spec(path, value, "output"))
    if not inputs:
        raise _refuse(path, "has no inputs (every graph input is an initializer)")
    if not outputs:
        raise _refuse(path, "has no outputs")
    names = [t.name for t in inputs]
    for spec in outputs:
        if spec.name in names:
            raise _refuse(
                path,
                f"tensor {spec.name!r} is both an input and an output",
                hint="add an Identity node so the output has its own name",
            )
    tensors = (*inputs, *outputs)
    batched = all(len(t.shape) >= 1 and t.shape[0] == -1 for t in tensors)
    return Signature(inputs=inputs, outputs=tuple(outputs), batched=batched)


def inspect_onnx(path: Path, *, max_bytes: int) -> OnnxInfo:
    """Validate an ONNX file and extract its signature; never reads external data."""
    path = Path(path)
    data = _read_limited(path, max_bytes)
    sha256 = hashlib.sha256(data).hexdigest()
    model = _decode(path, data)
    del data
    locations = check_external_data(path, model, max_bytes=max_bytes)
    custom = {op.domain for op in model.opset_import} - _STANDARD_DOMAINS
    model = _check_and_infer(path, model, has_external_data=bool(locations))
    signature = _signature(path, model)
    log.info(
        "inspected %s: %d inputs, %d outputs, batched=%s, external data %s, custom domains %s",
        path.name,
        len(signature.inputs),
        len(signature.outputs),
        signature.batched,
        locations or "none",
        sorted(custom) or "none",
    )
    return OnnxInfo(
        signature=signature,
        opset=_opset(model),
        ir_version=int(model.ir_version),
        producer=" ".join(p for p in (model.producer_name, model.producer_version) if p),
        sha256=sha256,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m converters.onnx_import",
        description="Validate an ONNX model and print its signature as JSON.",
    )
    parser.add_argument("path", type=Path)
    parser.add_argument(
        "--max-bytes", type=int, default=512 * 1024 * 1024, help="largest file accepted"
    )
    args = parser.parse_args(argv)
    try:
        info = inspect_onnx(args.path, max_bytes=args.max_bytes)
    except InvalidInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
