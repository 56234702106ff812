"""The walking skeleton end to end: real tritonserver, real gateway, official tritonclient."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto

from manager import supervisor
from tests.conftest import make_settings
from tests.e2e.conftest import RunningSystem
from tests.onnx_models import make_affine, make_softmax_classifier

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "scaler": make_affine(d / "scaler.onnx", 4, 0.5, -1.0, input_name="x", output_name="z"),
        "clf": make_softmax_classifier(d / "clf.onnx", 4, 3, seed=3, input_name="features"),
        "int": make_affine(d / "int.onnx", 4, 2, 1, input_name="features", dtype=TensorProto.INT64),
        "corrupt": _corrupt(d / "corrupt.onnx"),
    }


def _corrupt(path: Path) -> Path:
    path.write_bytes(b"\x08\x07\x12\x04this is not an onnx model" * 10)
    return path


def _reference(models: dict[str, Path], x: np.ndarray) -> np.ndarray:
    scaled = ort.InferenceSession(str(models["scaler"])).run(None, {"x": x})[0]
    return np.asarray(ort.InferenceSession(str(models["clf"])).run(None, {"features": scaled})[0])


def _infer(gateway: str, model: str, x: np.ndarray, *, binary: bool) -> np.ndarray:
    client = httpclient.InferenceServerClient(gateway)
    try:
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
        result = client.infer(model, [inp], outputs=[out])
        return np.asarray(result.as_numpy("probabilities"))
    finally:
        client.close()


def test_import_create_deploy_and_infer_through_gateway(
    system: RunningSystem, models: dict[str, Path]
) -> None:
    scaler = json.loads(system.cli("model", "import", str(models["scaler"]), "--name", "scaler",
                                   "--json").stdout)  # fmt: skip
    assert scaler["version"] == 1
    assert scaler["signature"]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    clf = json.loads(system.cli("model", "import", str(models["clf"]), "--name", "clf",
                                "--json").stdout)  # fmt: skip
    assert clf["signature"]["outputs"][0]["shape"] == [-1, 3]

    pipe = json.loads(system.cli("pipeline", "create", "fraud", "--step", "scaler",
                                 "--step", "clf:1", "--json").stdout)  # fmt: skip
    assert [s["model"] for s in pipe["steps"]] == ["scaler", "clf"]
    assert pipe["steps"][1]["inputs"] == {"features": "$scaler.z"}

    dep = json.loads(system.cli("deploy", "fraud", "--version", "1", "--json").stdout)
    assert dep["state"] == "live" and dep["ensemble"] == "default.fraud.v1"

    x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    expected = _reference(models, x)
    for binary in (False, True):
        got = _infer(system.gateway, "fraud", x, binary=binary)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

    client = httpclient.InferenceServerClient(system.gateway)
    meta = client.get_model_metadata("fraud")
    client.close()
    assert meta["name"] == "fraud"
    assert [t["name"] for t in meta["inputs"]] == ["x"]
    assert [t["name"] for t in meta["outputs"]] == ["probabilities"]

    cli = json.loads(system.cli("infer", "fraud", "--input", f"x={json.dumps(x[:2].tolist())}",
                                "--json").stdout)  # fmt: skip
    np.testing.assert_allclose(np.array(cli["probabilities"]), expected[:2], rtol=1e-5)


def test_grpc_clients_reach_the_pipeline_through_the_gateway(
    system: RunningSystem, models: dict[str, Path]
) -> None:
    import tritonclient.grpc as grpcclient

    address = system.state["gateway"]["grpc"]
    client = grpcclient.InferenceServerClient(address)
    try:
        x = np.random.default_rng(9).normal(size=(3, 4)).astype(np.float32)
        inp = grpcclient.InferInput("x", [3, 4], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("fraud", [inp])
        np.testing.assert_allclose(
            result.as_numpy("probabilities"), _reference(models, x), rtol=1e-5, atol=1e-6
        )
        assert result.get_response().model_name == "fraud"
        assert client.get_model_metadata("fraud").name == "fraud"
    finally:
        client.close()


def test_second_pipeline_deploys_beside_the_first(
    system: RunningSystem, models: dict[str, Path]
) -> None:
    system.cli("pipeline", "create", "scale-only", "--step", "scaler")
    system.cli("deploy", "scale-only", "--version", "latest")
    x = np.ones((2, 4), dtype=np.float32)
    client = httpclient.InferenceServerClient(system.gateway)
    try:
        inp = httpclient.InferInput("x", [2, 4], "FP32")
        inp.set_data_from_numpy(x)
        scaled = client.infer("scale-only", [inp]).as_numpy("z")
    finally:
        client.close()
    np.testing.assert_allclose(scaled, x * 0.5 - 1.0)
    # the first pipeline still answers
    np.testing.assert_allclose(
        _infer(system.gateway, "fraud", x, binary=True), _reference(models, x), rtol=1e-5
    )
    status = json.loads(system.cli("status", "--json").stdout)
    assert {d["pipeline"]: d["state"] for d in status["deployments"]} == {
        "fraud": "live", "scale-only": "live"
    }  # fmt: skip
    for key in ("http", "grpc", "metrics"):
        assert status["gateway"][key]
    assert status["api"]["url"] and status["triton"][0]["ready"] is True


def test_metrics_are_scraped_into_the_store(system: RunningSystem) -> None:
    rows = json.loads(system.cli("metrics", "--scrape", "--json").stdout)
    success = {
        r["model"]: r["value"] for r in rows if r["metric"] == "nv_inference_request_success"
    }
    assert success.get("default.fraud.v1", 0) >= 3
    assert success.get("default.scaler", 0) >= 3


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["model", "import", "{corrupt}", "--name", "broken"], "corrupt.onnx", 6),
        (["model", "import", "{scaler}", "--name", "../x"], "invalid model name '../x'", 6),
        (["pipeline", "create", "p1", "--step", "ghost"], "model 'ghost' is not registered", 3),
        (["pipeline", "create", "../x", "--step", "scaler"], "invalid pipeline name '../x'", 6),
        (["deploy", "ghost-pipeline", "--version", "latest"],
         "pipeline 'ghost-pipeline' does not exist", 3),
    ],
)  # fmt: skip
def test_bad_input_is_a_clear_error_and_writes_nothing(
    system: RunningSystem, models: dict[str, Path], args: list[str], message: str, code: int
) -> None:
    before_models = json.loads(system.cli("model", "list", "--json").stdout)
    before_pipes = json.loads(system.cli("pipeline", "list", "--json").stdout)
    before_files = sorted(p.name for p in system.settings.models_dir.iterdir())
    args = [a.format(**{k: str(v) for k, v in models.items()}) for a in args]
    proc = system.cli(*args, check=False)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr.replace("\n", " ")
    assert "Traceback" not in proc.stderr
    assert json.loads(system.cli("model", "list", "--json").stdout) == before_models
    assert json.loads(system.cli("pipeline", "list", "--json").stdout) == before_pipes
    assert sorted(p.name for p in system.settings.models_dir.iterdir()) == before_files


def test_mismatched_dtypes_between_steps_are_refused(
    system: RunningSystem, models: dict[str, Path]
) -> None:
    system.cli("model", "import", str(models["int"]), "--name", "int-model")
    proc = system.cli("pipeline", "create", "mixed", "--step", "scaler", "--step", "int-model",
                      check=False)  # fmt: skip
    assert proc.returncode == 6
    err = proc.stderr.replace("\n", " ")
    assert "FP32" in err and "INT64" in err and "int-model" in err
    pipes = json.loads(system.cli("pipeline", "list", "--json").stdout)
    assert "mixed" not in {p["pipeline"] for p in pipes}


def test_down_leaves_no_process_behind(system: RunningSystem) -> None:
    state = supervisor.read_state(system.settings)
    assert state is not None
    pids = [state["pid"], state["gateway"]["pid"], *(t["pid"] for t in state["triton"])]
    assert all(supervisor.pid_alive(p) for p in pids)
    out = json.loads(system.cli("down", "--json").stdout)
    assert out["stopped"] is True and out["killed"] == []
    assert not any(supervisor.pid_alive(p) for p in pids)
    assert supervisor.read_state(system.settings) is None


def test_the_demo_runs_end_to_end_and_shows_the_pipeline_s_figures(tmp_path: Path) -> None:
    """`make demo`'s command on a home of its own: it starts, serves, checks the answers
    against onnxruntime, shows fraud's figures by name and stops everything it started."""
    demo = RunningSystem(settings=make_settings(tmp_path / "home"), state={})
    proc = demo.cli("demo", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "demo passed" in out and "matches onnxruntime" in out
    for figure in ("gateway_requests_per_s", "gateway_latency_p99_ms", "requests_per_s"):
        assert figure in out, out
    assert supervisor.running_state(demo.settings) is None  # nothing left running
