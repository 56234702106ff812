"""Repository validation: every rule names the model, the step and the tensor, and all
problems are reported together."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from manager.domain import PipelineSpec, PipelineStep, Signature, TensorRef, TensorSpec
from manager.errors import NotFound
from manager.repository.config import ensemble_config, model_config
from manager.repository.python_model import python_model_source
from manager.repository.validate import (
    Problem,
    effective_backend,
    model_file_name,
    read_repository,
    validate_repository,
)
from manager.repository.writer import RepositoryWriter
from manager.triton.client import ModelConfig, config_from_text, config_to_text, model_config_pb2
from tests.onnx_models import make_affine, make_softmax_classifier

SCALER = Signature(
    inputs=(TensorSpec("x", "FP32", (-1, 4)),),
    outputs=(TensorSpec("y", "FP32", (-1, 4)),),
    batched=True,
)
CLASSIFIER = Signature(
    inputs=(TensorSpec("x", "FP32", (-1, 4)),),
    outputs=(TensorSpec("probabilities", "FP32", (-1, 3)),),
    batched=True,
)
ENSEMBLE = "ws.fraud.v1"
STEP1 = "step 1 (model 'ws.scaler')"
STEP2 = "step 2 (model 'ws.classifier')"


def build_repository(tmp_path: Path) -> Path:
    """ws.scaler (onnxruntime) → ws.classifier (Python backend), wired by ws.fraud.v1."""
    root = tmp_path / "repository"
    writer = RepositoryWriter(root)
    scaler = make_affine(tmp_path / "src" / "scaler.onnx")
    classifier = make_softmax_classifier(tmp_path / "src" / "classifier.onnx")
    writer.write_model(
        "ws.scaler",
        model_config(
            triton_name="ws.scaler", signature=SCALER, profile="gpu", max_batch_size=8, versions=[1]
        ),
        {1: scaler},
    )
    writer.write_model(
        "ws.classifier",
        model_config(
            triton_name="ws.classifier",
            signature=CLASSIFIER,
            profile="cpu",
            max_batch_size=8,
            versions=[1],
        ),
        {1: classifier},
        {1: {"model.py": python_model_source().encode()}},
    )
    pipeline = PipelineSpec(
        name="fraud",
        steps=(
            PipelineStep("scale", "scaler", 1, SCALER, {"x": TensorRef("inputs", "x")}),
            PipelineStep("classify", "classifier", 1, CLASSIFIER, {"x": TensorRef("scale", "y")}),
        ),
        outputs={"probabilities": TensorRef("classify", "probabilities")},
    )
    writer.write_ensemble(
        ENSEMBLE,
        ensemble_config(
            triton_name=ENSEMBLE,
            pipeline=pipeline,
            step_models={"scale": "ws.scaler", "classify": "ws.classifier"},
            max_batch_size=8,
        ),
    )
    return root


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return build_repository(tmp_path)


def edit(root: Path, name: str, change: Callable[[ModelConfig], object]) -> None:
    path = root / name / "config.pbtxt"
    config = config_from_text(path.read_text())
    change(config)
    path.write_text(config_to_text(config))


def step(config: ModelConfig, number: int) -> model_config_pb2.ModelEnsembling.Step:
    return config.ensemble_scheduling.step[number - 1]


def write_model(root: Path, name: str, text: str, versions: tuple[str, ...] = ("1",)) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.pbtxt").write_text(f'name: "{name}"\n{text}')
    for version in versions:
        (folder / version).mkdir()
    return folder


IDENTITY = """backend: "identity"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


def ensemble_text(*steps: tuple[str, dict[str, str], dict[str, str]]) -> str:
    body = "".join(
        f'step {{ model_name: "{model}" model_version: -1 '
        + "".join(f'input_map {{ key: "{k}" value: "{v}" }} ' for k, v in inputs.items())
        + "".join(f'output_map {{ key: "{k}" value: "{v}" }} ' for k, v in outputs.items())
        + "} "
        for model, inputs, outputs in steps
    )
    return (
        'platform: "ensemble"\nmax_batch_size: 8\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        f"ensemble_scheduling {{ {body}}}\n"
    )


