"""The rules an ensemble must meet, as Triton checks them, with messages a person can act on.

Triton validates an ensemble's own config when it reads it (``ValidateEnsembleScheduling
Config``) and its steps against the loaded models only when it loads it
(``ValidateEnsembleConfig``), stopping at the first error. Here both run from config files
alone, every problem is collected, and each one names the ensemble, the step (counted from 1,
with its model) and the tensor. Where Triton is looser than what can actually run, this is
stricter, and says so: a batching ensemble may use a model without batching only when every
tensor it maps has a variable first dim (Triton's "expanded shapes" case).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from manager.repository.reader import Problem, RepoModel, Repository
from manager.triton.client import model_config_pb2

__all__ = ["check_ensemble", "find_ensemble_cycles"]

T = TypeVar("T", bound=Hashable)

# Fields that make no sense on an ensemble: it runs no code and schedules nothing itself.
_FORBIDDEN_FIELDS = frozenset(
    {
        "backend",
        "default_model_filename",
        "cc_model_filenames",
        "instance_group",
        "optimization",
        "model_warmup",
        "dynamic_batching",
        "sequence_batching",
        "batch_input",
        "batch_output",
        "model_operations",
        "model_repository_agents",
    }
)


def _dtype(value: int) -> str:
    try:
        return str(model_config_pb2.DataType.Name(value))
    except ValueError:
        return f"data type {value}"


def _label(index: int, model_name: str) -> str:
    return f"step {index + 1} (model {model_name!r})"


def _dims_match(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b, strict=True))


@dataclass(frozen=True)
class _Node:
    """What one side says about an ensemble tensor (Triton's ``TensorNode``)."""

    origin: str
    dtype: int
    dims: tuple[int, ...]
    full_dims: tuple[int, ...]  # with the batch dim (-1) when the side batches

    @classmethod
    def of(cls, origin: str, io: Any, *, batching: bool, reshape: bool) -> _Node:
        dims = tuple(io.reshape.shape if reshape and io.HasField("reshape") else io.dims)
        return cls(origin, io.data_type, dims, (-1, *dims) if batching else dims)


class _EnsembleCheck:
    def __init__(self, repo: Repository, ensemble: RepoModel) -> None:
        self.repo = repo
        self.name = ensemble.name
        self.config = ensemble.config
        self.steps = list(ensemble.config.ensemble_scheduling.step)
        self.problems: list[Problem] = []

    def add(self, where: str, message: str, hint: str, rule: str) -> None:
        self.problems.append(Problem(self.name, where, message, hint=hint, rule=rule))

    def label(self, index: int) -> str:
        return _label(index, self.steps[index].model_name)

    # -- the ensemble's own config ----------------------------------------------------------
    def check_fields(self) -> None:
        for field, _ in self.config.ListFields():
            if field.name in _FORBIDDEN_FIELDS:
                self.add(
                    field.name,
                    f"an ensemble may not set {field.name!r}",
                    hint="remove it: set it on the step models, an ensemble only wires them",
                    rule="ensemble-field",
                )
        if self.config.HasField("ensemble_scheduling") and not self.steps:
            self.add("ensemble_scheduling", "has no steps", "add at least one step", "no-steps")
        elif not self.steps:
            self.add(
                "ensemble_scheduling",
                "the ensemble has no ensemble_scheduling",
                hint="add ensemble_scheduling { step [...] }",
                rule="no-steps",
            )

    def check_graph(self) -> None:
        """Who writes and who reads each ensemble tensor (``BuildEnsembleGraph``)."""
        inputs = {t.name for t in self.config.input}
        outputs = {t.name for t in self.config.output}
        producers: dict[str, tuple[int, str]] = {}
        consumers: dict[str, list[tuple[int, str]]] = {}
        for i, step in enumerate(self.steps):
            if not step.model_name:
                self.add(f"step {i + 1}", "names no model", "set model_name", "bad-step")
                continue
            for kind, mapping in (("input_map", step.input_map), ("output_map", step.output_map)):
                if not mapping:
                    self.add(
                        self.label(i),
                        f"has no {kind}",
                        hint=f"map the model's {kind[:-4]}s to ensemble tensors",
                        rule="bad-step",
                    )
            for key, tensor in sorted(step.output_map.items()):
                where = f"{self.label(i)}, output {key!r}"
                if tensor in inputs:
                    self.add(
                        where,
                        f"writes ensemble tensor {tensor!r}, which is an input of the ensemble",
                        hint="map the output to a tensor of its own",
                        rule="tensor-written-twice",
                    )
                elif tensor in producers:
                    j, other = producers[tensor]
                    self.add(
                        where,
                        f"writes ensemble tensor {tensor!r}, which {self.label(j)} output "
                        f"{other!r} already writes",
                        hint="each ensemble tensor has one writer: rename one of them",
                        rule="tensor-written-twice",
                    )
                else:
                    producers[tensor] = (i, key)
            for key, tensor in sorted(step.input_map.items()):
                consumers.setdefault(tensor, []).append((i, key))
        for tensor, readers in consumers.items():
            if tensor in inputs or tensor in producers:
                continue
            for i, key in readers:
                self.add(
                    f"{self.label(i)}, input {key!r}",
                    f"reads ensemble tensor {tensor!r}, which no step writes and which is not "
                    "an input of the ensemble",
                    hint=f"map a step output to {tensor!r}, or add it to the ensemble's inputs",
                    rule="unproduced-tensor",
                )
        for name in sorted(outputs - producers.keys()):
            self.add(
                f"output {name!r}",
                "no step writes this ensemble output",
                hint=f'map a step output to it: output_map {{ key: "OUTPUT" value: "{name}" }}',
                rule="unproduced-output",
            )
        for name in sorted(inputs - consumers.keys()):
            self.add(
                f"input {name!r}",
                "no step reads this ensemble input",
                hint="map it in a step's input_map, or remove it from the ensemble's inputs",
                rule="unused-input",
            )
        for tensor, (i, key) in sorted(producers.items()):
            if tensor not in consumers and tensor not in outputs:
                self.add(
                    f"{self.label(i)}, output {key!r}",
                    f"writes ensemble tensor {tensor!r}, which nothing reads",
                    hint="remove the output_map entry, or make it an ensemble output",
                    rule="unused-tensor",
                )
        self._check_step_cycle(producers)

    def _check_step_cycle(self, producers: dict[str, tuple[int, str]]) -> None:
        needs = [
            sorted({producers[t][0] for t in step.input_map.values() if t in producers})
            for step in self.steps
        ]
        cycle = _find_cycle(range(len(self.steps)), lambda i: needs[i])
        if cycle:
            self.add(
                self.label(cycle[0]),
                "steps wait on each other's outputs in a circle: "
                + " → ".join(self.label(i) for i in cycle),
                hint="an ensemble is a directed acyclic graph: break the circle",
                rule="circular-steps",
            )

    # -- the ensemble against the models its steps name -------------------------------------
    def check_steps(self) -> None:
        batching = self.config.max_batch_size > 0
        nodes: dict[str, _Node] = {}
        for io in self.config.input:
            nodes[io.name] = _Node.of(
                f"ensemble input {io.name!r}", io, batching=batching, reshape=True
            )
        for io in self.config.output:
            nodes.setdefault(
                io.name,
                _Node.of(f"ensemble output {io.name!r}", io, batching=batching, reshape=True),
            )
        for i, step in enumerate(self.steps):
            if not step.model_name:
                continue
            model = self.repo.model(step.model_name)
            if model is None:
                if self.repo.single_model:
                    self.add(
                        self.label(i),
                        f"names model {step.model_name!r}, which is missing: only the "
                        f"ensemble's own folder was given, and it holds no other model",
                        hint="validate the repository folder that holds the ensemble and "
                        f"{step.model_name!r} (its parent, {str(self.repo.root)!r}, if they "
                        "live together)",
                        rule="unknown-model",
                    )
                elif step.model_name not in self.repo.unreadable:  # else its own problem says
                    close = difflib.get_close_matches(step.model_name, self.repo.models, n=1)
                    self.add(
                        self.label(i),
                        f"names model {step.model_name!r}, which is not in the repository",
                        hint=f"did you mean {close[0]!r}?" if close else "add the model folder",
                        rule="unknown-model",
                    )
                continue
            self._check_version(i, step, model)
            self._check_batching(i, step, model)
            self._check_mapping(i, step, model, nodes)

    def _check_version(
        self, i: int, step: model_config_pb2.ModelEnsembling.Step, model: RepoModel
    ) -> None:
        version = step.model_version
        if version == -1:
            return
        served = model.served_versions()
        if version not in served:
            unset = " (model_version is unset)" if version == 0 else ""
            self.add(
                self.label(i),
                f"asks for version {version}{unset} of model {model.name!r}, which serves "
                f"{'versions ' + str(served) if served else 'no version'}",
                hint="set model_version to one of them, or to -1 for the latest",
                rule="unknown-version",
            )

    def _check_batching(
        self, i: int, step: model_config_pb2.ModelEnsembling.Step, model: RepoModel
    ):
        ensemble_max = self.config.max_batch_size
        model_max = model.config.max_batch_size
        if 0 < model_max < ensemble_max:
            self.add(
                self.label(i),
                f"model {model.name!r} allows max_batch_size {model_max}, less than the "
                f"ensemble's {ensemble_max}",
                hint=f"lower the ensemble's max_batch_size to {model_max}, or raise the model's",
                rule="batch-size",
            )
        if ensemble_max > 0 and model_max == 0:
            mapped = [
                (kind, io)
                for kind, tensors, mapping in (
                    ("input", model.config.input, step.input_map),
                    ("output", model.config.output, step.output_map),
                )
                for io in tensors
                if io.name in mapping
            ]
            fixed = next(((k, io) for k, io in mapped if not io.dims or io.dims[0] != -1), None)
            if fixed is not None or not mapped:
                why = (
                    f": its {fixed[0]} {fixed[1].name!r} has dims {list(fixed[1].dims)}, "
                    "with no variable first dim for the batch"
                    if fixed
                    else ""
                )
                self.add(
                    self.label(i),
                    f"model {model.name!r} does not batch (max_batch_size 0) but the ensemble "
                    f"does (max_batch_size {ensemble_max}){why}",
                    hint="set the ensemble's max_batch_size to 0, or serve the model with "
                    "max_batch_size > 0",
                    rule="batch-size",
                )

    def _check_mapping(
        self,
        i: int,
        step: model_config_pb2.ModelEnsembling.Step,
        model: RepoModel,
        nodes: dict[str, _Node],
    ) -> None:
        batching = model.config.max_batch_size > 0
        label = self.label(i)
        for kind, tensors, mapping in (
            ("input", model.config.input, step.input_map),
            ("output", model.config.output, step.output_map),
        ):
            declared = {io.name: io for io in tensors}
            for key in sorted(mapping):
                if key not in declared:
                    known = ", ".join(repr(n) for n in declared) or "none"
                    self.add(
                        f"{label}, {kind} {key!r}",
                        f"model {model.name!r} has no {kind} {key!r}",
                        hint=f"its {kind}s are {known}",
                        rule=f"unknown-{kind}",
                    )
            for io in tensors:
                if io.name not in mapping:
                    if kind == "input" and not io.optional:
                        self.add(
                            f"{label}, input {io.name!r}",
                            f"input {io.name!r} of model {model.name!r} is not fed",
                            hint=f'map it: input_map {{ key: "{io.name}" value: "TENSOR" }}',
                            rule="unmapped-input",
                        )
                    continue
                tensor = mapping[io.name]
                node = _Node.of(f"{label} {kind} {io.name!r}", io, batching=batching, reshape=False)
                seen = nodes.setdefault(tensor, node)
                if seen is not node:
                    self._compare(f"{label}, {kind} {io.name!r}", tensor, seen, node)

    def _compare(self, where: str, tensor: str, seen: _Node, node: _Node) -> None:
        if seen.dtype != node.dtype:
            self.add(
                where,
                f"is {_dtype(node.dtype)}, but ensemble tensor {tensor!r} is "
                f"{_dtype(seen.dtype)} in {seen.origin}",
                hint="both sides of a tensor need the same data_type: change one, or add a "
                "step that casts",
                rule="dtype-mismatch",
            )
        elif not _dims_match(seen.dims, node.dims) and not _dims_match(
            seen.full_dims, node.full_dims
        ):
            self.add(
                where,
                f"has shape {list(node.full_dims)}, but ensemble tensor {tensor!r} has shape "
                f"{list(seen.full_dims)} in {seen.origin}",
                hint="dims must be equal where both are known (-1 matches anything; the "
                "batch dim counts only for models that batch)",
                rule="shape-mismatch",
            )


def _find_cycle(nodes: Iterable[T], edges: Callable[[T], Iterable[T]]) -> list[T] | None:
    """A path a → … → a through ``edges(node)`` if there is a circle, else None."""
    state: dict[T, int] = {}  # 1: on the current path, 2: done
    for start in nodes:
        if start in state:
            continue
        path = [start]
        stack = [iter(edges(start))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(edges(nxt)))
    return None


def check_ensemble(repo: Repository, ensemble: RepoModel) -> list[Problem]:
    """Problems of one ensemble: its own config, its tensor graph, its step models."""
    check = _EnsembleCheck(repo, ensemble)
    check.check_fields()
    if check.steps:
        check.check_graph()
        check.check_steps()
    return check.problems


def find_ensemble_cycles(repo: Repository) -> list[Problem]:
    """Ensembles that contain themselves, directly or through other ensembles."""
    ensembles = {name: m for name, m in repo.models.items() if m.is_ensemble}

    alive = set(ensembles)

    def uses(name: str) -> list[str]:
        steps = ensembles[name].config.ensemble_scheduling.step
        return sorted({s.model_name for s in steps if s.model_name in alive})

    problems = []
    while True:  # each circle found is taken out, so the next search finds another one
        cycle = _find_cycle(sorted(alive), uses)
        if not cycle:
            break
        alive.difference_update(cycle)
        first, second = cycle[0], cycle[1]
        index = next(
            i
            for i, s in enumerate(ensembles[first].config.ensemble_scheduling.step)
            if s.model_name == second
        )
        problems.append(
            Problem(
                first,
                _label(index, second),
                "ensembles contain each other in a circle: " + " → ".join(cycle),
                hint="an ensemble cannot contain itself, directly or through another "
                "ensemble: remove one of these steps",
                rule="circular-ensembles",
            )
        )
    return problems
