"""The generated model.py, run in-process against a stand-in for Triton's ``pb_utils``.

The real Python backend is exercised by the e2e tests; here the batching, splitting, casting
and per-request errors are checked quickly with real onnxruntime sessions.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from manager.repository.config import model_config
from manager.repository.python_model import python_model_source
from manager.triton.client import config_to_text
from tests.onnx_models import OPSET, expected_affine, make_affine

_NUMPY_TYPES = {
    "TYPE_BOOL": bool,
    "TYPE_UINT8": np.uint8,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}


class FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class FakeError:
    def __init__(self, message: str) -> None:
        self._message = message

    def message(self) -> str:
        return self._message


class FakeResponse:
    def __init__(self, output_tensors: list[FakeTensor], error: FakeError | None = None) -> None:
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors}
        self.error = error


class FakeRequest:
    def __init__(self, **inputs: np.ndarray) -> None:
        self.inputs = inputs


def _fake_pb_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = FakeTensor  # type: ignore[attr-defined]
    module.TritonError = FakeError  # type: ignore[attr-defined]
    module.InferenceResponse = FakeResponse  # type: ignore[attr-defined]
    module.triton_string_to_numpy = _NUMPY_TYPES.__getitem__  # type: ignore[attr-defined]

    def get_input_tensor_by_name(request: FakeRequest, name: str) -> FakeTensor | None:
        array = request.inputs.get(name)
        return None if array is None else FakeTensor(name, array)

    module.get_input_tensor_by_name = get_input_tensor_by_name  # type: ignore[attr-defined]
    return module


def _config_json(config: Any) -> str:
    from google.protobuf import json_format

    return json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True))


def load_model(
    monkeypatch: pytest.MonkeyPatch, folder: Path, onnx_file: Path, *, batched: bool = True
) -> Any:
    """Lay out ``folder/1/model.onnx`` like Triton does and initialize model.py on it."""
    from converters.onnx_import import inspect_onnx

    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").write_bytes(onnx_file.read_bytes())
    signature = inspect_onnx(onnx_file, max_bytes=1 << 24).signature
    config = model_config(
        triton_name="ws.model",
        signature=signature,
        profile="cpu",
        max_batch_size=8 if batched else 0,
        versions=[1],
    )
    assert config_to_text(config)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    namespace: dict[str, Any] = {}
    exec(compile(python_model_source(), "model.py", "exec"), namespace)
    model = namespace["TritonPythonModel"]()
    model.initialize(
        {
            "model_config": _config_json(config),
            "model_repository": str(folder),
            "model_version": "1",
        }
    )
    return model


@pytest.fixture
def scaler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    onnx_file = make_affine(tmp_path / "src" / "scaler.onnx", 4, 2.0, 1.0)
    return load_model(monkeypatch, tmp_path / "ws.model", onnx_file)


def test_single_request_is_answered(scaler: Any) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    [response] = scaler.execute([FakeRequest(x=x)])
    assert response.error is None
    np.testing.assert_allclose(response.outputs["y"], expected_affine(x))


def test_requests_are_run_together_and_split_back(scaler: Any, monkeypatch: Any) -> None:
    calls: list[int] = []
    run = scaler.session.run

    def counting_run(names: list[str], feeds: dict[str, np.ndarray]) -> Any:
        calls.append(len(feeds["x"]))
        return run(names, feeds)

    monkeypatch.setattr(scaler.session, "run", counting_run, raising=False)
    xs = [np.full((n, 4), n, dtype=np.float32) for n in (1, 3, 2)]
    responses = scaler.execute([FakeRequest(x=x) for x in xs])
    assert calls == [6]
    for x, response in zip(xs, responses, strict=True):
        assert response.error is None
        np.testing.assert_allclose(response.outputs["y"], expected_affine(x))


def test_one_bad_request_does_not_fail_the_others(scaler: Any) -> None:
    good = np.ones((2, 4), np.float32)
    responses = scaler.execute(
        [
            FakeRequest(x=good),
            FakeRequest(x=np.ones((1, 5), np.float32)),  # wrong feature count
            FakeRequest(),  # missing input
            FakeRequest(x=np.ones((1, 4), np.float64)),  # would lose precision
            FakeRequest(x=good * 2),
        ]
    )
    assert responses[0].error is None and responses[4].error is None
    np.testing.assert_allclose(responses[4].outputs["y"], expected_affine(good * 2))
    assert responses[1].error is not None
    assert "input 'x' is missing" in responses[2].error.message()
    assert "float64" in responses[3].error.message()
    assert "float32" in responses[3].error.message()


def test_a_failing_merged_run_is_retried_request_by_request(
    scaler: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = scaler.session.run

    def fails_when_merged(names: list[str], feeds: dict[str, np.ndarray]) -> Any:
        if len(feeds["x"]) > 2:
            raise RuntimeError("merged run failed")
        return run(names, feeds)

    monkeypatch.setattr(scaler.session, "run", fails_when_merged, raising=False)
    xs = [np.ones((2, 4), np.float32), np.zeros((2, 4), np.float32)]
    responses = scaler.execute([FakeRequest(x=x) for x in xs])
    for x, response in zip(xs, responses, strict=True):
        assert response.error is None
        np.testing.assert_allclose(response.outputs["y"], expected_affine(x))


def test_inputs_are_cast_only_when_safe(scaler: Any) -> None:
    x = np.arange(4, dtype=np.uint8).reshape(1, 4)
    [response] = scaler.execute([FakeRequest(x=x)])
    assert response.error is None
    assert response.outputs["y"].dtype == np.float32
    np.testing.assert_allclose(response.outputs["y"], expected_affine(x.astype(np.float32)))


def test_non_batched_model_runs_each_request_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    onnx_file = make_affine(tmp_path / "src" / "fixed.onnx", 4, 3.0, 0.0, batch_dim=1)
    model = load_model(monkeypatch, tmp_path / "ws.model", onnx_file, batched=False)
    xs = [np.ones((1, 4), np.float32), np.full((1, 4), 2, np.float32)]
    responses = model.execute([FakeRequest(x=x) for x in xs])
    for x, response in zip(xs, responses, strict=True):
        np.testing.assert_allclose(response.outputs["y"], x * 3)


def test_strings_travel_as_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["same"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 1])],
        [helper.make_tensor_value_info("same", TensorProto.STRING, ["batch", 1])],
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx_model.ir_version = 8
    onnx_file = tmp_path / "strings.onnx"
    onnx.save(onnx_model, str(onnx_file))
    model = load_model(monkeypatch, tmp_path / "ws.model", onnx_file)
    requests = [
        FakeRequest(text=np.array([[b"hello"]], dtype=object)),
        FakeRequest(text=np.array([["w\xf6rld".encode()], [b"x"]], dtype=object)),
    ]
    first, second = model.execute(requests)
    assert first.outputs["same"].tolist() == [[b"hello"]]
    assert second.outputs["same"].tolist() == [["w\xf6rld".encode()], [b"x"]]
