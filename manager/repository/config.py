"""Triton model configs for imported models and pipeline ensembles, built as protobuf messages.

Configs are never pasted together as strings (DESIGN §4): a preset from
``model_repository_templates`` is merged with ``text_format.Merge`` into a ``ModelConfig``
and the rest is set field by field, so the real schema rejects anything malformed and user
presets can only touch an allow-list of fields (DESIGN §5).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from google.protobuf import text_format

from manager.domain import PIPELINE_INPUTS, PipelineSpec, ServingOptions, Signature, TensorSpec
from manager.errors import InvalidInput, PipelineError
from manager.repository.pipeline import ensemble_tensor_names, validate_pipeline
from manager.triton.client import ModelConfig, config_from_text, model_config_pb2
from model_repository_templates import TemplateDirs, load_template

log = logging.getLogger(__name__)

__all__ = [
    "BASE_TEMPLATES",
    "MODEL_FILENAME",
    "PYTHON_MODEL_FILENAME",
    "check_triton_name",
    "effective_max_batch_size",
    "ensemble_config",
    "merge_template",
    "model_config",
    "validate_pipeline",
]

BASE_TEMPLATES: dict[str, str] = {"cpu": "python-onnxruntime", "gpu": "onnxruntime-gpu"}
"""The backend preset each repository profile starts from."""

MODEL_FILENAME = "model.onnx"
PYTHON_MODEL_FILENAME = "model.py"
ENSEMBLE_TEMPLATE = "ensemble"
DYNAMIC_BATCHING_TEMPLATE = "dynamic-batching"

KSERVE_TO_TRITON: dict[str, int] = {
    "BOOL": model_config_pb2.TYPE_BOOL,
    "UINT8": model_config_pb2.TYPE_UINT8,
    "UINT16": model_config_pb2.TYPE_UINT16,
    "UINT32": model_config_pb2.TYPE_UINT32,
    "UINT64": model_config_pb2.TYPE_UINT64,
    "INT8": model_config_pb2.TYPE_INT8,
    "INT16": model_config_pb2.TYPE_INT16,
    "INT32": model_config_pb2.TYPE_INT32,
    "INT64": model_config_pb2.TYPE_INT64,
    "FP16": model_config_pb2.TYPE_FP16,
    "FP32": model_config_pb2.TYPE_FP32,
    "FP64": model_config_pb2.TYPE_FP64,
    "BF16": model_config_pb2.TYPE_BF16,
    "BYTES": model_config_pb2.TYPE_STRING,
}

# Fields a preset may set. Everything else (inputs, model_operations, runtime, warmup files,
# repository agents, ...) is either ours to set or a way to run code or read files.
_TEMPLATE_FIELDS = frozenset(
    {
        "backend",
        "platform",
        "default_model_filename",
        "instance_group",
        "dynamic_batching",
        "optimization",
        "response_cache",
        "parameters",
        "metric_tags",
        "model_transaction_policy",
    }
)
_FORBIDDEN_PARAMETERS = frozenset({"EXECUTION_ENV_PATH"})
_MODEL_BACKENDS = frozenset({"python", "onnxruntime"})

# Triton model names Lastmile generates: dot-joined checked names ("ws.model", "ws.pipe.v3").
_TRITON_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}(\.[a-z0-9][a-z0-9_-]{0,62}){0,3}$")


def check_triton_name(name: str) -> str:
    """Triton names become folder names: same alphabet as ``manager.names``, '.' joined."""
    if not isinstance(name, str) or not _TRITON_NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"invalid Triton model name {name!r}",
            hint="build it with manager.names.triton_model_name / triton_ensemble_name",
        )
    return name


def _is_list(field: Any) -> bool:
    """A repeated field that is not a map (maps merge key by key, lists would append)."""
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 6; label() is deprecated
    if repeated is None:
        repeated = field.label == field.LABEL_REPEATED
    is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
    return bool(repeated) and not is_map


def merge_template(config: ModelConfig, name: str, *, template_dirs: TemplateDirs = None) -> None:
    """Merge preset ``name`` into ``config`` after checking it against the allow-list.

    A repeated field the preset sets (``instance_group``) replaces the config's, so a tuning
    preset overrides the backend preset instead of adding a second instance group.
    """
    text = load_template(name, extra_dirs=template_dirs)
    fragment = config_from_text(text, where=f"model config template {name!r}")
    for field, _ in fragment.ListFields():
        if field.name not in _TEMPLATE_FIELDS:
            raise InvalidInput(
                f"model config template {name!r} sets {field.name!r}, which presets may not set",
                hint="allowed: " + ", ".join(sorted(_TEMPLATE_FIELDS)),
            )
    forbidden = _FORBIDDEN_PARAMETERS.intersection(fragment.parameters)
    if forbidden:
        raise InvalidInput(
            f"model config template {name!r} sets parameter {sorted(forbidden)[0]!r}",
            hint="custom execution environments need a workspace admin",
        )
    for field, _ in fragment.ListFields():
        if _is_list(field):
            config.ClearField(field.name)
    text_format.Merge(text, config)


def _versions(versions: Sequence[int]) -> list[int]:
    result = sorted(set(versions))
    if not result or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in result):
        raise InvalidInput(
            f"invalid model versions {list(versions)!r}", hint="give one or more integers >= 1"
        )
    return result


def _set_tensor(message: Any, spec: TensorSpec, *, batched: bool, reshape: bool = True) -> None:
    datatype = KSERVE_TO_TRITON.get(spec.datatype)
    if datatype is None:
        raise InvalidInput(f"tensor {spec.name!r} has unknown datatype {spec.datatype!r}")
    message.name = spec.name
    message.data_type = datatype
    dims = spec.shape[1:] if batched else spec.shape
    if dims:
        message.dims.extend(dims)
    else:
        # Triton wants at least one dim: a scalar per batch item is [1], reshaped to [] for
        # the model. Ensembles pass tensors in the steps' outer shape and must not reshape.
        message.dims.append(1)
        if reshape:
            message.reshape.SetInParent()


def effective_max_batch_size(
    signature: Signature, *, default: int, options: ServingOptions | None = None
) -> int:
    """The ``max_batch_size`` that ``model_config`` gives this model: the serving option when
    set (0 included), else ``default``; 0 when the model has no batch dimension.

    It is its own function so that whoever builds an ensemble over the model (which may not
    batch more than any of its steps) reads the same number the step's config gets, instead
    of re-deriving it and drifting (a step configured to 256 under an ensemble left at 64).
    """
    options = options or ServingOptions()
    size = default if options.max_batch_size is None else options.max_batch_size
    return size if signature.batched and size > 0 else 0


def model_config(
    *,
    triton_name: str,
    signature: Signature,
    profile: Literal["cpu", "gpu"],
    max_batch_size: int,
    versions: Sequence[int],
    dynamic_batching: bool = True,
    tuning: Sequence[str] = (),
    template: str | None = None,
    template_dirs: TemplateDirs = None,
    options: ServingOptions | None = None,
) -> ModelConfig:
    """The config of one imported ONNX model serving ``versions``.

    ``profile`` picks the backend preset (``cpu``: the generated Python-backend model.py,
    ``gpu``: onnxruntime); ``template`` overrides that choice (e.g. ``onnxruntime-cpu``) and
    ``tuning`` names extra presets merged last. ``options`` (the model's serving options)
    adds its own presets and then sets its explicit fields.
    """
    options = options or ServingOptions()
    if options.max_batch_size is not None:
        max_batch_size = options.max_batch_size
    tuning = [*tuning, *options.tuning]
    check_triton_name(triton_name)
    if profile not in BASE_TEMPLATES:
        raise InvalidInput(f"unknown repository profile {profile!r}", hint="use 'cpu' or 'gpu'")
    if max_batch_size < 0:
        raise InvalidInput(f"max_batch_size must be >= 0, not {max_batch_size}")
    max_batch_size = effective_max_batch_size(signature, default=max_batch_size, options=options)
    batched = max_batch_size > 0
    config = ModelConfig()
    merge_template(config, template or BASE_TEMPLATES[profile], template_dirs=template_dirs)
    if dynamic_batching and batched:
        merge_template(config, DYNAMIC_BATCHING_TEMPLATE, template_dirs=template_dirs)
    for name in tuning:
        merge_template(config, name, template_dirs=template_dirs)
    if config.platform or config.backend not in _MODEL_BACKENDS:
        raise InvalidInput(
            f"model config template for {triton_name!r} selects "
            f"{config.platform or config.backend or 'no backend'!r}",
            hint="ONNX models are served by backend 'python' (cpu) or 'onnxruntime'",
        )
    if not batched:
        config.ClearField("dynamic_batching")  # Triton refuses it with max_batch_size 0
    config.name = triton_name
    config.max_batch_size = max_batch_size
    for spec in signature.inputs:
        _set_tensor(config.input.add(), spec, batched=batched)
    for spec in signature.outputs:
        _set_tensor(config.output.add(), spec, batched=batched)
    config.version_policy.specific.versions.extend(_versions(versions))
    _apply_options(config, options, signature=signature, batched=batched, profile=profile)
    if config.backend == "onnxruntime":
        config.default_model_filename = MODEL_FILENAME
    else:
        config.ClearField("default_model_filename")  # the Python backend loads model.py
    return config


def _apply_options(
    config: ModelConfig,
    options: ServingOptions,
    *,
    signature: Signature,
    batched: bool,
    profile: str,
) -> None:
    """Set the explicit serving options; each refusal says which option and why."""
    where = f"serving options of {config.name!r}"
    if options.instances is not None or options.gpus is not None:
        if options.instances is not None and not 1 <= options.instances <= 64:
            raise InvalidInput(f"{where}: instances must be 1-64, not {options.instances}")
        if options.gpus is not None and profile != "gpu":
            raise InvalidInput(
                f"{where}: gpus {list(options.gpus)} need the gpu profile",
                hint="set LASTMILE_PROFILE=gpu on a Triton with GPUs, or drop --gpus",
            )
        group = config.instance_group[0] if config.instance_group else config.instance_group.add()
        if options.instances is not None:
            group.count = options.instances
        if options.gpus is not None:
            group.kind = model_config_pb2.ModelInstanceGroup.KIND_GPU
            del group.gpus[:]
            group.gpus.extend(options.gpus)
    if options.preferred_batch_sizes or options.max_queue_delay_us is not None:
        if not batched:
            raise InvalidInput(
                f"{where}: dynamic batching needs a batch dimension, and this model has none",
                hint="export the model with a dynamic first dimension, or drop the batching "
                "options",
            )
        bad = [b for b in options.preferred_batch_sizes if not 1 <= b <= config.max_batch_size]
        if bad:
            raise InvalidInput(
                f"{where}: preferred batch sizes {bad} are outside 1..{config.max_batch_size}",
                hint="use sizes up to max_batch_size",
            )
        batching = config.dynamic_batching
        del batching.preferred_batch_size[:]
        batching.preferred_batch_size.extend(sorted(set(options.preferred_batch_sizes)))
        if options.max_queue_delay_us is not None:
            if options.max_queue_delay_us < 0:
                raise InvalidInput(f"{where}: max queue delay must be >= 0 microseconds")
            batching.max_queue_delay_microseconds = options.max_queue_delay_us
    if options.response_cache is not None:
        config.response_cache.enable = options.response_cache
    if options.warmup:
        warmup = config.model_warmup.add()
        warmup.name = "zeros"
        warmup.batch_size = 1 if batched else 0
        for spec in signature.inputs:
            dims = spec.shape[1:] if batched else spec.shape
            if any(d < 0 for d in dims):
                raise InvalidInput(
                    f"{where}: warmup needs fixed dims, input {spec.name!r} has {list(dims)}",
                    hint="drop --warmup for models with variable-size inputs",
                )
            tensor = warmup.inputs[spec.name]
            tensor.data_type = KSERVE_TO_TRITON[spec.datatype]
            tensor.dims.extend(dims or [1])
            tensor.zero_data = True


def _merged_input(specs: Sequence[TensorSpec], name: str) -> TensorSpec:
    """One pipeline input read by several steps: keep every dim any of them knows."""
    shape = list(specs[0].shape)
    for spec in specs[1:]:
        shape = [a if a != -1 else b for a, b in zip(shape, spec.shape, strict=True)]
    return TensorSpec(name=name, datatype=specs[0].datatype, shape=tuple(shape))


def _pipeline_inputs(pipeline: PipelineSpec) -> list[TensorSpec]:
    readers: dict[str, list[TensorSpec]] = {}
    for step in pipeline.steps:
        for model_input, ref in step.inputs.items():
            spec = step.signature.input(model_input)
            if ref.step == PIPELINE_INPUTS and spec is not None:
                readers.setdefault(ref.tensor, []).append(spec)
    return [_merged_input(specs, name) for name, specs in readers.items()]


def ensemble_config(
    *,
    triton_name: str,
    pipeline: PipelineSpec,
    step_models: Mapping[str, str],
    max_batch_size: int,
    template_dirs: TemplateDirs = None,
) -> ModelConfig:
    """The ensemble that runs a pipeline version; ``step_models``: step → Triton model name.

    Step outputs travel as ``step.tensor`` unless the pipeline exposes them, in which case
    they take the output's name; pipeline inputs keep theirs.
    """
    check_triton_name(triton_name)
    validate_pipeline(pipeline)
    for step in pipeline.steps:
        if step.name not in step_models:
            raise PipelineError(
                f"pipeline {pipeline.name!r}, step {step.name!r}: no Triton model given "
                f"for model {step.model!r}",
                hint="deploy the step's model first",
            )
        check_triton_name(step_models[step.name])
    batched = max_batch_size > 0 and all(s.signature.batched for s in pipeline.steps)
    config = ModelConfig()
    merge_template(config, ENSEMBLE_TEMPLATE, template_dirs=template_dirs)
    if config.platform != "ensemble" or config.backend:
        raise InvalidInput(f"the {ENSEMBLE_TEMPLATE!r} template must set platform 'ensemble'")
    config.name = triton_name
    config.max_batch_size = max_batch_size if batched else 0
    for spec in _pipeline_inputs(pipeline):
        _set_tensor(config.input.add(), spec, batched=batched, reshape=False)
    for spec in pipeline.output_specs():
        _set_tensor(config.output.add(), spec, batched=batched, reshape=False)
    names = ensemble_tensor_names(pipeline)
    for step in pipeline.steps:
        entry = config.ensemble_scheduling.step.add()
        entry.model_name = step_models[step.name]
        entry.model_version = step.version
        for model_input, ref in step.inputs.items():
            source = ref.tensor if ref.step == PIPELINE_INPUTS else names[(ref.step, ref.tensor)]
            entry.input_map[model_input] = source
        for output in step.signature.outputs:
            if (step.name, output.name) in names:
                entry.output_map[output.name] = names[(step.name, output.name)]
    log.debug("ensemble %s: %d steps", triton_name, len(pipeline.steps))
    return config


def load_config_file(path: Path) -> ModelConfig:
    """A config.pbtxt parsed with the real schema (unknown fields are an error)."""
    return config_from_text(path.read_text(encoding="utf-8"), where=str(path))
