"""Ensembles over decoupled models: which response stream each tensor belongs to.

A decoupled model (``model_transaction_policy { decoupled: true }``) sends any number of
responses per request, so every tensor downstream of it comes in one copy per response, not
one per request. Triton's ``ValidateEnsembleConfig`` (``ensemble_utils.cc``) gives each
ensemble tensor such a stream label while it walks the graph from the ensemble inputs: the
inputs are the request's own stream, a decoupled step's outputs start a new stream, any other
step's outputs stay in the stream of its inputs. A step whose inputs come from two different
streams (and the ensemble itself, when its outputs do) has nothing to pair its inputs by, and
Triton refuses the ensemble at load time with "step of model 'M' receives inputs originated
from different decoupled models", naming neither tensor (and, as measured on the embedded
Triton 2.51, often naming the ensemble as M; ``tests/e2e/test_decoupled_ensemble_triton.py``).

Branching a decoupled model's outputs is therefore fine as long as the branches meet only
each other (a diamond after it loads and runs, one inner request per response); what Triton
refuses is a branch of it meeting anything else: an ensemble input, a step before it, or the
stream of another decoupled model. This module applies the same rule from config files alone,
to every step at once, and names the decoupled model and the tensor of it that branched.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from manager.repository.reader import Problem, RepoModel, Repository

__all__ = ["check_decoupled_streams", "is_decoupled"]

# Triton's words (ensemble_utils.cc); the model it names there is often the ensemble itself.
_TRITON_SAYS = (
    'Triton refuses to load the ensemble ("... receives inputs originated from different '
    'decoupled models")'
)


def is_decoupled(repo: Repository, model: RepoModel, _seen: frozenset[str] = frozenset()) -> bool:
    """A model that may answer one request with many responses: decoupled by its config, or
    an ensemble with a decoupled model among its steps (Triton marks those itself)."""
    if model.config.model_transaction_policy.decoupled:
        return True
    if not model.is_ensemble or model.name in _seen:
        return False
    seen = _seen | {model.name}
    for step in model.config.ensemble_scheduling.step:
        inner = repo.model(step.model_name)
        if inner is not None and is_decoupled(repo, inner, seen):
            return True
    return False


@dataclass(frozen=True)
class _Stream:
    """The responses a tensor comes with: the request's own (``step`` None) or those of the
    decoupled step ``step``, which reached this tensor through its output tensor ``via``."""

    step: int | None
    model: str = ""
    via: str = ""

    def describe(self) -> str:
        if self.step is None:
            return "one per request (not from a decoupled model)"
        return (
            f"one per response of decoupled model {self.model!r} (step {self.step + 1}, "
            f"through its output tensor {self.via!r})"
        )


_MIXED = _Stream(step=-1)  # a step already reported: its outputs match anything after it


def _mix_message(reads: list[tuple[str, str, _Stream]]) -> str:
    parts = [
        f"{what} {tensor!r}, which comes {stream.describe()}" for what, tensor, stream in reads
    ]
    return "; ".join(parts)


def _first_of_each(reads: Iterable[tuple[str, str, _Stream]]) -> list[tuple[str, str, _Stream]]:
    """One (input, tensor, stream) per distinct stream, so the message stays readable."""
    kept: dict[int | None, tuple[str, str, _Stream]] = {}
    for read in reads:
        if read[2] is not _MIXED:
            kept.setdefault(read[2].step, read)
    return list(kept.values())


def check_decoupled_streams(repo: Repository, ensemble: RepoModel) -> list[Problem]:
    """Steps (and the ensemble's outputs) that read tensors of different response streams.

    Steps whose model is missing or whose inputs are never produced are skipped: their own
    rules report them. Returns no problem when no step is decoupled.
    """
    steps = list(ensemble.config.ensemble_scheduling.step)
    models = [repo.model(s.model_name) for s in steps]
    decoupled = [m is not None and is_decoupled(repo, m) for m in models]
    if not any(decoupled):
        return []
    streams: dict[str, _Stream] = {io.name: _Stream(None) for io in ensemble.config.input}
    problems: list[Problem] = []
    pending = [i for i, step in enumerate(steps) if models[i] is not None and step.input_map]
    progress = True
    while pending and progress:  # steps in data-flow order, whatever the config's order
        progress = False
        for i in list(pending):
            step = steps[i]
            if not all(t in streams for t in step.input_map.values()):
                continue
            pending.remove(i)
            progress = True
            reads = [
                (f"input {key!r} reads tensor", tensor, streams[tensor])
                for key, tensor in sorted(step.input_map.items())
            ]
            known = [s for _, _, s in reads if s is not _MIXED]
            if len({s.step for s in known}) > 1:
                problems.append(
                    Problem(
                        ensemble.name,
                        f"step {i + 1} (model {step.model_name!r})",
                        "reads tensors of different response streams, so it has nothing to "
                        f"pair them by: {_mix_message(_first_of_each(reads))}. {_TRITON_SAYS}",
                        hint="a step after a decoupled model may read only tensors that come "
                        "from that model's responses: pass the other tensor through the "
                        "decoupled model (as one of its outputs), or split the ensemble there",
                        rule="decoupled-mix",
                    )
                )
                out_stream = _MIXED
            elif decoupled[i]:
                out_stream = None  # set per output below: each output is its own branch root
            else:
                out_stream = known[0] if known else _MIXED
            for _, tensor in sorted(step.output_map.items()):
                if out_stream is None:
                    streams.setdefault(tensor, _Stream(i, step.model_name, tensor))
                else:
                    streams.setdefault(tensor, out_stream)
    outputs = [
        ("ensemble output", io.name, streams[io.name])
        for io in ensemble.config.output
        if io.name in streams and streams[io.name] is not _MIXED
    ]
    if len({s.step for _, _, s in outputs}) > 1:
        problems.append(
            Problem(
                ensemble.name,
                "outputs",
                "the ensemble's outputs come from different response streams, so no "
                f"response can carry them all: {_mix_message(_first_of_each(outputs))}. "
                f"{_TRITON_SAYS}",
                hint="every ensemble output must come from the same decoupled model's "
                "responses (or all from none): drop the other outputs, or serve them from a "
                "second ensemble",
                rule="decoupled-mix",
            )
        )
    return problems
