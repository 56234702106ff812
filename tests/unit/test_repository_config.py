"""Generated Triton configs: parsed back with the real schema, with the right fields."""

from __future__ import annotations

from pathlib import Path

import pytest

import model_repository_templates as templates
from manager.domain import PipelineSpec, PipelineStep, Signature, TensorRef, TensorSpec
from manager.errors import InvalidInput, PipelineError
from manager.repository.config import (
    ensemble_config,
    merge_template,
    model_config,
)
from manager.repository.python_model import MODEL_PY, python_model_source
from manager.triton.client import ModelConfig, config_from_text, config_to_text, model_config_pb2

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
ARGMAX = Signature(
    inputs=(TensorSpec("probabilities", "FP32", (-1, 3)),),
    outputs=(TensorSpec("label", "INT64", (-1,)),),
    batched=True,
)
ADD = Signature(
    inputs=(TensorSpec("a", "FP32", (-1, 4)), TensorSpec("b", "FP32", (-1, 4))),
    outputs=(TensorSpec("sum", "FP32", (-1, 4)),),
    batched=True,
)
FIXED = Signature(
    inputs=(TensorSpec("x", "FP64", (1, 4)),),
    outputs=(TensorSpec("y", "FP64", (1, 4)),),
    batched=False,
)


def roundtrip(config: ModelConfig) -> ModelConfig:
    parsed = config_from_text(config_to_text(config))
    assert parsed == config
    return parsed


def step(name: str, signature: Signature, version: int = 1, **inputs: str) -> PipelineStep:
    return PipelineStep(
        name=name,
        model=name,
        version=version,
        signature=signature,
        inputs={k: TensorRef.parse(v) for k, v in inputs.items()},
    )


def steps_by_model(config: ModelConfig) -> dict[str, model_config_pb2.ModelEnsembling.Step]:
    return {s.model_name: s for s in config.ensemble_scheduling.step}


# -- templates ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", templates.list_templates())
def test_every_builtin_template_parses_with_the_real_schema(name: str) -> None:
    config_from_text(templates.load_template(name), where=name)


def test_builtin_templates_are_the_documented_presets() -> None:
    assert set(templates.list_templates()) >= {
        "python-onnxruntime",
        "onnxruntime-cpu",
        "onnxruntime-gpu",
        "ensemble",
        "dynamic-batching",
    }
    kinds = {
        name: config_from_text(templates.load_template(name))
        for name in ("python-onnxruntime", "onnxruntime-cpu", "onnxruntime-gpu", "ensemble")
    }
    assert kinds["python-onnxruntime"].backend == "python"
    assert (
        kinds["python-onnxruntime"].instance_group[0].kind
        == model_config_pb2.ModelInstanceGroup.KIND_CPU
    )
    assert kinds["python-onnxruntime"].instance_group[0].count == 1
    assert (
        kinds["onnxruntime-cpu"].instance_group[0].kind
        == model_config_pb2.ModelInstanceGroup.KIND_CPU
    )
    assert kinds["onnxruntime-gpu"].backend == "onnxruntime"
    assert (
        kinds["onnxruntime-gpu"].instance_group[0].kind
        == model_config_pb2.ModelInstanceGroup.KIND_GPU
    )
    assert kinds["ensemble"].platform == "ensemble"
    batching = config_from_text(templates.load_template("dynamic-batching.pbtxt"))
    assert 0 < batching.dynamic_batching.max_queue_delay_microseconds <= 1000


def test_user_template_folder_overrides_and_extends(tmp_path: Path) -> None:
    (tmp_path / "dynamic-batching.pbtxt").write_text(
        "dynamic_batching { max_queue_delay_microseconds: 5000 }"
    )
    (tmp_path / "four-instances.pbtxt").write_text("instance_group [{ kind: KIND_CPU, count: 4 }]")
    assert templates.template_path("dynamic-batching", extra_dirs=tmp_path).parent == tmp_path
    assert "four-instances" in templates.list_templates(extra_dirs=[tmp_path])
    config = model_config(
        triton_name="ws.scaler",
        signature=SCALER,
        profile="cpu",
        max_batch_size=8,
        versions=[1],
        tuning=["four-instances"],
        template_dirs=tmp_path,
    )
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    assert len(config.instance_group) == 1 and config.instance_group[0].count == 4


