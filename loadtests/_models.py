"""Tiny Triton models and helpers shared by the benchmarks and the gateway e2e tests.

Kept out of ``tests/`` so that a benchmark runs without the test suite; the tests import the
model writer from here (one copy).
"""

from __future__ import annotations

import socket
from pathlib import Path

# A batch-capable Python-backend model: y = factor * x, FP32 [4].
_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
"""

_MODEL_PY = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            y = (x * {factor}).astype(np.float32)
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("y", y)])
            )
        return responses
"""


def write_scale_model(repo: Path, name: str, *, factor: float = 2.0, instances: int = 1) -> None:
    """Write a Python-backend model `name` computing y = factor * x into `repo`."""
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(_CONFIG.format(name=name, instances=instances))
    (model_dir / "1" / "model.py").write_text(_MODEL_PY.format(factor=repr(float(factor))))


def free_ports(n: int) -> list[int]:
    """`n` distinct ports the kernel just handed out on loopback (small race, fine here)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(int(s.getsockname()[1]))
    for s in socks:
        s.close()
    return ports
