"""ONNX graphs for the resource-limit and external-data checks, built in code: a 4 GiB
Expand from a 1×1 input, a per-row expansion that grows with the batch, a model whose weights
live in an external data file at a given location (not validated here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.onnx_models import IR_VERSION, OPSET


def save_graph(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def int64_tensor(name: str, values: list[int]) -> TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def make_expand_bomb(path: Path, *, hide_in_intermediate: bool = False) -> Path:
    """A 1×1 float input expanded to 32768×32768 (4 GiB); optionally summed back to a
    scalar so that only an intermediate tensor is huge."""
    nodes = [helper.make_node("Expand", ["x", "shape"], ["big" if hide_in_intermediate else "y"])]
    out_shape: list[int] = [32768, 32768]
    if hide_in_intermediate:
        nodes.append(helper.make_node("ReduceSum", ["big"], ["y"], keepdims=0))
        out_shape = []
    graph = helper.make_graph(
        nodes,
        "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [int64_tensor("shape", [32768, 32768])],
    )
    return save_graph(graph, path)


def make_per_row_expansion(path: Path, rows: int = 1000) -> Path:
    """x [batch, 4] → an intermediate [batch, rows, 4] (16 KB a row at rows=1000) → sum
    [batch, 4]: modest per row, proportional to the batch size."""
    nodes = [
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Gather", ["x_shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axis0"], ["n1"]),
        helper.make_node("Concat", ["n1", "tail"], ["target"], axis=0),
        helper.make_node("Unsqueeze", ["x", "axis1"], ["x3"]),
        helper.make_node("Expand", ["x3", "target"], ["expanded"]),
        helper.make_node("ReduceSum", ["expanded", "axis1"], ["y"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "per_row",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [
            numpy_helper.from_array(np.array(0, np.int64), "zero"),
            int64_tensor("axis0", [0]),
            int64_tensor("axis1", [1]),
            int64_tensor("tail", [rows, 4]),
        ],
    )
    return save_graph(graph, path)


def make_external(path: Path, location: str, *, n: int = 4, offset: int = 0) -> Path:
    """y = x * w, where the n float32 values of ``w`` live in ``location``."""
    w = numpy_helper.from_array(np.arange(1, n + 1, dtype=np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(4 * n))):
        w.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"])],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def write_weights(path: Path, n: int = 4, prefix: bytes = b"") -> Path:
    """The float32 values 1..n, after ``prefix``, as an external data file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(prefix + np.arange(1, n + 1, dtype=np.float32).tobytes())
    return path