def test_unknown_and_badly_named_templates_are_refused(tmp_path: Path) -> None:
    with pytest.raises(templates.TemplateNotFound, match="no model config template 'nope'"):
        templates.load_template("nope")
    with pytest.raises(InvalidInput, match="invalid template name"):
        templates.load_template("../etc/passwd")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('model_operations { op_library_filename: "/tmp/evil.so" }', "model_operations"),
        ('runtime: "/tmp/evil.so"', "runtime"),
        ('input [{ name: "x", data_type: TYPE_FP32, dims: [1] }]', "input"),
        (
            'parameters { key: "EXECUTION_ENV_PATH" value { string_value: "/tmp/env.tar.gz" } }',
            "EXECUTION_ENV_PATH",
        ),
    ],
)
def test_user_templates_cannot_set_fields_outside_the_allow_list(
    tmp_path: Path, text: str, field: str
) -> None:
    (tmp_path / "evil.pbtxt").write_text(text)
    with pytest.raises(InvalidInput, match=field):
        merge_template(ModelConfig(), "evil", template_dirs=tmp_path)


def test_template_with_unknown_fields_is_refused(tmp_path: Path) -> None:
    (tmp_path / "typo.pbtxt").write_text("dynamic_batchingg { }")
    with pytest.raises(InvalidInput, match="typo"):
        merge_template(ModelConfig(), "typo", template_dirs=tmp_path)


# -- model configs --------------------------------------------------------------------------
def test_cpu_profile_config_runs_the_python_model() -> None:
    config = roundtrip(
        model_config(
            triton_name="ws.scaler",
            signature=SCALER,
            profile="cpu",
            max_batch_size=16,
            versions=[2, 1],
        )
    )
    assert config.name == "ws.scaler"
    assert config.backend == "python"
    assert not config.platform and not config.default_model_filename
    assert config.max_batch_size == 16
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("x", model_config_pb2.TYPE_FP32, [4])
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        ("y", model_config_pb2.TYPE_FP32, [4])
    ]
    assert list(config.version_policy.specific.versions) == [1, 2]
    assert config.HasField("dynamic_batching")
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_gpu_profile_config_uses_the_onnxruntime_backend() -> None:
    config = roundtrip(
        model_config(
            triton_name="ws.scaler", signature=SCALER, profile="gpu", max_batch_size=8, versions=[3]
        )
    )
    assert config.backend == "onnxruntime"
    assert config.default_model_filename == "model.onnx"
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert list(config.version_policy.specific.versions) == [3]


def test_template_argument_selects_onnxruntime_on_cpu() -> None:
    config = model_config(
        triton_name="ws.scaler",
        signature=SCALER,
        profile="cpu",
        max_batch_size=8,
        versions=[1],
        template="onnxruntime-cpu",
    )
    assert config.backend == "onnxruntime" and config.default_model_filename == "model.onnx"
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_non_batched_model_keeps_the_full_shape_and_no_batching() -> None:
    config = roundtrip(
        model_config(
            triton_name="ws.fixed", signature=FIXED, profile="cpu", max_batch_size=8, versions=[1]
        )
    )
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [1, 4]
    assert config.input[0].data_type == model_config_pb2.TYPE_FP64
    assert not config.HasField("dynamic_batching")


def test_dynamic_batching_can_be_turned_off() -> None:
    config = model_config(
        triton_name="ws.scaler",
        signature=SCALER,
        profile="cpu",
        max_batch_size=8,
        versions=[1],
        dynamic_batching=False,
    )
    assert config.max_batch_size == 8 and not config.HasField("dynamic_batching")


