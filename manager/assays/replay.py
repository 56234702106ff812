"""Tensors between a pipeline's steps, computed again from the pipeline inputs the gateway
captured (the pure part: no store, no files, no onnxruntime; the model runner is passed in).

The gateway sees a pipeline's own inputs and outputs; a tensor that one step hands to the next
never leaves Triton. For the ones a drift assay watches, the capture summariser
(manager.services.step_replay) runs the captured inputs through the steps upstream of the
tensor again and summarises what comes out like a captured tensor. Here:

* ``plan``: the upstream closure of the wanted step outputs, in the spec's topological order,
  with the outputs each step must give and the pipeline inputs it all reads;
* ``CapturedCalls``: the decoded pipeline inputs the summariser keeps, for the pipeline
  versions some assay needs a replay of, by window;
* ``chunks``: captured calls grouped into runs: concatenated along the batch dimension when
  every step of the plan batches (rows are independent, as Triton's batcher assumes), up to
  ``max_rows`` rows a run; otherwise one call a run;
* ``run``: one feed through the plan.

A replayed tensor is stored under side ``STEP_SIDE`` ("step"; a pipeline's sides are "inputs"
and "outputs") and the name ``<step>.<output>`` of the step output it is (``step_key``; step
names have no '.'), so it never meets a pipeline tensor, and two assays on the same tensor
(one step's output, the next step's input) share its summaries.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from manager.domain import NUMPY_DTYPES, PIPELINE_INPUTS, PipelineSpec, PipelineStep, TensorRef

STEP_SIDE = "step"
MAX_ROWS = 4096  # rows one replay run takes when the plan's steps batch

# (workspace, pipeline, version, window start)
WindowKey = tuple[str, str, int, datetime]
# a model runner: (step, output names, feed) -> the outputs, in that order
Runner = Callable[[PipelineStep, Sequence[str], dict[str, np.ndarray]], Sequence[Any]]


class ReplayError(ValueError):
    """A tensor that cannot be computed from what was captured, and why."""


def step_key(step: str, tensor: str) -> str:
    """The stored name of step ``step``'s output ``tensor``."""
    return f"{step}.{tensor}"


def parse_step_key(key: str) -> TensorRef:
    step, sep, tensor = key.partition(".")
    if not sep or not step or not tensor:
        raise ReplayError(f"{key!r} does not name a step output (<step>.<output>)")
    return TensorRef(step, tensor)


@dataclass(frozen=True)
class ReplayPlan:
    """What computing some step outputs of one pipeline version takes."""

    steps: tuple[PipelineStep, ...]  # the upstream closure, producers before consumers
    fetch: Mapping[str, tuple[str, ...]]  # step name -> the outputs to ask it for
    inputs: tuple[str, ...]  # the pipeline inputs read
    wanted: Mapping[str, TensorRef]  # stored name -> the step output it is
    batched: bool  # every step batches: calls may be concatenated along the batch dimension


def plan(spec: PipelineSpec, keys: Iterable[str]) -> ReplayPlan:
    """The plan computing the step outputs ``keys`` (``step_key`` names) of ``spec``.
    ReplayError names a key that is no step output of it."""
    by_name = {s.name: s for s in spec.steps}
    wanted: dict[str, TensorRef] = {}
    for key in sorted(set(keys)):
        ref = parse_step_key(key)
        step = by_name.get(ref.step)
        if step is None or step.signature.output(ref.tensor) is None:
            raise ReplayError(f"pipeline {spec.name!r} has no step output {ref}")
        wanted[key] = ref
    needed: dict[str, set[str]] = defaultdict(set)
    inputs: set[str] = set()
    todo = list(wanted.values())
    while todo:
        ref = todo.pop()
        outputs = needed[ref.step]
        if ref.tensor in outputs:
            continue
        first = not outputs
        outputs.add(ref.tensor)
        if not first:  # its inputs are on the list already
            continue
        for source in by_name[ref.step].inputs.values():
            if source.step == PIPELINE_INPUTS:
                inputs.add(source.tensor)
            elif source.step in by_name:
                todo.append(source)
            else:
                raise ReplayError(f"step {ref.step!r} reads {source}, which no step produces")
    steps = tuple(s for s in spec.steps if needed.get(s.name))
    order = {s.name: i for i, s in enumerate(steps)}
    for i, step in enumerate(steps):
        if any(order.get(r.step, -1) >= i for r in step.inputs.values() if r.step in order):
            raise ReplayError(f"pipeline {spec.name!r}: its steps are not in dependency order")
    return ReplayPlan(
        steps=steps,
        fetch={s.name: tuple(sorted(needed[s.name])) for s in steps},
        inputs=tuple(sorted(inputs)),
        wanted=wanted,
        batched=all(s.signature.batched for s in steps),
    )


Wants = Mapping[tuple[str, str], Sequence[tuple[int | None, str]]]


