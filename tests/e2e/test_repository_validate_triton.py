"""The repository validator agrees with a real tritonserver: what it reports, Triton refuses.

One repository holds a valid ensemble and one broken variant per rule; the validator runs on
the folder, then each ensemble is loaded into the embedded Triton. The one place where the
validator is deliberately stricter is asserted too (a batching ensemble over a model with a
fixed first dim: Triton loads it, and it fails on the first request with a batch above 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from manager.domain import PipelineSpec, PipelineStep, Signature, TensorRef, TensorSpec
from manager.errors import TritonError
from manager.repository.config import ensemble_config, model_config
from manager.repository.python_model import python_model_source
from manager.repository.validate import Problem, validate_repository
from manager.repository.writer import RepositoryWriter
from manager.triton.client import ModelConfig, model_config_pb2
from manager.triton.runtime import EmbeddedTriton
from tests.conftest import free_ports
from tests.onnx_models import make_affine, make_softmax_classifier

pytestmark = pytest.mark.e2e


def sig(inputs: dict[str, tuple[int, ...]], outputs: dict[str, tuple[int, ...]]) -> Signature:
    return Signature(
        inputs=tuple(TensorSpec(n, "FP32", s) for n, s in inputs.items()),
        outputs=tuple(TensorSpec(n, "FP32", s) for n, s in outputs.items()),
        batched=all(s[0] == -1 for s in (*inputs.values(), *outputs.values())),
    )


SCALER = sig({"x": (-1, 4)}, {"y": (-1, 4)})
CLASSIFIER = sig({"x": (-1, 4)}, {"probabilities": (-1, 3)})
FIXED = sig({"x": (1, 4)}, {"y": (1, 4)})
PIPELINE = PipelineSpec(
    name="fraud",
    steps=(
        PipelineStep("scale", "scaler", 1, SCALER, {"x": TensorRef("inputs", "x")}),
        PipelineStep("classify", "classifier", 1, CLASSIFIER, {"x": TensorRef("scale", "y")}),
    ),
    outputs={"probabilities": TensorRef("classify", "probabilities")},
)


def _step(config: ModelConfig, number: int) -> Any:
    return config.ensemble_scheduling.step[number - 1]


def _add(tensors: Any, name: str, dims: list[int]) -> None:
    tensors.add(name=name, data_type=model_config_pb2.TYPE_FP32).dims.extend(dims)


def _reshape(config: ModelConfig) -> None:
    config.input[0].dims[:] = [2, 2]
    config.input[0].reshape.shape.extend([4])


def _rename_input(config: ModelConfig) -> None:
    del _step(config, 1).input_map["x"]
    _step(config, 1).input_map["features"] = "x"


# variant → (change to the valid ensemble, Triton loads it, rules the validator reports)
VARIANTS: dict[str, tuple[Callable[[ModelConfig], object], bool, set[str]]] = {
    "valid": (lambda c: None, True, set()),
    "reshaped-input": (_reshape, True, set()),
    "dtype": (
        lambda c: setattr(c.input[0], "data_type", model_config_pb2.TYPE_INT64),
        False,
        {"dtype-mismatch"},
    ),
    "shape": (lambda c: c.input[0].dims.__setitem__(0, 5), False, {"shape-mismatch"}),
    "unused-tensor": (
        lambda c: _step(c, 2).input_map.__setitem__("x", "x"),
        False,
        {"unused-tensor"},
    ),
    "version": (lambda c: setattr(_step(c, 1), "model_version", 2), False, {"unknown-version"}),
    "batch-size": (lambda c: setattr(c, "max_batch_size", 16), False, {"batch-size"}),
    "written-twice": (
        lambda c: _step(c, 2).output_map.__setitem__("probabilities", "scale.y"),
        False,
        {"tensor-written-twice", "unproduced-output", "shape-mismatch"},
    ),
    "unproduced-output": (lambda c: _add(c.output, "score", [1]), False, {"unproduced-output"}),
    "unused-input": (lambda c: _add(c.input, "extra", [4]), False, {"unused-input"}),
    "unknown-input": (_rename_input, False, {"unknown-input", "unmapped-input"}),
    "unknown-model": (
        lambda c: setattr(_step(c, 2), "model_name", "ws.nothing"),
        False,
        {"unknown-model"},
    ),
    "fixed-batch-step": (  # stricter than Triton on purpose
        lambda c: setattr(_step(c, 1), "model_name", "ws.fixed"),
        True,
        {"batch-size"},
    ),
}


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[Problem], Any]]:
    tmp = tmp_path_factory.mktemp("validate-vs-triton")
    root = tmp / "repository"
    writer = RepositoryWriter(root)
    model_py = {1: {"model.py": python_model_source().encode()}}
    for name, signature, onnx, batch in (
        ("ws.scaler", SCALER, make_affine(tmp / "scaler.onnx"), 8),
        ("ws.classifier", CLASSIFIER, make_softmax_classifier(tmp / "clf.onnx"), 8),
        ("ws.fixed", FIXED, make_affine(tmp / "fixed.onnx", batch_dim=1), 0),
    ):
        config = model_config(
            triton_name=name, signature=signature, profile="cpu", max_batch_size=batch, versions=[1]
        )
        writer.write_model(name, config, {1: onnx}, model_py)
    for index, (change, _, _) in enumerate(VARIANTS.values()):
        name = f"ws.variant{index}"
        config = ensemble_config(
            triton_name=name,
            pipeline=PIPELINE,
            step_models={"scale": "ws.scaler", "classify": "ws.classifier"},
            max_batch_size=8,
        )
        change(config)
        writer.write_ensemble(name, config)
    problems = validate_repository(root)
    http, grpc, metrics = free_ports(3)
    server = EmbeddedTriton(
        repository=root,
        work_dir=tmp / "work",
        http_port=http,
        grpc_port=grpc,
        metrics_port=metrics,
        log_path=tmp / "triton.log",
    )
    with server, server.client(timeout_s=60) as client:
        yield problems, client


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_validator_and_triton_agree(checked: tuple[list[Problem], Any], variant: str) -> None:
    problems, client = checked
    _, triton_loads, rules = VARIANTS[variant]
    name = f"ws.variant{list(VARIANTS).index(variant)}"
    assert {p.rule for p in problems if p.model == name} == rules
    try:
        client.load_model(name)
        loaded = True
    except TritonError:
        loaded = False
    assert loaded == triton_loads
    if loaded:
        client.unload_model(name)
