"""Checks that a pipeline's steps fit together, before Triton ever sees the ensemble.

Triton does validate ensembles, but only at load time and with messages about internal
tensor names; a person editing a pipeline needs to hear which step and which tensor is wrong
and what to change. So every rule here raises a ``PipelineError`` naming the pipeline, the
step and the tensor, with a hint. The ensemble builder relies on a spec having passed.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from manager.domain import PIPELINE_INPUTS, PipelineSpec, PipelineStep, TensorSpec
from manager.errors import InvalidInput, PipelineError
from manager.names import check_name, check_tensor_name

log = logging.getLogger(__name__)

__all__ = ["ensemble_tensor_names", "shapes_compatible", "sort_steps", "validate_pipeline"]


def _error(
    spec: PipelineSpec, problem: str, *, hint: str, step: str | None = None
) -> PipelineError:
    where = f"pipeline {spec.name!r}" + (f", step {step!r}" if step else "")
    return PipelineError(f"{where}: {problem}", hint=hint)


def shapes_compatible(a: tuple[int, ...], b: tuple[int, ...], *, batched: bool) -> bool:
    """Same rank and equal dims where both are known; the batch dim is not compared."""
    if len(a) != len(b):
        return False
    start = 1 if batched else 0
    return all(x == y or x == -1 or y == -1 for x, y in zip(a[start:], b[start:], strict=True))


def _fmt(spec: TensorSpec) -> str:
    return f"{spec.datatype}{list(spec.shape)}"


def _check_names(spec: PipelineSpec) -> None:
    try:
        check_name(spec.name, kind="pipeline")
    except InvalidInput as exc:
        raise PipelineError(exc.message, hint=exc.hint) from exc
    for step in spec.steps:
        try:
            check_name(step.name, kind="step")
            check_name(step.model, kind="model")
            for model_input, ref in step.inputs.items():
                check_tensor_name(model_input, where=f"step {step.name!r} inputs")
                if ref is not None and ref.tensor:
                    check_tensor_name(ref.tensor, where=f"the source of {model_input!r}")
        except InvalidInput as exc:
            raise _error(spec, exc.message, step=step.name, hint=exc.hint or "") from exc
        if step.name == PIPELINE_INPUTS:
            raise _error(
                spec,
                f"a step may not be called {PIPELINE_INPUTS!r}",
                step=step.name,
                hint=f"${PIPELINE_INPUTS}.NAME refers to the pipeline's inputs; rename the step",
            )
        if not isinstance(step.version, int) or step.version < 1:
            raise _error(
                spec,
                f"model {step.model!r} version {step.version!r} is not a version number",
                step=step.name,
                hint="versions are integers from 1",
            )
    for out_name in spec.outputs:
        try:
            check_tensor_name(out_name, where=f"pipeline {spec.name!r} outputs")
        except InvalidInput as exc:
            raise PipelineError(exc.message, hint=exc.hint) from exc


def _check_unique(spec: PipelineSpec) -> None:
    seen: set[str] = set()
    for step in spec.steps:
        if step.name in seen:
            raise _error(
                spec,
                f"two steps are named {step.name!r}",
                step=step.name,
                hint="give each step its own name; refer to outputs as $STEP.TENSOR",
            )
        seen.add(step.name)


def _dependencies(step: PipelineStep) -> list[str]:
    return [
        ref.step
        for ref in step.inputs.values()
        if ref is not None and ref.step and ref.step != PIPELINE_INPUTS
    ]


def _find_cycle(spec: PipelineSpec) -> list[str] | None:
    """A list a → b → … → a of step names if the steps depend on each other in a circle."""
    by_name = {s.name: s for s in spec.steps}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in _dependencies(by_name[name]):
            if dep not in by_name:
                continue
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[name] = 2
        return None

    for step in spec.steps:
        if step.name not in state and (cycle := visit(step.name)):
            return cycle
    return None


def sort_steps(spec: PipelineSpec) -> PipelineSpec:
    """The same pipeline with steps in a dependency order (stable), for specs typed by hand.

    Unknown references are left for ``validate_pipeline`` to report; a cycle is an error.
    """
    cycle = _find_cycle(spec)
    if cycle:
        raise _circular(spec, cycle)
    by_name = {s.name: s for s in spec.steps}
    ordered: list[PipelineStep] = []
    placed: set[str] = set()

    def place(step: PipelineStep) -> None:
        if step.name in placed:
            return
        placed.add(step.name)
        for dep in _dependencies(step):
            if dep in by_name:
                place(by_name[dep])
        ordered.append(step)

    for step in spec.steps:
        place(step)
    return replace(spec, steps=tuple(ordered))


def _circular(spec: PipelineSpec, cycle: list[str]) -> PipelineError:
    step = spec.step(cycle[0])
    tensor = ""
    if step is not None:
        for model_input, ref in step.inputs.items():
            if ref is not None and ref.step == cycle[1]:
                tensor = f" (input {model_input!r} reads {ref})"
                break
    return _error(
        spec,
        "steps depend on each other in a circle: " + " → ".join(cycle) + tensor,
        step=cycle[0],
        hint="a pipeline is a directed acyclic graph; break the circle",
    )


def _check_batching(spec: PipelineSpec) -> None:
    batched = [s for s in spec.steps if s.signature.batched]
    unbatched = [s for s in spec.steps if not s.signature.batched]
    if not batched or not unbatched:
        return
    odd = unbatched[0]
    fixed = next(
        (
            t
            for t in (*odd.signature.inputs, *odd.signature.outputs)
            if not t.shape or t.shape[0] != -1
        ),
        None,
    )
    why = f"tensor {fixed.name!r} has shape {list(fixed.shape)}" if fixed else "it is not batched"
    raise _error(
        spec,
        f"model {odd.model!r} has no dynamic batch dimension ({why}) while step "
        f"{batched[0].name!r} is batched; Triton cannot mix them in one ensemble",
        step=odd.name,
        hint="export every model with a dynamic first dimension, or none",
    )


def _check_fit(
    spec: PipelineSpec,
    step: PipelineStep,
    model_input: str,
    consumer: TensorSpec,
    source: TensorSpec,
    source_text: str,
) -> None:
    if source.datatype != consumer.datatype:
        raise _error(
            spec,
            f"input {model_input!r} expects {consumer.datatype} but {source_text} "
            f"is {source.datatype}",
            step=step.name,
            hint="feed a tensor of the same datatype, or add a step that casts it",
        )
    if not shapes_compatible(source.shape, consumer.shape, batched=step.signature.batched):
        raise _error(
            spec,
            f"input {model_input!r} expects shape {list(consumer.shape)} but {source_text} "
            f"has shape {list(source.shape)}",
            step=step.name,
            hint="dims must be equal where both are known; -1 matches anything",
        )


def _check_steps(spec: PipelineSpec) -> None:
    position = {s.name: i for i, s in enumerate(spec.steps)}
    pipeline_inputs: dict[str, tuple[PipelineStep, str, TensorSpec]] = {}
    for index, step in enumerate(spec.steps):
        signature = step.signature
        for model_input, ref in step.inputs.items():
            consumer = signature.input(model_input)
            if consumer is None:
                known = ", ".join(repr(t.name) for t in signature.inputs)
                raise _error(
                    spec,
                    f"model {step.model!r} has no input {model_input!r}",
                    step=step.name,
                    hint=f"its inputs are {known}",
                )
            if ref is None or not ref.step or not ref.tensor:
                raise _error(
                    spec,
                    f"input {model_input!r} has no source",
                    step=step.name,
                    hint="set it to $inputs.NAME or $STEP.TENSOR",
                )
            if ref.step == PIPELINE_INPUTS:
                if ref.tensor not in pipeline_inputs:
                    pipeline_inputs[ref.tensor] = (step, model_input, consumer)
                    continue
                first_step, first_input, first_spec = pipeline_inputs[ref.tensor]
                text = (
                    f"pipeline input {ref.tensor!r} (read by step {first_step.name!r} as "
                    f"{first_input!r}, {_fmt(first_spec)})"
                )
                _check_fit(spec, step, model_input, consumer, first_spec, text)
                continue
            producer = spec.step(ref.step)
            if producer is None:
                raise _error(
                    spec,
                    f"input {model_input!r} reads {ref}, but there is no step {ref.step!r}",
                    step=step.name,
                    hint="known steps: " + ", ".join(repr(s.name) for s in spec.steps),
                )
            if position[ref.step] >= index:
                raise _error(
                    spec,
                    f"input {model_input!r} reads {ref} from step {ref.step!r}, "
                    "which comes later in the pipeline",
                    step=step.name,
                    hint=f"list step {ref.step!r} before {step.name!r}: steps run in order",
                )
            produced = producer.signature.output(ref.tensor)
            if produced is None:
                known = ", ".join(repr(t.name) for t in producer.signature.outputs)
                raise _error(
                    spec,
                    f"input {model_input!r} reads {ref}, but model {producer.model!r} of step "
                    f"{producer.name!r} has no output {ref.tensor!r}",
                    step=step.name,
                    hint=f"its outputs are {known}",
                )
            _check_fit(spec, step, model_input, consumer, produced, f"{ref}")
        for tensor in signature.inputs:
            if tensor.name not in step.inputs:
                raise _error(
                    spec,
                    f"input {tensor.name!r} of model {step.model!r} is not fed",
                    step=step.name,
                    hint=f"map it: {tensor.name}: $inputs.NAME or $STEP.TENSOR",
                )


def _check_outputs(spec: PipelineSpec) -> None:
    if not spec.outputs:
        raise _error(
            spec,
            "has no outputs",
            hint="expose at least one step output, e.g. outputs: {score: $STEP.TENSOR}",
        )
    inputs = {t.name for t in spec.input_specs()}
    exposed: dict[tuple[str, str], str] = {}
    for out_name, ref in spec.outputs.items():
        if ref is None or not ref.step or not ref.tensor:
            raise _error(
                spec, f"pipeline output {out_name!r} refers to nothing", hint="set $STEP.TENSOR"
            )
        if ref.step == PIPELINE_INPUTS:
            raise _error(
                spec,
                f"pipeline output {out_name!r} refers to pipeline input {ref.tensor!r}",
                hint="outputs must come from a step; the caller already has its inputs",
            )
        step = spec.step(ref.step)
        if step is None:
            raise _error(
                spec,
                f"pipeline output {out_name!r} refers to {ref}, but there is no step {ref.step!r}",
                hint="known steps: " + ", ".join(repr(s.name) for s in spec.steps),
            )
        if step.signature.output(ref.tensor) is None:
            known = ", ".join(repr(t.name) for t in step.signature.outputs)
            raise _error(
                spec,
                f"pipeline output {out_name!r} refers to {ref}, but model {step.model!r} has "
                f"no output {ref.tensor!r}",
                step=step.name,
                hint=f"its outputs are {known}",
            )
        if out_name in inputs:
            raise _error(
                spec,
                f"pipeline output {out_name!r} has the name of a pipeline input",
                step=step.name,
                hint="give the output another name",
            )
        key = (ref.step, ref.tensor)
        if key in exposed:
            raise _error(
                spec,
                f"output {ref.tensor!r} is exposed twice, as {exposed[key]!r} and {out_name!r}",
                step=step.name,
                hint="Triton maps each step output to one ensemble tensor; keep one name",
            )
        exposed[key] = out_name


def _check_used(spec: PipelineSpec) -> None:
    used = {ref.step for ref in spec.outputs.values()}
    for step in spec.steps:
        used.update(_dependencies(step))
    for step in spec.steps:
        if step.name not in used:
            outs = ", ".join(repr(t.name) for t in step.signature.outputs)
            raise _error(
                spec,
                f"no step and no pipeline output uses its outputs ({outs})",
                step=step.name,
                hint="remove the step, or expose one of its outputs as a pipeline output",
            )


def ensemble_tensor_names(spec: PipelineSpec) -> dict[tuple[str, str], str]:
    """The ensemble tensor each used step output travels as: ``step.tensor`` or, when the
    pipeline exposes it, the output's own name."""
    names: dict[tuple[str, str], str] = {}
    for step in spec.steps:
        for ref in step.inputs.values():
            if ref.step != PIPELINE_INPUTS:
                names[(ref.step, ref.tensor)] = f"{ref.step}.{ref.tensor}"
    for out_name, ref in spec.outputs.items():
        names[(ref.step, ref.tensor)] = out_name
    return names


def _check_tensor_collisions(spec: PipelineSpec) -> None:
    owners: dict[str, str] = {t.name: "a pipeline input" for t in spec.input_specs()}
    for (step, tensor), name in ensemble_tensor_names(spec).items():
        owner = f"output {tensor!r} of step {step!r}"
        if name in owners:
            raise _error(
                spec,
                f"{owner} and {owners[name]} would share the ensemble tensor {name!r}",
                step=step,
                hint="rename the pipeline input or output so that names are unique",
            )
        owners[name] = owner


def validate_pipeline(spec: PipelineSpec) -> None:
    """Raise ``PipelineError`` for the first rule the spec breaks; return if it is sound."""
    if not spec.steps:
        raise _error(spec, "has no steps", hint="add at least one step")
    _check_names(spec)
    _check_unique(spec)
    cycle = _find_cycle(spec)
    if cycle:
        raise _circular(spec, cycle)
    _check_batching(spec)
    _check_steps(spec)
    _check_outputs(spec)
    _check_used(spec)
    _check_tensor_collisions(spec)
    log.debug("pipeline %s: %d steps are consistent", spec.name, len(spec.steps))
