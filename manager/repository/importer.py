"""Reads a foreign Triton repository back into Lastmile's terms: signatures and pipelines.

``lastmile repo import`` registers each model folder (its versions and config) and each
ensemble as a pipeline. The registry thinks in ``Signature`` and ``PipelineSpec``; Triton
configs think in dims, reshapes and input/output maps. These two functions translate, for a
repository that ``validate_repository`` found clean; anything that still does not fit raises
``PipelineError`` / ``InvalidInput`` naming the ensemble, the step and the tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from manager.domain import (
    PIPELINE_INPUTS,
    PipelineSpec,
    PipelineStep,
    Signature,
    TensorRef,
    TensorSpec,
)
from manager.errors import InvalidInput, PipelineError
from manager.names import NAME_RE
from manager.repository.config import KSERVE_TO_TRITON
from manager.repository.pipeline import sort_steps, validate_pipeline
from manager.repository.reader import RepoModel, Repository

__all__ = ["ensemble_pipeline", "model_signature"]

TRITON_TO_KSERVE = {value: key for key, value in KSERVE_TO_TRITON.items()}


def _tensor(model: RepoModel, io: Any, *, batched: bool) -> TensorSpec:
    datatype = TRITON_TO_KSERVE.get(io.data_type)
    if datatype is None:
        raise InvalidInput(
            f"model {model.name!r}, tensor {io.name!r}: data type {io.data_type} has no "
            "KServe name",
            hint="use one of Triton's TYPE_* data types",
        )
    # The model sees the reshape (a batched scalar is dims [1] reshaped to []).
    dims = tuple(io.reshape.shape) if io.HasField("reshape") else tuple(io.dims)
    return TensorSpec(io.name, datatype, (-1, *dims) if batched else dims)


def model_signature(model: RepoModel) -> Signature:
    """The signature a registered model gets from its Triton config (batch dim as -1)."""
    batched = model.config.max_batch_size > 0
    return Signature(
        inputs=tuple(_tensor(model, io, batched=batched) for io in model.config.input),
        outputs=tuple(_tensor(model, io, batched=batched) for io in model.config.output),
        batched=batched,
    )


def _step_names(ensemble: RepoModel, model_names: Mapping[str, str]) -> list[str]:
    """Steps are named after their registered model; a model used twice gets '-2', ..."""
    names: list[str] = []
    for index, step in enumerate(ensemble.config.ensemble_scheduling.step):
        base = model_names.get(step.model_name)
        if base is None:
            raise InvalidInput(
                f"ensemble {ensemble.name!r}, step {index + 1}: no registered name given for "
                f"model {step.model_name!r}",
                hint="import (or name) every step model before the ensemble",
            )
        # Lastmile's own exports name internal tensors "<step>.<tensor>": keep those names.
        outputs = {t.name for t in ensemble.config.output}
        prefixes = {
            value[: -len(key) - 1]
            for key, value in step.output_map.items()
            if value not in outputs and value.endswith(f".{key}")
        }
        if len(prefixes) == 1 and NAME_RE.fullmatch(next(iter(prefixes))):
            base = next(iter(prefixes))
        name, n = base, 2
        while name in names or name == PIPELINE_INPUTS:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def ensemble_pipeline(
    repo: Repository,
    ensemble: RepoModel,
    *,
    pipeline_name: str,
    model_names: Mapping[str, str],
) -> PipelineSpec:
    """The pipeline an ensemble runs, in the registry's terms.

    ``model_names`` maps each step's Triton model name to its registered model name (steps
    are named after it). A step with ``model_version: -1`` is pinned to the newest version
    the model serves, because a pipeline version names exact model versions. Steps that are
    ensembles themselves are refused: Lastmile pipelines are made of models.
    """
    config = ensemble.config
    step_names = _step_names(ensemble, model_names)
    inputs = {t.name for t in config.input}
    producers: dict[str, TensorRef] = {}
    for name, step in zip(step_names, config.ensemble_scheduling.step, strict=True):
        for key, tensor in step.output_map.items():
            producers[tensor] = TensorRef(name, key)
    steps = []
    for index, (name, step) in enumerate(
        zip(step_names, config.ensemble_scheduling.step, strict=True)
    ):
        where = f"ensemble {ensemble.name!r}, step {index + 1} (model {step.model_name!r})"
        model = repo.model(step.model_name)
        if model is None or model.is_ensemble:
            raise PipelineError(
                f"{where}: is not a model in the repository"
                if model is None
                else f"{where}: is an ensemble; Lastmile pipelines are made of models",
                hint="import its steps into this pipeline instead"
                if model
                else "validate the repository first",
            )
        refs: dict[str, TensorRef] = {}
        for key, tensor in sorted(step.input_map.items()):
            ref = TensorRef(PIPELINE_INPUTS, tensor) if tensor in inputs else producers.get(tensor)
            if ref is None:
                raise PipelineError(
                    f"{where}, input {key!r}: ensemble tensor {tensor!r} has no writer",
                    hint="validate the repository first",
                )
            refs[key] = ref
        served = model.served_versions()
        version = step.model_version if step.model_version > 0 else max(served, default=0)
        steps.append(
            PipelineStep(
                name=name,
                model=model_names[step.model_name],
                version=version,
                signature=model_signature(model),
                inputs=refs,
            )
        )
    outputs: dict[str, TensorRef] = {}
    for out in config.output:
        if out.name not in producers:
            raise PipelineError(
                f"ensemble {ensemble.name!r}, output {out.name!r}: no step writes it",
                hint="validate the repository first",
            )
        outputs[out.name] = producers[out.name]
    spec = sort_steps(PipelineSpec(name=pipeline_name, steps=tuple(steps), outputs=outputs))
    validate_pipeline(spec)
    return spec