def find(problems: list[Problem], rule: str, **fields: str) -> Problem:
    """The one problem of ``rule`` whose fields contain the given texts."""
    matches = [
        p
        for p in problems
        if p.rule == rule and all(text in getattr(p, key) for key, text in fields.items())
    ]
    assert len(matches) == 1, f"{rule} {fields} not exactly once in:\n" + "\n".join(
        str(p) for p in problems
    )
    return matches[0]


# -- a valid repository ---------------------------------------------------------------------
def test_a_repository_built_by_lastmile_has_no_problems(repo: Path) -> None:
    assert validate_repository(repo) == []
    read = read_repository(repo)
    assert sorted(read.models) == ["ws.classifier", ENSEMBLE, "ws.scaler"]
    scaler = read.models["ws.scaler"]
    assert scaler.versions == {1: repo / "ws.scaler" / "1"}
    assert scaler.config.backend == "onnxruntime" and scaler.path == repo / "ws.scaler"
    assert read.models[ENSEMBLE].is_ensemble and read.models[ENSEMBLE].served_versions() == [1]
    assert model_file_name(scaler) == "model.onnx" and effective_backend(scaler) == "onnxruntime"
    assert model_file_name(read.models["ws.classifier"]) == "model.py"
    assert model_file_name(read.models[ENSEMBLE]) is None


def test_a_path_that_is_not_a_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="not a folder"):
        validate_repository(tmp_path / "nowhere")


def test_problem_reads_as_one_line() -> None:
    problem = Problem("ws.e", "step 2 (model 'b'), input 'x'", "is bad", hint="fix it")
    assert str(problem) == "ws.e: step 2 (model 'b'), input 'x': is bad (fix it)"
    assert str(Problem("ws.e", "", "is bad")) == "ws.e: is bad"


# -- one model on its own -------------------------------------------------------------------
def test_unknown_config_field_is_reported_with_line_and_column(repo: Path) -> None:
    path = repo / "ws.scaler" / "config.pbtxt"
    path.write_text('name: "ws.scaler"\nmax_batch_sizee: 8\n')
    problem = find(validate_repository(repo), "config-syntax", model="ws.scaler")
    assert "line 2, column 1" in problem.message and "max_batch_sizee" in problem.message


def test_config_name_must_match_the_folder(repo: Path) -> None:
    edit(repo, "ws.scaler", lambda c: setattr(c, "name", "ws.other"))
    problem = find(validate_repository(repo), "name-mismatch", model="ws.scaler")
    assert "'ws.other'" in problem.message


def test_unsafe_model_folder_names_are_reported(repo: Path) -> None:
    write_model(repo, "bad name", IDENTITY)
    find(validate_repository(repo), "unsafe-name", model="bad name")


def test_model_folder_without_config_is_a_problem(repo: Path) -> None:
    (repo / "ws.orphan" / "1").mkdir(parents=True)
    find(validate_repository(repo), "missing-config", model="ws.orphan")


def test_version_folders_must_be_positive_integers(repo: Path) -> None:
    for folder in ("latest", "0", "01"):
        (repo / "ws.scaler" / folder).mkdir()
    problems = validate_repository(repo)
    for folder in ("latest", "0", "01"):
        find(problems, "bad-version-folder", model="ws.scaler", where=f"folder '{folder}'")


def test_specific_version_without_a_folder(repo: Path) -> None:
    edit(repo, "ws.scaler", lambda c: c.version_policy.specific.versions.append(2))
    problem = find(validate_repository(repo), "missing-version", model="ws.scaler")
    assert "version 2" in problem.message


def test_model_with_no_version_folder(repo: Path) -> None:
    write_model(repo, "ws.empty", IDENTITY, versions=())
    find(validate_repository(repo), "no-versions", model="ws.empty")


