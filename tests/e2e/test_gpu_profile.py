"""The GPU profile on a real Triton with a GPU: a pipeline deployed with `backend:
"onnxruntime"` and KIND_GPU instances answers like the source model, and the figures are
printed (latency through the gateway, GPU utilisation and memory from Triton's metrics).

It needs what this repository cannot start: an NVIDIA GPU and a Triton with the onnxruntime
backend (NGC's `nvcr.io/nvidia/tritonserver:24.10-py3`; the embedded server from the
nvidia-pytriton wheel has only the Python backend). Point the test at one:

    docker run --gpus 1 --rm -p8000-8002:8000-8002 nvcr.io/nvidia/tritonserver:24.10-py3 \\
        tritonserver --model-repository=/tmp --model-control-mode=explicit
    LASTMILE_TEST_GPU_TRITON_URL=http://127.0.0.1:8000 pytest -m gpu tests/e2e/test_gpu_profile.py

Without both it skips and says which is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from manager import supervisor
from tests.conftest import make_settings
from tests.e2e.conftest import RunningSystem
from tests.onnx_models import expected_softmax, make_softmax_classifier

pytestmark = [pytest.mark.e2e, pytest.mark.gpu]

URL_VARIABLE = "LASTMILE_TEST_GPU_TRITON_URL"


def _gpu_triton() -> str:
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no NVIDIA GPU here (nvidia-smi not found)")
    url = os.environ.get(URL_VARIABLE)
    if not url:
        pytest.skip(
            f"no Triton with the onnxruntime backend: set {URL_VARIABLE} to an NGC "
            "tritonserver on this GPU (see this file's docstring)"
        )
    if httpx.get(f"{url}/v2/health/live", timeout=10).status_code != 200:
        pytest.fail(f"{URL_VARIABLE}={url} is not a live Triton")
    return url


def test_gpu_profile_serves_on_the_gpu_and_reports_its_figures(tmp_path: Path) -> None:
    url = _gpu_triton()
    metrics_url = re.sub(r":(\d+)$", lambda m: f":{int(m.group(1)) + 2}", url)
    settings = make_settings(tmp_path / "home", triton_url=url, profile="gpu")
    system = RunningSystem(settings=settings, state={})
    system.state = json.loads(system.cli("up", "--detach", "--json").stdout)
    try:
        clf = make_softmax_classifier(tmp_path / "clf.onnx", 64, 10, seed=3)
        system.cli("model", "import", str(clf), "--name", "clf")
        system.cli("pipeline", "create", "gpu-solo", "--step", "clf")
        system.cli("deploy", "gpu-solo", "--version", "latest")
        config = httpx.get(f"{url}/v2/models/default.clf/config", timeout=10).json()
        assert config["backend"] == "onnxruntime"
        assert {g["kind"] for g in config["instance_group"]} == {"KIND_GPU"}

        x = np.random.default_rng(2).normal(size=(32, 64)).astype(np.float32)
        client = httpclient.InferenceServerClient(system.gateway)
        seconds = []
        try:
            inp = httpclient.InferInput("x", [32, 64], "FP32")
            inp.set_data_from_numpy(x)
            for _ in range(300):
                start = time.perf_counter()
                got = client.infer("gpu-solo", [inp]).as_numpy("probabilities")
                seconds.append(time.perf_counter() - start)
        finally:
            client.close()
        np.testing.assert_allclose(got, expected_softmax(x, 10, seed=3), rtol=1e-4, atol=1e-5)
        text = httpx.get(f"{metrics_url}/metrics", timeout=10).text
        gpu = {
            name: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            for name in ("nv_gpu_utilization", "nv_gpu_memory_used_bytes")
            if line.startswith(name + "{")
        }
        ms = sorted(s * 1000 for s in seconds)
        print(
            f"\nGPU profile, batch 32x64 through the gateway, 300 calls: p50 "
            f"{statistics.median(ms):.2f} ms, p99 {ms[int(0.99 * len(ms)) - 1]:.2f} ms; {gpu}"
        )
        assert gpu, "Triton exported no GPU metrics: is it running on the GPU?"
    finally:
        supervisor.stop(settings)
