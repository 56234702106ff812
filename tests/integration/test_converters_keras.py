"""Keras -> ONNX through tf2onnx; runs where the 'keras' extra (TensorFlow) is installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from converters.api import convert
from converters.common import MissingDependency
from manager.domain import TensorSpec
from manager.errors import InvalidModelFile

FAST: dict[str, Any] = {"max_bytes": 50 * 1024 * 1024, "benchmark_seconds": 0.05}


def test_keras_without_tensorflow_names_the_extra(tmp_path: Path) -> None:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorflow is installed here")
    path = tmp_path / "model.keras"
    path.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(MissingDependency, match="tensorflow") as caught:
        convert(path, framework="keras", out_dir=tmp_path / "out", **FAST)
    assert "lastmile[keras]" in (caught.value.hint or "")


def test_keras_file_converts_and_lambdas_need_trust(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow", reason="the 'keras' extra is not installed")
    pytest.importorskip("tf2onnx", reason="the 'keras' extra is not installed")
    import keras

    inputs = keras.Input(shape=(8,), name="x")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probs")(hidden))
    path = tmp_path / "model.keras"
    model.save(path)
    report = convert(path, framework="keras", out_dir=tmp_path / "out", **FAST)
    assert report.signature.inputs == (TensorSpec("x", "FP32", (-1, 8)),)
    assert report.signature.outputs == (TensorSpec("probs", "FP32", (-1, 3)),)
    assert report.parity.passed and report.lineage["converter"] == "tf2onnx"

    doubled = keras.layers.Lambda(lambda t: t * 2)(inputs)
    keras.Model(inputs, doubled).save(tmp_path / "lambda.keras")
    with pytest.raises(InvalidModelFile, match="lambda"):
        convert(tmp_path / "lambda.keras", framework="keras", out_dir=tmp_path / "l", **FAST)
