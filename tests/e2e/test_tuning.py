"""Serving options (tuning presets and explicit fields) reach the config Triton serves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from manager.triton.client import TritonClient
from tests.e2e.conftest import RunningSystem
from tests.onnx_models import expected_affine, make_affine

pytestmark = pytest.mark.e2e


def test_configured_model_is_served_with_its_tuning(system: RunningSystem, tmp_path: Path) -> None:
    system.cli(
        "model", "import", str(make_affine(tmp_path / "t.onnx", 4, 3.0, 1.0)), "--name", "tuned"
    )
    out = system.cli("model", "configure", "tuned", "--instances", "2", "--max-batch-size", "16",
                     "--preferred-batch", "4,8", "--queue-delay-us", "300", "--warmup",
                     "--tuning", "response-cache", "--json")  # fmt: skip
    assert "count: 2" in json.loads(out.stdout)["config"]
    system.cli("pipeline", "create", "tuned-pipe", "--step", "tuned")
    system.cli("deploy", "tuned-pipe", "--version", "latest")

    with TritonClient(system.state["triton"][0]["http"]) as triton:
        served = triton.model_config("default.tuned")
        ensemble = triton.model_config("default.tuned-pipe.v1")
    assert served.instance_group[0].count == 2
    assert served.max_batch_size == 16 and ensemble.max_batch_size == 16
    assert list(served.dynamic_batching.preferred_batch_size) == [4, 8]
    assert served.dynamic_batching.max_queue_delay_microseconds == 300
    assert served.model_warmup[0].inputs["x"].zero_data is True
    assert served.response_cache.enable is True

    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    client = httpclient.InferenceServerClient(system.gateway)
    try:
        for _ in range(2):  # the second answer may come from the response cache
            inp = httpclient.InferInput("x", [2, 4], "FP32")
            inp.set_data_from_numpy(x)
            got = client.infer("tuned-pipe", [inp]).as_numpy("y")
            np.testing.assert_allclose(got, expected_affine(x, 3.0, 1.0))
        # a batch over the limit: the error names the public pipeline and the setting
        big = httpclient.InferInput("x", [17, 4], "FP32")
        big.set_data_from_numpy(np.zeros((17, 4), np.float32))
        with pytest.raises(InferenceServerException) as refused:
            client.infer("tuned-pipe", [big])
        message = refused.value.message()
        assert "tuned-pipe" in message and "default.tuned-pipe.v1" not in message
        assert "--max-batch-size" in message
    finally:
        client.close()
