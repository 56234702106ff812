"""Plain value types shared by the store, the converters, the builder and the services.

They carry no SQL and no Triton types, so every layer can use them; the store serialises
them as JSON (``to_dict`` / ``from_dict``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# KServe v2 / Triton datatype names (the strings seen on the wire and in model metadata).
DATATYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
    "BF16",
)

# The numeric ones as numpy dtypes (BYTES and BF16 have no plain numpy counterpart here).
NUMPY_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


@dataclass(frozen=True)
class TensorSpec:
    """A tensor of a model signature. ``shape`` is the full shape; -1 marks a dynamic dim."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(name=data["name"], datatype=data["datatype"], shape=tuple(data["shape"]))


@dataclass(frozen=True)
class Signature:
    """Inputs and outputs of a model.

    ``batched`` is true when the first dimension of every input and output is dynamic, so
    Triton can batch the model (``max_batch_size`` > 0, dims without the batch dimension).
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batched: bool

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "batched": self.batched,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        return cls(
            inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
            batched=bool(data["batched"]),
        )


PIPELINE_INPUTS = "inputs"
"""Source prefix naming the pipeline's own inputs: ``$inputs.x``."""


@dataclass(frozen=True)
class TensorRef:
    """Where a tensor comes from: a pipeline input (``step == 'inputs'``) or a step output."""

    step: str
    tensor: str

    @classmethod
    def parse(cls, text: str) -> TensorRef:
        from manager.errors import PipelineError

        body = text[1:] if text.startswith("$") else text
        step, sep, tensor = body.partition(".")
        if not sep or not step or not tensor:
            raise PipelineError(
                f"invalid tensor reference {text!r}",
                hint="write $inputs.NAME for a pipeline input or $STEP.TENSOR for a step output",
            )
        return cls(step=step, tensor=tensor)

    def __str__(self) -> str:
        return f"${self.step}.{self.tensor}"


@dataclass(frozen=True)
class PipelineStep:
    """One step: a model version and, for each model input, where its tensor comes from."""

    name: str
    model: str
    version: int
    signature: Signature
    inputs: dict[str, TensorRef] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "version": self.version,
            "signature": self.signature.to_dict(),
            "inputs": {k: str(v) for k, v in self.inputs.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineStep:
        return cls(
            name=data["name"],
            model=data["model"],
            version=int(data["version"]),
            signature=Signature.from_dict(data["signature"]),
            inputs={k: TensorRef.parse(v) for k, v in data["inputs"].items()},
        )


@dataclass(frozen=True)
class PipelineSpec:
    """A pipeline version: steps in topological order and the outputs it exposes."""

    name: str
    steps: tuple[PipelineStep, ...]
    outputs: dict[str, TensorRef]

    def step(self, name: str) -> PipelineStep | None:
        return next((s for s in self.steps if s.name == name), None)

    def input_specs(self) -> tuple[TensorSpec, ...]:
        """The pipeline's inputs, typed by the first model input that consumes each."""
        seen: dict[str, TensorSpec] = {}
        for step in self.steps:
            for model_input, ref in step.inputs.items():
                if ref.step == PIPELINE_INPUTS and ref.tensor not in seen:
                    spec = step.signature.input(model_input)
                    if spec is not None:
                        seen[ref.tensor] = TensorSpec(ref.tensor, spec.datatype, spec.shape)
        return tuple(seen.values())

    def output_specs(self) -> tuple[TensorSpec, ...]:
        specs = []
        for out_name, ref in self.outputs.items():
            step = self.step(ref.step)
            spec = step.signature.output(ref.tensor) if step else None
            if spec is not None:
                specs.append(TensorSpec(out_name, spec.datatype, spec.shape))
        return tuple(specs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "steps": [s.to_dict() for s in self.steps],
            "outputs": {k: str(v) for k, v in self.outputs.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineSpec:
        return cls(
            name=data["name"],
            steps=tuple(PipelineStep.from_dict(s) for s in data["steps"]),
            outputs={k: TensorRef.parse(v) for k, v in data["outputs"].items()},
        )


@dataclass(frozen=True)
class ServingOptions:
    """How Triton serves a registered model: the tuning a user sets per model.

    Every field is optional; unset fields keep what the profile's preset says. Presets named in
    ``tuning`` are merged first, the explicit fields after them.
    """

    tuning: tuple[str, ...] = ()
    instances: int | None = None
    gpus: tuple[int, ...] | None = None
    max_batch_size: int | None = None
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int | None = None
    response_cache: bool | None = None
    warmup: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "tuning": list(self.tuning),
            "instances": self.instances,
            "gpus": list(self.gpus) if self.gpus is not None else None,
            "max_batch_size": self.max_batch_size,
            "preferred_batch_sizes": list(self.preferred_batch_sizes),
            "max_queue_delay_us": self.max_queue_delay_us,
            "response_cache": self.response_cache,
            "warmup": self.warmup,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ServingOptions:
        data = data or {}
        gpus = data.get("gpus")
        return cls(
            tuning=tuple(data.get("tuning") or ()),
            instances=data.get("instances"),
            gpus=tuple(gpus) if gpus is not None else None,
            max_batch_size=data.get("max_batch_size"),
            preferred_batch_sizes=tuple(data.get("preferred_batch_sizes") or ()),
            max_queue_delay_us=data.get("max_queue_delay_us"),
            response_cache=data.get("response_cache"),
            warmup=bool(data.get("warmup", False)),
        )