@pytest.mark.parametrize(
    ("backend", "filename"),
    [
        ('backend: "onnxruntime"', "model.onnx"),
        ('platform: "onnxruntime_onnx"', "model.onnx"),
        ('platform: "tensorrt_plan"', "model.plan"),
        ('backend: "python"', "model.py"),
        ('backend: "pytorch"', "model.pt"),
        ('platform: "tensorflow_savedmodel"', "model.savedmodel"),
        ('backend: "onnxruntime"\ndefault_model_filename: "net.onnx"', "net.onnx"),
    ],
)
def test_each_backend_needs_its_model_file(tmp_path: Path, backend: str, filename: str) -> None:
    text = IDENTITY.replace('backend: "identity"', backend)
    folder = write_model(tmp_path, "ws.m", text, versions=("1", "2"))
    (folder / "1" / filename).write_bytes(b"")  # a file where a savedmodel needs a folder
    problems = validate_repository(tmp_path)
    missing = find(problems, "missing-model-file", model="ws.m", where="version 2")
    assert f"2/{filename}" in missing.message
    if filename == "model.savedmodel":
        find(problems, "missing-model-file", model="ws.m", where="version 1")
        (folder / "1" / filename).unlink()
        (folder / "1" / filename).mkdir()
    (folder / "2" / filename).mkdir() if filename == "model.savedmodel" else (
        folder / "2" / filename
    ).write_bytes(b"")
    assert validate_repository(tmp_path) == []


def test_identity_backend_and_ensembles_need_no_model_file(tmp_path: Path) -> None:
    write_model(tmp_path, "ws.id", IDENTITY)
    write_model(tmp_path, "ws.e", ensemble_text(("ws.id", {"x": "x"}, {"y": "y"})))
    assert validate_repository(tmp_path) == []


def test_model_file_linked_from_outside_the_repository(repo: Path, tmp_path: Path) -> None:
    target = repo / "ws.scaler" / "1" / "model.onnx"
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(target.read_bytes())
    target.unlink()
    os.symlink(outside, target)
    find(validate_repository(repo), "unsafe-link", model="ws.scaler", where="version 1")


# -- ensembles ------------------------------------------------------------------------------
def test_step_naming_a_model_not_in_the_repository(repo: Path) -> None:
    edit(repo, ENSEMBLE, lambda c: setattr(step(c, 2), "model_name", "ws.clasifier"))
    problem = find(validate_repository(repo), "unknown-model", model=ENSEMBLE)
    assert problem.where == "step 2 (model 'ws.clasifier')"
    assert "'ws.classifier'" in problem.hint


def test_step_naming_an_unreadable_model_is_not_reported_twice(repo: Path) -> None:
    (repo / "ws.classifier" / "config.pbtxt").write_text("name: ")
    problems = validate_repository(repo)
    find(problems, "config-syntax", model="ws.classifier")
    assert [p for p in problems if p.model == ENSEMBLE] == []


def test_nested_ensembles_in_a_circle(tmp_path: Path) -> None:
    write_model(tmp_path, "ws.outer", ensemble_text(("ws.inner", {"x": "x"}, {"y": "y"})))
    write_model(tmp_path, "ws.inner", ensemble_text(("ws.outer", {"x": "x"}, {"y": "y"})))
    write_model(tmp_path, "ws.self", ensemble_text(("ws.self", {"x": "x"}, {"y": "y"})))
    problems = validate_repository(tmp_path)
    pair = find(problems, "circular-ensembles", message="ws.inner")
    assert "ws.inner → ws.outer → ws.inner" in pair.message
    assert pair.model == "ws.inner" and pair.where == "step 1 (model 'ws.outer')"
    find(problems, "circular-ensembles", model="ws.self", message="ws.self → ws.self")


def test_input_map_naming_an_input_the_model_lacks(repo: Path) -> None:
    def rename(config: ModelConfig) -> None:
        del step(config, 1).input_map["x"]
        step(config, 1).input_map["features"] = "x"

    edit(repo, ENSEMBLE, rename)
    problems = validate_repository(repo)
    problem = find(problems, "unknown-input", model=ENSEMBLE)
    assert problem.where == f"{STEP1}, input 'features'" and "'x'" in problem.hint
    find(problems, "unmapped-input", where=f"{STEP1}, input 'x'")


def test_output_map_naming_an_output_the_model_lacks(repo: Path) -> None:
    def rename(config: ModelConfig) -> None:
        del step(config, 2).output_map["probabilities"]
        step(config, 2).output_map["probs"] = "probabilities"

    edit(repo, ENSEMBLE, rename)
    problem = find(validate_repository(repo), "unknown-output", model=ENSEMBLE)
    assert problem.where == f"{STEP2}, output 'probs'" and "'probabilities'" in problem.hint


