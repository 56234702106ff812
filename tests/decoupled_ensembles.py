"""Ensembles over a decoupled model, written as config files, shared by unit and e2e tests.

The unit tests check what the validator says about each; the e2e test loads the same folders
into a real tritonserver to show that it refuses exactly the ones the validator refuses.
Models are small Python-backend models: ``ws.gen`` is decoupled (two responses per request),
``ws.a`` / ``ws.b`` copy ``x`` to ``y``, ``ws.join`` adds ``p`` and ``q`` into ``z``.
"""

from __future__ import annotations

from pathlib import Path

DECOUPLED_MODEL_PY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            sender = request.get_response_sender()
            for k in (1, 2):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("y", x * k)]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

COPY_MODEL_PY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())]
            )
            for r in requests
        ]
"""

JOIN_MODEL_PY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            p = pb_utils.get_input_tensor_by_name(r, "p").as_numpy()
            q = pb_utils.get_input_tensor_by_name(r, "q").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("z", p + q)]))
        return out
"""


def _tensor(name: str) -> str:
    return f'{{ name: "{name}" data_type: TYPE_FP32 dims: [ 4 ] }}'


def _model_text(name: str, inputs: list[str], outputs: list[str], decoupled: bool) -> str:
    policy = "model_transaction_policy { decoupled: true }\n" if decoupled else ""
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: 8\n'
        f"input [ {', '.join(map(_tensor, inputs))} ]\n"
        f"output [ {', '.join(map(_tensor, outputs))} ]\n"
        "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
        f"{policy}"
    )


MODELS: dict[str, tuple[list[str], list[str], bool, str]] = {
    "ws.gen": (["x"], ["y"], True, DECOUPLED_MODEL_PY),
    "ws.a": (["x"], ["y"], False, COPY_MODEL_PY),
    "ws.b": (["x"], ["y"], False, COPY_MODEL_PY),
    "ws.join": (["p", "q"], ["z"], False, JOIN_MODEL_PY),
}

Step = tuple[str, dict[str, str], dict[str, str]]  # model, input_map, output_map

# name → (steps, ensemble outputs, refused by Triton)
ENSEMBLES: dict[str, tuple[list[Step], list[str], bool]] = {
    # x → gen → a: one stream after the decoupled model
    "ws.chain": (
        [("ws.gen", {"x": "x"}, {"y": "g"}), ("ws.a", {"x": "g"}, {"y": "out"})],
        ["out"],
        False,
    ),
    # gen's output branches to a and b, the branches meet again: still one stream
    "ws.branch-rejoin": (
        [
            ("ws.gen", {"x": "x"}, {"y": "g"}),
            ("ws.a", {"x": "g"}, {"y": "ga"}),
            ("ws.b", {"x": "g"}, {"y": "gb"}),
            ("ws.join", {"p": "ga", "q": "gb"}, {"z": "out"}),
        ],
        ["out"],
        False,
    ),
    # gen's output branches to two ensemble outputs: one stream
    "ws.branch-outputs": (
        [
            ("ws.gen", {"x": "x"}, {"y": "g"}),
            ("ws.a", {"x": "g"}, {"y": "out"}),
            ("ws.b", {"x": "g"}, {"y": "out2"}),
        ],
        ["out", "out2"],
        False,
    ),
    # a branch of gen meets the ensemble input: refused
    "ws.mix-input": (
        [
            ("ws.gen", {"x": "x"}, {"y": "g"}),
            ("ws.join", {"p": "g", "q": "x"}, {"z": "out"}),
        ],
        ["out"],
        True,
    ),
    # a branch of gen meets a tensor computed before it (a's copy of x): refused
    "ws.mix-step": (
        [
            ("ws.a", {"x": "x"}, {"y": "xa"}),
            ("ws.gen", {"x": "xa"}, {"y": "g"}),
            ("ws.b", {"x": "g"}, {"y": "gb"}),
            ("ws.join", {"p": "gb", "q": "xa"}, {"z": "out"}),
        ],
        ["out"],
        True,
    ),
    # the streams of two decoupled steps meet: refused
    "ws.two-decoupled": (
        [
            ("ws.gen", {"x": "x"}, {"y": "g1"}),
            ("ws.gen", {"x": "x"}, {"y": "g2"}),
            ("ws.join", {"p": "g1", "q": "g2"}, {"z": "out"}),
        ],
        ["out"],
        True,
    ),
    # the ensemble's outputs come one from gen's stream, one straight from the request
    "ws.mix-outputs": (
        [("ws.gen", {"x": "x"}, {"y": "out"}), ("ws.a", {"x": "x"}, {"y": "out2"})],
        ["out", "out2"],
        True,
    ),
}


def ensemble_text(name: str, steps: list[Step], outputs: list[str]) -> str:
    body = "".join(
        f'step {{ model_name: "{model}" model_version: -1 '
        + "".join(f'input_map {{ key: "{k}" value: "{v}" }} ' for k, v in inputs.items())
        + "".join(f'output_map {{ key: "{k}" value: "{v}" }} ' for k, v in outs.items())
        + "} "
        for model, inputs, outs in steps
    )
    return (
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: 8\n'
        f"input [ {_tensor('x')} ]\n"
        f"output [ {', '.join(map(_tensor, outputs))} ]\n"
        f"ensemble_scheduling {{ {body}}}\n"
    )


def write_model(root: Path, name: str) -> None:
    inputs, outputs, decoupled, code = MODELS[name]
    folder = root / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(_model_text(name, inputs, outputs, decoupled))
    (folder / "1" / "model.py").write_text(code)


def write_ensemble(root: Path, name: str) -> None:
    steps, outputs, _ = ENSEMBLES[name]
    folder = root / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(ensemble_text(name, steps, outputs))


def build(root: Path, ensembles: list[str] | None = None) -> Path:
    """The four models and the named ensembles (all when None) under ``root``."""
    for name in MODELS:
        write_model(root, name)
    for name in ensembles if ensembles is not None else list(ENSEMBLES):
        write_ensemble(root, name)
    return root