def test_rank_one_batched_tensor_is_one_dim_reshaped_to_scalar() -> None:
    config = roundtrip(
        model_config(
            triton_name="ws.argmax", signature=ARGMAX, profile="cpu", max_batch_size=8, versions=[1]
        )
    )
    label = config.output[0]
    assert label.data_type == model_config_pb2.TYPE_INT64
    assert list(label.dims) == [1]
    assert label.HasField("reshape") and list(label.reshape.shape) == []


def test_bytes_datatype_maps_to_type_string() -> None:
    text = Signature(
        inputs=(TensorSpec("text", "BYTES", (-1, 1)),),
        outputs=(TensorSpec("score", "FP16", (-1, 1)),),
        batched=True,
    )
    config = model_config(
        triton_name="ws.text", signature=text, profile="cpu", max_batch_size=8, versions=[1]
    )
    assert config.input[0].data_type == model_config_pb2.TYPE_STRING
    assert config.output[0].data_type == model_config_pb2.TYPE_FP16


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"triton_name": "../etc"}, "invalid Triton model name"),
        ({"triton_name": "Upper.case"}, "invalid Triton model name"),
        ({"versions": []}, "invalid model versions"),
        ({"versions": [0]}, "invalid model versions"),
        ({"profile": "tpu"}, "unknown repository profile"),
        ({"max_batch_size": -1}, "max_batch_size"),
        ({"template": "ensemble"}, "selects 'ensemble'"),
    ],
)
def test_bad_model_config_arguments_are_refused(kwargs: dict[str, object], match: str) -> None:
    arguments: dict[str, object] = {
        "triton_name": "ws.scaler",
        "signature": SCALER,
        "profile": "cpu",
        "max_batch_size": 8,
        "versions": [1],
        **kwargs,
    }
    with pytest.raises(InvalidInput, match=match):
        model_config(**arguments)  # type: ignore[arg-type]


# -- ensembles ------------------------------------------------------------------------------
CHAIN = PipelineSpec(
    name="fraud",
    steps=(
        step("scale", SCALER, version=3, x="$inputs.features"),
        step("classify", CLASSIFIER, x="$scale.y"),
        step("pick", ARGMAX, probabilities="$classify.probabilities"),
    ),
    outputs={
        "label": TensorRef.parse("$pick.label"),
        "probs": TensorRef.parse("$classify.probabilities"),
    },
)
CHAIN_MODELS = {"scale": "ws.scale", "classify": "ws.classify", "pick": "ws.pick"}


def test_chain_ensemble_wiring() -> None:
    config = roundtrip(
        ensemble_config(
            triton_name="ws.fraud.v1", pipeline=CHAIN, step_models=CHAIN_MODELS, max_batch_size=8
        )
    )
    assert config.name == "ws.fraud.v1"
    assert config.platform == "ensemble" and not config.backend
    assert config.max_batch_size == 8
    assert [(t.name, list(t.dims)) for t in config.input] == [("features", [4])]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        ("label", model_config_pb2.TYPE_INT64, [1]),
        ("probs", model_config_pb2.TYPE_FP32, [3]),
    ]
    # ensembles pass tensors in the steps' outer shape: no reshape (checked on tritonserver)
    assert not any(t.HasField("reshape") for t in (*config.input, *config.output))
    steps = steps_by_model(config)
    assert [s.model_name for s in config.ensemble_scheduling.step] == list(CHAIN_MODELS.values())
    assert steps["ws.scale"].model_version == 3
    assert dict(steps["ws.scale"].input_map) == {"x": "features"}
    assert dict(steps["ws.scale"].output_map) == {"y": "scale.y"}
    assert dict(steps["ws.classify"].input_map) == {"x": "scale.y"}
    assert dict(steps["ws.classify"].output_map) == {"probabilities": "probs"}
    assert dict(steps["ws.pick"].input_map) == {"probabilities": "probs"}
    assert dict(steps["ws.pick"].output_map) == {"label": "label"}