def test_tensor_written_by_two_steps(repo: Path) -> None:
    edit(repo, ENSEMBLE, lambda c: step(c, 2).output_map.__setitem__("probabilities", "scale.y"))
    problem = find(validate_repository(repo), "tensor-written-twice", model=ENSEMBLE)
    assert problem.where == f"{STEP2}, output 'probabilities'"
    assert "'scale.y'" in problem.message and STEP1 in problem.message


def test_output_map_writing_an_ensemble_input(repo: Path) -> None:
    edit(repo, ENSEMBLE, lambda c: step(c, 1).output_map.__setitem__("y", "x"))
    problem = find(validate_repository(repo), "tensor-written-twice", where=f"{STEP1}, output 'y'")
    assert "input of the ensemble" in problem.message


def test_ensemble_output_nobody_writes(repo: Path) -> None:
    def add_output(config: ModelConfig) -> None:
        out = config.output.add(name="score", data_type=model_config_pb2.TYPE_FP32)
        out.dims.append(1)

    edit(repo, ENSEMBLE, add_output)
    find(validate_repository(repo), "unproduced-output", model=ENSEMBLE, where="output 'score'")


def test_tensor_read_but_never_written(repo: Path) -> None:
    edit(repo, ENSEMBLE, lambda c: step(c, 2).input_map.__setitem__("x", "scale.z"))
    problems = validate_repository(repo)
    problem = find(problems, "unproduced-tensor", model=ENSEMBLE)
    assert problem.where == f"{STEP2}, input 'x'" and "'scale.z'" in problem.message
    find(problems, "unused-tensor", where=f"{STEP1}, output 'y'")  # Triton refuses that too


def test_unused_ensemble_input(repo: Path) -> None:
    def add_input(config: ModelConfig) -> None:
        extra = config.input.add(name="extra", data_type=model_config_pb2.TYPE_FP32)
        extra.dims.append(4)

    edit(repo, ENSEMBLE, add_input)
    find(validate_repository(repo), "unused-input", model=ENSEMBLE, where="input 'extra'")


def test_steps_waiting_on_each_other_in_a_circle(tmp_path: Path) -> None:
    two_inputs = IDENTITY.replace(
        "input [ {", 'input [ { name: "back" data_type: TYPE_FP32 dims: [ 4 ] }, {'
    )
    write_model(tmp_path, "ws.a", two_inputs)
    write_model(tmp_path, "ws.b", IDENTITY)
    text = ensemble_text(
        ("ws.a", {"x": "x", "back": "t2"}, {"y": "y"}),
        ("ws.b", {"x": "y"}, {"y": "t2"}),
    )
    write_model(tmp_path, "ws.e", text)
    problem = find(validate_repository(tmp_path), "circular-steps", model="ws.e")
    assert "step 1 (model 'ws.a') → step 2 (model 'ws.b') → step 1 (model 'ws.a')" in (
        problem.message
    )


def test_data_type_mismatch_between_producer_and_consumer(repo: Path) -> None:
    edit(
        repo,
        "ws.classifier",
        lambda c: setattr(c.input[0], "data_type", model_config_pb2.TYPE_FP64),
    )
    problem = find(validate_repository(repo), "dtype-mismatch", model=ENSEMBLE)
    assert problem.where == f"{STEP2}, input 'x'"
    assert "TYPE_FP64" in problem.message and "TYPE_FP32" in problem.message
    assert f"{STEP1} output 'y'" in problem.message and "'scale.y'" in problem.message


def test_ensemble_input_data_type_must_match_its_step(repo: Path) -> None:
    edit(repo, ENSEMBLE, lambda c: setattr(c.input[0], "data_type", model_config_pb2.TYPE_INT64))
    problem = find(validate_repository(repo), "dtype-mismatch", where=f"{STEP1}, input 'x'")
    assert "ensemble input 'x'" in problem.message and "TYPE_INT64" in problem.message


def test_shape_mismatch_between_producer_and_consumer(repo: Path) -> None:
    def widen(config: ModelConfig) -> None:
        config.input[0].dims[:] = [5]

    edit(repo, "ws.classifier", widen)
    problem = find(validate_repository(repo), "shape-mismatch", where=f"{STEP2}, input 'x'")
    assert "[-1, 5]" in problem.message and "[-1, 4]" in problem.message


def test_variable_dims_match_anything(repo: Path) -> None:
    edit(repo, "ws.classifier", lambda c: c.input[0].dims.__setitem__(0, -1))
    assert validate_repository(repo) == []


