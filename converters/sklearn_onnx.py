"""scikit-learn to ONNX with skl2onnx, shaped for Triton.

Classifiers are converted with skl2onnx's ``zipmap=False`` option: by default skl2onnx ends a
classifier with a ZipMap operator that returns a sequence of maps, which Triton cannot serve.
With it off, a classifier answers two plain tensors, ``label`` (one per row) and
``probabilities`` (rows x classes, float32). Regressors answer ``variable``.

Inputs are float32 unless declared otherwise: that is what clients send and what the Triton
backends run fastest; models trained on float64 may need a slightly looser parity tolerance.
The only way to store a scikit-learn model is a pickle (``joblib``), so loading a file needs
``trust_pickle``; passing the fitted object itself needs nothing.

Run alone: ``python -m converters.sklearn_onnx model.joblib --trust-pickle --out-dir out/``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.common import (
    Arrays,
    ConversionError,
    ConvertedModel,
    Progress,
    check_source_file,
    first_error_lines,
    framework_main,
    gate_pickle,
    open_source,
    require,
    version_of,
    write_onnx,
)
from manager.domain import TensorSpec
from manager.errors import InvalidInput, InvalidModelFile

log = logging.getLogger(__name__)

TARGET_OPSET = {"": 18, "ai.onnx.ml": 3}


def load_pickle(path: Path, *, trust_pickle: bool, max_bytes: int, what: str) -> Any:
    """Load a joblib/pickle file, only when the caller trusts it."""
    check_source_file(path, max_bytes=max_bytes)
    gate_pickle(path, trust_pickle=trust_pickle, what=what)
    joblib = require("joblib", extra="sklearn", framework="pickled")
    try:
        return joblib.load(str(path))
    except Exception as exc:  # EOFError, UnpicklingError, ModuleNotFoundError, ...
        raise InvalidModelFile(
            f"{path.name}: cannot be unpickled ({type(exc).__name__}: "
            f"{first_error_lines(exc, limit=300)})",
            hint="the file may be truncated, or need a package version that is not installed",
        ) from exc


def n_features(model: Any) -> int | None:
    count = getattr(model, "n_features_in_", None)
    return int(count) if count is not None else None


def single_input_spec(
    model: Any,
    *,
    inputs: Sequence[TensorSpec] | None,
    sample: Arrays | None,
    count: int | None,
    framework: str,
) -> tuple[str, str, int]:
    """(name, KServe datatype, feature count) of a tabular model's one 2-D input."""
    if inputs:
        if len(inputs) != 1 or len(inputs[0].shape) != 2:
            raise InvalidInput(
                f"{framework} models take one 2-D input (rows x features), got {list(inputs)}",
                hint="declare one input, e.g. --input input:float32:-1,8",
            )
        spec = inputs[0]
        width = spec.shape[1] if spec.shape[1] > 0 else count
        datatype = spec.datatype
        name = spec.name
    elif sample is not None:
        if len(sample) != 1:
            raise InvalidInput(f"{framework} models take one input, sample has {list(sample)}")
        name, array = next(iter(sample.items()))
        if array.ndim != 2:
            raise InvalidInput(f"sample_input must be 2-D (rows x features), got {array.shape}")
        width, datatype = array.shape[1], "FP32"
        if array.dtype.kind in "iu":
            datatype = "INT64"
    else:
        name, width, datatype = "input", count, "FP32"
    if not width:
        raise InvalidInput(
            f"the number of features of this {framework} model is unknown",
            hint="pass sample_input or inputs, e.g. --input input:float32:-1,8",
        )
    if count is not None and width != count:
        raise InvalidInput(f"the model expects {count} features, the input declares {width}")
    return name, datatype, int(width)


def cast_sample(sample: Arrays | None, name: str, datatype: str) -> Arrays | None:
    if sample is None:
        return None
    target = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64}.get(datatype)
    return {name: sample[name].astype(target) if target else sample[name]}


def _initial_type(datatype: str, width: int) -> Any:
    from skl2onnx.common import data_types

    kinds = {
        "FP32": data_types.FloatTensorType,
        "FP64": data_types.DoubleTensorType,
        "INT64": data_types.Int64TensorType,
        "BYTES": data_types.StringTensorType,
    }
    if datatype not in kinds:
        raise InvalidInput(
            f"scikit-learn inputs of datatype {datatype} are not supported",
            hint="use FP32, FP64, INT64 or BYTES",
        )
    return kinds[datatype]([None, width])


def sklearn_reference(model: Any, output_names: list[str], name: str) -> Any:
    """Run the fitted estimator the way its ONNX outputs are laid out."""
    from sklearn.base import is_classifier

    def reference(arrays: Arrays) -> Arrays:
        x = arrays[name]
        if is_classifier(model) and hasattr(model, "predict_proba"):
            outputs = [model.predict(x), model.predict_proba(x)]
        elif hasattr(model, "predict"):
            outputs = [model.predict(x)]
        else:
            outputs = [model.transform(x)]
        return {n: np.asarray(v) for n, v in zip(output_names, outputs, strict=False)}

    return reference


def convert_sklearn(
    source: object,
    *,
    out_path: Path,
    inputs: Sequence[TensorSpec] | None,
    sample: Arrays | None,
    trust_pickle: bool,
    max_bytes: int,
    progress: Progress,
) -> ConvertedModel:
    sklearn = require("sklearn", extra="sklearn", framework="sklearn")
    skl2onnx = require("skl2onnx", extra="sklearn", framework="sklearn")
    from sklearn.base import BaseEstimator, is_classifier

    path, sha256, described = open_source(source, max_bytes=max_bytes)
    if path is not None:
        model = load_pickle(
            path, trust_pickle=trust_pickle, max_bytes=max_bytes, what="a scikit-learn model"
        )
        progress(f"unpickled {path.name} (trusted by the caller)")
    else:
        model = source
    if not isinstance(model, BaseEstimator):
        raise InvalidInput(
            f"framework sklearn expects a fitted scikit-learn estimator, got {type(model).__name__}"
        )
    name, datatype, width = single_input_spec(
        model, inputs=inputs, sample=sample, count=n_features(model), framework="sklearn"
    )
    example = cast_sample(sample, name, datatype)
    options = {"zipmap": False} if is_classifier(model) else None
    progress(f"converting {type(model).__name__} with skl2onnx {skl2onnx.__version__}")
    try:
        onx = skl2onnx.convert_sklearn(
            model,
            initial_types=[(name, _initial_type(datatype, width))],
            options=options,
            target_opset=TARGET_OPSET,
        )
    except InvalidInput:
        raise
    except Exception as exc:  # MissingShapeCalculator, MissingConverter, RuntimeError, ...
        raise ConversionError(
            f"skl2onnx cannot convert {type(model).__name__}: {first_error_lines(exc)}",
            hint="replace the unsupported step with one skl2onnx knows "
            "(skl2onnx.supported_converters()), or register a custom converter",
        ) from exc
    output_names = write_onnx(onx, out_path)
    return ConvertedModel(
        onnx_path=out_path,
        reference=sklearn_reference(model, output_names, name),
        example=example,
        framework="sklearn",
        framework_version=str(sklearn.__version__),
        converter="skl2onnx",
        converter_version=version_of("skl2onnx"),
        source=described,
        source_sha256=sha256,
    )


def main(argv: list[str] | None = None) -> int:
    return framework_main(argv, "sklearn")


if __name__ == "__main__":
    sys.exit(main())