def test_diamond_ensemble_wiring_fans_out_and_in() -> None:
    diamond = PipelineSpec(
        name="diamond",
        steps=(
            step("left", SCALER, x="$inputs.x"),
            step("right", SCALER, x="$inputs.x"),
            step("join", ADD, a="$left.y", b="$right.y"),
        ),
        outputs={"total": TensorRef.parse("$join.sum")},
    )
    config = roundtrip(
        ensemble_config(
            triton_name="ws.diamond.v2",
            pipeline=diamond,
            step_models={"left": "ws.scaler", "right": "ws.other", "join": "ws.add"},
            max_batch_size=4,
        )
    )
    assert [t.name for t in config.input] == ["x"]
    assert [t.name for t in config.output] == ["total"]
    steps = steps_by_model(config)
    assert dict(steps["ws.scaler"].input_map) == {"x": "x"}
    assert dict(steps["ws.other"].input_map) == {"x": "x"}
    assert dict(steps["ws.scaler"].output_map) == {"y": "left.y"}
    assert dict(steps["ws.other"].output_map) == {"y": "right.y"}
    assert dict(steps["ws.add"].input_map) == {"a": "left.y", "b": "right.y"}
    assert dict(steps["ws.add"].output_map) == {"sum": "total"}


def test_ensemble_input_keeps_every_known_dim_of_its_readers() -> None:
    loose = Signature(
        inputs=(TensorSpec("x", "FP32", (-1, -1)),),
        outputs=(TensorSpec("y", "FP32", (-1, -1)),),
        batched=True,
    )
    pipeline = PipelineSpec(
        name="fan",
        steps=(step("loose", loose, x="$inputs.x"), step("tight", SCALER, x="$inputs.x")),
        outputs={"a": TensorRef.parse("$loose.y"), "b": TensorRef.parse("$tight.y")},
    )
    config = ensemble_config(
        triton_name="ws.fan.v1",
        pipeline=pipeline,
        step_models={"loose": "ws.loose", "tight": "ws.tight"},
        max_batch_size=8,
    )
    assert list(config.input[0].dims) == [4]


def test_non_batched_ensemble_has_max_batch_size_zero_and_full_dims() -> None:
    pipeline = PipelineSpec(
        name="fixed",
        steps=(step("only", FIXED, x="$inputs.x"),),
        outputs={"y": TensorRef.parse("$only.y")},
    )
    config = roundtrip(
        ensemble_config(
            triton_name="ws.fixed.v1",
            pipeline=pipeline,
            step_models={"only": "ws.fixed"},
            max_batch_size=8,
        )
    )
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [1, 4] and list(config.output[0].dims) == [1, 4]


def test_ensemble_validates_the_pipeline_and_needs_every_step_model() -> None:
    with pytest.raises(PipelineError, match="step 'pick'"):
        ensemble_config(
            triton_name="ws.fraud.v1",
            pipeline=CHAIN,
            step_models={"scale": "ws.scale", "classify": "ws.classify"},
            max_batch_size=8,
        )
    broken = PipelineSpec(name="fraud", steps=CHAIN.steps, outputs={})
    with pytest.raises(PipelineError, match="has no outputs"):
        ensemble_config(
            triton_name="ws.fraud.v1", pipeline=broken, step_models=CHAIN_MODELS, max_batch_size=8
        )


def test_step_output_feeding_two_pipeline_outputs_is_explained() -> None:
    twice = PipelineSpec(
        name="twice",
        steps=(step("scale", SCALER, x="$inputs.x"),),
        outputs={"a": TensorRef.parse("$scale.y"), "b": TensorRef.parse("$scale.y")},
    )
    with pytest.raises(PipelineError, match="exposed twice"):
        ensemble_config(
            triton_name="ws.twice.v1",
            pipeline=twice,
            step_models={"scale": "ws.s"},
            max_batch_size=8,
        )


# -- python model ---------------------------------------------------------------------------
def test_python_model_text_compiles() -> None:
    assert python_model_source() == MODEL_PY
    compile(MODEL_PY, "model.py", "exec")
    assert "class TritonPythonModel" in MODEL_PY
    assert "import triton_python_backend_utils as pb_utils" in MODEL_PY
