"""Start a real tritonserver from the `nvidia-pytriton` wheel for end-to-end tests and benchmarks.

Stop-gap until `manager.triton.runtime.EmbeddedTriton` exists: the recipe is the one measured in
DESIGN §3 (copy the Python backend and the stub for this interpreter into a work dir, point
LD_LIBRARY_PATH at the wheel's bundled libraries, explicit model control, loopback only).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

_SITE = Path(sysconfig.get_paths()["purelib"])
_TRITON_DIR = _SITE / "pytriton" / "tritonserver"
_LIBS_DIR = _SITE / "nvidia_pytriton.libs"

# A batch-capable Python-backend model: y = 2 * x, FP32 [4]. `sleep_ms` lets a test simulate a
# slow model without a second recipe.
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


def triton_available() -> bool:
    """True when the wheel's tritonserver and the stub for this interpreter are present."""
    stub = _stub_path()
    return (_TRITON_DIR / "bin" / "tritonserver").exists() and stub.exists()


def _stub_path() -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return _TRITON_DIR / "python_backend_stubs" / version / "triton_python_backend_stub"


def free_port() -> int:
    """A port the kernel just handed out on loopback (bind 0); small race, fine for tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_scale_model(repo: Path, name: str, *, factor: float = 2.0, instances: int = 1) -> None:
    """Write a Python-backend model `name` computing y = factor * x into `repo`."""
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(_CONFIG.format(name=name, instances=instances))
    (model_dir / "1" / "model.py").write_text(_MODEL_PY.format(factor=repr(float(factor))))


class _EarlyExit(Exception):
    pass


@dataclass
class TritonProcess:
    """A tritonserver child process on loopback; `stop()` always reaps it."""

    work_dir: Path
    repo: Path
    models: list[str]
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    log_path: Path = field(init=False)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 120.0, attempts: int = 3) -> TritonProcess:
        """Start and wait until ready; auto-picked ports taken in the meantime are re-picked."""
        pick_ports = not (self.http_port or self.grpc_port or self.metrics_port)
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once(timeout)
            except _EarlyExit as exc:
                if not pick_ports or attempt == attempts:
                    raise RuntimeError(str(exc)) from None
                logger.warning("tritonserver exited early (attempt %d), retrying", attempt)
                self.http_port = self.grpc_port = self.metrics_port = 0
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> TritonProcess:
        backends = self.work_dir / "backends"
        python_backend = backends / "python"
        if not python_backend.exists():
            shutil.copytree(_TRITON_DIR / "backends" / "python", python_backend)
            shutil.copy2(_stub_path(), python_backend / "triton_python_backend_stub")
        self.http_port = self.http_port or free_port()
        self.grpc_port = self.grpc_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(_LIBS_DIR), env.get("LD_LIBRARY_PATH", "")) if p
        )
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        cmd = [
            str(_TRITON_DIR / "bin" / "tritonserver"),
            f"--model-repository={self.repo}",
            f"--backend-directory={backends}",
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in self.models),
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--log-verbose=0",
        ]
        self.log_path = self.work_dir / f"tritonserver-{self.http_port}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                raise _EarlyExit(f"tritonserver exited early:\n{self.log_tail()}")
            if self.ready():
                logger.info("tritonserver ready on %s", self.url)
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"tritonserver not ready after {timeout}s:\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=1) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(timeout=5)

    def __enter__(self) -> TritonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
