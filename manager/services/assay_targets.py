"""What a drift assay on one step watches. The gateway captures a pipeline's own inputs and
outputs, so a step's tensor that is one of them — a step input fed by a pipeline input
(whatever the pipeline calls it), a step output the pipeline exposes — is watched there. A
tensor between steps never leaves Triton: the capture summariser computes it by replaying the
captured inputs through the steps before it (manager.services.step_replay), stored as side
"step", name "<step>.<output>" of the step output it is; an assay on one is refused when a step
it would replay cannot be run here (a model that is not ONNX)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from manager import store
from manager.assays.replay import STEP_SIDE, step_key
from manager.domain import PIPELINE_INPUTS, PipelineSpec
from manager.errors import InvalidInput
from manager.names import TENSOR_RE
from manager.services.step_replay import check_replayable


@dataclass(frozen=True)
class StepTensor:
    """A step's tensor as stored: ``side``/``captured`` (a pipeline tensor, or side
    ``"step"`` for a replayed one), and ``known_as``: (model, version, ``<side>/<name>``) by
    which the import baselines of the step's model (and, between steps, of the model whose
    output it is) know it, in the order a default baseline is looked for."""

    side: str
    captured: str
    model: str
    version: int
    known_as: tuple[tuple[str, int, str], ...]


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
                found.add(
                    _captured(session, pipe, spec, step.name, model, step.version, side, tensor)
                )
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
    session: Any,
    pipe: store.Pipeline,
    spec: PipelineSpec,
    step: str,
    model: str,
    version: int,
    side: str,
    tensor: str,
) -> StepTensor:
    node = spec.step(step)
    assert node is not None
    asked = f"{side[:-1]} {tensor!r} of step {model!r}"
    known_as: tuple[tuple[str, int, str], ...] = ((model, version, f"{side}/{tensor}"),)
    source = (step, tensor)  # the step output the tensor is
    if side == "inputs":
        ref = node.inputs.get(tensor)
        if ref is None:
            raise InvalidInput(f"step {model!r} has no input {tensor!r} in this pipeline")
        if ref.step == PIPELINE_INPUTS:
            return StepTensor(side, ref.tensor, model, version, known_as)
        producer = spec.step(ref.step)
        assert producer is not None  # a stored spec's references resolve
        known_as += ((producer.model, producer.version, f"outputs/{ref.tensor}"),)
        source = (ref.step, ref.tensor)
    elif node.signature.output(tensor) is None:
        raise InvalidInput(f"step {model!r} has no output {tensor!r}")
    exposed = sorted(name for name, r in spec.outputs.items() if (r.step, r.tensor) == source)
    if exposed:  # the pipeline answers it: captured as that output
        return StepTensor("outputs", exposed[0], model, version, known_as)
    key = step_key(*source)
    if not TENSOR_RE.fullmatch(key):
        raise InvalidInput(
            f"{asked} is stored as {key!r}, longer than a tensor name may be",
            hint="give the step or its output a shorter name in a new pipeline version",
        )
    workspace = session.get(store.Workspace, pipe.workspace_id)
    check_replayable(session, workspace, spec, key, what=asked)
    return StepTensor(STEP_SIDE, key, model, version, known_as)
