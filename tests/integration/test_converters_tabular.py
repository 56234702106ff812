"""scikit-learn, XGBoost, LightGBM and ONNX imports: plain tensors out, refusals with reasons."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn", reason="the 'sklearn' extra is not installed")
pytest.importorskip("skl2onnx", reason="the 'sklearn' extra is not installed")

from sklearn.base import BaseEstimator, TransformerMixin  # noqa: E402
from sklearn.datasets import make_classification  # noqa: E402
from sklearn.ensemble import GradientBoostingClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from converters.api import convert  # noqa: E402
from converters.common import ConversionError  # noqa: E402
from converters.parity import run_onnx  # noqa: E402
from manager.domain import Signature, TensorSpec  # noqa: E402
from manager.errors import InvalidInput, InvalidModelFile  # noqa: E402
from tests.onnx_models import make_external_data  # noqa: E402

LIMIT = 50 * 1024 * 1024
FAST: dict[str, Any] = {"max_bytes": LIMIT, "benchmark_seconds": 0.05}
CLASSES = 3


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x, y = make_classification(
        400, 6, n_informative=4, n_classes=CLASSES, random_state=0, class_sep=1.5
    )
    return x.astype(np.float32), y


def _assert_classifier_tensors(signature: Signature, classes: int = CLASSES) -> None:
    """Triton-servable classifier outputs: a label per row and a probability matrix."""
    assert signature.batched
    assert signature.inputs == (TensorSpec("input", "FP32", (-1, 6)),)
    assert signature.outputs == (
        TensorSpec("label", "INT64", (-1,)),
        TensorSpec("probabilities", "FP32", (-1, classes)),
    )


def _probabilities_sum_to_one(onnx_path: Path, x: np.ndarray) -> None:
    outputs = run_onnx(onnx_path, {"input": x[:8]})
    assert outputs["label"].dtype == np.int64
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1.0, atol=1e-5)


def test_sklearn_pipeline_object_gives_label_and_probabilities(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data
    model = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=300))])
    model.fit(x, y)
    report = convert(model, framework="sklearn", out_dir=tmp_path, sample_input=x[:64], **FAST)
    _assert_classifier_tensors(report.signature)
    assert report.parity.passed and report.parity.batch == 64
    assert [o.name for o in report.parity.outputs] == ["label", "probabilities"]
    assert report.parity.outputs[0].mismatched == 0
    assert report.lineage["converter"] == "skl2onnx"
    assert report.lineage["framework_version"] == sklearn.__version__
    _probabilities_sum_to_one(report.onnx_path, x)


def test_gradient_boosting_joblib_loads_only_when_trusted(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    import joblib

    x, y = data
    path = tmp_path / "gbc.joblib"
    joblib.dump(GradientBoostingClassifier(n_estimators=15, max_depth=2).fit(x, y), path)
    with pytest.raises(InvalidInput, match="is a pickle") as caught:
        convert(path, framework="sklearn", out_dir=tmp_path / "refused", **FAST)
    assert "--trust-pickle" in (caught.value.hint or "")
    assert not (tmp_path / "refused" / "model.onnx").exists()

    report = convert(path, framework="sklearn", out_dir=tmp_path / "ok", trust_pickle=True, **FAST)
    _assert_classifier_tensors(report.signature)
    assert report.parity.passed and report.parity.batch == 16  # generated from the signature
    assert any("unpickling" in r.message and "gbc.joblib" in r.message for r in caplog.records)


def test_truncated_pickle_is_a_clear_error(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(LogisticRegression().fit(x, y))[:200])
    with pytest.raises(InvalidModelFile, match=r"cannot be unpickled.*truncated"):
        convert(path, framework="sklearn", out_dir=tmp_path / "out", trust_pickle=True, **FAST)


def test_oversized_pickle_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.pkl"
    path.write_bytes(b"\x80" + b"\0" * 4096)
    with pytest.raises(InvalidModelFile, match="4097 bytes, over the limit of 1024"):
        convert(path, framework="sklearn", out_dir=tmp_path, trust_pickle=True, max_bytes=1024)


class _Clipper(BaseEstimator, TransformerMixin):  # type: ignore[misc]
    """A user's own step: skl2onnx has no converter for it."""

    def fit(self, x: np.ndarray, y: object = None) -> _Clipper:
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x, -1, 1)


