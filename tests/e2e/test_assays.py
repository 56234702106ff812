"""Observability end to end: data capture through the real gateway and tritonserver, summarised
into the store and read back through the CLI.

One system serves the whole module. The model is an affine map (y = 2x), so what the outputs'
summaries must say follows from what was sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from manager import supervisor
from tests.conftest import make_settings
from tests.e2e.conftest import RunningSystem, wait_until
from tests.onnx_models import make_affine

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    home: Path = tmp_path_factory.mktemp("assays") / "home"
    settings = make_settings(home, scrape_interval_s=5.0)
    running = RunningSystem(settings=settings, state={})
    running.state = json.loads(running.cli("up", "--detach", "--json").stdout)
    models = tmp_path_factory.mktemp("models")
    try:
        path = make_affine(models / "double.onnx", 4, 2.0, 0.0)
        running.cli("model", "import", str(path), "--name", "double")
        yield running
    finally:
        supervisor.stop(settings)


def _capture(system: RunningSystem, pipeline: str) -> dict[str, Any]:
    return dict(json.loads(system.cli("capture", "show", pipeline, "--json").stdout))


def test_captured_calls_are_summarised_per_tensor_http_and_grpc(system: RunningSystem) -> None:
    system.cli("pipeline", "create", "seen", "--step", "double")
    system.cli("deploy", "seen", "--version", "1")
    assert json.loads(system.cli("capture", "set", "seen", "--rate", "0.5", "--json").stdout)[
        "rate"
    ] == pytest.approx(0.5)
    rng = np.random.default_rng(7)
    sent = rng.normal(3.0, 1.0, size=(40, 4)).astype(np.float32)
    with httpx.Client(base_url=f"http://{system.gateway}", timeout=30) as client:
        for row in sent[:30]:
            body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                "data": row.tolist()}]}  # fmt: skip
            assert client.post("/v2/models/seen/infer", json=body).status_code == 200
    grpc = grpcclient.InferenceServerClient(system.state["gateway"]["grpc"])
    for row in sent[30:]:
        inp = grpcclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(row.reshape(1, 4))
        grpc.infer("seen", [inp])
    grpc.close()
    # HTTP and gRPC sample separately: every second call of each, 15 + 5
    captured = np.concatenate([sent[:30][1::2], sent[30:][1::2]])

    def summarised() -> bool:
        system.cli("capture", "summarise")
        tensors = _capture(system, "seen")["tensors"]
        return sum(t["rows"] for t in tensors if t["side"] == "inputs") >= len(captured)

    wait_until("captured calls summarised", summarised, 30)
    view = _capture(system, "seen")
    by_side = {t["side"]: t for t in view["tensors"]}
    assert set(by_side) == {"inputs", "outputs"}
    x, y = by_side["inputs"], by_side["outputs"]
    assert (x["tensor"], y["tensor"], x["version"]) == ("x", "y", 1)
    assert x["rows"] == y["rows"] == len(captured)
    assert (x["count"], x["missing"], x["elements"]) == (captured.size, 0, 4)
    assert x["min"] == pytest.approx(float(captured.min()))
    assert x["max"] == pytest.approx(float(captured.max()))
    assert x["mean"] == pytest.approx(float(captured.mean()), rel=1e-6)
    assert y["mean"] == pytest.approx(2 * float(captured.mean()), rel=1e-6)
    assert y["max"] == pytest.approx(2 * float(captured.max()))
    text = httpx.get(system.state["gateway"]["metrics"], timeout=10).text
    assert 'lastmile_gateway_capture_total{outcome="captured",route="default/seen"} 20.0' in text


def test_a_capture_rate_outside_0_1_is_refused_with_the_reason(system: RunningSystem) -> None:
    proc = system.cli("capture", "set", "seen", "--rate", "1.5", check=False)
    assert proc.returncode == 6, proc.stdout + proc.stderr
    assert "rate" in proc.stderr and "1" in proc.stderr
    proc = system.cli("capture", "show", "seen", "--since", "yesterday", check=False)
    assert proc.returncode == 6 and "30s, 15m, 2h or 7d" in proc.stderr
