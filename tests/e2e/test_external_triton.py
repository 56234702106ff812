"""A Triton that shares no disk with Lastmile (an NGC container on a GPU box, say): models are
pushed through Triton's load API with config and file overrides."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from manager import supervisor
from manager.triton.runtime import EmbeddedTriton
from tests.conftest import make_settings
from tests.e2e.conftest import RunningSystem
from tests.onnx_models import expected_softmax, make_softmax_classifier

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_deploy_pushes_models_to_a_triton_without_shared_disk(
    external_triton: EmbeddedTriton, tmp_path: Path, protocol: str
) -> None:
    """Over HTTP (the default) or gRPC (TRITON_CONTROL_PROTOCOL; the header then travels as
    gRPC metadata, which the server's --grpc-restricted-protocol checks)."""
    ep = external_triton.endpoints
    # That server's repository API is restricted: the manager is given its header.
    ((name, value),) = external_triton.control_headers.items()
    settings = make_settings(
        tmp_path / "home",
        triton_url=ep.http_url,
        triton_metrics_url=ep.metrics_url,
        triton_control_header=f"{name}={value}",
        triton_grpc_url=ep.grpc_url,
        triton_control_protocol=protocol,
    )
    system = RunningSystem(settings=settings, state={})
    system.state = json.loads(system.cli("up", "--detach", "--json").stdout)
    try:
        assert system.state["triton"][0]["embedded"] is False
        clf = make_softmax_classifier(tmp_path / "clf.onnx", 4, 3, seed=5)
        system.cli("model", "import", str(clf), "--name", "clf")
        system.cli("pipeline", "create", "solo", "--step", "clf")
        system.cli("deploy", "solo", "--version", "latest")
        # nothing was written to the other server's repository: it was pushed
        assert list(external_triton.repository.iterdir()) == []
        x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
        client = httpclient.InferenceServerClient(system.gateway)
        try:
            inp = httpclient.InferInput("x", [3, 4], "FP32")
            inp.set_data_from_numpy(x)
            got = client.infer("solo", [inp]).as_numpy("probabilities")
        finally:
            client.close()
        np.testing.assert_allclose(got, expected_softmax(x, 3, seed=5), rtol=1e-5, atol=1e-6)
    finally:
        supervisor.stop(settings)
    # stopping Lastmile does not stop a Triton it does not own
    with external_triton.client() as c:
        assert c.is_ready()
