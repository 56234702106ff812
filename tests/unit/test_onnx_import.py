"""ONNX import: signatures of real models, and every refusal says which file and why."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from converters import onnx_import
from converters.onnx_import import inspect_onnx
from manager.domain import TensorSpec
from manager.errors import InvalidModelFile
from tests.onnx_models import (
    IR_VERSION,
    OPSET,
    make_affine,
    make_argmax,
    make_external_data,
    make_initializer_as_input,
    make_softmax_classifier,
)

LIMIT = 10 * 1024 * 1024


def _save_unchecked(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = IR_VERSION
    path.write_bytes(model.SerializeToString())
    return path


def _identity(path: Path, elem_type: int, shape: list[str | int | None] | None = None) -> Path:
    shape = ["batch", 2] if shape is None else shape
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem_type, shape)],
        [helper.make_tensor_value_info("y", elem_type, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return _save_unchecked(model, path)


def refusal(path: Path, max_bytes: int = LIMIT) -> str:
    with pytest.raises(InvalidModelFile) as info:
        inspect_onnx(path, max_bytes=max_bytes)
    message = str(info.value)
    assert path.name in message
    return message


def test_affine_model_has_a_batched_signature(tmp_path: Path) -> None:
    path = make_affine(tmp_path / "scaler.onnx", n_features=4)
    info = inspect_onnx(path, max_bytes=LIMIT)
    assert info.signature.inputs == (TensorSpec("x", "FP32", (-1, 4)),)
    assert info.signature.outputs == (TensorSpec("y", "FP32", (-1, 4)),)
    assert info.signature.batched
    assert info.opset == OPSET
    assert info.ir_version == IR_VERSION
    assert info.producer == "lastmile-tests 1"
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_classifier_signature(tmp_path: Path) -> None:
    path = make_softmax_classifier(
        tmp_path / "clf.onnx", 5, 3, 7, input_name="features", output_name="probs"
    )
    signature = inspect_onnx(path, max_bytes=LIMIT).signature
    assert signature.inputs == (TensorSpec("features", "FP32", (-1, 5)),)
    assert signature.outputs == (TensorSpec("probs", "FP32", (-1, 3)),)
    assert signature.batched


def test_static_first_dim_is_not_batched(tmp_path: Path) -> None:
    path = make_affine(tmp_path / "fixed.onnx", batch_dim=1)
    signature = inspect_onnx(path, max_bytes=LIMIT).signature
    assert signature.inputs[0].shape == (1, 4)
    assert not signature.batched


def test_rank_one_output_is_batched(tmp_path: Path) -> None:
    signature = inspect_onnx(make_argmax(tmp_path / "argmax.onnx"), max_bytes=LIMIT).signature
    assert signature.outputs == (TensorSpec("label", "INT64", (-1,)),)
    assert signature.batched


def test_scalar_output_is_not_batched(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0)],
        "sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    path = _save_unchecked(model, tmp_path / "sum.onnx")
    signature = inspect_onnx(path, max_bytes=LIMIT).signature
    assert signature.outputs == (TensorSpec("total", "FP32", ()),)
    assert not signature.batched


def test_unnamed_and_missing_dims_become_dynamic(tmp_path: Path) -> None:
    path = _identity(tmp_path / "dims.onnx", TensorProto.FLOAT, [None, "seq", 3])
    signature = inspect_onnx(path, max_bytes=LIMIT).signature
    assert signature.inputs[0].shape == (-1, -1, 3)
    assert signature.batched


def test_initializer_listed_as_graph_input_is_not_an_input(tmp_path: Path) -> None:
    signature = inspect_onnx(
        make_initializer_as_input(tmp_path / "legacy.onnx"), max_bytes=LIMIT
    ).signature
    assert [t.name for t in signature.inputs] == ["x"]


def test_shape_inference_fills_an_output_shape(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    path = _save_unchecked(model, tmp_path / "relu.onnx")
    signature = inspect_onnx(path, max_bytes=LIMIT).signature
    assert signature.outputs == (TensorSpec("y", "FP32", (-1, 4)),)


@pytest.mark.parametrize(
    ("elem_type", "datatype"),
    [
        (TensorProto.FLOAT, "FP32"),
        (TensorProto.DOUBLE, "FP64"),
        (TensorProto.FLOAT16, "FP16"),
        (TensorProto.INT64, "INT64"),
        (TensorProto.INT32, "INT32"),
        (TensorProto.INT8, "INT8"),
        (TensorProto.UINT8, "UINT8"),
        (TensorProto.BOOL, "BOOL"),
        (TensorProto.STRING, "BYTES"),
    ],
)
def test_element_types_map_to_kserve_datatypes(
    tmp_path: Path, elem_type: int, datatype: str
) -> None:
    signature = inspect_onnx(_identity(tmp_path / "t.onnx", elem_type), max_bytes=LIMIT).signature
    assert signature.inputs[0].datatype == datatype
    assert signature.outputs[0].datatype == datatype


def test_unsupported_element_type_is_refused(tmp_path: Path) -> None:
    message = refusal(_identity(tmp_path / "complex.onnx", TensorProto.COMPLEX64))
    assert "'x'" in message and "COMPLEX64" in message and "supported" in message


def test_sequence_output_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x"], ["seq"])],
        "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    message = refusal(_save_unchecked(model, tmp_path / "seq.onnx"))
    assert "'seq'" in message and "sequence" in message and "zipmap" in message


def test_file_over_the_limit_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_affine(tmp_path / "big.onnx")

    def no_open(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was opened")

    monkeypatch.setattr(onnx_import, "open", no_open, raising=False)
    message = refusal(path, max_bytes=10)
    assert f"{path.stat().st_size} bytes" in message and "limit of 10 bytes" in message


def test_missing_and_empty_files_are_refused(tmp_path: Path) -> None:
    assert "does not exist" in refusal(tmp_path / "missing.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert "is empty" in refusal(tmp_path / "empty.onnx")
    (tmp_path / "folder.onnx").mkdir()
    assert "not a regular file" in refusal(tmp_path / "folder.onnx")


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    data = make_affine(tmp_path / "whole.onnx").read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    message = refusal(path)
    assert "cannot be decoded" in message and "truncated" in message


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"this is not a model\n" * 10)
    assert "is not an ONNX model" in refusal(path)


def test_protobuf_without_a_graph_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nograph.onnx"
    path.write_bytes(onnx.ModelProto(ir_version=8, producer_name="x").SerializeToString())
    assert "no graph" in refusal(path)


def test_empty_graph_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [], "empty", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], []
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    assert "empty graph" in refusal(_save_unchecked(model, tmp_path / "empty_graph.onnx"))


def test_checker_failure_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "undefined"], ["y"])],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    message = refusal(_save_unchecked(model, tmp_path / "broken.onnx"))
    assert "ONNX checker" in message and "undefined" in message


def test_shape_inference_failure_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "i"], ["y"])],
        "types",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("i", TensorProto.INT64, ["batch", 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    message = refusal(_save_unchecked(model, tmp_path / "types.onnx"))
    assert "shape inference" in message and "int64" in message


def test_bad_tensor_name_is_refused(tmp_path: Path) -> None:
    path = make_affine(tmp_path / "names.onnx", input_name="x input")
    message = refusal(path)
    assert "invalid tensor name 'x input'" in message


def test_tensor_that_is_input_and_output_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "echo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    message = refusal(_save_unchecked(model, tmp_path / "echo.onnx"))
    assert "'x' is both an input and an output" in message


def test_external_data_inside_the_folder_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(np.ones(4, np.float32).tobytes())
    path = make_external_data(tmp_path / "ext.onnx", "weights.bin")
    signature = inspect_onnx(path, max_bytes=LIMIT).signature
    assert signature.inputs == (TensorSpec("x", "FP32", (-1, 4)),)


def test_external_data_with_dotdot_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    path = make_external_data(tmp_path / "model" / "ext.onnx", "../secret.bin")
    message = refusal(path)
    assert "'w'" in message and "'../secret.bin'" in message and "leaves" in message


def test_external_data_with_an_absolute_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    path = make_external_data(tmp_path / "model" / "ext.onnx", str(tmp_path / "secret.bin"))
    assert "absolute path" in refusal(path)
    windows = make_external_data(tmp_path / "model" / "win.onnx", "C:\\secret.bin")
    assert "absolute path" in refusal(windows)


def test_external_data_through_a_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    folder = tmp_path / "model"
    folder.mkdir()
    os.symlink(tmp_path / "secret.bin", folder / "weights.bin")
    message = refusal(make_external_data(folder / "ext.onnx", "weights.bin"))
    assert "outside the model's folder" in message


def test_missing_external_data_is_refused(tmp_path: Path) -> None:
    message = refusal(make_external_data(tmp_path / "ext.onnx", "nowhere.bin"))
    assert "'nowhere.bin'" in message and "does not exist" in message


def test_command_line_prints_the_info_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_affine(tmp_path / "scaler.onnx")
    assert onnx_import.main([str(path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["signature"]["batched"] is True
    assert data["signature"]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert data["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_command_line_reports_a_refusal_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"garbage")
    assert onnx_import.main([str(path)]) == 2
    assert "garbage.onnx" in capsys.readouterr().err
