"""Refuse ONNX graphs that one request could use to exhaust the server's memory.

A graph that expands a 1×1 input to 32768×32768 float32 passes every structural check, and
the first 12-byte request then costs 4 GiB inside Triton. Shape inference with data
propagation, run with the batch dimension set to the largest batch Triton will form, tells
the size of every output and intermediate tensor whose shape does not depend on the request's
values; any over ``max_tensor_bytes`` is refused, naming the tensor, its shape, the bytes it
needs and how to change the limit. Tensors with a dimension that stays unknown are skipped,
never guessed: this check catches sizes fixed by the graph, not sizes chosen by the data.

Called at import (``manager.services.models.register_onnx``) and before a deploy on the
stored file (``check_deployable``), because the limit or the model's max batch size may have
changed in between.

Run alone: ``python -m converters.onnx_limits model.onnx --max-batch-size 64``.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto

from converters.onnx_external import ELEMENT_BITS, PROTOBUF_LIMIT, check_external_data
from converters.onnx_import import load_model_file
from manager.errors import InvalidInput, InvalidModelFile

log = logging.getLogger(__name__)

# Initializers with more elements than this keep their dims and type but not their values in
# the copy given to shape inference: values matter only for shape tensors, which are small.
_KEEP_VALUES_UP_TO = 1024


@dataclass(frozen=True)
class TensorSize:
    """A tensor whose size shape inference fixed, at the batch size checked."""

    name: str
    role: str  # "output" or "intermediate"
    shape: tuple[int, ...]
    datatype: str
    nbytes: int


def human_bytes(n: int) -> str:
    """``4294967296`` → ``4.0 GiB``; below 1 KiB, plain bytes."""
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            break
    return f"{value:.1f} {unit}"


def _has_static_first_dim(value: onnx.ValueInfoProto) -> bool:
    """The importer's rule: a first dim without a positive value is the batch dimension."""
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not tensor.HasField("shape"):
        return True  # unknown rank: not batched (the importer refuses such models anyway)
    dims = tensor.shape.dim
    return not dims or (dims[0].HasField("dim_value") and dims[0].dim_value > 0)


def _runtime_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in graph.initializer}
    return [v for v in graph.input if v.name not in initializers]


def _is_batched(graph: onnx.GraphProto) -> bool:
    inputs = _runtime_inputs(graph)
    return bool(inputs) and not any(_has_static_first_dim(v) for v in (*inputs, *graph.output))


def _stripped(tensor: TensorProto) -> TensorProto:
    """``tensor`` for shape inference: dims and type always, values only when small."""
    if math.prod(tensor.dims) <= _KEEP_VALUES_UP_TO:
        return tensor
    bare = TensorProto(name=tensor.name, dims=tensor.dims, data_type=tensor.data_type)
    bare.data_location = TensorProto.EXTERNAL  # inference treats its values as unknown
    bare.external_data.add(key="location", value="values-not-needed")
    return bare


def _clear_declared_shapes(graph: onnx.GraphProto) -> None:
    """Forget shapes the exporter declared for outputs and intermediates, so a graph cannot
    hide a huge tensor behind a small declared shape; inference recomputes them."""
    del graph.value_info[:]
    for value in graph.output:
        if value.type.HasField("tensor_type"):
            value.type.tensor_type.ClearField("shape")
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                _clear_declared_shapes(attr.g)
            for sub in attr.graphs:
                _clear_declared_shapes(sub)


