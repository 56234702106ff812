"""Small real ONNX models built in code, shared by unit, integration and e2e tests.

Each maker writes ``path`` and returns it; the numbers are chosen so that a test can compute
the expected answer with numpy (see the ``expected_*`` helpers).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime we support


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _model(graph: onnx.GraphProto, producer: str = "lastmile-tests") -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.producer_name = producer
    model.producer_version = "1"
    return model


def affine_params(n_features: int, scale: float, bias: float) -> tuple[np.ndarray, np.ndarray]:
    a = np.full((n_features,), scale, dtype=np.float32)
    b = np.full((n_features,), bias, dtype=np.float32)
    return a, b


def make_affine(
    path: Path,
    n_features: int = 4,
    scale: float = 2.0,
    bias: float = 1.0,
    *,
    input_name: str = "x",
    output_name: str = "y",
    batch_dim: str | int = "batch",
    dtype: int = TensorProto.FLOAT,
) -> Path:
    """y = x * scale + bias, shape [batch, n_features]; ``batch_dim`` int = static batch."""
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    a, b = affine_params(n_features, scale, bias)
    inits = [
        numpy_helper.from_array(a.astype(np_dtype), "scale"),
        numpy_helper.from_array(b.astype(np_dtype), "bias"),
    ]
    nodes = [
        helper.make_node("Mul", [input_name, "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], [output_name]),
    ]
    graph = helper.make_graph(
        nodes,
        "affine",
        [helper.make_tensor_value_info(input_name, dtype, [batch_dim, n_features])],
        [helper.make_tensor_value_info(output_name, dtype, [batch_dim, n_features])],
        inits,
    )
    return _save(_model(graph), path)


def make_heavy_affine(
    path: Path,
    n_features: int = 4,
    scale: float = 2.0,
    bias: float = 0.0,
    *,
    width: int = 1024,
    depth: int = 32,
    output_name: str = "y",
) -> Path:
    """What ``make_affine`` computes, but only after ``depth`` matrix products of width x width
    per row whose result is added times zero: a model that is slow because it computes (about
    2 * depth * width^2 flop a row), not because its answers are held back."""
    rng = np.random.default_rng(7)
    a, b = affine_params(n_features, scale, bias)
    inits = [
        numpy_helper.from_array(a, "scale"),
        numpy_helper.from_array(b, "bias"),
        numpy_helper.from_array(rng.normal(size=(n_features, width)).astype(np.float32), "up"),
        numpy_helper.from_array(
            (rng.normal(size=(width, width)) / np.sqrt(width)).astype(np.float32), "mix"
        ),
        numpy_helper.from_array(np.zeros((width, n_features), np.float32), "nothing"),
    ]
    nodes = [helper.make_node("MatMul", ["x", "up"], ["h0"])]
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "mix"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]))
    nodes += [
        helper.make_node("MatMul", [f"h{depth}", "nothing"], ["zero"]),
        helper.make_node("Mul", ["x", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["affine"]),
        helper.make_node("Add", ["affine", "zero"], [output_name]),
    ]
    graph = helper.make_graph(
        nodes,
        "heavy_affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", n_features])],
        inits,
    )
    return _save(_model(graph), path)


def expected_affine(x: np.ndarray, scale: float = 2.0, bias: float = 1.0) -> np.ndarray:
    return (x * np.float32(scale) + np.float32(bias)).astype(x.dtype)


def classifier_weights(n_features: int, n_classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n_features, n_classes)).astype(np.float32)


def make_softmax_classifier(
    path: Path,
    n_features: int = 4,
    n_classes: int = 3,
    seed: int = 0,
    *,
    input_name: str = "x",
    output_name: str = "probabilities",
) -> Path:
    """probabilities = softmax(x @ W), W drawn from ``seed``; shape [batch, n_classes]."""
    weights = classifier_weights(n_features, n_classes, seed)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [input_name, "weights"], ["logits"]),
            helper.make_node("Softmax", ["logits"], [output_name], axis=-1),
        ],
        "classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", n_classes])],
        [numpy_helper.from_array(weights, "weights")],
    )
    return _save(_model(graph), path)


def expected_softmax(x: np.ndarray, n_classes: int = 3, seed: int = 0) -> np.ndarray:
    logits = x.astype(np.float32) @ classifier_weights(x.shape[-1], n_classes, seed)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def make_add(
    path: Path,
    n_features: int = 4,
    *,
    input_names: tuple[str, str] = ("a", "b"),
    output_name: str = "sum",
    batch_dim: str | int = "batch",
) -> Path:
    """sum = a + b, two inputs of shape [batch, n_features] (the fan-in of a diamond)."""
    shape = [batch_dim, n_features]
    graph = helper.make_graph(
        [helper.make_node("Add", list(input_names), [output_name])],
        "add",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in input_names],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, shape)],
    )
    return _save(_model(graph), path)


def make_argmax(
    path: Path, n_classes: int = 3, *, input_name: str = "probabilities", output_name: str = "label"
) -> Path:
    """label = argmax(probabilities, axis=1), INT64 of shape [batch] (rank-1 output)."""
    graph = helper.make_graph(
        [helper.make_node("ArgMax", [input_name], [output_name], axis=1, keepdims=0)],
        "argmax",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", n_classes])],
        [helper.make_tensor_value_info(output_name, TensorProto.INT64, ["batch"])],
    )
    return _save(_model(graph), path)


def make_initializer_as_input(path: Path, n_features: int = 4) -> Path:
    """Old-style export (IR 3): the weight ``w`` is listed among the graph inputs too."""
    w = numpy_helper.from_array(np.ones((n_features,), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"])],
        "legacy",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_features]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [n_features]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_features])],
        [w],
    )
    return _save(_model(graph), path)


def make_external_data(path: Path, location: str, n_features: int = 4) -> Path:
    """y = x * w where ``w`` lives in external data at ``location`` (not validated here)."""
    w = numpy_helper.from_array(np.ones((n_features,), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * n_features))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"])],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_features])],
        [w],
    )
    model = _model(graph)
    model.ir_version = IR_VERSION
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())  # no checker: the location may be hostile
    return path


def make_expand_to_shape(path: Path) -> Path:
    """y = Expand(x, shape): x FP32 [1, 1], shape INT64 [2] given by the request, so the output
    size is known only at run time (shape inference cannot bound it; a memory limit must)."""
    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["y"])],
        "expand_to_shape",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", "cols"])],
    )
    return _save(_model(graph), path)


def make_partly_failing(
    path: Path, n_features: int = 4, scale: float = 3.0, limit: int = 8
) -> Path:
    """y = x * scale for rows whose first feature is in [-limit, limit); onnxruntime fails the
    whole request otherwise (a Gather index out of bounds): a model that errors on part of its
    inputs, as a bad candidate does."""
    a = np.full((n_features,), scale, dtype=np.float32)
    inits = [
        numpy_helper.from_array(a, "scale"),
        numpy_helper.from_array(np.zeros((limit,), np.float32), "table"),
        numpy_helper.from_array(np.array([0], np.int64), "first"),
        numpy_helper.from_array(np.array([1], np.int64), "second"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Slice", ["x", "first", "second", "axis1"], ["col"]),
        helper.make_node("Cast", ["col"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["zeros"], axis=0),
        helper.make_node("Mul", ["x", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "zeros"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "partly_failing",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_features])],
        inits,
    )
    return _save(_model(graph), path)