def test_ensemble_tensors_are_compared_by_their_reshape(repo: Path) -> None:
    def reshaped(dims: list[int], shape: list[int]) -> Callable[[ModelConfig], None]:
        def change(config: ModelConfig) -> None:
            config.input[0].dims[:] = dims
            config.input[0].reshape.shape[:] = shape

        return change

    edit(repo, ENSEMBLE, reshaped([2, 2], [4]))  # the steps see [4]: fine
    assert validate_repository(repo) == []
    edit(repo, ENSEMBLE, reshaped([4], [2, 2]))
    problem = find(validate_repository(repo), "shape-mismatch", where=f"{STEP1}, input 'x'")
    assert "[-1, 2, 2]" in problem.message


def test_ensemble_batch_size_above_a_step_model(repo: Path) -> None:
    edit(repo, ENSEMBLE, lambda c: setattr(c, "max_batch_size", 16))
    problems = validate_repository(repo)
    for where in (STEP1, STEP2):
        problem = find(problems, "batch-size", where=where)
        assert "max_batch_size 8" in problem.message and "16" in problem.message


def test_batching_ensemble_with_a_step_that_cannot_batch(repo: Path) -> None:
    def unbatch(first_dim: int) -> Callable[[ModelConfig], None]:
        def change(config: ModelConfig) -> None:
            config.max_batch_size = 0
            config.ClearField("dynamic_batching")
            for io in (*config.input, *config.output):
                io.dims[:] = [first_dim, *io.dims]

        return change

    edit(repo, "ws.scaler", unbatch(1))
    problem = find(validate_repository(repo), "batch-size", where=STEP1)
    assert "does not batch" in problem.message and "[1, 4]" in problem.message
    edit(repo, "ws.scaler", lambda c: [io.dims.__setitem__(0, -1) for io in (*c.input, *c.output)])
    assert validate_repository(repo) == []  # a variable first dim takes the whole batch


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("instance_group", lambda c: c.instance_group.add(count=1)),
        ("model_warmup", lambda c: c.model_warmup.add(name="zeros")),
        ("optimization", lambda c: c.optimization.SetInParent()),
        ("dynamic_batching", lambda c: c.dynamic_batching.SetInParent()),
        ("sequence_batching", lambda c: c.sequence_batching.SetInParent()),
        ("backend", lambda c: setattr(c, "backend", "python")),
        ("default_model_filename", lambda c: setattr(c, "default_model_filename", "x.onnx")),
    ],
)
def test_fields_an_ensemble_may_not_have(
    repo: Path, field: str, change: Callable[[ModelConfig], None]
) -> None:
    edit(repo, ENSEMBLE, change)
    problem = find(validate_repository(repo), "ensemble-field", model=ENSEMBLE, where=field)
    assert repr(field) in problem.message


def test_step_asking_for_a_version_the_model_does_not_serve(repo: Path) -> None:
    edit(repo, ENSEMBLE, lambda c: setattr(step(c, 1), "model_version", 2))
    problem = find(validate_repository(repo), "unknown-version", where=STEP1)
    assert "version 2" in problem.message and "[1]" in problem.message
    edit(repo, ENSEMBLE, lambda c: setattr(step(c, 1), "model_version", 0))
    problem = find(validate_repository(repo), "unknown-version", where=STEP1)
    assert "unset" in problem.message
    edit(repo, ENSEMBLE, lambda c: setattr(step(c, 1), "model_version", -1))
    assert validate_repository(repo) == []


def test_every_problem_is_reported_at_once(repo: Path) -> None:
    (repo / "ws.scaler" / "1" / "model.onnx").unlink()
    edit(
        repo,
        "ws.classifier",
        lambda c: setattr(c.input[0], "data_type", model_config_pb2.TYPE_FP64),
    )
    write_model(repo, "ws.typo", "backend: 'identity'\nmax_batch_sizee: 1\n")
    problems = validate_repository(repo)
    find(problems, "missing-model-file", model="ws.scaler", where="version 1")
    find(problems, "dtype-mismatch", model=ENSEMBLE, where=f"{STEP2}, input 'x'")
    find(problems, "config-syntax", model="ws.typo")
    assert [p.model for p in problems] == sorted(p.model for p in problems)  # grouped by model
