"""What a drift assay on one step watches: the gateway captures a pipeline's own inputs and
outputs, so a step's tensor can be judged where it is one of them — a step input fed by a
pipeline input (whatever the pipeline calls it), or a step output the pipeline exposes. The
tensors between steps never leave Triton, and an assay on one is refused with where it comes
from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from manager import store
from manager.domain import PIPELINE_INPUTS, PipelineSpec
from manager.errors import InvalidInput


@dataclass(frozen=True)
class StepTensor:
    """A step's tensor as captured: the pipeline's ``side``/``captured`` name, and the step's
    own (``model``, ``version``, ``own``) by which its import baseline knows it."""

    side: str
    captured: str
    model: str
    version: int
    own: str


def step_tensor(
    session: Any, pipe: store.Pipeline, *, model: str, side: str, tensor: str, version: int | None
) -> StepTensor:
    """Where the step running ``model`` sees its ``side`` tensor ``tensor`` in the gateway's
    capture, in ``version`` of the pipeline (None: every version that runs the model, which
    must agree). InvalidInput says why one cannot be watched."""
    versions = [
        pv
        for pv in store.list_pipeline_versions(session, pipeline=pipe)
        if version is None or pv.version == version
    ]
    found: set[StepTensor] = set()
    for pv in versions:
        spec = PipelineSpec.from_dict(pv.spec)
        for step in spec.steps:
            if step.model == model:
                found.add(_captured(spec, step.name, model, step.version, side, tensor))
    if not found:
        models = sorted({s.model for pv in versions for s in PipelineSpec.from_dict(pv.spec).steps})
        raise InvalidInput(
            f"pipeline {pipe.name!r} has no step running model {model!r}",
            hint=f"its steps run: {', '.join(models) or 'nothing'}",
        )
    names = {(t.side, t.captured) for t in found}
    if len(names) > 1:
        shown = ", ".join(sorted(f"{s}/{c}" for s, c in names))
        raise InvalidInput(
            f"{side} tensor {tensor!r} of step {model!r} is a different pipeline tensor in "
            f"different versions ({shown})",
            hint="choose one with --version, or watch the pipeline's own tensor",
        )
    return max(found, key=lambda t: t.version)


def _captured(
    spec: PipelineSpec, step: str, model: str, version: int, side: str, tensor: str
) -> StepTensor:
    watch = "watch the pipeline's own input or output, or the step's live figures (a health "
    watch += "assay, --health queue_ms)"
    if side == "inputs":
        ref = spec.step(step).inputs.get(tensor)  # type: ignore[union-attr]
        if ref is None:
            raise InvalidInput(f"step {model!r} has no input {tensor!r} in this pipeline")
        if ref.step != PIPELINE_INPUTS:
            raise InvalidInput(
                f"input {tensor!r} of step {model!r} is step {ref.step!r}'s output "
                f"{ref.tensor!r}: tensors between steps are not captured",
                hint=watch,
            )
        return StepTensor(side, ref.tensor, model, version, tensor)
    exposed = sorted(
        name for name, ref in spec.outputs.items() if ref.step == step and ref.tensor == tensor
    )
    if not exposed:
        raise InvalidInput(
            f"output {tensor!r} of step {model!r} is not one of the pipeline's outputs: "
            "tensors between steps are not captured",
            hint=watch,
        )
    return StepTensor(side, exposed[0], model, version, tensor)
