"""Models from the usual frameworks, converted on import, deployed on the embedded Triton and
answering through the gateway with the source framework's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.e2e.conftest import RunningSystem

pytestmark = pytest.mark.e2e

RNG = np.random.default_rng(11)
X_TRAIN = RNG.normal(size=(200, 6)).astype(np.float32)
Y_TRAIN = (X_TRAIN[:, 0] + X_TRAIN[:, 1] * X_TRAIN[:, 2] > 0).astype(np.int64)
X = RNG.normal(size=(7, 6)).astype(np.float32)


def _serve(system: RunningSystem, name: str, path: Path, *args: str) -> dict[str, np.ndarray]:
    info = json.loads(
        system.cli("model", "import", str(path), "--name", name, *args, "--json").stdout
    )
    assert info["details"]["conversion"]["parity"]["passed"] is True
    assert info["details"]["conversion"]["lineage"]["source_sha256"]
    system.cli("pipeline", "create", f"{name}-pipe", "--step", name)
    system.cli("deploy", f"{name}-pipe", "--version", "latest")
    client = httpclient.InferenceServerClient(system.gateway)
    try:
        meta = client.get_model_metadata(f"{name}-pipe")
        inp = httpclient.InferInput(meta["inputs"][0]["name"], list(X.shape), "FP32")
        inp.set_data_from_numpy(X, binary_data=True)
        result = client.infer(f"{name}-pipe", [inp])
        return {o["name"]: result.as_numpy(o["name"]) for o in meta["outputs"]}
    finally:
        client.close()


def test_pytorch_torchscript_mlp(system: RunningSystem, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="the 'torch' extra is not installed")
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    ).eval()
    path = tmp_path / "mlp.pt"
    torch.jit.save(torch.jit.script(mlp), str(path))
    got = _serve(system, "torch-mlp", path, "--framework", "torchscript",
                 "--input", "x:float32:-1,6")  # fmt: skip
    with torch.no_grad():
        expected = mlp(torch.from_numpy(X)).numpy()
    (out,) = got.values()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_sklearn_pipeline_from_joblib(system: RunningSystem, tmp_path: Path) -> None:
    pytest.importorskip("skl2onnx", reason="the 'sklearn' extra is not installed")
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X_TRAIN, Y_TRAIN)
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    refused = system.cli("model", "import", str(path), "--name", "sk", "--framework", "sklearn",
                         check=False)  # fmt: skip
    assert refused.returncode == 6 and "--trust-pickle" in refused.stderr
    got = _serve(system, "sk", path, "--framework", "sklearn", "--trust-pickle",
                 "--input", "x:float32:-1,6")  # fmt: skip
    np.testing.assert_array_equal(got["label"].reshape(-1), model.predict(X))
    np.testing.assert_allclose(got["probabilities"], model.predict_proba(X), atol=1e-5)


def test_xgboost_and_lightgbm_native_files(system: RunningSystem, tmp_path: Path) -> None:
    xgb = pytest.importorskip("xgboost", reason="the 'boosters' extra is not installed")
    lgb = pytest.importorskip("lightgbm", reason="the 'boosters' extra is not installed")
    booster = xgb.XGBClassifier(n_estimators=20, max_depth=3).fit(X_TRAIN, Y_TRAIN)
    xgb_path = tmp_path / "model.json"
    booster.save_model(str(xgb_path))
    got = _serve(system, "xgb", xgb_path, "--framework", "xgboost", "--input", "x:float32:-1,6")
    np.testing.assert_allclose(got["probabilities"], booster.predict_proba(X), atol=1e-5)

    light = lgb.LGBMClassifier(n_estimators=20, num_leaves=7, verbose=-1).fit(X_TRAIN, Y_TRAIN)
    lgb_path = tmp_path / "model.txt"
    light.booster_.save_model(str(lgb_path))
    got = _serve(system, "lgbm", lgb_path, "--framework", "lightgbm", "--input", "x:float32:-1,6")
    np.testing.assert_allclose(got["probabilities"], light.predict_proba(X), atol=1e-5)


def test_sdk_converts_an_in_memory_model_and_stores_its_report(system: RunningSystem) -> None:
    pytest.importorskip("skl2onnx", reason="the 'sklearn' extra is not installed")
    from sklearn.ensemble import GradientBoostingClassifier

    from manager.sdk import Lastmile

    model = GradientBoostingClassifier(n_estimators=10, max_depth=2).fit(X_TRAIN, Y_TRAIN)
    with Lastmile.from_settings(system.settings) as lm:
        info = lm.import_model(model, name="gbc", framework="sklearn", sample_input=X_TRAIN[:32])
        # the client's own report is kept, marked as its claim, never as the server's
        assert info["details"]["converted_by"] == "client"
        assert "conversion" not in info["details"]
        assert info["details"]["client_conversion"]["parity"]["passed"] is True
        assert info["details"]["lineage"].startswith("client-supplied")
        lm.create_pipeline("gbc-pipe", steps=["gbc"])
        lm.deploy("gbc-pipe", version="latest")
        (only_input,) = lm.metadata("gbc-pipe")["inputs"]
        got = lm.infer("gbc-pipe", {only_input["name"]: X.tolist()})
    np.testing.assert_allclose(got["probabilities"], model.predict_proba(X), atol=1e-5)