@dataclass
class CapturedCalls:
    """The captured inputs of the pipeline versions whose step tensors assays watch.

    ``wants``: (workspace, pipeline) -> (pipeline version or None for all, stored name) of
    each watched step tensor. ``stacks``: per window, the calls' decoded inputs, each entry
    a stack of one or more calls (every tensor with the calls along a new first axis)."""

    wants: Wants
    stacks: dict[WindowKey, list[dict[str, np.ndarray]]] = field(default_factory=dict)
    _keys: dict[tuple[str, str, int], frozenset[str]] = field(default_factory=dict, repr=False)

    def keys_for(self, workspace: str, pipeline: str, version: int) -> frozenset[str]:
        """The stored names of the step tensors some assay watches in this version."""
        ident = (workspace, pipeline, version)
        found = self._keys.get(ident)
        if found is None:
            watched = self.wants.get((workspace, pipeline), ())
            found = self._keys[ident] = frozenset(k for v, k in watched if v in (None, version))
        return found

    def add(self, key: WindowKey, tensors: Mapping[str, np.ndarray], *, stacked: bool) -> None:
        """One call's inputs (``stacked``: many calls', each tensor (calls, *shape))."""
        if not tensors:
            return
        stack = {n: (a if stacked else a[np.newaxis]) for n, a in tensors.items()}
        self.stacks.setdefault(key, []).append(stack)


@dataclass
class Chunk:
    """One run of the plan: ``calls`` captured calls in one feed of pipeline inputs."""

    calls: int
    feed: dict[str, np.ndarray]


def chunks(
    stacks: Sequence[Mapping[str, np.ndarray]], the_plan: ReplayPlan, max_rows: int = MAX_ROWS
) -> tuple[list[Chunk], int]:
    """The runs replaying ``stacks``, and how many calls lack an input the plan reads."""
    names = the_plan.inputs
    out: list[Chunk] = []
    lacking = 0
    # calls of one layout (each input's dims after the batch, dtype): (calls, rows, pieces)
    pending: dict[tuple[Any, ...], list[tuple[int, int, dict[str, np.ndarray]]]] = defaultdict(list)
    for stack in stacks:
        n = min((a.shape[0] for a in stack.values()), default=0)
        if any(name not in stack for name in names):
            lacking += n
            continue
        arrays = {name: stack[name] for name in names}
        if not (the_plan.batched and names and all(a.ndim >= 2 for a in arrays.values())):
            out += [Chunk(1, {k: a[i] for k, a in arrays.items()}) for i in range(n)]
            continue
        per_call = max(1, arrays[names[0]].shape[1])
        step = max(1, max_rows // per_call)
        layout = tuple((k, a.shape[2:], a.dtype.str) for k, a in arrays.items())
        for i in range(0, n, step):
            piece = {k: a[i : i + step] for k, a in arrays.items()}
            calls = piece[names[0]].shape[0]
            pending[layout].append((calls, calls * per_call, piece))
    for pieces in pending.values():
        group: list[tuple[int, int, dict[str, np.ndarray]]] = []
        for item in [*pieces, None]:
            if group and (item is None or sum(p[1] for p in group) + item[1] > max_rows):
                feed = {
                    k: np.concatenate([p[2][k].reshape(-1, *p[2][k].shape[2:]) for p in group])
                    for k in names
                }
                out.append(Chunk(sum(p[0] for p in group), feed))
                group = []
            if item is not None:
                group.append(item)
    return out, lacking


def run(the_plan: ReplayPlan, feed: Mapping[str, np.ndarray], runner: Runner) -> dict[str, Any]:
    """The wanted step outputs (stored name -> array) for one feed of pipeline inputs. Each
    step is fed its inputs cast to its model's datatypes. ReplayError: a tensor that is not
    numeric, or a runner that answers fewer outputs than asked."""
    values: dict[tuple[str, str], np.ndarray] = {
        (PIPELINE_INPUTS, name): np.asarray(array) for name, array in feed.items()
    }
    for step in the_plan.steps:
        step_feed: dict[str, np.ndarray] = {}
        for name, ref in step.inputs.items():
            value = values.get((ref.step, ref.tensor))
            if value is None:
                raise ReplayError(f"step {step.name!r} reads {ref}, which was not captured")
            spec = step.signature.input(name)
            dtype = NUMPY_DTYPES.get(spec.datatype) if spec is not None else None
            if dtype is None:
                what = spec.datatype if spec is not None else "unknown"
                raise ReplayError(f"input {name!r} of step {step.name!r} is {what}, not numeric")
            step_feed[name] = value.astype(dtype, copy=False)
        names = the_plan.fetch[step.name]
        answers = list(runner(step, names, step_feed))
        if len(answers) != len(names):
            raise ReplayError(f"step {step.name!r} gave {len(answers)} of outputs {names}")
        for name, answer in zip(names, answers, strict=True):
            values[(step.name, name)] = np.asarray(answer)
    return {key: values[(ref.step, ref.tensor)] for key, ref in the_plan.wanted.items()}