def _skeleton(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy for shape inference, without large weights, with the batch dimension set."""
    graph = model.graph
    skeleton = onnx.ModelProto(ir_version=model.ir_version)
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    copy = skeleton.graph
    copy.name = graph.name
    copy.node.extend(graph.node)
    copy.input.extend(graph.input)
    copy.output.extend(graph.output)
    copy.initializer.extend(_stripped(t) for t in graph.initializer)
    copy.sparse_initializer.extend(graph.sparse_initializer)
    _clear_declared_shapes(copy)
    if batch > 0:
        for value in _runtime_inputs(copy):
            dim = value.type.tensor_type.shape.dim[0]
            dim.Clear()
            dim.dim_value = batch
    return skeleton


def _infer(skeleton: onnx.ModelProto, where: str) -> onnx.ModelProto | None:
    if skeleton.ByteSize() > PROTOBUF_LIMIT:
        log.warning("%s: tensor sizes not checked: the graph alone is over 2 GiB", where)
        return None
    try:
        return onnx.shape_inference.infer_shapes(skeleton, strict_mode=False, data_prop=True)
    except Exception as exc:  # a C++-bound InferenceError, or a bug in data propagation
        log.warning(
            "%s: shape inference with data propagation failed (%s); retrying without",
            where,
            exc,
        )
        try:
            return onnx.shape_inference.infer_shapes(skeleton, strict_mode=False)
        except Exception as again:
            raise InvalidModelFile(
                f"{where}: fails ONNX shape inference: {again}",
                hint="the graph's declared types or shapes disagree with its operators",
            ) from again


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _size(value: onnx.ValueInfoProto, role: str) -> TensorSize | None:
    """The tensor's byte size when its type and every dim are known, else None."""
    if not value.type.HasField("tensor_type"):
        return None
    tensor = value.type.tensor_type
    bits = ELEMENT_BITS.get(tensor.elem_type)
    if bits is None or not tensor.HasField("shape"):
        return None
    shape = []
    for dim in tensor.shape.dim:
        if not dim.HasField("dim_value") or dim.dim_value < 0:
            return None
        shape.append(dim.dim_value)
    return TensorSize(
        name=value.name,
        role=role,
        shape=tuple(shape),
        datatype=TensorProto.DataType.Name(tensor.elem_type),
        nbytes=(math.prod(shape) * bits + 7) // 8,
    )


def batch_size_checked(model: onnx.ModelProto, max_batch_size: int) -> int:
    """The batch size the inputs' first dim is set to: ``max_batch_size`` when the model is
    batched (the first dim of every input and output is dynamic, the importer's rule), else
    0 (inputs as declared)."""
    return max_batch_size if max_batch_size > 0 and _is_batched(model.graph) else 0


def tensor_sizes(model: onnx.ModelProto, *, max_batch_size: int, where: str) -> list[TensorSize]:
    """Every output and intermediate tensor of known size, largest first, at
    ``batch_size_checked(model, max_batch_size)``."""
    batch = batch_size_checked(model, max_batch_size)
    inferred = _infer(_skeleton(model, batch), where)
    if inferred is None:
        return []
    found: dict[str, TensorSize] = {}
    top_outputs = {v.name for v in inferred.graph.output}
    for graph in _graphs(inferred.graph):
        values = [*graph.output, *graph.value_info]
        for value in values:
            role = "output" if value.name in top_outputs else "intermediate"
            size = _size(value, role)
            if size is not None and (
                value.name not in found or size.nbytes > found[value.name].nbytes
            ):
                found[value.name] = size
    return sorted(found.values(), key=lambda s: s.nbytes, reverse=True)


def check_tensor_sizes(
    model: Path | onnx.ModelProto,
    *,
    max_batch_size: int,
    max_tensor_bytes: int,
    where: str | None = None,
) -> None:
    """Refuse a graph with an output or intermediate tensor over ``max_tensor_bytes`` at
    batch size ``max_batch_size`` (the model's effective max batch size; 0: not batched).

    ``model`` is a file (read without its external data; weights are not needed) or a
    parsed model (not modified). ``where`` names the model in the message (default: the
    file's name). Raises ``InvalidModelFile`` (HTTP 422).
    """
    if max_tensor_bytes <= 0:
        raise InvalidInput(f"max_tensor_bytes must be positive, not {max_tensor_bytes}")
    if max_batch_size < 0:
        raise InvalidInput(f"max_batch_size must be >= 0, not {max_batch_size}")
    if isinstance(model, Path):
        where = where or model.name
        model = load_model_file(model)
    where = where or "the model"
    batch = batch_size_checked(model, max_batch_size)
    sizes = tensor_sizes(model, max_batch_size=max_batch_size, where=where)
    over = [s for s in sizes if s.nbytes > max_tensor_bytes]
    if not over:
        log.debug(
            "%s: largest tensor %s at batch %d",
            where,
            human_bytes(sizes[0].nbytes) if sizes else "unknown",
            batch,
        )
        return
    worst = over[0]
    others = f" (and {len(over) - 1} more over the limit)" if len(over) > 1 else ""
    lower = (
        "lower the model's max batch size (serving option max_batch_size, or "
        "LASTMILE_MAX_BATCH_SIZE) or "
        if batch
        else ""
    )
    raise InvalidModelFile(
        f"{where}: {worst.role} tensor {worst.name!r} of shape {list(worst.shape)} "
        f"({worst.datatype}) would need {human_bytes(worst.nbytes)} ({worst.nbytes} bytes) "
        f"{f'at max batch size {batch}' if batch else 'per request'}, over the limit of "
        f"{human_bytes(max_tensor_bytes)} per tensor{others}",
        hint=f"fix the export if the size is a mistake; else {lower}raise "
        "LASTMILE_MAX_TENSOR_BYTES (the largest tensor a model may produce)",
    )


def check_deployable(
    path: Path,
    *,
    max_batch_size: int,
    max_tensor_bytes: int,
    where: str | None = None,
) -> None:
    """Everything a deploy must re-check on a stored model file before Triton loads it.

    External data is validated against the stored file's folder (nothing may point outside
    it, through a link, or at ``model.py`` / ``config.pbtxt`` / ``model.onnx``), and then
    refused outright: the import embeds external data and a deploy copies one file per
    version, so a stored file that still references another file would read whatever sits
    next to it in Triton's version folder. Then the tensor sizes at ``max_batch_size``.
    """
    path = Path(path)
    where = where or path.name
    model = load_model_file(path)
    try:
        locations = check_external_data(path, model, max_bytes=PROTOBUF_LIMIT)
    except InvalidModelFile as exc:
        raise InvalidModelFile(f"{where}: {exc.message}", hint=exc.hint) from exc
    if locations:
        raise InvalidModelFile(
            f"{where}: the stored model still reads external data from "
            f"{', '.join(map(repr, locations))}; a deploy copies only the model file",
            hint="import the model again: the import embeds external data in the stored file",
        )
    check_tensor_sizes(
        model, max_batch_size=max_batch_size, max_tensor_bytes=max_tensor_bytes, where=where
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m converters.onnx_limits",
        description="List the largest tensors of an ONNX graph at a batch size; exit 2 when "
        "one is over the limit.",
    )
    parser.add_argument("path", type=Path)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-tensor-bytes", type=int, default=1024**3)
    args = parser.parse_args(argv)
    try:
        model = load_model_file(args.path)
        for size in tensor_sizes(model, max_batch_size=args.max_batch_size, where=args.path.name)[
            :10
        ]:
            print(f"{human_bytes(size.nbytes):>12}  {size.role:12s} {size.name} {list(size.shape)}")
        check_tensor_sizes(
            model,
            max_batch_size=args.max_batch_size,
            max_tensor_bytes=args.max_tensor_bytes,
            where=args.path.name,
        )
    except InvalidInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
