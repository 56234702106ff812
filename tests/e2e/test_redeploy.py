"""Deploying a new pipeline version while clients send requests: the previous version serves
until the gateway switches, models shared with other pipelines keep serving, and versions no
pipeline uses any more leave the version policy afterwards."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from manager.repository.writer import RepositoryWriter
from manager.triton.client import TritonClient
from tests.e2e.conftest import RunningSystem
from tests.onnx_models import (
    expected_affine,
    expected_softmax,
    make_affine,
    make_softmax_classifier,
)

pytestmark = pytest.mark.e2e


def _infer(client: httpclient.InferenceServerClient, model: str, x: np.ndarray) -> np.ndarray:
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return np.asarray(client.infer(model, [inp]).as_numpy("probabilities"))


def test_redeploy_under_load_fails_no_request(system: RunningSystem, tmp_path: Path) -> None:
    make_affine(tmp_path / "a1.onnx", 4, 1.0, 0.0, output_name="z")
    make_affine(tmp_path / "a2.onnx", 4, 2.0, 0.0, output_name="z")
    make_softmax_classifier(tmp_path / "c.onnx", 4, 3, seed=1, input_name="z")
    system.cli("model", "import", str(tmp_path / "a1.onnx"), "--name", "scaler")
    system.cli("model", "import", str(tmp_path / "c.onnx"), "--name", "clf")
    system.cli("pipeline", "create", "p", "--step", "scaler", "--step", "clf")
    system.cli("deploy", "p", "--version", "latest")
    system.cli("pipeline", "create", "other", "--step", "scaler:1", "--step", "clf")
    system.cli("deploy", "other", "--version", "latest")
    system.cli("model", "import", str(tmp_path / "a2.onnx"), "--name", "scaler")
    system.cli("pipeline", "create", "p", "--step", "scaler:2", "--step", "clf")

    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    errors: list[str] = []
    lock = threading.Lock()

    def hammer(model: str) -> None:
        client = httpclient.InferenceServerClient(system.gateway, network_timeout=30)
        x = np.ones((1, 4), np.float32)
        deadline = time.monotonic() + 120  # bounded even if the test body fails
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                _infer(client, model, x)
                with lock:
                    counts["ok"] += 1
            except Exception as exc:
                with lock:
                    counts["failed"] += 1
                    errors.append(str(exc)[:200])
        client.close()

    threads = [threading.Thread(target=hammer, args=(m,)) for m in ("p", "p", "other", "other")]
    for t in threads:
        t.start()
    time.sleep(1.0)
    system.cli("deploy", "p", "--version", "latest")
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(timeout=60)

    assert counts["failed"] == 0, errors[:5]
    assert counts["ok"] > 100
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    client = httpclient.InferenceServerClient(system.gateway)
    try:
        new = _infer(client, "p", x)
        old = _infer(client, "other", x)
    finally:
        client.close()
    np.testing.assert_allclose(new, expected_softmax(expected_affine(x, 2.0, 0.0), 3, seed=1),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(old, expected_softmax(x, 3, seed=1), rtol=1e-5, atol=1e-6)
    # both versions are in use (p → scaler:2, other → scaler:1)
    config = RepositoryWriter(system.settings.repository_dir).read_config("default.scaler")
    assert sorted(config.version_policy.specific.versions) == [1, 2]


def test_versions_no_pipeline_uses_leave_the_policy(system: RunningSystem, tmp_path: Path) -> None:
    make_affine(tmp_path / "b.onnx", 4, 3.0, 0.0, output_name="z")
    system.cli("model", "import", str(tmp_path / "b.onnx"), "--name", "solo")
    system.cli("pipeline", "create", "single", "--step", "solo")
    system.cli("deploy", "single", "--version", "latest")
    system.cli("model", "import", str(tmp_path / "b.onnx"), "--name", "solo", "--force")
    system.cli("pipeline", "create", "single", "--step", "solo:2")
    system.cli("deploy", "single", "--version", "latest")
    config = RepositoryWriter(system.settings.repository_dir).read_config("default.solo")
    assert list(config.version_policy.specific.versions) == [2]
    client = httpclient.InferenceServerClient(system.gateway)
    try:
        assert client.is_model_ready("single")
    finally:
        client.close()
    with TritonClient(system.state["triton"][0]["http"]) as triton:
        assert triton.is_model_ready("default.single.v2")
        assert not triton.is_model_ready("default.single.v1")  # retired after the switch


def _make_unservable(path: Path) -> Path:
    """Valid ONNX (checker passes: custom domain) that onnxruntime cannot run: it fails only
    when Triton loads it."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mystery", ["x"], ["z"], domain="com.example.mystery")],
        "unservable",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example.mystery", 1)],
    )
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_failed_deploy_publishes_nothing_and_the_live_version_keeps_serving(
    system: RunningSystem, tmp_path: Path
) -> None:
    make_affine(tmp_path / "good.onnx", 4, 5.0, 0.0, output_name="z")
    system.cli("model", "import", str(tmp_path / "good.onnx"), "--name", "steady")
    system.cli("pipeline", "create", "steady-pipe", "--step", "steady")
    system.cli("deploy", "steady-pipe", "--version", "latest")
    repo = system.settings.repository_dir
    before = sorted(
        str(p.relative_to(repo)) for p in repo.rglob("*") if "__pycache__" not in p.parts
    )

    system.cli("model", "import", str(_make_unservable(tmp_path / "bad.onnx")), "--name", "steady")
    system.cli("pipeline", "create", "steady-pipe", "--step", "steady:2")
    stop = threading.Event()
    failures: list[str] = []
    served = [0]

    def hammer() -> None:
        client = httpclient.InferenceServerClient(system.gateway, network_timeout=30)
        x = np.ones((1, 4), np.float32)
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            inp = httpclient.InferInput("x", [1, 4], "FP32")
            inp.set_data_from_numpy(x)
            try:
                np.testing.assert_allclose(client.infer("steady-pipe", [inp]).as_numpy("z"), x * 5)
                served[0] += 1
            except Exception as exc:
                failures.append(str(exc)[:200])
        client.close()

    worker = threading.Thread(target=hammer)
    worker.start()
    proc = system.cli("deploy", "steady-pipe", "--version", "latest", check=False)
    time.sleep(0.5)
    stop.set()
    worker.join(timeout=60)

    assert proc.returncode == 7  # Triton refused: "unavailable"
    assert "could not load model 'default.steady'" in proc.stderr.replace("\n", " ")
    assert str(system.settings.home.resolve()) not in proc.stderr  # no server paths
    assert failures == [] and served[0] > 10
    after = sorted(
        str(p.relative_to(repo)) for p in repo.rglob("*") if "__pycache__" not in p.parts
    )
    assert after == before  # nothing of version 2 or of the new ensemble is left
    config = RepositoryWriter(repo).read_config("default.steady")
    assert list(config.version_policy.specific.versions) == [1]
    status = json.loads(system.cli("status", "--json").stdout)
    live = {d["pipeline"]: (d["version"], d["state"]) for d in status["deployments"]}
    assert live["steady-pipe"] == (1, "live")