def test_estimator_skl2onnx_cannot_convert_is_a_conversion_error(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data
    model = Pipeline([("clip", _Clipper()), ("clf", LogisticRegression())]).fit(x, y)
    with pytest.raises(ConversionError, match=r"skl2onnx cannot convert Pipeline.*_Clipper"):
        convert(model, framework="sklearn", out_dir=tmp_path, sample_input=x[:8], **FAST)


def test_xgboost_classifier_object_and_json_file(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    xgb = pytest.importorskip("xgboost", reason="the 'boosters' extra is not installed")
    x, y = data
    model = xgb.XGBClassifier(n_estimators=15, max_depth=3).fit(x, y)
    report = convert(model, framework="xgboost", out_dir=tmp_path / "obj", sample_input=x, **FAST)
    _assert_classifier_tensors(report.signature)
    assert report.parity.passed and report.lineage["converter"] == "onnxmltools"

    path = tmp_path / "model.json"
    model.get_booster().save_model(str(path))
    report = convert(path, framework="xgboost", out_dir=tmp_path / "file", **FAST)  # no trust
    _assert_classifier_tensors(report.signature)
    assert report.parity.passed
    _probabilities_sum_to_one(report.onnx_path, x)

    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(InvalidModelFile, match="cannot be read as an XGBoost model"):
        convert(path, framework="xgboost", out_dir=tmp_path / "truncated", **FAST)


def test_xgboost_binary_booster_file_gets_two_probability_columns(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    xgb = pytest.importorskip("xgboost", reason="the 'boosters' extra is not installed")
    x, y = data
    model = xgb.XGBClassifier(n_estimators=10, max_depth=2).fit(x, (y > 0).astype(int))
    path = tmp_path / "binary.ubj"
    model.get_booster().save_model(str(path))
    report = convert(path, framework="xgboost", out_dir=tmp_path / "out", **FAST)
    _assert_classifier_tensors(report.signature, classes=2)
    assert report.parity.passed


def test_lightgbm_classifier_object_and_text_file(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    lgb = pytest.importorskip("lightgbm", reason="the 'boosters' extra is not installed")
    x, y = data
    model = lgb.LGBMClassifier(n_estimators=15, verbose=-1).fit(x, y)
    report = convert(model, framework="lightgbm", out_dir=tmp_path / "obj", sample_input=x, **FAST)
    _assert_classifier_tensors(report.signature)  # label batch dim freed from onnxmltools' [1]
    assert report.parity.passed

    path = tmp_path / "model.txt"
    model.booster_.save_model(str(path))
    report = convert(path, framework="lightgbm", out_dir=tmp_path / "file", **FAST)
    _assert_classifier_tensors(report.signature)
    assert report.parity.passed
    assert report.lineage["source"] == "file model.txt"
    _probabilities_sum_to_one(report.onnx_path, x)

    text = path.read_text()
    path.write_text(text[:500])
    with pytest.raises(InvalidModelFile, match="truncated"):
        convert(path, framework="lightgbm", out_dir=tmp_path / "truncated", **FAST)


def test_corrupt_lightgbm_file_does_not_abort_the_process(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray]
) -> None:
    """LightGBM's parser calls std::terminate on this file; the probe runs it in a child."""
    lgb = pytest.importorskip("lightgbm", reason="the 'boosters' extra is not installed")
    x, y = data
    path = tmp_path / "model.txt"
    lgb.LGBMClassifier(n_estimators=15, verbose=-1).fit(x, y).booster_.save_model(str(path))
    text = path.read_text()
    path.write_text(text[:2000] + text[text.index("end of trees") :])
    with pytest.raises(InvalidModelFile, match="cannot be read as a LightGBM model"):
        convert(path, framework="lightgbm", out_dir=tmp_path / "out", **FAST)


def test_onnx_import_copies_model_and_data_and_refuses_traversal(tmp_path: Path) -> None:
    source = tmp_path / "src"
    path = make_external_data(source / "model.onnx", "weights.bin")
    (source / "weights.bin").write_bytes(np.full(4, 2.0, np.float32).tobytes())
    report = convert(path, framework="onnx", out_dir=tmp_path / "out", **FAST)
    assert report.parity.passed and report.lineage["source_sha256"]
    assert (tmp_path / "out" / "weights.bin").is_file()
    x = np.ones((3, 4), np.float32)
    np.testing.assert_array_equal(run_onnx(report.onnx_path, {"x": x})["y"], 2 * x)

    evil = make_external_data(source / "evil.onnx", "../../etc/passwd")
    with pytest.raises(InvalidModelFile, match="leaves the model's folder"):
        convert(evil, framework="onnx", out_dir=tmp_path / "evil", **FAST)
    assert not (tmp_path / "evil" / "model.onnx").exists()


def test_truncated_onnx_is_a_clear_error(tmp_path: Path) -> None:
    path = make_external_data(tmp_path / "model.onnx", "weights.bin")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(InvalidModelFile, match="truncated"):
        convert(path, framework="onnx", out_dir=tmp_path / "out", **FAST)


def test_unknown_framework_and_optimisation_are_refused_before_work(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="unknown framework 'caffe'"):
        convert(Path("x"), framework="caffe", out_dir=tmp_path, **FAST)
    with pytest.raises(InvalidInput, match="unknown optimisation 'turbo'"):
        convert(Path("x"), framework="onnx", out_dir=tmp_path, optimize=["turbo"], **FAST)
